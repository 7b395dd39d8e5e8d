"""Test helpers: a deterministic network whose output is known from its input, and checkpoints of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from seg_ros.checkpoint import Checkpoint, save_checkpoint
from seg_ros.labels import LabelSet
from seg_ros.models import SegmentationNet, get_model_builder, register_model

CHANNEL_NET = 'test_channel_argmax'
CHANNEL_LABELS = LabelSet('rgb3', ('red', 'green', 'blue'), ((255, 0, 0), (0, 255, 0), (0, 0, 255)))


class ChannelArgmaxNet(SegmentationNet):
    """Class = the dominant colour channel: a pure red pixel is class 0, green 1, blue 2.

    A 1x1 convolution with identity weights followed by a batch-norm that only scales, so the
    expected mask of any image is exact and batch-norm folding is exercised too.
    """

    size_divisor = 1

    def __init__(self, num_classes: int = 3, sharpness: float = 4.0) -> None:
        super().__init__()
        if num_classes != 3:
            raise ValueError('ChannelArgmaxNet has exactly 3 classes')
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bn.weight.fill_(sharpness)
            self.bn.bias.zero_()

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _register() -> None:
    try:
        get_model_builder(CHANNEL_NET)
    except KeyError:
        @register_model(CHANNEL_NET)
        def test_channel_argmax(*, num_classes: int = 3, sharpness: float = 4.0) -> ChannelArgmaxNet:
            return ChannelArgmaxNet(num_classes, sharpness)


_register()


def channel_checkpoint(path: Path, input_size: tuple[int, int] = (48, 64)) -> Path:
    """A checkpoint of ChannelArgmaxNet, with zero mean and unit std so colours map directly."""
    model = ChannelArgmaxNet().eval()
    ckpt = Checkpoint.from_model(model, CHANNEL_NET, CHANNEL_LABELS, input_size=input_size,
                                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                 meta={'purpose': 'tests'})
    return save_checkpoint(ckpt, path)


def expected_channel_mask(rgb: np.ndarray) -> np.ndarray:
    """The exact mask ChannelArgmaxNet gives for an RGB uint8 image (ties go to the lower index)."""
    return torch.from_numpy(rgb).permute(2, 0, 1).float().argmax(dim=0).to(torch.uint8).numpy()


def randomise_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so eval-mode comparisons are not of identity batch norms."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def output_shapes(model: nn.Module, layers: list[nn.Module], x: torch.Tensor, **options) -> list[tuple]:
    """(channels, height, width) of each layer's output (first item where a layer returns a tuple)."""
    shapes = []

    def record(module, inputs, output):
        output = output[0] if isinstance(output, tuple) else output
        shapes.append(tuple(output.shape[1:]))

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        with torch.no_grad():
            model(x, **options)
    finally:
        for handle in handles:
            handle.remove()
    return shapes
