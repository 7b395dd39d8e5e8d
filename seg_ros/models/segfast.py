"""SegFast and SegFast-Basic, after Pal, Jaiswal, Ghosh, Das and Nasipuri, "SegFast: A Faster SqueezeNet
based Semantic Image Segmentation Technique using Depth-wise Separable Convolutions" (ICVGIP 2018,
Section 3, Figs. 1-3, Table 5).

The encoder is SqueezeNet 1.1 (Section 3: "4 encoding blocks, the first ... a convolution layer
followed by ReLU activation and an average pooling. The second and third blocks ... two spark modules
followed by average pooling. The last block consists of four spark modules") with SqueezeNet 1.1's
fire sizes. A spark module is a fire module whose 3x3 expand is depth-wise separable (Section 3.1).
Each decoder block upsamples 2x with a depth-wise separable transposed convolution (Section 3.3: a
per-channel transposed convolution, then a 1x1 across channels), concatenates the encoder map of the
same size and applies a 3x3 depth-wise separable convolution; a 1x1 convolution gives the class
scores, which are upsampled (bilinear) to the input size. SegFast-Basic, the paper's control, is the
same network with plain fire modules, plain convolutions and plain transposed convolutions.

Choices where the paper leaves a detail out (its figures are missing from the text):

* every convolution of the fire, spark and decoder layers is preceded by batch norm and followed by
  ReLU, as Section 3.1 states for the fire module; a depth-wise separable convolution is two such
  convolutions; the first block's convolution (3x3, stride 2, 64 filters) has no batch norm, as the
  paper lists only the convolution and ReLU; the final 1x1 convolution is plain;
* the transposed convolutions are 2x2 with stride 2 (exact doubling); the pooling is 2x2 average;
* three decoder blocks join the encoder maps at 1/8 (fire 5), 1/4 (fire 3) and 1/2 (the first
  convolution); each outputs as many channels as the map it joins; the output is at 1/2, then
  upsampled;
* convolutions keep PyTorch's default bias.

The authors' later code (DVLP-CMATERJU/SegFast, which also serves SegFast-V2) has another layout (a
strided stem and three blocks of two spark modules with C = 64) and gives 627,287 / 2,851,763
parameters at 19 classes, further from Table 5 than this reading of the paper.

Parameters (Table 5: SegFast 603,288, SegFast-Basic 2,965,976; the class count is not stated): SegFast
607,123 at 19 classes (+3,835, +0.64 %) and 606,603 at 11; SegFast-Basic 2,970,131 at 19 (+4,155,
+0.14 %) and 2,969,611 at 11. The layer sizes are pinned down by the Basic-minus-SegFast difference,
which no class count affects: its convolution weights alone come to 2,369,344 against the paper's
2,362,688 (2x2 transposed convolutions; 3x3 ones would add 855,680). With biases and batch norm
the difference is 2,363,008, 320 (the sum of the squeeze widths) above the paper's; a search over
bias and batch-norm placements found exact matches of both counts only for ad-hoc mixes at 18 or 24
classes, so the natural reading above is kept.

How the forward runs (the parameters and the logits are those of the plain layers, to float
rounding): tensors are channels last (oneDNN's depth-wise 3x3 convolution is several times faster
on them); the depth-wise 2x2 upsampling is a broadcast product (``DepthwiseUpsample``), not
PyTorch's slow depth-wise transposed convolution; in eval mode each convolution absorbs the batch
norm before it (``ConvUnit``; a padded one with a correction of its border), except SegFast-Basic's
three plain transposed convolutions; on a CPU those convolutions run through oneDNN even where
PyTorch would not pick it (1x1 on one thread). Measured against the authors' code in docs/BENCHMARKS.md
(``python -m seg_ros.bench.segfast_reference``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.models._base import SegmentationNet
from seg_ros.models._registry import register_model

__all__ = ['ConvUnit', 'DecoderBlock', 'DepthwiseUpsample', 'FireModule', 'SegFast', 'SeparableConv',
           'SeparableTransposedConv', 'SparkModule', 'segfast', 'segfast_basic']

_STEM_CHANNELS = 64
# Encoder blocks 2-4 (block 1 is the stem convolution), SqueezeNet 1.1's fire modules 2-9:
# block  modules (squeeze, expand 1x1, expand 3x3)             out   resolution
# 1      3x3 conv stride 2, ReLU                                64   1/2   -> skip of decoder block 3
#        2x2 average pooling                                          1/4
# 2      (16, 64, 64), (16, 64, 64)                            128   1/4   -> skip of decoder block 2
#        2x2 average pooling                                          1/8
# 3      (32, 128, 128), (32, 128, 128)                        256   1/8   -> skip of decoder block 1
#        2x2 average pooling                                          1/16
# 4      (48, 192, 192), (48, 192, 192), (64, 256, 256) x 2    512   1/16
# decoder blocks 1-3: 2x up, concatenate the skip, 3x3 conv   256, 128, 64 at 1/8, 1/4, 1/2
# classifier 1x1 conv, bilinear 2x                               C   1
_ENCODER_BLOCKS: list[Sequence[tuple[int, int, int]]] = [
    ((16, 64, 64), (16, 64, 64)),
    ((32, 128, 128), (32, 128, 128)),
    ((48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)),
]


def _batch_norm_affine(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode batch norm as ``x * scale + shift`` per channel."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def _patches(image: torch.Tensor, height: int, width: int, k: int) -> torch.Tensor:
    """An upsampled (N, C, H k, W k) tensor as the view (N, H, k, W, k, C): pixel (h, w)'s k x k patch."""
    batch, channels = image.shape[:2]
    return image.permute(0, 2, 3, 1).view(batch, height, k, width, k, channels)


