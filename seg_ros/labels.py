"""Class sets (names and colours) and the mappings that make different sets comparable.

A ``LabelSet`` is what a checkpoint carries about its classes. CamVid's 11 classes (SegNet
split, SegNet palette) and Cityscapes' 19 train ids (also used by BDD100K) are built in; a
checkpoint may carry any other set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ['CAMVID11', 'CITYSCAPES19', 'IGNORE_INDEX', 'ROAD11', 'LabelSet', 'common_label_set',
           'get_label_set', 'list_label_sets', 'mapping_table']

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

ROAD11 = LabelSet(
    'road11',
    ('sky', 'building', 'pole', 'road', 'sidewalk', 'vegetation', 'sign', 'fence', 'vehicle',
     'pedestrian', 'cyclist'),
    CAMVID11.colors,
)
"""The common set that models trained on different datasets are compared in: CamVid's 11 groups."""

# Source class -> ROAD11 class, following how the SegNet 11-class CamVid split groups the 32
# original CamVid classes (Wall into Building, TrafficLight into SignSymbol, Truck_Bus and Train
# into Car, MotorcycleScooter into Bicyclist). Classes with no counterpart map to IGNORE_INDEX.
_TO_ROAD11: dict[str, dict[str, str | None]] = {
    'camvid11': {
        'sky': 'sky', 'building': 'building', 'pole': 'pole', 'road': 'road', 'sidewalk': 'sidewalk',
        'tree': 'vegetation', 'sign_symbol': 'sign', 'fence': 'fence', 'car': 'vehicle',
        'pedestrian': 'pedestrian', 'bicyclist': 'cyclist',
    },
    'cityscapes19': {
        'road': 'road', 'sidewalk': 'sidewalk', 'building': 'building', 'wall': 'building',
        'fence': 'fence', 'pole': 'pole', 'traffic_light': 'sign', 'traffic_sign': 'sign',
        'vegetation': 'vegetation', 'terrain': None, 'sky': 'sky', 'person': 'pedestrian',
        'rider': 'cyclist', 'car': 'vehicle', 'truck': 'vehicle', 'bus': 'vehicle', 'train': 'vehicle',
        'motorcycle': 'cyclist', 'bicycle': 'cyclist',
    },
    'road11': {name: name for name in ROAD11.names},
}

_BUILTIN = {s.name: s for s in (CAMVID11, CITYSCAPES19, ROAD11)}


def get_label_set(name: str) -> LabelSet:
    try:
        return _BUILTIN[name]
    except KeyError:
        raise KeyError(f'unknown label set {name!r}; built in: {", ".join(sorted(_BUILTIN))}') from None


def list_label_sets() -> list[str]:
    return sorted(_BUILTIN)


def common_label_set(sets: list[LabelSet]) -> LabelSet:
    """The set several label sets can be compared in: the set itself when all agree, else ROAD11."""
    if all(s == sets[0] for s in sets):
        return sets[0]
    missing = [s.name for s in sets if s.name not in _TO_ROAD11 or _BUILTIN.get(s.name) != s]
    if missing:
        raise ValueError(f'no mapping to a common label set for {", ".join(missing)}; '
                         f'mappings exist for {", ".join(sorted(_TO_ROAD11))}')
    return ROAD11


def mapping_table(source: LabelSet, target: LabelSet) -> np.ndarray:
    """(256,) uint8 lookup: ``table[mask]`` maps a ``source`` mask into ``target`` indices.

    Unmapped classes and ``IGNORE_INDEX`` map to ``IGNORE_INDEX``.
    """
    table = np.full(256, IGNORE_INDEX, np.uint8)
    if source == target:
        table[: source.num_classes] = np.arange(source.num_classes)
        return table
    if target != ROAD11 or source.name not in _TO_ROAD11 or _BUILTIN.get(source.name) != source:
        raise ValueError(f'no mapping from label set {source.name!r} to {target.name!r}')
    for index, name in enumerate(source.names):
        common = _TO_ROAD11[source.name][name]
        if common is not None:
            table[index] = ROAD11.names.index(common)
    return table
