"""Small networks with known behaviour for the preparation and backend tests, and a test picture."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from seg_ros.models import SegmentationNet


class TinyNet(SegmentationNet):
    """The wirings of the real networks, small: batch-norms after a convolution and after a
    transposed one (folded into them), before an unpadded grouped convolution (folded into it, as
    in SegFast), after a concatenation and before a padded convolution (both kept)."""

    size_divisor = 2

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.BatchNorm2d(5), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.merge_bn = nn.BatchNorm2d(8)
        self.up = nn.Sequential(nn.ConvTranspose2d(8, 6, 2, stride=2), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Sequential(nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1, groups=2), nn.ReLU())
        self.smooth = nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, num_classes, 3, padding=1))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x = self.up(self.merge_bn(torch.cat([self.down(x), self.pool(x)], dim=1)))
        return self.smooth(self.head(x))


def blocks(height: int = 48, width: int = 64) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    for index, band in enumerate(np.array_split(np.arange(width), 3)):
        image[:, band, index] = 200
    return image

