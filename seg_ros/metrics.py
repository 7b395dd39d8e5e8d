"""Segmentation metrics from one confusion matrix: IoU, mIoU, pixel and class accuracy.

``ConfusionMatrix`` accumulates on the device the predictions live on (one ``bincount`` per
batch, no per-pixel Python) and reduces across processes with ``torch.distributed`` when a
process group is running. Rows are ground truth, columns predictions.

Ground-truth pixels equal to ``ignore_index`` are skipped. A prediction outside ``[0, C)`` (for
example 255, "no prediction", in a ``SegmentationResult.mask``) is counted as an error: a false
negative of its ground-truth class that is no class's false positive. Such pixels are kept in
``missed``, next to the C x C ``matrix``, and enter every denominator, so leaving pixels
unlabelled never raises a score.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from seg_ros.labels import IGNORE_INDEX
from seg_ros.vocabulary import percent

__all__ = ['CITYSCAPES_CATEGORIES', 'CITYSCAPES_CATEGORY_NAMES', 'ConfusionMatrix']

CITYSCAPES_CATEGORY_NAMES = ('flat', 'construction', 'object', 'nature', 'sky', 'human', 'vehicle')
"""The 7 Cityscapes categories, in the order of the indices in ``CITYSCAPES_CATEGORIES``."""

CITYSCAPES_CATEGORIES = [
    0, 0,           # road, sidewalk: flat
    1, 1, 1,        # building, wall, fence: construction
    2, 2, 2,        # pole, traffic_light, traffic_sign: object
    3, 3,           # vegetation, terrain: nature
    4,              # sky
    5, 5,           # person, rider: human
    6, 6, 6, 6, 6, 6,  # car, truck, bus, train, motorcycle, bicycle: vehicle
]
"""Category index of each of the 19 Cityscapes train ids (``labels.CITYSCAPES19`` order)."""

ArrayLike = torch.Tensor | np.ndarray


def _as_label_tensor(values: ArrayLike, what: str) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        # torch.from_numpy shares memory and warns about read-only arrays; those are copied.
        values = torch.from_numpy(np.ascontiguousarray(values) if values.flags.writeable else values.copy())
    if not isinstance(values, torch.Tensor):
        raise TypeError(f'{what} must be a torch tensor or numpy array, got {type(values).__name__}')
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f'{what} must hold integer class indices, got dtype {values.dtype}')
    return values.long()


def _safe_ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator with nan (no warning) where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float('nan')


def _tallies(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, ground-truth totals and prediction totals per class from (C, C + 1) counts."""
    matrix = counts[:, :-1]
    return np.diag(matrix), counts.sum(1), matrix.sum(0)


def _iou(counts: np.ndarray) -> np.ndarray:
    tp, gt, predicted = _tallies(counts)
    return _safe_ratio(tp, gt + predicted - tp)


