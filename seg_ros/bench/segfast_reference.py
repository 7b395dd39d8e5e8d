"""The SegFast authors' PyTorch network, re-written here only to time this package's SegFast against it.

``python -m seg_ros.bench.segfast_reference [--sizes 480x360 224x224] [--threads 1] [--rounds 30]``

The authors' code (DVLP-CMATERJU/SegFast, ``models/segfast.py`` and ``models/segfast_basic.py``) has
another layer table than the paper's Table 5, which ``seg_ros.models.segfast`` follows (see its
docstring): a stem convolution (depth-wise separable for SegFast) with C = 64 filters and stride 2;
three encoder blocks of a 2x2 average pool and two spark modules (squeeze C/2, expands C and C) at
C = 64, 128, 256; three decoder blocks, each a 1x1 convolution to C then a 3x3 stride-2 depth-wise
transposed convolution (padding 1, so one pixel short, padded at the bottom and right), the encoder
map of that size concatenated, and a spark module (squeeze C/2, expands C/2 and C/2); a 1x1
classifier at 1/2 and a 2x bilinear upsampling with aligned corners. Every convolution is followed
by batch norm and ReLU (the paper's order is batch norm first). SegFast-Basic replaces every
depth-wise separable convolution by a plain one and the decoder's pair by one plain transposed
convolution. Parameters at 19 classes: 627,287 and 2,851,763.

This module is a timing reference, not a network of the package: it is not registered, has no
weights and is not exported. The comparison prints, for each network and size, the median and the
fastest of ``--rounds`` batch-1 fp32 eager forwards, timed in turns (ours, theirs, ours, ...), so
that a change of load on a shared machine affects both alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.bench.forward import count_flops
from seg_ros.inference.preparation import latencies_ms
from seg_ros.labels import CAMVID11
from seg_ros.models import build_model, count_parameters
from seg_ros.models.segfast import SegFast
from seg_ros.reporting import machine_info, markdown_table
from seg_ros.vocabulary import format_size, size_argument

__all__ = ['AuthorsSegFast', 'AuthorsStyleSegFast', 'main', 'time_side_by_side']

_WIDTH = 64  # the authors' C


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, *, stride: int = 1,
                  groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                      groups=groups),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _spatial_conv(in_channels: int, out_channels: int, *, stride: int = 1, separable: bool) -> nn.Sequential:
    """A 3x3 convolution: depth-wise then 1x1 (the authors' ``DwConv2d``), or plain (``BasicConv2d``)."""
    if separable:
        return nn.Sequential(*_conv_bn_relu(in_channels, in_channels, 3, stride=stride, groups=in_channels),
                             *_conv_bn_relu(in_channels, out_channels))
    return nn.Sequential(*_conv_bn_relu(in_channels, out_channels, 3, stride=stride))


def _upsampling(in_channels: int, out_channels: int, *, separable: bool) -> nn.Sequential:
    """3x3 stride-2 transposed convolution: 1x1 then depth-wise (``DwConvTranspose2d``), or plain."""
    layers: list[nn.Module] = []
    if separable:
        layers += _conv_bn_relu(in_channels, out_channels)
        in_channels = out_channels
    layers += [nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1,
                                  groups=out_channels if separable else 1),
               nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class _Spark(nn.Module):
    """The authors' ``Spark_Module``: 1x1 squeeze, then 1x1 and 3x3 expands, concatenated."""

    def __init__(self, in_channels: int, squeeze: int, expand: int, *, separable: bool,
                 expand3x3: int | None = None) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(*_conv_bn_relu(in_channels, squeeze))
        self.expand1x1 = nn.Sequential(*_conv_bn_relu(squeeze, expand))
        self.expand3x3 = _spatial_conv(squeeze, expand if expand3x3 is None else expand3x3, separable=separable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], dim=1)


