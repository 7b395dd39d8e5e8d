"""Class sets (names and colours) and the mappings that make different sets comparable.

A ``LabelSet`` is what a checkpoint carries about its classes. CamVid's 11 classes (SegNet
split, SegNet palette) and Cityscapes' 19 train ids (also used by BDD100K) are built in; a
checkpoint may carry any other set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ['CAMVID11', 'CITYSCAPES19', 'IGNORE_INDEX', 'LabelSet', 'get_label_set', 'list_label_sets']

IGNORE_INDEX = 255
"""Label value that losses and metrics skip, and that masks use for 'no prediction'."""


@dataclass(frozen=True)
class LabelSet:
    """An ordered set of classes: index i is ``names[i]`` drawn in ``colors[i]`` (RGB)."""

    name: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.colors):
            raise ValueError(
                f'label set {self.name!r}: {len(self.names)} names but {len(self.colors)} colours'
            )
        if not 0 < len(self.names) < IGNORE_INDEX:
            raise ValueError(f'label set {self.name!r}: needs 1..254 classes, got {len(self.names)}')
        for color in self.colors:
            if len(color) != 3 or not all(0 <= c <= 255 for c in color):
                raise ValueError(f'label set {self.name!r}: colour {color} is not an RGB triple 0..255')

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup table: class index -> RGB, black for ignore and unused values."""
        table = np.zeros((256, 3), np.uint8)
        table[: self.num_classes] = np.asarray(self.colors, np.uint8)
        return table

    def to_dict(self) -> dict:
        return {'name': self.name, 'names': list(self.names), 'colors': [list(c) for c in self.colors]}

    @classmethod
    def from_dict(cls, data: dict) -> LabelSet:
        return cls(
            name=str(data['name']),
            names=tuple(str(n) for n in data['names']),
            colors=tuple(tuple(int(v) for v in c) for c in data['colors']),
        )

    @classmethod
    def generic(cls, num_classes: int) -> LabelSet:
        """Names ``class_0..`` with well separated colours, for models trained on unnamed data."""
        rng = np.random.default_rng(num_classes)
        colors = rng.integers(40, 256, size=(num_classes, 3))
        return cls(
            f'generic{num_classes}',
            tuple(f'class_{i}' for i in range(num_classes)),
            tuple(tuple(int(v) for v in c) for c in colors),
        )


CAMVID11 = LabelSet(
    'camvid11',
    ('sky', 'building', 'pole', 'road', 'sidewalk', 'tree', 'sign_symbol', 'fence', 'car',
     'pedestrian', 'bicyclist'),
    ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
     (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
)

CITYSCAPES19 = LabelSet(
    'cityscapes19',
    ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic_light', 'traffic_sign',
     'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
     'motorcycle', 'bicycle'),
    ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
     (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
     (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
     (0, 80, 100), (0, 0, 230), (119, 11, 32)),
)

_BUILTIN = {s.name: s for s in (CAMVID11, CITYSCAPES19)}


def get_label_set(name: str) -> LabelSet:
    try:
        return _BUILTIN[name]
    except KeyError:
        raise KeyError(f'unknown label set {name!r}; built in: {", ".join(sorted(_BUILTIN))}') from None


def list_label_sets() -> list[str]:
    return sorted(_BUILTIN)
