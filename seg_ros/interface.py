"""Where results go and how statistics are laid out: shared by the node and the bag writer.

Both publish the same topics (``<camera namespace>/segmentation/...``) and the same
``std_msgs/Float32MultiArray`` statistics layout, one with rclpy messages and one with rosbags
messages; this module holds what they agree on, free of either.
"""

from __future__ import annotations

import numpy as np

from seg_ros.inference.segmenter import SegmentationResult

__all__ = ['OUTPUT_NAMESPACE', 'STATS_COLUMNS', 'camera_info_topic', 'output_prefix', 'stats_dimensions',
           'stats_table']

OUTPUT_NAMESPACE = 'segmentation'
STATS_COLUMNS = ('count', 'fraction', 'mean_confidence')


def output_prefix(topic: str, output_namespace: str = OUTPUT_NAMESPACE) -> str:
    """Where a camera's results go: ``/cam/image_raw`` or ``/cam/image_raw/compressed`` -> ``/cam/<ns>``."""
    image_topic = topic[: -len('/compressed')] if topic.endswith('/compressed') else topic
    parent, separator, _ = image_topic.rpartition('/')
    return f'{parent}{separator}{output_namespace}'


def camera_info_topic(image_topic: str) -> str:
    """``<ns>/camera_info`` beside ``<ns>/<name>`` or ``<ns>/<name>/compressed`` (image_transport's layout)."""
    image = image_topic.removesuffix('/compressed')
    parent, separator, _ = image.rpartition('/')
    return f'{parent}{separator}camera_info'


def stats_table(result: SegmentationResult) -> np.ndarray:
    """(C, 3) float32: per class the pixel count, fraction of the image and mean confidence."""
    return np.stack([result.class_counts, result.class_fractions, result.class_confidence],
                    axis=1).astype(np.float32)


def stats_dimensions(num_classes: int) -> list[tuple[str, int, int]]:
    """(label, size, stride) of the row-major ``classes`` x ``count,fraction,mean_confidence`` layout."""
    columns = len(STATS_COLUMNS)
    return [('classes', num_classes, columns * num_classes), (','.join(STATS_COLUMNS), columns, columns)]
