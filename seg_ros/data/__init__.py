"""Datasets, augmentation and label statistics for training and evaluation.

>>> from seg_ros.data import TrainTransform, build_dataset
>>> train = build_dataset('camvid', '/data/camvid', 'train', TrainTransform(crop_size=(360, 480)))
>>> image, label = train[0]          # (3, 360, 480) float, (360, 480) int64 with 255 = ignore
"""

from seg_ros.data.datasets import (
    DatasetError,
    SegmentationDataset,
    build_dataset,
    list_datasets,
    register_dataset,
    validate_dataset,
)
from seg_ros.data.frequency import class_frequencies, class_pixel_counts
from seg_ros.data.transforms import EvalTransform, TrainTransform, mixup_batch

__all__ = ['DatasetError', 'EvalTransform', 'SegmentationDataset', 'TrainTransform', 'build_dataset',
           'class_frequencies', 'class_pixel_counts', 'list_datasets', 'mixup_batch', 'register_dataset',
           'validate_dataset']