def _layout_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class _PatchProduct(torch.autograd.Function):
    """``out[n, c, h k + a, w k + b] = x[n, c, h, w] kernel[c, a, b] + bias[c, a, b]`` in ``x``'s dtype
    and memory format, one dense pass per patch position (a, b), backward likewise.

    Autograd of the broadcast product spent most of a training step on its strided reductions and on
    the in-place ReLU after it (a view of a reshape): this is 5 to 6 times faster, forward and
    backward (docs/BENCHMARKS.md). The output is a fresh tensor, so that the ReLU works in place.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        k = kernel.shape[-1]
        out = torch.empty((batch, channels, height * k, width * k), dtype=x.dtype, device=x.device,
                          memory_format=_layout_of(x))
        patches, pixels = _patches(out, height, width, k), x.permute(0, 2, 3, 1)
        kernel_x, bias_x = kernel.to(x.dtype), bias.to(x.dtype)
        for a in range(k):
            for b in range(k):
                torch.addcmul(bias_x[:, a, b], pixels, kernel_x[:, a, b], out=patches[:, :, a, :, b])
        ctx.save_for_backward(x, kernel)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, kernel = ctx.saved_tensors
        height, width, k = x.shape[2], x.shape[3], kernel.shape[-1]
        grad = _patches(grad.contiguous(memory_format=_layout_of(x)), height, width, k)
        pixels, kernel_x = x.permute(0, 2, 3, 1), kernel.to(grad.dtype)
        grad_x = None
        grad_kernel, grad_bias = torch.empty_like(kernel), torch.empty_like(kernel)
        for a in range(k):
            for b in range(k):
                patch = grad[:, :, a, :, b]
                grad_x = (patch * kernel_x[:, a, b] if grad_x is None
                          else grad_x.addcmul_(patch, kernel_x[:, a, b]))
                # a bf16 sum accumulates in float, then rounds, as a bf16 convolution's gradient does
                grad_kernel[:, a, b] = (patch * pixels).sum((0, 1, 2))
                grad_bias[:, a, b] = patch.sum((0, 1, 2))
        return grad_x.permute(0, 3, 1, 2), grad_kernel, grad_bias


class DepthwiseUpsample(nn.ConvTranspose2d):
    """A per-channel transposed convolution whose stride equals its kernel: every input pixel becomes a
    k x k patch, its value times the channel's k x k kernel, plus the channel's bias.

    The parameters and the numbers of ``nn.ConvTranspose2d(c, c, k, stride=k, groups=c)``, computed as
    that product (``_PatchProduct``): PyTorch's CPU kernels for a depth-wise transposed convolution
    (oneDNN's and the fallback) take 5 to 15 times as long at inference and about twice as long in
    training. Under autocast it computes in autocast's dtype, as a convolution does. ``forward`` can
    take an affine map of the input (``input_scale``, ``input_shift`` per channel), which the product
    absorbs exactly.
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__(channels, channels, kernel_size, stride=kernel_size, groups=channels)

    def forward(self, x: torch.Tensor, input_scale: torch.Tensor | None = None,
                input_shift: torch.Tensor | None = None) -> torch.Tensor:
        # reshape with the traced sizes (not unflatten), so that an ONNX export keeps the size free.
        batch, channels, height, width = x.shape
        k = self.kernel_size[0]
        kernel = self.weight.view(channels, k, k)
        bias = self.bias.view(channels, 1, 1).expand(channels, k, k)
        if input_scale is not None:
            # (s x + t) w + b = x (s w) + (t w + b): the shift becomes a bias per patch position.
            bias = torch.addcmul(bias, input_shift.view(channels, 1, 1), kernel)
            kernel = kernel * input_scale.view(channels, 1, 1)
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            device = x.device.type
            if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
                x = x.to(torch.get_autocast_dtype(device))  # as autocast runs a convolution
            return _PatchProduct.apply(x, kernel, bias)
        # A traced or compiled graph: the broadcast product, plain operators an exporter maps and a
        # compiler fuses.
        if _layout_of(x) == torch.channels_last:
            # Nearest upsampling first, so that the product is written in the output's order:
            # (N, H, k, W, k, C), channels last.
            kernel = kernel.permute(1, 2, 0).reshape(k, 1, k, channels)
            bias = bias.permute(1, 2, 0).reshape(k, 1, k, channels)
            patches = F.interpolate(x, scale_factor=float(k), mode='nearest').permute(0, 2, 3, 1)
            out = torch.addcmul(bias, patches.reshape(batch, height, k, width, k, channels), kernel)
            return out.reshape(batch, height * k, width * k, channels).permute(0, 3, 1, 2)
        # (N, C, H, 1, W, 1) times (C, 1, k, 1, k) is (N, C, H, k, W, k), the output in NCHW order.
        out = torch.addcmul(bias.reshape(channels, 1, k, 1, k), x.reshape(batch, channels, height, 1, width, 1),
                            kernel.reshape(channels, 1, k, 1, k))
        return out.reshape(batch, channels, height * k, width * k)


def _remove_padding_shift(out: torch.Tensor, taps: torch.Tensor) -> None:
    """Subtract, in place, what a 3x3 convolution with padding 1 added for the taps on its padding.

    ``taps[o, a, b]`` is what tap (a, b) adds to output channel ``o`` for a constant input: kernel
    row 0 and row 2 fall on the padding in the first and last output rows, columns 0 and 2 in the
    first and last columns; a corner tap is subtracted twice at its corner and added back once.
    """
    rows, cols = taps.sum(2), taps.sum(1)  # (O, 3): per kernel row, per kernel column
    out[..., 0, :] -= rows[:, 0, None]
    out[..., -1, :] -= rows[:, 2, None]
    out[..., :, 0] -= cols[:, 0, None]
    out[..., :, -1] -= cols[:, 2, None]
    out[..., 0, 0] += taps[:, 0, 0]
    out[..., 0, -1] += taps[:, 0, 2]
    out[..., -1, 0] += taps[:, 2, 0]
    out[..., -1, -1] += taps[:, 2, 2]


def _convolve(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv``'s convolution with other weights, on a CPU through oneDNN.

    PyTorch picks oneDNN itself except for a 1x1 convolution at batch < 16 on one thread, which it
    sends to its im2col path: 25 to 40 % slower for the decoder's 1x1 convolutions here, and those
    hold 4.3 of the network's 5.3 GFLOPs at 480x360 (docs/BENCHMARKS.md).
    """
    if (x.device.type == 'cpu' and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled('cpu') and not torch.compiler.is_compiling()):
        return torch.mkldnn_convolution(x, weight, bias, conv.padding, conv.stride, conv.dilation, conv.groups)
    return conv._conv_forward(x, weight, bias)


class ConvUnit(nn.Sequential):
    """Batch norm, convolution, ReLU: the order Section 3.1 gives for every convolution.

    ``transposed`` makes the convolution a transposed one with ``kernel_size == stride`` (upsampling).
    In eval mode the convolution absorbs the batch norm (an affine map per input channel: scale the
    weights, carry the shift through them into the bias), which saves a pass over the input. For a
    padded 3x3 convolution that alone would be wrong on the border, where the original reads the
    padding's zeros rather than the shift: those taps' shares are taken back out of the border.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, stride: int = 1,
                 groups: int = 1, transposed: bool = False) -> None:
        if transposed and groups == in_channels == out_channels and stride == kernel_size:
            conv = DepthwiseUpsample(in_channels, kernel_size)
        elif transposed:
            conv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=stride, groups=groups)
        else:
            conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                             padding=kernel_size // 2, groups=groups)
        super().__init__(nn.BatchNorm2d(in_channels), conv, nn.ReLU(inplace=True))
        plain_or_depthwise = groups == 1 or groups == in_channels == out_channels
        self.absorbs_norm = isinstance(conv, DepthwiseUpsample) or (
            not transposed and plain_or_depthwise and stride == 1 and kernel_size in (1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, conv, activation = self
        # A traced graph (ONNX export) keeps the plain layers: its exporter folds what it can itself.
        if self.training or not self.absorbs_norm or torch.jit.is_tracing():
            return activation(conv(norm(x)))
        scale, shift = _batch_norm_affine(norm)
        if isinstance(conv, DepthwiseUpsample):
            return activation(conv(x, scale, shift))
        # W (s x + t) + b = (W s) x + (W t + b); weight is (out, in / groups, k, k).
        per_input = (1, -1, 1, 1) if conv.groups == 1 else (-1, 1, 1, 1)
        taps = (conv.weight * shift.view(per_input)).sum(1)  # (out, k, k): the shift's share per tap
        out = _convolve(conv, x, conv.weight * scale.view(per_input), conv.bias + taps.sum((1, 2)))
        if conv.padding != (0, 0):
            _remove_padding_shift(out, taps)
        return activation(out)


class SeparableConv(nn.Sequential):
    """Depth-wise separable convolution (Section 3.2): a 3x3 per channel, then a 1x1 across channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvUnit(in_channels, in_channels, 3, groups=in_channels),
                         ConvUnit(in_channels, out_channels))


class SeparableTransposedConv(nn.Sequential):
    """Depth-wise separable transposed convolution (Section 3.3): a 2x2 stride-2 transposed
    convolution per channel, then a 1x1 across channels."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvUnit(in_channels, in_channels, 2, stride=2, groups=in_channels, transposed=True),
                         ConvUnit(in_channels, out_channels))


class FireModule(nn.Module):
    """SqueezeNet's fire module: a 1x1 squeeze, then a 1x1 and a 3x3 expand side by side, concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = ConvUnit(in_channels, squeeze)
        self.expand1x1 = ConvUnit(squeeze, expand1x1)
        self.expand3x3 = self.spatial_expand(squeeze, expand3x3)

    @staticmethod
    def spatial_expand(in_channels: int, out_channels: int) -> nn.Module:
        return ConvUnit(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


class SparkModule(FireModule):
    """Section 3.1: a fire module whose 3x3 expand is a depth-wise separable convolution."""

    spatial_expand = staticmethod(SeparableConv)


class DecoderBlock(nn.Module):
    """Upsamples 2x, concatenates the encoder map of that size, fuses with a 3x3 convolution."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, separable: bool) -> None:
        super().__init__()
        if separable:
            self.upsample = SeparableTransposedConv(in_channels, out_channels)
            self.fuse = SeparableConv(out_channels + skip_channels, out_channels)
        else:
            self.upsample = ConvUnit(in_channels, out_channels, 2, stride=2, transposed=True)
            self.fuse = ConvUnit(out_channels + skip_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.upsample(x), skip], dim=1))


