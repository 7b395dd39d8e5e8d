"""Writers of tiny datasets in each reader's real layout and label encoding, for the data tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def random_rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f'could not write {path}')
    return path


def write_gray(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise OSError(f'could not write {path}')
    return path


def write_palette_png(path: Path, indices: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> Path:
    """An 8-bit palette PNG (mode 'P'), as Mapillary Vistas ships its labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8))  # 'L'; putpalette makes it 'P'
    palette = [v for color in colors for v in color]
    image.putpalette(palette + [0] * (768 - len(palette)))
    if image.mode != 'P':
        raise RuntimeError(f'Pillow wrote mode {image.mode}, not a palette image')
    image.save(path)
    return path


def make_camvid(root: Path, split: str, labels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``<split>.txt`` + ``<split>/images/*.png`` (lossless here) + ``<split>/labels/*.png``."""
    images, lines = [], []
    for i, label in enumerate(labels):
        image = random_rgb(*label.shape, seed=i)
        write_rgb(root / split / 'images' / f'f{i:03d}.png', image)
        write_gray(root / split / 'labels' / f'f{i:03d}.png', label)
        lines.append(f'{split}/images/f{i:03d}.png {split}/labels/f{i:03d}.png')
        images.append(image)
    (root / f'{split}.txt').write_text('\n'.join(lines) + '\n')
    return images


def make_cityscapes(root: Path, split: str, frames: dict[str, np.ndarray], *,
                    annotations: str = 'gtFine') -> dict[str, np.ndarray]:
    """``frames`` maps '<city>_<seq>_<frame>' to a labelIds array; returns the written images.

    ``annotations`` is the label folder, ``gtFine`` or ``gtCoarse`` (train_extra has only the latter).
    """
    images = {}
    for i, (stem, label_ids) in enumerate(frames.items()):
        city = stem.split('_')[0]
        images[stem] = random_rgb(*label_ids.shape, seed=i)
        write_rgb(root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png', images[stem])
        label_dir = root / annotations / split / city
        write_gray(label_dir / f'{stem}_{annotations}_labelIds.png', label_ids)
        write_gray(label_dir / f'{stem}_{annotations}_instanceIds.png', label_ids)
    return images


def make_bdd100k(root: Path, split: str, frames: dict[str, np.ndarray], *, layout: str) -> None:
    """``layout`` 'current' (images/10k, labels/sem_seg/masks) or 'older' (seg/, *_train_id.png)."""
    for i, (name, train_ids) in enumerate(frames.items()):
        image = random_rgb(*train_ids.shape, seed=i)
        if layout == 'current':
            write_rgb(root / 'images' / '10k' / split / f'{name}.jpg', image)
            write_gray(root / 'labels' / 'sem_seg' / 'masks' / split / f'{name}.png', train_ids)
        else:
            write_rgb(root / 'seg' / 'images' / split / f'{name}.jpg', image)
            write_gray(root / 'seg' / 'labels' / split / f'{name}_train_id.png', train_ids)
            write_rgb(root / 'seg' / 'color_labels' / split / f'{name}_train_color.png', image)


def make_mapillary(root: Path, split_folder: str, frames: dict[str, np.ndarray],
                   colors: Sequence[tuple[int, int, int]], *, v12_subfolder: bool = False,
                   config: list[dict] | None = None) -> None:
    """Palette-PNG labels whose indices are positions in the config's label list."""
    label_dir = root / split_folder / ('v1.2/labels' if v12_subfolder else 'labels')
    for i, (key, stored_ids) in enumerate(frames.items()):
        write_rgb(root / split_folder / 'images' / f'{key}.jpg', random_rgb(*stored_ids.shape, seed=i))
        write_palette_png(label_dir / f'{key}.png', stored_ids, colors)
    if config is not None:
        (root / 'config_v1.2.json').write_text(json.dumps({'labels': config, 'version': 1.2}))


def make_synthia(root: Path, frames: dict[str, np.ndarray],
                 lists: dict[str, list[str]] | None = None) -> None:
    """16-bit 3-channel label PNGs: class id in the file's red channel, an instance id in green."""
    for i, (name, class_ids) in enumerate(frames.items()):
        write_rgb(root / 'RGB' / f'{name}.png', random_rgb(*class_ids.shape, seed=i))
        bgr = np.zeros((*class_ids.shape, 3), np.uint16)
        bgr[..., 2] = class_ids                       # red in the file
        bgr[..., 1] = 1000 + np.arange(class_ids.size).reshape(class_ids.shape) % 7  # instance ids
        path = root / 'GT' / 'LABELS' / f'{name}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), bgr)
    for split, names in (lists or {}).items():
        (root / f'{split}.txt').write_text('\n'.join(names) + '\n')


def make_folder(root: Path, split: str, labels: dict[str, np.ndarray], *, classes_yaml: str | None = None,
                classes_txt: str | None = None, image_suffix: str = '.png') -> dict[str, np.ndarray]:
    images = {}
    for i, (name, label) in enumerate(labels.items()):
        images[name] = random_rgb(*label.shape[:2], seed=i)
        write_rgb(root / 'images' / split / f'{name}{image_suffix}', images[name])
        if label.ndim == 3:
            write_rgb(root / 'labels' / split / f'{name}.png', label)
        else:
            write_gray(root / 'labels' / split / f'{name}.png', label)
    if classes_yaml is not None:
        (root / 'classes.yaml').write_text(classes_yaml)
    if classes_txt is not None:
        (root / 'classes.txt').write_text(classes_txt)
    return images


# Class i is drawn in SHAPE_COLORS[i] plus noise: what the network must learn is knowable.
SHAPE_CLASSES = ('background', 'red_box', 'green_disc', 'blue_bar')
SHAPE_COLORS = ((128, 128, 128), (220, 40, 40), (40, 200, 60), (40, 60, 220))


def write_shapes(root: Path, *, train: int = 24, val: int = 8, size: tuple[int, int] = (48, 64),
                 seed: int = 0) -> Path:
    """A ``folder`` dataset of noisy coloured boxes, discs and bars on grey, with exact labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    classes = [{'name': n, 'color': list(c)} for n, c in zip(SHAPE_CLASSES, SHAPE_COLORS, strict=True)]
    (root / 'classes.yaml').write_text(json.dumps({'name': 'shapes', 'classes': classes}))
    height, width = size
    for split, count in (('train', train), ('val', val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'labels' / split).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            label = np.zeros(size, np.uint8)
            for cls in (1, 2, 3):
                y, x = rng.integers(0, height - 12), rng.integers(0, width - 12)
                h, w = rng.integers(8, 20, size=2)
                if cls == 2:
                    cv2.circle(label, (int(x + w // 2), int(y + h // 2)), int(min(h, w) // 2), cls, -1)
                else:
                    label[y:y + h, x:x + w] = cls
            image = np.asarray(SHAPE_COLORS, np.float32)[label] + rng.normal(0, 20, (*size, 3))
            image = image.clip(0, 255).astype(np.uint8)
            cv2.imwrite(str(root / 'images' / split / f'{index:03d}.png'), image[..., ::-1])
            cv2.imwrite(str(root / 'labels' / split / f'{index:03d}.png'), label)
    return root