class ConfusionMatrix:
    """Accumulated (ground truth, prediction) pixel counts for ``num_classes`` classes."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}')
        if 0 <= ignore_index < num_classes:
            raise ValueError(f'ignore_index {ignore_index} is a class index (num_classes={num_classes})')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # Column C holds ground-truth pixels whose prediction is not a class.
        self._counts = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)

    def reset(self) -> None:
        self._counts.zero_()

    @torch.no_grad()
    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Add a batch of predicted labels and ground truth of the same shape (any device).

        ``pred`` holds class indices (take ``logits.argmax(1)`` first); ``target`` holds class
        indices or ``ignore_index``. A ground-truth value that is neither is an error.
        """
        pred = _as_label_tensor(pred, 'pred')
        target = _as_label_tensor(target, 'target')
        if pred.shape != target.shape:
            hint = ' (pass logits.argmax(1), not logits)' if pred.dim() == target.dim() + 1 else ''
            raise ValueError(f'pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}{hint}')
        target = target.to(pred.device)
        c = self.num_classes
        valid = target != self.ignore_index
        bad_target = valid & ((target < 0) | (target >= c))
        if bool(bad_target.any()):
            values = torch.unique(target[bad_target]).tolist()[:10]
            raise ValueError(f'target holds values {values} that are neither a class (0..{c - 1}) '
                             f'nor ignore_index {self.ignore_index}')
        pred = torch.where((pred >= 0) & (pred < c), pred, c)
        bins = target[valid] * (c + 1) + pred[valid]
        counts = torch.bincount(bins, minlength=c * (c + 1)).view(c, c + 1)
        if self._counts.device != counts.device:
            self._counts = self._counts.to(counts.device)
        self._counts += counts

    def add_counts(self, matrix: ArrayLike, missed: ArrayLike) -> None:
        """Add counts accumulated elsewhere: a (C, C) ``matrix`` and the (C,) ``missed`` column of another
        confusion matrix of the same classes (pooling runs evaluated apart)."""
        counts = np.concatenate([np.asarray(matrix, np.int64), np.asarray(missed, np.int64)[:, None]], axis=1)
        if counts.shape != tuple(self._counts.shape):
            raise ValueError(f'counts of shape {counts.shape[0]}x{counts.shape[1] - 1} for a '
                             f'{self.num_classes}-class confusion matrix')
        self._counts += torch.from_numpy(counts).to(self._counts.device)

    def all_reduce(self) -> None:
        """Sum the counts of all processes (no-op without an initialised process group)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        counts = self._counts
        if dist.get_backend() == 'nccl' and not counts.is_cuda:
            counts = counts.cuda()
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        self._counts = counts.to(self._counts.device)

    @property
    def matrix(self) -> np.ndarray:
        """(C, C) int64 counts, rows = ground truth, columns = prediction."""
        return self._counts[:, : self.num_classes].cpu().numpy()

    @property
    def missed(self) -> np.ndarray:
        """(C,) int64: ground-truth pixels per class whose prediction was not a class index."""
        return self._counts[:, self.num_classes].cpu().numpy()

    def iou(self) -> np.ndarray:
        """(C,) IoU per class, nan where a class is in neither ground truth nor prediction."""
        return _iou(self._counts.cpu().numpy())

    def miou(self) -> float:
        """Mean IoU over the classes where it is defined, as a fraction (nan if none)."""
        return _nanmean(self.iou())

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels (nan before any pixel)."""
        tp, gt, _ = _tallies(self._counts.cpu().numpy())
        total = gt.sum()
        return float(tp.sum() / total) if total else float('nan')

    def class_accuracy(self) -> np.ndarray:
        """(C,) recall per class, nan where a class has no ground-truth pixel."""
        tp, gt, _ = _tallies(self._counts.cpu().numpy())
        return _safe_ratio(tp, gt)

    def mean_class_accuracy(self) -> float:
        return _nanmean(self.class_accuracy())

    def category_iou(self, mapping: Sequence[int]) -> np.ndarray:
        """IoU per category, classes merged by ``mapping[class] = category`` (e.g. ``CITYSCAPES_CATEGORIES``).

        Returns (max(mapping) + 1,) values, nan for a category seen in neither map.
        """
        mapping = np.asarray(mapping)
        if mapping.shape != (self.num_classes,) or not np.issubdtype(mapping.dtype, np.integer):
            raise ValueError(f'mapping must list one integer category per class ({self.num_classes}), '
                             f'got {mapping.tolist()}')
        if mapping.min() < 0:
            raise ValueError(f'mapping holds negative categories: {mapping.tolist()}')
        num_categories = int(mapping.max()) + 1
        # One-hot merge matrix; the 'missed' column stays a column of its own.
        merge = np.zeros((self.num_classes, num_categories), np.int64)
        merge[np.arange(self.num_classes), mapping] = 1
        counts = self._counts.cpu().numpy()
        merged = merge.T @ counts[:, :-1] @ merge
        merged_missed = merge.T @ counts[:, -1:]
        return _iou(np.concatenate([merged, merged_missed], axis=1))

    def to_dict(self, class_names: Sequence[str]) -> dict:
        """Scores in percent for reports; an undefined score is None."""
        if len(class_names) != self.num_classes:
            raise ValueError(f'{len(class_names)} class names for {self.num_classes} classes')
        return {
            'miou': percent(self.miou()),
            'per_class_iou': {name: percent(v) for name, v in zip(class_names, self.iou(), strict=True)},
            'pixel_accuracy': percent(self.pixel_accuracy()),
            'mean_class_accuracy': percent(self.mean_class_accuracy()),
        }
