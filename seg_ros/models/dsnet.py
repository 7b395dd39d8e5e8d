"""DSNet1.0, after Wang, Fu, Pan, Li and Zhuang, "Real-Time Driving Scene Semantic Segmentation"
(IEEE Access, Table 3 and Fig. 3), with the context-encoding head of its Semantic Encoding Loss
(Section III-D-2, eqs. 6-7).

The units adapt the ShuffleNet V2 unit: a Basic unit splits its channels in two, runs one half through
1x1, dilated 3x3 and 1x1 convolutions, concatenates and shuffles the channels. The paper replaces
ShuffleNet V2's depth-wise 3x3 by a full dilated 3x3 ("Depth-wise separable convolution in ShuffleNet
V2 is replaced with dilated convolution"; its ablation "DW" puts the depth-wise one back and needs 22
more units for the same 0.9 M parameters), so the 3x3 here is a full convolution. The Down unit
max-pools and projects one branch, strides the other; the Up unit adds a max-unpooled projection
(indices of the matching Down unit) to a transposed-convolution branch. The dilations follow Hybrid
Dilated Convolution: 1, 2, 5, 9 twice in stage 2 and 2, 5, 9, 17 twice in stage 3.

Where the paper is silent the layout follows the authors' TensorFlow reference (Mark-sloan/DSNet,
``layers/layers_tensorpack.py``, ``models/shuffle_tensorpack.py``, ``utils/enc.py``):

* the Init unit is ENet's: a 3x3 stride-2 convolution (13 filters) with BN and activation, beside a
  2x2 max-pool, concatenated, then BN and activation again;
* convolutions have no bias (batch norm follows each); batch-norm epsilon 1e-3; the Up unit's
  transposed convolution is 3x3 stride 2 and a ReLU follows its sum; the final "Fullconv" is a 2x2
  stride-2 transposed convolution without bias;
* channel shuffle with 4 groups (the reference's default, where ShuffleNet V2 uses 2);
* the context head sits on the encoder output (stage 3), with 32 codewords.

Two deliberate departures from the reference: the activation is ReLU everywhere, as the paper's
Fig. 3 states ("All convolutions are followed by Batch Norm and ReLU"; the reference encoder used a
scalar PReLU), and batch norm has the usual scale and shift (tensorpack's was shift-only).

The context head (``ContextEncoding``) follows eq. 6 and EncNet's Encoding layer (Zhang et al., CVPR
2018): codewords ``d_k`` and smoothing factors ``s_k`` soft-assign every feature, the assigned
residuals are summed per codeword, each passes batch norm (over codewords, as EncNet's
``BatchNorm1d(K)``) and ReLU, the codewords are summed (``e = sum_k phi(e_k)``) and a fully
connected layer gives one class-presence logit per class (eq. 7 applies the sigmoid). It is built
only with ``context_head=True`` and runs only on ``model(x, with_context=True)``; it is a training
aid and not part of the paper's 0.91 M parameters.

Parameters: 910,473 at 19 classes (the paper's Table 1: 0.91 M, Cityscapes' 19 classes) and 909,961 at
11, without the head; the head adds 6,643 at 19 classes (5,611 at 11).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.models._base import SegmentationNet
from seg_ros.models._registry import register_model
from seg_ros.models.enet import max_pool2x2_with_indices, max_unpool2x2

__all__ = ['BasicUnit', 'ContextEncoding', 'DSNet', 'DownUnit', 'InitUnit', 'UpUnit', 'channel_shuffle',
           'dsnet']

_BN_EPS = 1e-3
_SHUFFLE_GROUPS = 4
_NUM_CODEWORDS = 32

# Table 3 (output shapes for an 800x800 input), reconstructed from the flattened text:
# unit                   type                               output
# Init Unit                                                  16 x 400 x 400
# Down Unit 1.0                                              64 x 200 x 200
# 4x Basic Unit 1.x      dilation 1                          64 x 200 x 200
# Down Unit 2.0                                             128 x 100 x 100
# Basic Unit 2.1 - 2.8   dilation 1, 2, 5, 9, 1, 2, 5, 9    128 x 100 x 100
# Basic Unit 3.1 - 3.8   dilation 2, 5, 9, 17, 2, 5, 9, 17  128 x 100 x 100
# Up Unit 4.0                                                64 x 200 x 200
# Basic Unit 4.1         dilation 1                          64 x 200 x 200
# Up Unit 5.0                                                16 x 400 x 400
# Basic Unit 5.1         dilation 1                          16 x 400 x 400
# Fullconv                                                    C x 800 x 800
_INIT_CHANNELS = 16
# Encoder stages: (Down unit's out channels, the Basic units' dilations). Stage 3 has no Down unit.
_ENCODER_STAGES = [
    (64, (1, 1, 1, 1)),
    (128, (1, 2, 5, 9, 1, 2, 5, 9)),
]
_STAGE3_DILATIONS = (2, 5, 9, 17, 2, 5, 9, 17)
# Decoder stages: (Up unit's out channels, the Basic units' dilations).
_DECODER_STAGES = [
    (64, (1,)),
    (_INIT_CHANNELS, (1,)),
]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups (ShuffleNet)."""
    # reshape with the traced sizes, not unflatten/flatten, whose ONNX export freezes height and width.
    batch, _, height, width = x.shape
    return x.reshape(batch, groups, -1, height, width).transpose(1, 2).reshape(batch, -1, height, width)


