"""Readers for the road-scene datasets in the layouts their authors distribute, plus a generic folder.

Every reader pairs image and label files once, at construction (``.files``), and decodes them
with OpenCV on access: images as HxWx3 uint8 RGB, labels as HxW uint8 train ids with 255 for
ignore. Stored label values are translated through a per-dataset table; a stored value that the
dataset's encoding does not know raises ``DatasetError`` naming the file (``validate_dataset``
lists every such file at once). A stored 255 always means ignore.

>>> from seg_ros.data import build_dataset, validate_dataset
>>> train = build_dataset('camvid', '/data/camvid', 'train')
>>> image, label = train[0]
>>> validate_dataset(train)
[]
"""

from __future__ import annotations

import inspect
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from torch.utils.data import Dataset

from seg_ros.labels import CAMVID11, CITYSCAPES19, IGNORE_INDEX, LabelSet

__all__ = ['BDD100K', 'CamVid', 'Cityscapes', 'DatasetError', 'FolderDataset', 'MapillaryVistas',
           'SegmentationDataset', 'SynthiaRandCityscapes', 'build_dataset', 'list_datasets',
           'register_dataset', 'validate_dataset']

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
_INVALID = -1  # id-table entry for stored values outside the dataset's encoding


class DatasetError(ValueError):
    """A dataset that cannot be read as asked; the message names the file or folder and the reason."""


def _lookup_table(mapping: dict[int, int] | Sequence[int]) -> np.ndarray:
    """Lookup table stored value -> train id (256 entries, ``_INVALID`` for unknown values).

    ``mapping`` is a dict or a sequence indexed by stored value; 255 always maps to ignore.
    """
    items = mapping.items() if isinstance(mapping, dict) else enumerate(mapping)
    table = np.full(256, _INVALID, np.int16)
    for stored, train_id in items:
        table[stored] = train_id
    table[IGNORE_INDEX] = IGNORE_INDEX
    return table


def _read(path: Path, flags: int, kind: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f'{kind} {path}: missing')
    array = cv2.imread(str(path), flags)
    if array is None:
        raise DatasetError(f'{kind} {path}: unreadable (not an image OpenCV can decode)')
    return array


def _indices_from_colors(bgr: np.ndarray, colors: Sequence[tuple[int, int, int]], path: Path) -> np.ndarray:
    """Index of each pixel's RGB colour in ``colors``; a colour not among them is an error.

    Colour and palette label PNGs both land here: OpenCV expands palettes to colours on reading.
    """
    class_codes = np.asarray([(r << 16) | (g << 8) | b for r, g, b in colors], np.int32)
    if len(np.unique(class_codes)) != len(class_codes):
        raise DatasetError(f'label {path}: is colour-coded but the class colours are not unique')
    bgr = bgr[..., :3].astype(np.int32)
    codes = (bgr[..., 2] << 16) | (bgr[..., 1] << 8) | bgr[..., 0]
    order = np.argsort(class_codes)
    indices = order[np.searchsorted(class_codes[order], codes).clip(max=len(order) - 1)]
    unknown = class_codes[indices] != codes
    if unknown.any():
        unknown_codes = np.unique(codes[unknown]).tolist()
        shown = ', '.join(str((c >> 16, (c >> 8) & 255, c & 255)) for c in unknown_codes[:4])
        more = ', ...' if len(unknown_codes) > 4 else ''
        raise DatasetError(f'label {path}: has colours {shown}{more} that are no class colour')
    return indices


def _pair(images: Sequence[Path], label_for: Callable[[Path], Path]) -> list[tuple[Path, Path]]:
    """(image, label) pairs in image order; a label that does not exist is kept for validation to report."""
    return [(image, label_for(image)) for image in sorted(images)]


def _images_in(folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes]


def _require_dir(folder: Path, what: str) -> Path:
    if not folder.is_dir():
        raise DatasetError(f'{what}: no folder {folder}')
    return folder


