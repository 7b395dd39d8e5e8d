"""What the report measures, accumulated frame by frame in constant memory.

- ``ModelStats``: one model on one camera: class pixel shares, mean top-class confidence, mean
  soft-max entropy, and frame-to-frame stability (the share of pixels whose class is unchanged
  from the previous frame).
- ``Agreement``: two models on the same frames, compared pixel by pixel in a common label set
  (``seg_ros.labels.common_label_set``: CamVid-11 and Cityscapes-19 meet in ROAD11).
- ``GroundTruthScore``: a model against label images, scored with the ``ConfusionMatrix`` and the
  summary that ``seg-eval`` uses, in the model's classes when the labels use them, else in the
  common set.

Shares, confidence and entropy are pixel-weighted means over all frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seg_ros.inference.segmenter import SegmentationResult
from seg_ros.labels import LabelSet, common_label_set, mapping_table
from seg_ros.metrics import ConfusionMatrix
from seg_ros.training.evaluate import summarize

__all__ = ['Agreement', 'GroundTruthScore', 'ModelStats']


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


class ModelStats:
    """Running statistics of one model's results on one camera topic."""

    def __init__(self, labels: LabelSet) -> None:
        self.labels = labels
        self.frames = 0
        self.pixels = 0
        self.class_pixels = np.zeros(labels.num_classes, np.int64)
        self.class_confidence_sums = np.zeros(labels.num_classes, np.float64)
        self.entropy_sum = 0.0
        self.unchanged_pixels = 0
        self.compared_pixels = 0
        self._previous_mask: np.ndarray | None = None

    def update(self, result: SegmentationResult) -> dict[str, Any]:
        """Add one frame's result; returns that frame's own numbers (for the per-frame log)."""
        pixels = int(result.mask.size)
        confidence_sums = result.class_confidence.astype(np.float64) * result.class_counts
        classified = int(result.class_counts.sum())
        stability = None
        previous = self._previous_mask
        if previous is not None and previous.shape == result.mask.shape:
            unchanged = int(np.count_nonzero(previous == result.mask))
            self.unchanged_pixels += unchanged
            self.compared_pixels += pixels
            stability = unchanged / pixels
        self._previous_mask = result.mask
        self.frames += 1
        self.pixels += pixels
        self.class_pixels += result.class_counts
        self.class_confidence_sums += confidence_sums
        self.entropy_sum += result.mean_entropy * pixels
        return {
            'confidence': _ratio(confidence_sums.sum(), classified),
            'entropy': result.mean_entropy,
            'stability': stability,
            'shares': (result.class_counts / pixels).tolist(),
        }

    def summary(self) -> dict[str, Any]:
        classified = self.class_pixels.sum()
        return {
            'frames': self.frames,
            'pixels': self.pixels,
            'mean_confidence': _ratio(self.class_confidence_sums.sum(), classified),
            'mean_entropy': _ratio(self.entropy_sum, self.pixels),
            'stability': _ratio(self.unchanged_pixels, self.compared_pixels),
            'class_share': {name: _ratio(count, self.pixels)
                            for name, count in zip(self.labels.names, self.class_pixels, strict=True)},
            'class_confidence': {name: _ratio(total, count) for name, total, count
                                 in zip(self.labels.names, self.class_confidence_sums, self.class_pixels,
                                        strict=True)},
        }


class _MappedConfusion:
    """A confusion matrix of predictions against references, both mapped into ``common`` first."""

    def __init__(self, reference: LabelSet, predicted: LabelSet, common: LabelSet) -> None:
        self.common = common
        self._reference_table = mapping_table(reference, common)
        self._predicted_table = mapping_table(predicted, common)
        self.confusion = ConfusionMatrix(common.num_classes)
        self.frames = 0

    def update(self, predicted: np.ndarray, reference: np.ndarray) -> None:
        self.confusion.update(self._predicted_table[predicted], self._reference_table[reference])
        self.frames += 1


class Agreement(_MappedConfusion):
    """Pixel agreement of ``other`` with ``reference`` in their common label set.

    Pixels whose reference class has no counterpart in the common set are left out; pixels where
    only ``other`` has none count as disagreement. ``pixel_agreement`` is the share of compared
    pixels where both name the same class; ``miou`` treats ``reference`` as the ground truth.
    """

    def __init__(self, reference: LabelSet, other: LabelSet) -> None:
        super().__init__(reference, other, common_label_set([reference, other]))

    def summary(self) -> dict[str, Any]:
        scores = self.confusion.to_dict(self.common.names)
        return {
            'label_set': self.common.name,
            'frames': self.frames,
            'pixels': int(self.confusion.matrix.sum() + self.confusion.missed.sum()),
            'pixel_agreement': scores['pixel_accuracy'],
            'miou': scores['miou'],
            'per_class_iou': scores['per_class_iou'],
        }


class GroundTruthScore(_MappedConfusion):
    """A model's predictions against label images in ``ground_truth`` classes."""

    def __init__(self, model: LabelSet, ground_truth: LabelSet) -> None:
        super().__init__(ground_truth, model, common_label_set([ground_truth, model]))

    def summary(self) -> dict[str, Any]:
        """``seg-eval``'s scores (``training.evaluate.summarize``), with the label set and frame count."""
        scores = summarize(self.confusion, self.common)
        # Ground-truth pixels per class whose prediction has no class in the common set: with the
        # matrix, what pooling runs needs (ConfusionMatrix.add_counts).
        return {'label_set': self.common.name, 'frames': self.frames, **scores,
                'missed': self.confusion.missed.tolist()}
