"""ENet, after Paszke, Chaurasia, Kim and Culurciello, "ENet: A Deep Neural Network Architecture for
Real-Time Semantic Segmentation" (arXiv:1606.02147, Table 1), the baseline network of Lourenço et al.,
"Performance Analysis on Deep Learning Semantic Segmentation with multivariate Training Procedures".

Where the paper is silent the layout follows the authors' Torch reference (e-lab/ENet-training,
``train/models/encoder.lua`` and ``decoder.lua``):

* projections (1x1 and the 2x2 stride-2 projection of a downsampling bottleneck) have no bias; the
  main 3x3, dilated and transposed convolutions and the initial block's convolution keep theirs;
* PReLU has one slope per channel; the decoder uses ReLU and no dropout;
* an asymmetric bottleneck is a 1x5 convolution (no bias, no normalisation) straight into a 5x1;
* an upsampling bottleneck's main branch upsamples with a 3x3 stride-2 transposed convolution, its
  shortcut is a 1x1 convolution and batch norm followed by max-unpooling with the indices of the
  matching downsampling bottleneck;
* spatial dropout is 0.01 for the five stage-1 bottlenecks and 0.1 for stages 2 and 3;
* batch-norm epsilon 1e-3.

Max-unpooling is a scatter of the pooled values into a zero tensor at the pooling indices, which
exports to ONNX (``ScatterElements``) with dynamic height and width, unlike ``nn.MaxUnpool2d``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.models._base import SegmentationNet, is_symbolic
from seg_ros.models._registry import register_model

__all__ = ['DownsamplingBottleneck', 'ENet', 'InitialBlock', 'RegularBottleneck', 'UpsamplingBottleneck',
           'enet', 'max_pool2x2_with_indices', 'max_unpool2x2']

_BN_EPS = 1e-3

# Activation factories take the channel count: PReLU learns one slope per channel, ReLU ignores it.
Activation = Callable[[int], nn.Module]


def _prelu(channels: int) -> nn.Module:
    return nn.PReLU(channels)


def _relu(channels: int) -> nn.Module:
    return nn.ReLU(inplace=True)


def _conv_bn_act(in_channels: int, out_channels: int, activation: Activation, **conv) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, **conv), nn.BatchNorm2d(out_channels, eps=_BN_EPS),
            activation(out_channels)]


def max_pool2x2_with_indices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 stride-2 max-pool of an even-sized ``x`` and the flat index of each maximum, as
    ``F.max_pool2d(x, 2, return_indices=True)`` gives them (the first of tied maxima in row order).

    A traced or exported graph computes the indices from comparisons instead: OpenVINO runs a
    max-pool that returns indices with its slow reference kernel (ENet's exported graph at 640x360,
    2 cores: about 640 of 820 ms in those layers, measured with its profiler), while a plain
    max-pool and element-wise operations have fast kernels in every runtime.
    """
    if not is_symbolic():
        return F.max_pool2d(x, 2, stride=2, return_indices=True)
    height, width = x.shape[-2:]
    pooled = F.max_pool2d(x, 2, stride=2)
    top_left, top_right, bottom_left = (x[:, :, row::2, column::2] == pooled
                                        for row, column in ((0, 0), (0, 1), (1, 0)))
    # Offset of the first maximum within its window: 0, 1, width (next row) or width + 1.
    offset = torch.where(top_left, 0, torch.where(top_right, 1, torch.where(bottom_left, width, width + 1)))
    rows = torch.arange(height // 2, device=x.device).view(-1, 1) * (2 * width)
    columns = torch.arange(width // 2, device=x.device).view(1, -1) * 2
    return pooled, rows + columns + offset


def max_unpool2x2(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Inverse of a 2x2 stride-2 max-pool: each value goes back where ``indices`` says, zeros elsewhere.

    Same result as ``F.max_unpool2d(values, indices, 2)``, written as a scatter into a flattened zero
    tensor so that it exports to ONNX with symbolic height and width.
    """
    batch, channels, height, width = values.shape
    unpooled = values.new_zeros(batch, channels, 4 * height * width)
    unpooled = unpooled.scatter(2, indices.flatten(2), values.flatten(2))
    return unpooled.view(batch, channels, 2 * height, 2 * width)


class InitialBlock(nn.Module):
    """A 3x3 stride-2 convolution beside a 2x2 max-pool of the input, concatenated, then BN and PReLU."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


def _main_conv(channels: int, dilation: int, asymmetric: int) -> list[nn.Module]:
    if asymmetric:
        pad = asymmetric // 2
        return [nn.Conv2d(channels, channels, (1, asymmetric), padding=(0, pad), bias=False),
                nn.Conv2d(channels, channels, (asymmetric, 1), padding=(pad, 0))]
    return [nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)]


class RegularBottleneck(nn.Module):
    """Residual bottleneck at constant resolution: 1x1 projection, main convolution, 1x1 expansion.

    The main convolution is a regular 3x3, a dilated 3x3 (``dilation`` > 1) or an asymmetric pair
    (``asymmetric`` = kernel length, 5 in ENet). The internal width is a quarter of ``channels``.
    """

    def __init__(self, channels: int, *, dilation: int = 1, asymmetric: int = 0, dropout: float = 0.0,
                 activation: Activation = _prelu) -> None:
        super().__init__()
        internal = channels // 4
        self.branch = nn.Sequential(
            *_conv_bn_act(channels, internal, activation, kernel_size=1, bias=False),
            *_main_conv(internal, dilation, asymmetric),
            nn.BatchNorm2d(internal, eps=_BN_EPS),
            activation(internal),
            nn.Conv2d(internal, channels, 1, bias=False),
            nn.BatchNorm2d(channels, eps=_BN_EPS),
            nn.Dropout2d(dropout),
        )
        self.act = activation(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.branch(x))


class DownsamplingBottleneck(nn.Module):
    """Halves the resolution: a 2x2 stride-2 projection branch beside a max-pool shortcut.

    The shortcut is zero-padded to ``out_channels``; its pooling indices are returned for the
    decoder's max-unpooling.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float) -> None:
        super().__init__()
        internal = out_channels // 4
        self.branch = nn.Sequential(
            *_conv_bn_act(in_channels, internal, _prelu, kernel_size=2, stride=2, bias=False),
            *_conv_bn_act(internal, internal, _prelu, kernel_size=3, padding=1),
            nn.Conv2d(internal, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS),
            nn.Dropout2d(dropout),
        )
        self.extra_channels = out_channels - in_channels
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shortcut, indices = max_pool2x2_with_indices(x)
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return self.act(shortcut + self.branch(x)), indices


class UpsamplingBottleneck(nn.Module):
    """Doubles the resolution: a transposed-convolution branch beside a max-unpooled 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        internal = out_channels // 4
        self.branch = nn.Sequential(
            *_conv_bn_act(in_channels, internal, _relu, kernel_size=1, bias=False),
            nn.ConvTranspose2d(internal, internal, 3, stride=2, padding=1, output_padding=1),
            nn.BatchNorm2d(internal, eps=_BN_EPS),
            nn.ReLU(inplace=True),
            nn.Conv2d(internal, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.act(max_unpool2x2(self.shortcut(x), indices) + self.branch(x))


def _encoder_stage(channels: int, dropout: float) -> list[nn.Module]:
    # Stages 2 and 3 of Table 1, after the downsampling: (dilation, asymmetric kernel) per bottleneck.
    settings = [(1, 0), (2, 0), (1, 5), (4, 0), (1, 0), (8, 0), (1, 5), (16, 0)]
    return [RegularBottleneck(channels, dilation=d, asymmetric=a, dropout=dropout) for d, a in settings]


class ENet(SegmentationNet):
    """ENet (Table 1 of the paper): input 3xHxW, logits num_classes x H x W; H and W padded to 8."""

    size_divisor = 8

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        # stage        block                          out    resolution
        # initial      InitialBlock                    16    1/2
        # 1            downsampling + 4 x regular      64    1/4    dropout 0.01
        # 2            downsampling + 8 x mixed       128    1/8    dropout 0.1
        # 3            8 x mixed (no downsampling)    128    1/8    dropout 0.1
        # 4            upsampling + 2 x regular        64    1/4    ReLU
        # 5            upsampling + 1 x regular        16    1/2    ReLU
        # fullconv     2x2 stride-2 transposed conv     C    1
        # "mixed": regular, dilated 2, asymmetric 5, dilated 4, regular, dilated 8, asymmetric 5, dilated 16
        self.initial = InitialBlock(3, 16)
        self.down1 = DownsamplingBottleneck(16, 64, dropout=0.01)
        self.stage1 = nn.Sequential(*(RegularBottleneck(64, dropout=0.01) for _ in range(4)))
        self.down2 = DownsamplingBottleneck(64, 128, dropout=0.1)
        self.stage23 = nn.Sequential(*_encoder_stage(128, 0.1), *_encoder_stage(128, 0.1))
        self.up4 = UpsamplingBottleneck(128, 64)
        self.stage4 = nn.Sequential(*(RegularBottleneck(64, activation=_relu) for _ in range(2)))
        self.up5 = UpsamplingBottleneck(64, 16)
        self.stage5 = RegularBottleneck(16, activation=_relu)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.initial(x)
        x, indices1 = self.down1(x)
        x, indices2 = self.down2(self.stage1(x))
        x = self.stage23(x)
        x = self.stage4(self.up4(x, indices2))
        x = self.stage5(self.up5(x, indices1))
        return self.fullconv(x)


@register_model('enet')
def enet(*, num_classes: int) -> ENet:
    """ENet as in the paper: 363,791 parameters at 11 classes, 364,311 at 19 (the paper: 0.37 M)."""
    return ENet(num_classes)
