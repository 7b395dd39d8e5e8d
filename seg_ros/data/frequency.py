"""Per-class pixel frequencies of a dataset's labels, cached by the list of label files.

Class-balanced losses need them (ENet's 1 / ln(c + p), ERFNet's c = 1.10); one pass over the
labels is seconds for CamVid but minutes for Cityscapes, so the result can be cached in a JSON
file keyed by a hash of the dataset's reader, classes and label files (path, size, modification
time): the cache is reused while that key matches and rewritten when it does not.

Command line::

    python -m seg_ros.data.frequency --dataset camvid --root /data/camvid --split train \\
        [--cache freq.json] [--c 1.02]

prints each class' pixels, share and ENet weight 1 / ln(c + share).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seg_ros.data.datasets import DatasetError, SegmentationDataset, build_dataset, list_datasets
from seg_ros.training.losses import enet_class_weights

__all__ = ['class_frequencies', 'class_pixel_counts', 'main']


def _dataset_key(dataset: SegmentationDataset) -> str:
    """Hash of what determines the counts: reader, classes, and every label file's identity."""
    digest = hashlib.sha256()
    digest.update(type(dataset).__name__.encode())
    digest.update(json.dumps(dataset.label_set.to_dict(), sort_keys=True).encode())
    for _, label_path in dataset.files:
        try:
            stat = label_path.stat()
        except OSError as exc:
            raise DatasetError(f'label {label_path}: {exc.strerror or exc} '
                               '(seg_ros.data.validate_dataset lists every problem)') from None
        digest.update(f'{label_path}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
    return digest.hexdigest()


def _read_cache(path: Path, key: str, num_classes: int) -> np.ndarray | None:
    try:
        cached = json.loads(path.read_text())
        counts = np.asarray(cached['pixel_counts'], np.int64)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if cached.get('key') != key or counts.shape != (num_classes,):
        return None
    return counts


def _write_cache(path: Path, key: str, dataset: SegmentationDataset, counts: np.ndarray) -> None:
    """Written to a temporary file and renamed, so a concurrent reader never sees half a file."""
    entry = {
        'key': key,
        'dataset': dataset.name,
        'root': str(dataset.root),
        'split': dataset.split,
        'classes': list(dataset.label_set.names),
        'pixel_counts': counts.tolist(),
        'frequencies': (counts / max(int(counts.sum()), 1)).tolist(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(entry, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def class_pixel_counts(dataset: SegmentationDataset, *, cache_path: str | os.PathLike | None = None,
                       progress: bool = False) -> np.ndarray:
    """(C,) int64 labelled pixels per class over the dataset's labels (ignored pixels not counted)."""
    num_classes = dataset.label_set.num_classes
    if cache_path is not None:
        cache_path, key = Path(cache_path), _dataset_key(dataset)
        cached = _read_cache(cache_path, key, num_classes)
        if cached is not None:
            return cached
    counts = np.zeros(num_classes, np.int64)
    for _, label_path in tqdm(dataset.files, desc='labels', unit='frame', disable=not progress):
        counts += np.bincount(dataset.read_label(label_path).ravel(), minlength=256)[:num_classes]
    if cache_path is not None:
        _write_cache(cache_path, key, dataset, counts)
    return counts


def class_frequencies(dataset: SegmentationDataset, *, cache_path: str | os.PathLike | None = None,
                      progress: bool = False) -> np.ndarray:
    """(C,) float64 share of labelled pixels per class, summing to 1 (ignored pixels excluded)."""
    return _shares(class_pixel_counts(dataset, cache_path=cache_path, progress=progress), dataset)


def _shares(counts: np.ndarray, dataset: SegmentationDataset) -> np.ndarray:
    total = int(counts.sum())
    if total == 0:
        raise DatasetError(f'{dataset!r}: no labelled pixels, class frequencies are undefined')
    return counts / total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m seg_ros.data.frequency',
        description='Per-class pixel frequencies of a dataset split (for class-balanced losses).')
    parser.add_argument('--dataset', required=True, choices=list_datasets())
    parser.add_argument('--root', required=True, help='dataset folder')
    parser.add_argument('--split', default='train')
    parser.add_argument('--cache', help='JSON file to reuse / store the counts in')
    parser.add_argument('--c', type=float, default=1.02,
                        help='c of the ENet class weights 1 / ln(c + f) shown beside (ERFNet: 1.10)')
    args = parser.parse_args(argv)
    try:
        dataset = build_dataset(args.dataset, args.root, args.split)
        counts = class_pixel_counts(dataset, cache_path=args.cache, progress=True)
        shares = _shares(counts, dataset)
        weights = enet_class_weights(shares, args.c).tolist()
    except ValueError as exc:  # DatasetError included
        print(f'error: {exc}', file=sys.stderr)
        return 2
    names = dataset.label_set.names
    width = max(len(n) for n in names)
    print(f'{dataset!r}: {int(counts.sum())} labelled pixels')
    print(f'{"index":>5}  {"class":<{width}}  {"pixels":>12}  {"share %":>8}  {"ENet weight":>11}')
    for index, row in enumerate(zip(names, counts, shares, weights, strict=True)):
        name, count, share, weight = row
        print(f'{index:>5}  {name:<{width}}  {count:>12}  {100 * share:>8.3f}  {weight:>11.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