class SegFast(SegmentationNet):
    """SegFast (``separable=True``) or SegFast-Basic: logits num_classes x H x W; H and W padded to 16."""

    size_divisor = 16
    # Channels last throughout: oneDNN's depth-wise 3x3 convolution is 4 to 10 times faster on NHWC
    # than on NCHW tensors (docs/BENCHMARKS.md), and every other layer keeps the format.
    memory_format = torch.channels_last

    def __init__(self, num_classes: int, *, separable: bool = True) -> None:
        super().__init__()
        fire = SparkModule if separable else FireModule
        self.stem = nn.Sequential(nn.Conv2d(3, _STEM_CHANNELS, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AvgPool2d(2, stride=2)

        channels = _STEM_CHANNELS
        skip_channels = [channels]
        self.encoder = nn.ModuleList()
        for settings in _ENCODER_BLOCKS:
            modules = []
            for squeeze, expand1x1, expand3x3 in settings:
                modules.append(fire(channels, squeeze, expand1x1, expand3x3))
                channels = expand1x1 + expand3x3
            self.encoder.append(nn.Sequential(*modules))
            skip_channels.append(channels)

        skip_channels.pop()  # the deepest map is the decoder's input, not a skip
        self.decoder = nn.ModuleList()
        for skip in reversed(skip_channels):
            self.decoder.append(DecoderBlock(channels, skip, skip, separable=separable))
            channels = skip
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x.contiguous(memory_format=self.memory_format))]
        for block in self.encoder:
            features.append(block(self.pool(features[-1])))
        x = features.pop()
        for block, skip in zip(self.decoder, reversed(features), strict=True):
            x = block(x, skip)
        return F.interpolate(self.classifier(x), scale_factor=2.0, mode='bilinear', align_corners=False)


@register_model('segfast')
def segfast(*, num_classes: int) -> SegFast:
    """SegFast: spark modules and depth-wise separable (transposed) convolutions."""
    return SegFast(num_classes, separable=True)


@register_model('segfast_basic')
def segfast_basic(*, num_classes: int) -> SegFast:
    """SegFast-Basic: the same network with fire modules and plain (transposed) convolutions."""
    return SegFast(num_classes, separable=False)