class _UpBlock(nn.Module):
    """The authors' ``Up_Block(C)``: 2C -> C at twice the size, the bridge concatenated, a spark module."""

    def __init__(self, channels: int, *, separable: bool) -> None:
        super().__init__()
        self.upsample = _upsampling(2 * channels, channels, separable=separable)
        self.fuse = _Spark(2 * channels, channels // 2, channels // 2, separable=separable)

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        x = F.pad(x, (0, bridge.shape[3] - x.shape[3], 0, bridge.shape[2] - x.shape[2]))
        return self.fuse(torch.cat([x, bridge], dim=1))


class AuthorsSegFast(nn.Module):
    """The authors' ``SegFast(C=64, noc)`` (``separable=True``) or ``SegFast_Basic(C=64, noc)``."""

    def __init__(self, num_classes: int, *, separable: bool = True) -> None:
        super().__init__()
        c = _WIDTH
        self.stem = _spatial_conv(3, c, stride=2, separable=separable)
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.AvgPool2d(2, 2), _Spark(width, width // 2, width, separable=separable),
                          _Spark(2 * width, width // 2, width, separable=separable))
            for width in (c, 2 * c, 4 * c))
        self.decoder = nn.ModuleList(_UpBlock(width, separable=separable) for width in (4 * c, 2 * c, c))
        self.classifier = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for block in self.encoder:
            features.append(block(features[-1]))
        x = features.pop()
        for block, bridge in zip(self.decoder, reversed(features), strict=True):
            x = block(x, bridge)
        return F.interpolate(self.classifier(x), scale_factor=2.0, mode='bilinear', align_corners=True)


class _Decoder(nn.Module):
    """This package's decoder block (2x2 stride-2 upsampling, skip, 3x3) in the authors' layers."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, separable: bool) -> None:
        super().__init__()
        if separable:
            self.upsample = nn.Sequential(
                nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2, groups=in_channels),
                nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), *_conv_bn_relu(in_channels, out_channels))
        else:
            self.upsample = nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2),
                                          nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.fuse = _spatial_conv(out_channels + skip_channels, out_channels, separable=separable)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.upsample(x), skip], dim=1))


class AuthorsStyleSegFast(SegFast):
    """This package's layer table (``seg_ros.models.segfast``: SqueezeNet 1.1's fire sizes, 2x2
    upsampling, skips at 1/8, 1/4, 1/2) built as the authors' code builds its layers: NCHW tensors,
    every convolution followed by batch norm and ReLU, ``nn.ConvTranspose2d`` for the upsampling.

    The same convolutions and FLOPs as ``segfast`` / ``segfast_basic`` (and the same padding of the
    input to a multiple of 16); batch norm after instead of before each convolution, so a few
    hundred parameters more or less.
    """

    memory_format = torch.contiguous_format

    def __init__(self, num_classes: int, *, separable: bool = True) -> None:
        super().__init__(num_classes, separable=separable)
        # Each fire or spark module and each decoder block rebuilt at its sizes in the authors' layers.
        for block in self.encoder:
            for index, fire in enumerate(block):
                block[index] = _Spark(fire.squeeze[1].in_channels, fire.squeeze[1].out_channels,
                                      fire.expand1x1[1].out_channels, separable=separable,
                                      expand3x3=_convolutions(fire.expand3x3)[-1].out_channels)
        for index, decoder in enumerate(self.decoder):
            upsampling, fusion = _convolutions(decoder.upsample), _convolutions(decoder.fuse)
            out_channels = fusion[-1].out_channels
            self.decoder[index] = _Decoder(upsampling[0].in_channels, fusion[0].in_channels - out_channels,
                                           out_channels, separable=separable)


def _convolutions(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def time_side_by_side(networks: dict[str, nn.Module], size: tuple[int, int], rounds: int) -> list[dict]:
    """Median and fastest ms of ``rounds`` batch-1 forwards of each network, timed in turns."""
    x = torch.randn(1, 3, *size)
    times = {name: [] for name in networks}
    with torch.inference_mode():
        for network in networks.values():
            latencies_ms(network, [x], iterations=1, warmup=2)
        for _ in range(rounds):
            for name, network in networks.items():
                times[name].extend(latencies_ms(network, [x], iterations=1, warmup=0))
    return [{'network': name, 'size': format_size(size), 'parameters': count_parameters(network),
             'gflops': round(count_flops(network, size) / 1e9, 2),
             'median_ms': round(float(np.median(times[name])), 1), 'fastest_ms': round(min(times[name]), 1)}
            for name, network in networks.items()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m seg_ros.bench.segfast_reference',
                                     description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', nargs='+', type=size_argument, default=[(360, 480), (224, 224)], metavar='WxH',
                        help='input sizes (default: 480x360 224x224)')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default: %(default)s)')
    parser.add_argument('--rounds', type=int, default=30, help='timed forwards per network (default: %(default)s)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes = CAMVID11.num_classes
    rows = []
    for separable, ours in ((True, 'segfast'), (False, 'segfast_basic')):
        networks = {ours: build_model(ours, num_classes=classes).eval(),
                    f'{ours} table, authors\' layers': AuthorsStyleSegFast(classes, separable=separable).eval(),
                    f'authors\' {ours} (their table)': AuthorsSegFast(classes, separable=separable).eval()}
        for size in args.sizes:
            rows += time_side_by_side(networks, size, args.rounds)
    info = machine_info(torch.device('cpu'))
    print(f'fp32 eager, batch 1, {args.rounds} rounds; {info["cpu"]}, {info["torch_threads"]} torch thread(s), '
          f'torch {info["torch"]}, load average {info["load_average_1_5_15"]}')
    print(markdown_table(rows, {'network': 'network', 'size': 'WxH', 'parameters': 'parameters',
                                'gflops': 'GFLOPs', 'median_ms': 'median ms', 'fastest_ms': 'fastest ms'}))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
