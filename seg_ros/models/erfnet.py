"""ERFNet, after Romera, Álvarez, Bergasa and Arroyo, "Efficient ConvNet for Real-time Semantic
Segmentation" (IEEE IV 2017, Table I).

Where the paper is silent the layout follows the authors' PyTorch reference (Eromera/erfnet_pytorch,
``train/erfnet.py``):

* dropout (channel-wise, ``Dropout2d``) is 0.03 in the five 64-channel encoder blocks and 0.3 in the
  eight dilated 128-channel blocks (the paper only names 0.3); the decoder has no dropout;
* every convolution has a bias; batch-norm epsilon 1e-3;
* a ReLU follows each of the four 1-D convolutions except the last, whose output goes through batch
  norm and dropout before the residual sum and the final ReLU;
* an upsampler block is a 3x3 stride-2 transposed convolution (padding 1, output padding 1);
* the encoder-only training stage classifies the 1/8 encoder output with a 1x1 convolution, a layer
  that is part of the model (and its parameter count) but unused by the full forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.models._base import SegmentationNet
from seg_ros.models._registry import register_model

__all__ = ['DownsamplerBlock', 'ERFNet', 'NonBottleneck1d', 'UpsamplerBlock', 'erfnet']

_BN_EPS = 1e-3


class DownsamplerBlock(nn.Module):
    """A 3x3 stride-2 convolution beside a 2x2 max-pool of the input, concatenated, then BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1d(nn.Module):
    """Residual block of two factorised 3x3 convolutions (3x1 then 1x3); the second pair is dilated."""

    def __init__(self, channels: int, *, dilation: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1))
        self.bn1 = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(dilation, 0), dilation=(dilation, 1))
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, dilation), dilation=(1, dilation))
        self.bn2 = nn.BatchNorm2d(channels, eps=_BN_EPS)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1x3_1(F.relu(self.conv3x1_1(x)))))
        out = self.bn2(self.conv1x3_2(F.relu(self.conv3x1_2(out))))
        return F.relu(x + self.dropout(out))


class UpsamplerBlock(nn.Sequential):
    """A 3x3 stride-2 transposed convolution doubling the resolution, then BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS),
            nn.ReLU(inplace=True),
        )


def _create_encoder() -> nn.Sequential:
    # layer   block                     out    resolution   dropout
    # 1       DownsamplerBlock           16    1/2
    # 2       DownsamplerBlock           64    1/4
    # 3-7     5 x Non-bt-1D              64    1/4          0.03
    # 8       DownsamplerBlock          128    1/8
    # 9-16    2 x Non-bt-1D, dilated    128    1/8          0.3
    #         2, 4, 8, 16
    return nn.Sequential(
        DownsamplerBlock(3, 16),
        DownsamplerBlock(16, 64),
        *(NonBottleneck1d(64, dropout=0.03) for _ in range(5)),
        DownsamplerBlock(64, 128),
        *(NonBottleneck1d(128, dilation=d, dropout=0.3) for d in (2, 4, 8, 16, 2, 4, 8, 16)),
    )


def _create_decoder(num_classes: int) -> nn.Sequential:
    # layer   block                                   out   resolution
    # 17      UpsamplerBlock                           64   1/4
    # 18-19   2 x Non-bt-1D                            64   1/4
    # 20      UpsamplerBlock                           16   1/2
    # 21-22   2 x Non-bt-1D                            16   1/2
    # 23      2x2 stride-2 transposed convolution       C   1
    return nn.Sequential(
        UpsamplerBlock(128, 64),
        NonBottleneck1d(64),
        NonBottleneck1d(64),
        UpsamplerBlock(64, 16),
        NonBottleneck1d(16),
        NonBottleneck1d(16),
        nn.ConvTranspose2d(16, num_classes, 2, stride=2),
    )


class ERFNet(SegmentationNet):
    """ERFNet (Table I): input 3xHxW, logits num_classes x H x W; H and W padded to a multiple of 8.

    ``model(x, encoder_only=True)`` returns the encoder's logits at 1/8 resolution, for the paper's
    first training stage (encoder alone, on downsampled labels).
    """

    size_divisor = 8

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.encoder = _create_encoder()
        self.encoder_classifier = nn.Conv2d(128, num_classes, 1)
        self.decoder = _create_decoder(num_classes)

    def forward_padded(self, x: torch.Tensor, *, encoder_only: bool = False) -> torch.Tensor:
        features = self.encoder(x)
        if encoder_only:
            return self.encoder_classifier(features)
        return self.decoder(features)


@register_model('erfnet')
def erfnet(*, num_classes: int) -> ERFNet:
    """ERFNet as in the paper: 2,066,642 parameters at 19 classes, 2,064,191 of them outside the
    encoder-stage classifier (the paper's 2.06 M); 2,065,090 at 11 classes.
    """
    return ERFNet(num_classes)
