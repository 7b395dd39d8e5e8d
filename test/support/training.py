"""A tiny registered network and recipe for training tests, and running seg-train in a subprocess."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.models import SegmentationNet, get_model_builder, register_model
from seg_ros.training.config import load_recipe

REPO = Path(__file__).resolve().parents[2]

TINY_NET = 'test_training_tiny_fcn'
TINY_UNPOOL_NET = 'test_training_tiny_unpool'


TINY_RECIPE = """
model: {name: %(net)s}
data: {dataset: folder, root: %(root)s, num_workers: 0}
augment: {crop_size: [48, 64], scale_range: [0.75, 1.25], hflip: true}
loss: {name: ce}
optimizer: {name: adam, lr: 0.02, weight_decay: 0.0}
scheduler: {name: onecycle}
train: {epochs: 10, batch_size: 2, seed: 3, deterministic: true, device: cpu, log_every: 4}
"""


class TinyFCN(SegmentationNet):
    """Two 3x3 convolutions and a classifier: enough for colour-coded classes, fast on a CPU."""

    size_divisor = 1

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Dropout2d(0.1), nn.Conv2d(width, num_classes, 1),
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyUnpoolNet(SegmentationNet):
    """A strided convolution, a max-pool whose indices a max-unpool reuses (as ENet and DSNet do), a
    classifier: the smallest graph with the index arithmetic that a compiler has to get right."""

    size_divisor = 4

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.middle = nn.Conv2d(width, width, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        pooled, indices = F.max_pool2d(x, 2, return_indices=True)
        x = F.max_unpool2d(self.middle(pooled), indices, 2, output_size=x.shape[-2:])
        return F.interpolate(self.classifier(x), scale_factor=2.0, mode='bilinear', align_corners=False)


def tiny_recipe_file(folder: Path, root: Path, net: str = TINY_NET) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / 'tiny.yaml'
    path.write_text(TINY_RECIPE % {'net': net, 'root': root})
    return path


def tiny_recipe(folder: Path, root: Path, *overrides: str, net: str = TINY_NET) -> dict:
    return load_recipe(tiny_recipe_file(folder, root, net), [f'output.dir={folder / "run"}', *overrides])


def train_command(recipe: Path, output: Path, *extra: str) -> list[str]:
    argv = [str(recipe), f'output.dir={output}', *extra]
    code = ('import sys; import test.support.training; from seg_ros.training.cli import train_main; '
            f'sys.exit(train_main({argv!r}))')
    return [sys.executable, '-c', code]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
            'OMP_NUM_THREADS': '1'}


try:
    get_model_builder(TINY_NET)
except KeyError:
    @register_model(TINY_NET)
    def tiny_fcn(*, num_classes: int, width: int = 16) -> TinyFCN:
        return TinyFCN(num_classes, width)

    @register_model(TINY_UNPOOL_NET)
    def tiny_unpool(*, num_classes: int) -> TinyUnpoolNet:
        return TinyUnpoolNet(num_classes)