class SegmentationDataset(Dataset, ABC):
    """Base class: pairs files once (``find_files``) and decodes them on access.

    Subclasses set ``label_set`` and ``id_table`` (stored label value -> train id) and implement
    ``find_files``; datasets whose labels are not single-channel class indices override
    ``stored_to_ids``.
    """

    name = 'dataset'
    label_set: LabelSet
    id_table: np.ndarray

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        _require_dir(self.root, f'{self.name} root')
        self.files: list[tuple[Path, Path]] = self.find_files()
        if not self.files:
            raise DatasetError(f'{self.name} split {split!r}: no images found under {self.root}')

    @abstractmethod
    def find_files(self) -> list[tuple[Path, Path]]:
        """(image, label) path pairs of ``self.split``."""

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image_path, label_path = self.files[index]
        image = self.read_image(image_path)
        label = self.read_label(label_path)
        if image.shape[:2] != label.shape:
            raise DatasetError(_size_mismatch(image_path, image, label_path, label))
        if self.transform is not None:
            return self.transform(image, label)
        return image, label

    def __repr__(self) -> str:
        return f'{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, frames={len(self)})'

    def read_image(self, path: Path) -> np.ndarray:
        """HxWx3 uint8 RGB."""
        # The stored pixel grid, as the labels were drawn on it: no EXIF rotation.
        bgr = _read(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, 'image')
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def read_label(self, path: Path) -> np.ndarray:
        """HxW uint8 train ids, 255 = ignore."""
        stored_ids = self.stored_to_ids(_read(path, cv2.IMREAD_UNCHANGED, 'label'), path)
        table = self.id_table
        if stored_ids.dtype == np.uint8:
            train_ids = table[stored_ids]
        else:
            in_table = (stored_ids >= 0) & (stored_ids < len(table))
            train_ids = np.where(in_table, table[np.where(in_table, stored_ids, 0)], _INVALID)
        invalid = train_ids == _INVALID
        if invalid.any():
            values = np.unique(stored_ids[invalid])
            shown = ', '.join(str(v) for v in values[:8]) + (', ...' if len(values) > 8 else '')
            raise DatasetError(f'label {path}: has values {shown} that are neither a class of '
                               f'{self.label_set.name} nor ignore')
        return train_ids.astype(np.uint8)

    def stored_to_ids(self, stored: np.ndarray, path: Path) -> np.ndarray:
        """The label file's pixels as stored class ids (HxW integers); default: a one-channel image."""
        if stored.ndim == 3 and stored.shape[2] == 1:
            stored = stored[..., 0]
        if stored.ndim != 2:
            raise DatasetError(f'label {path}: expected a single-channel class-index image, '
                               f'got {stored.shape[2]} channels (a colour rendering?)')
        return stored


def _size_mismatch(image_path: Path, image: np.ndarray, label_path: Path, label: np.ndarray) -> str:
    return (f'label {label_path}: size {label.shape[1]}x{label.shape[0]} differs from image '
            f'{image_path} ({image.shape[1]}x{image.shape[0]})')


_DATASETS: dict[str, type[SegmentationDataset]] = {}