class ConvBNReLU(nn.Sequential):
    """Convolution without bias, batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, stride: int = 1,
                 dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS),
            nn.ReLU(inplace=True),
        )


class InitUnit(nn.Module):
    """ENet's initial block: a 3x3 stride-2 convolution beside a 2x2 max-pool, concatenated."""

    def __init__(self, in_channels: int = 3, out_channels: int = _INIT_CHANNELS) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels - in_channels, 3, stride=2)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class BasicUnit(nn.Module):
    """Channel split; one half goes through 1x1, dilated 3x3, 1x1; concatenation; channel shuffle."""

    def __init__(self, channels: int, *, dilation: int = 1) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            ConvBNReLU(half, half),
            ConvBNReLU(half, half, 3, dilation=dilation),
            ConvBNReLU(half, half),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], dim=1), _SHUFFLE_GROUPS)


class DownUnit(nn.Module):
    """Halves the resolution: max-pool and 1x1 beside 1x1, 3x3 stride 2, 1x1; concatenation; shuffle.

    Returns the pooling indices too, for the matching Up unit's unpooling.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.pooled_projection = ConvBNReLU(in_channels, half)
        self.branch = nn.Sequential(
            ConvBNReLU(in_channels, half),
            ConvBNReLU(half, half, 3, stride=2),
            ConvBNReLU(half, half),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, indices = max_pool2x2_with_indices(x)  # exports without OpenVINO's slow indices kernel
        out = torch.cat([self.pooled_projection(pooled), self.branch(x)], dim=1)
        return channel_shuffle(out, _SHUFFLE_GROUPS), indices


class UpUnit(nn.Module):
    """Doubles the resolution: 1x1 and max-unpooling plus 1x1, 3x3 stride-2 transposed conv, 1x1; ReLU.

    ``out_channels`` must be the input channels of the Down unit whose indices it receives.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.projection = ConvBNReLU(in_channels, out_channels)
        self.branch = nn.Sequential(
            ConvBNReLU(in_channels, out_channels),
            nn.ConvTranspose2d(out_channels, out_channels, 3, stride=2, padding=1, output_padding=1,
                               bias=False),
            nn.BatchNorm2d(out_channels, eps=_BN_EPS),
            nn.ReLU(inplace=True),
            ConvBNReLU(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return F.relu(max_unpool2x2(self.projection(x), indices) + self.branch(x))


class ContextEncoding(nn.Module):
    """EncNet's Encoding layer and a fully connected layer: class-presence logits (N, num_classes).

    Eq. 6: ``e_k = sum_i softmax_k(-s_k |x_i - d_k|^2) (x_i - d_k)``; ``e = sum_k ReLU(BN(e_k))``.
    """

    def __init__(self, channels: int, num_classes: int, *, num_codewords: int = _NUM_CODEWORDS) -> None:
        super().__init__()
        # EncNet's initialisation: codewords uniform in +-1/sqrt(K*C), smoothing factors in (0, 1).
        bound = 1.0 / math.sqrt(num_codewords * channels)
        self.codewords = nn.Parameter(torch.empty(num_codewords, channels).uniform_(-bound, bound))
        self.smoothing = nn.Parameter(torch.empty(num_codewords).uniform_(0.0, 1.0))
        self.norm = nn.BatchNorm1d(num_codewords)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Squared distances by expansion (|x|^2 - 2 x.d + |d|^2) cancel badly in half precision, so the
        # head runs in float32 even under autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            features = x.float().flatten(2).transpose(1, 2)  # (N, HW, C)
            codewords = self.codewords.float()
            distances = (features.pow(2).sum(2, keepdim=True) - 2.0 * features @ codewords.t()
                         + codewords.pow(2).sum(1))  # (N, HW, K)
            assignment = torch.softmax(-self.smoothing * distances, dim=2)
            # sum_i a_ik (x_i - d_k) = (A^T X)_k - (sum_i a_ik) d_k, without the (N, HW, K, C) residuals.
            encoded = assignment.transpose(1, 2) @ features - assignment.sum(1).unsqueeze(2) * codewords
            return self.fc(F.relu(self.norm(encoded)).sum(1))


class DSNet(SegmentationNet):
    """DSNet1.0 (Table 3): input 3xHxW, logits num_classes x H x W; H and W padded to 8.

    ``context_head=True`` adds the ``ContextEncoding`` head on the encoder output; ``forward(x,
    with_context=True)`` then returns ``(logits, presence_logits)``.
    """

    size_divisor = 8

    def __init__(self, num_classes: int, *, context_head: bool = False) -> None:
        super().__init__()
        self.init = InitUnit(3, _INIT_CHANNELS)
        (channels1, dilations1), (channels2, dilations2) = _ENCODER_STAGES
        self.down1 = DownUnit(_INIT_CHANNELS, channels1)
        self.stage1 = nn.Sequential(*(BasicUnit(channels1, dilation=d) for d in dilations1))
        self.down2 = DownUnit(channels1, channels2)
        self.stage2 = nn.Sequential(*(BasicUnit(channels2, dilation=d) for d in dilations2))
        self.stage3 = nn.Sequential(*(BasicUnit(channels2, dilation=d) for d in _STAGE3_DILATIONS))
        (channels4, dilations4), (channels5, dilations5) = _DECODER_STAGES
        self.up4 = UpUnit(channels2, channels4)
        self.stage4 = nn.Sequential(*(BasicUnit(channels4, dilation=d) for d in dilations4))
        self.up5 = UpUnit(channels4, channels5)
        self.stage5 = nn.Sequential(*(BasicUnit(channels5, dilation=d) for d in dilations5))
        self.fullconv = nn.ConvTranspose2d(channels5, num_classes, 2, stride=2, bias=False)
        self.context = ContextEncoding(channels2, num_classes) if context_head else None

    def forward_padded(self, x: torch.Tensor, *,
                       with_context: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if with_context and self.context is None:
            raise ValueError('with_context=True needs the context head: build DSNet with context_head=True')
        x, indices1 = self.down1(self.init(x))
        x, indices2 = self.down2(self.stage1(x))
        encoded = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(encoded, indices2))
        x = self.stage5(self.up5(x, indices1))
        logits = self.fullconv(x)
        if with_context:
            return logits, self.context(encoded)
        return logits


@register_model('dsnet')
def dsnet(*, num_classes: int, context_head: bool = False) -> DSNet:
    """DSNet1.0; ``context_head=True`` adds the training-only head of the Semantic Encoding Loss."""
    return DSNet(num_classes, context_head=context_head)