def register_dataset(name: str) -> Callable[[type[SegmentationDataset]], type[SegmentationDataset]]:
    """Class decorator registering a reader under ``name``; a name can be registered once."""

    def decorator(cls: type[SegmentationDataset]) -> type[SegmentationDataset]:
        if name in _DATASETS:
            raise ValueError(f'dataset name {name!r} is already registered (by {_DATASETS[name].__name__})')
        cls.name = name
        _DATASETS[name] = cls
        return cls

    return decorator


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(name: str, root: str | os.PathLike, split: str, transform: Callable | None = None,
                  **options: Any) -> SegmentationDataset:
    """The reader registered as ``name`` over ``root``'s ``split``.

    ``options`` are the reader's own keyword-only arguments (``cityscapes``: ``annotations``).
    """
    try:
        cls = _DATASETS[name]
    except KeyError:
        raise DatasetError(f'unknown dataset {name!r}; available: {", ".join(list_datasets())}') from None
    accepted = sorted(p.name for p in inspect.signature(cls).parameters.values()
                      if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(f'dataset {name!r} does not take option(s) {", ".join(unknown)}; '
                           f'it takes: {", ".join(accepted) or "no options"}')
    return cls(root, split, transform, **options)


def validate_dataset(dataset: SegmentationDataset, *, threads: int | None = None) -> list[str]:
    """Every problem found, one string per file: missing, unreadable, wrong size, unknown label values.

    Decodes every image and label (a truncated or corrupt file only shows when decoded), on
    ``threads`` threads (default: one per CPU, at most 8); OpenCV decodes without holding the GIL.
    """

    def check(pair: tuple[Path, Path]) -> list[str]:
        problems, decoded = [], []
        for read, path in zip((dataset.read_image, dataset.read_label), pair, strict=True):
            try:
                decoded.append(read(path))
            except DatasetError as exc:
                problems.append(str(exc))
        if len(decoded) == 2 and decoded[0].shape[:2] != decoded[1].shape:
            problems.append(_size_mismatch(pair[0], decoded[0], pair[1], decoded[1]))
        return problems

    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        return [problem for problems in pool.map(check, dataset.files) for problem in problems]


@register_dataset('camvid')
class CamVid(SegmentationDataset):
    """CamVid, SegNet's 11-class version (480x360)::

        root/<split>.txt           lines 'image_path label_path', relative to root
        root/<split>/images/*.png|jpg
        root/<split>/labels/*.png  uint8 class index 0..10, 11 = void (read as ignore)
    """

    label_set = CAMVID11
    id_table = _lookup_table({**{i: i for i in range(11)}, 11: IGNORE_INDEX})

    def find_files(self) -> list[tuple[Path, Path]]:
        list_file = self.root / f'{self.split}.txt'
        if not list_file.is_file():
            known = sorted(p.stem for p in self.root.glob('*.txt'))
            raise DatasetError(f'camvid split {self.split!r}: list file {list_file} not found '
                               f'(splits here: {", ".join(known) or "none"})')
        files = []
        for number, line in enumerate(list_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise DatasetError(f'{list_file}:{number}: expected "image label", got {line!r}')
            files.append((self.root / fields[0], self.root / fields[1]))
        return files


# Cityscapes labelId -> trainId (cityscapesScripts helpers/labels.py); the rest is ignored.
_CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


# Cityscapes annotation sets -> their folder, which is also the label files' suffix.
_CITYSCAPES_ANNOTATIONS = {'fine': 'gtFine', 'coarse': 'gtCoarse'}


@register_dataset('cityscapes')
class Cityscapes(SegmentationDataset):
    """Cityscapes, 19 train ids, from the fine (default) or the coarse annotations::

        root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
        root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png       label ids 0..33
        root/gtCoarse/<split>/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png   label ids 0..33

    ``annotations='fine'`` reads gtFine (splits train, val, test); ``annotations='coarse'`` reads
    gtCoarse (splits train, val and train_extra, whose 19,998 frames have coarse labels only).
    Label ids become the official train ids; the 15 ids without one are ignored.
    """

    label_set = CITYSCAPES19
    id_table = _lookup_table({i: _CITYSCAPES_TRAIN_IDS.get(i, IGNORE_INDEX) for i in range(34)})

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None, *,
                 annotations: str = 'fine') -> None:
        if annotations not in _CITYSCAPES_ANNOTATIONS:
            raise DatasetError(f'cityscapes annotations {annotations!r}: expected one of '
                               f'{", ".join(_CITYSCAPES_ANNOTATIONS)}')
        self.annotations = annotations
        super().__init__(root, split, transform)

    def find_files(self) -> list[tuple[Path, Path]]:
        folder = _CITYSCAPES_ANNOTATIONS[self.annotations]
        where = f'cityscapes split {self.split!r} ({self.annotations} annotations)'
        image_dir = _require_dir(self.root / 'leftImg8bit' / self.split, where)
        label_dir = _require_dir(self.root / folder / self.split, where)

        def label_for(image: Path) -> Path:
            stem = image.name.removesuffix('_leftImg8bit.png')
            return label_dir / image.parent.name / f'{stem}_{folder}_labelIds.png'

        return _pair(list(image_dir.glob('*/*_leftImg8bit.png')), label_for)


@register_dataset('bdd100k')
class BDD100K(SegmentationDataset):
    """BDD100K semantic segmentation (10K images, Cityscapes' 19 train ids, 255 ignore).

    Current release (root is the unpacked ``bdd100k`` folder)::

        root/images/10k/<split>/<name>.jpg
        root/labels/sem_seg/masks/<split>/<name>.png

    Older release::

        root/seg/images/<split>/<name>.jpg
        root/seg/labels/<split>/<name>_train_id.png
    """

    label_set = CITYSCAPES19
    id_table = _lookup_table(range(19))

    def find_files(self) -> list[tuple[Path, Path]]:
        where = f'bdd100k split {self.split!r}'
        current = self.root / 'images' / '10k' / self.split
        older = self.root / 'seg' / 'images' / self.split
        if current.is_dir():
            label_dir = _require_dir(self.root / 'labels' / 'sem_seg' / 'masks' / self.split, where)
            return _pair(_images_in(current, ('.jpg',)), lambda image: label_dir / f'{image.stem}.png')
        if older.is_dir():
            label_dir = _require_dir(self.root / 'seg' / 'labels' / self.split, where)
            return _pair(_images_in(older, ('.jpg',)), lambda image: label_dir / f'{image.stem}_train_id.png')
        raise DatasetError(f'{where}: neither {current} nor {older} exists')


def _snake_case(text: str) -> str:
    return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_')


# Mapillary Vistas v1.2 (config_v1.2.json): the 65 evaluated classes in stored order; stored id 65
# is 'Unlabeled' (black), which is ignored.
_VISTAS_V12 = (
    ('Bird', (165, 42, 42)), ('Ground Animal', (0, 192, 0)), ('Curb', (196, 196, 196)),
    ('Fence', (190, 153, 153)), ('Guard Rail', (180, 165, 180)), ('Barrier', (90, 120, 150)),
    ('Wall', (102, 102, 156)), ('Bike Lane', (128, 64, 255)), ('Crosswalk - Plain', (140, 140, 200)),
    ('Curb Cut', (170, 170, 170)), ('Parking', (250, 170, 160)), ('Pedestrian Area', (96, 96, 96)),
    ('Rail Track', (230, 150, 140)), ('Road', (128, 64, 128)), ('Service Lane', (110, 110, 110)),
    ('Sidewalk', (244, 35, 232)), ('Bridge', (150, 100, 100)), ('Building', (70, 70, 70)),
    ('Tunnel', (150, 120, 90)), ('Person', (220, 20, 60)), ('Bicyclist', (255, 0, 0)),
    ('Motorcyclist', (255, 0, 100)), ('Other Rider', (255, 0, 200)),
    ('Lane Marking - Crosswalk', (200, 128, 128)), ('Lane Marking - General', (255, 255, 255)),
    ('Mountain', (64, 170, 64)), ('Sand', (230, 160, 50)), ('Sky', (70, 130, 180)),
    ('Snow', (190, 255, 255)), ('Terrain', (152, 251, 152)), ('Vegetation', (107, 142, 35)),
    ('Water', (0, 170, 30)), ('Banner', (255, 255, 128)), ('Bench', (250, 0, 30)),
    ('Bike Rack', (100, 140, 180)), ('Billboard', (220, 220, 220)), ('Catch Basin', (220, 128, 128)),
    ('CCTV Camera', (222, 40, 40)), ('Fire Hydrant', (100, 170, 30)), ('Junction Box', (40, 40, 40)),
    ('Mailbox', (33, 33, 33)), ('Manhole', (100, 128, 160)), ('Phone Booth', (142, 0, 0)),
    ('Pothole', (70, 100, 150)), ('Street Light', (210, 170, 100)), ('Pole', (153, 153, 153)),
    ('Traffic Sign Frame', (128, 128, 128)), ('Utility Pole', (0, 0, 80)),
    ('Traffic Light', (250, 170, 30)), ('Traffic Sign (Back)', (192, 192, 192)),
    ('Traffic Sign (Front)', (220, 220, 0)), ('Trash Can', (140, 140, 20)), ('Bicycle', (119, 11, 32)),
    ('Boat', (150, 0, 255)), ('Bus', (0, 60, 100)), ('Car', (0, 0, 142)), ('Caravan', (0, 0, 90)),
    ('Motorcycle', (0, 0, 230)), ('On Rails', (0, 80, 100)), ('Other Vehicle', (128, 64, 64)),
    ('Trailer', (0, 0, 110)), ('Truck', (0, 0, 70)), ('Wheeled Slow', (0, 0, 192)),
    ('Car Mount', (32, 32, 32)), ('Ego Vehicle', (120, 10, 10)),
)
_VISTAS_V12_STORED = [
    {'readable': name, 'color': color, 'evaluate': True} for name, color in _VISTAS_V12
] + [{'readable': 'Unlabeled', 'color': (0, 0, 0), 'evaluate': False}]
_VISTAS_SPLIT_FOLDERS = {'train': 'training', 'val': 'validation'}


@register_dataset('mapillary')
class MapillaryVistas(SegmentationDataset):
    """Mapillary Vistas v1.2 (66 stored labels: 65 classes and 'Unlabeled', which is ignored)::

        root/config_v1.2.json                 class names and colours (built-in copy when absent)
        root/training|validation/images/<key>.jpg
        root/training|validation/labels/<key>.png          v1.x download
        root/training|validation/v1.2/labels/<key>.png     v2.0 download (preferred when present)

    Split ``train``/``val`` read ``training``/``validation``. Labels are palette PNGs whose index
    is the position in the config's ``labels`` list; OpenCV expands palettes to colours, so
    pixels are matched back to their class by colour (single-channel index PNGs are read as they
    are). Config entries with ``"evaluate": false`` are ignored; the others become classes 0..C-1.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None) -> None:
        config = Path(root).expanduser() / 'config_v1.2.json'
        stored = self._read_config(config) if config.is_file() else _VISTAS_V12_STORED
        self.stored_colors = [tuple(int(v) for v in entry['color']) for entry in stored]
        evaluated = [entry for entry in stored if entry.get('evaluate', True)]
        self.label_set = LabelSet('mapillary_vistas_v1.2',
                                  tuple(_snake_case(entry['readable']) for entry in evaluated),
                                  tuple(tuple(int(v) for v in entry['color']) for entry in evaluated))
        evaluate = np.array([entry.get('evaluate', True) for entry in stored], bool)
        self.id_table = _lookup_table(np.where(evaluate, np.cumsum(evaluate) - 1, IGNORE_INDEX).tolist())
        super().__init__(root, split, transform)

    @staticmethod
    def _read_config(path: Path) -> list[dict]:
        try:
            labels = json.loads(path.read_text())['labels']
            for entry in labels:
                entry['readable'] = str(entry.get('readable', entry['name']))
                if len(entry['color']) != 3:
                    raise ValueError(f'colour {entry["color"]} is not RGB')
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f'mapillary config {path}: unusable ({type(exc).__name__}: {exc})') from None
        if not 0 < len(labels) < IGNORE_INDEX:
            raise DatasetError(f'mapillary config {path}: needs 1..254 labels, has {len(labels)}')
        return labels

    def find_files(self) -> list[tuple[Path, Path]]:
        split_dir = self.root / _VISTAS_SPLIT_FOLDERS.get(self.split, self.split)
        image_dir = _require_dir(split_dir / 'images', f'mapillary split {self.split!r}')
        label_dir = split_dir / 'v1.2' / 'labels'
        if not label_dir.is_dir():
            label_dir = _require_dir(split_dir / 'labels', f'mapillary split {self.split!r}')
        return _pair(_images_in(image_dir, ('.jpg',)), lambda image: label_dir / f'{image.stem}.png')

    def stored_to_ids(self, stored: np.ndarray, path: Path) -> np.ndarray:
        if stored.ndim == 3 and stored.shape[2] >= 3:
            return _indices_from_colors(stored, self.stored_colors, path)
        return super().stored_to_ids(stored, path)


# SYNTHIA class id -> Cityscapes train id for the 16 classes the two share (as in the domain
# adaptation literature: AdaptSegNet, ADVENT, DAFormer evaluate these 16); the rest is ignored.
_SYNTHIA_TRAIN_IDS = {
    1: 10, 2: 2, 3: 0, 4: 1, 5: 4, 6: 8, 7: 5, 8: 13, 9: 7, 10: 11, 11: 18, 12: 17, 15: 6, 17: 12,
    19: 15, 21: 3,
}


@register_dataset('synthia')
class SynthiaRandCityscapes(SegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES, read as Cityscapes' 19 train ids (16 of them occur)::

        root/RGB/<name>.png
        root/GT/LABELS/<name>.png   16-bit, class id 0..22 in the file's first (red) channel
        root/<split>.txt            optional: one image name per line ('0000001.png' or '0000001')

    Without a list file, split ``train`` or ``all`` is every frame. OpenCV reads the label PNG as
    BGR, so the class id is the last channel of the decoded array (the green one holds instance
    ids). Void, parking slot, road work, terrain, truck, train and lane marking are ignored.
    """

    label_set = CITYSCAPES19
    id_table = _lookup_table({i: _SYNTHIA_TRAIN_IDS.get(i, IGNORE_INDEX) for i in range(23)})

    def find_files(self) -> list[tuple[Path, Path]]:
        image_dir = _require_dir(self.root / 'RGB', 'synthia images')
        label_dir = _require_dir(self.root / 'GT' / 'LABELS', 'synthia labels')
        list_file = self.root / f'{self.split}.txt'
        if list_file.is_file():
            names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
            images = [image_dir / (name if Path(name).suffix else f'{name}.png') for name in names]
        elif self.split in ('train', 'all'):
            images = _images_in(image_dir, ('.png',))
        else:
            raise DatasetError(f'synthia split {self.split!r}: list file {list_file} not found '
                               '(without one only "train" or "all", meaning every frame, exist)')
        return _pair(images, lambda image: label_dir / image.name)

    def stored_to_ids(self, stored: np.ndarray, path: Path) -> np.ndarray:
        if stored.ndim == 3 and stored.shape[2] >= 3:
            return stored[..., 2]
        return super().stored_to_ids(stored, path)


@register_dataset('folder')
class FolderDataset(SegmentationDataset):
    """Any dataset laid out as images and same-named label images, with a class list::

        root/images/<split>/<name>.<png|jpg|jpeg|bmp|tif|tiff|webp>
        root/labels/<split>/<name>.<any of those>   same stem as the image
        root/classes.yaml  or  root/classes.txt      exactly one of the two

    Labels are single-channel class indices (0..C-1, 255 = ignore), or colour / palette images
    whose colours are the class colours (each pixel is matched to its class by colour).

    ``classes.yaml``: ``name`` (optional, default the root folder's name) and ``classes``, a list
    whose i-th entry is class i, either a name or a mapping with ``name`` and optional ``color``::

        name: campus_roads
        classes:
          - {name: road, color: [128, 64, 128]}
          - {name: car, color: [0, 0, 142]}
          - person

    ``classes.txt``: line i (ignoring blank lines and ``#`` comments) is class i, ``name`` or
    ``name R G B``::

        road 128 64 128
        car 0 0 142
        person

    Classes without a colour get the colour ``LabelSet.generic`` gives that index.
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None) -> None:
        self.label_set = read_class_list(_require_dir(Path(root).expanduser(), 'folder root'))
        self.id_table = _lookup_table(range(self.label_set.num_classes))
        super().__init__(root, split, transform)

    def find_files(self) -> list[tuple[Path, Path]]:
        image_dir = _require_dir(self.root / 'images' / self.split, f'folder split {self.split!r}')
        label_dir = _require_dir(self.root / 'labels' / self.split, f'folder split {self.split!r}')
        labels = {p.stem: p for p in _images_in(label_dir)}

        def label_for(image: Path) -> Path:
            return labels.get(image.stem, label_dir / f'{image.stem}.png')

        return _pair(_images_in(image_dir), label_for)

    def stored_to_ids(self, stored: np.ndarray, path: Path) -> np.ndarray:
        if stored.ndim == 3 and stored.shape[2] >= 3:
            return _indices_from_colors(stored, self.label_set.colors, path)
        return super().stored_to_ids(stored, path)


def read_class_list(root: Path) -> LabelSet:
    """The ``LabelSet`` from ``root/classes.yaml`` or ``root/classes.txt`` (see ``FolderDataset``)."""
    yaml_path, txt_path = root / 'classes.yaml', root / 'classes.txt'
    if yaml_path.is_file() and txt_path.is_file():
        raise DatasetError(f'folder dataset {root}: both classes.yaml and classes.txt exist; keep one')
    if yaml_path.is_file():
        path = yaml_path
        name, entries = _yaml_classes(yaml_path)
    elif txt_path.is_file():
        path, name, entries = txt_path, None, _txt_classes(txt_path)
    else:
        raise DatasetError(f'folder dataset {root}: needs classes.yaml or classes.txt '
                           '(see seg_ros.data.datasets.FolderDataset for the format)')
    if not entries:
        raise DatasetError(f'{path}: lists no classes')
    fallback = LabelSet.generic(len(entries)).colors
    try:
        return LabelSet(name or root.resolve().name, tuple(n for n, _ in entries),
                        tuple(c if c is not None else fallback[i] for i, (_, c) in enumerate(entries)))
    except ValueError as exc:
        raise DatasetError(f'{path}: {exc}') from None


_ClassEntry = tuple[str, tuple[int, int, int] | None]


def _yaml_classes(path: Path) -> tuple[str | None, list[_ClassEntry]]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DatasetError(f'{path}: unreadable ({exc})') from None
    if not isinstance(document, dict) or not isinstance(document.get('classes'), list):
        raise DatasetError(f'{path}: expected a mapping with a "classes" list')
    entries = []
    for index, entry in enumerate(document['classes']):
        if isinstance(entry, str):
            entries.append((entry, None))
        elif isinstance(entry, dict) and 'name' in entry:
            color = entry.get('color')
            try:
                entries.append((str(entry['name']), None if color is None else tuple(int(v) for v in color)))
            except (TypeError, ValueError):
                raise DatasetError(f'{path}: class {index} has colour {color!r}, not [R, G, B]') from None
        else:
            raise DatasetError(f'{path}: class {index} is {entry!r}, expected a name or {{name, color}}')
    name = document.get('name')
    return (None if name is None else str(name)), entries


def _txt_classes(path: Path) -> list[_ClassEntry]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split('#', 1)[0].split()
        if not fields:
            continue
        if len(fields) not in (1, 4) or (len(fields) == 4 and not all(f.isdigit() for f in fields[1:])):
            raise DatasetError(f'{path}:{number}: expected "name" or "name R G B", got {line.strip()!r}')
        entries.append((fields[0], tuple(int(f) for f in fields[1:]) if len(fields) == 4 else None))
    return entries
