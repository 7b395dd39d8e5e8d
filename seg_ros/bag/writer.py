"""Output bags: compact, with QoS profiles, and metadata that ``ros2 bag`` reads from Humble on.

``OutputBag`` writes any topics (``seg-bag make`` uses it too): MCAP with zstd-compressed chunks
(or sqlite3), every topic with the QoS profile it is offered with, and ``metadata.yaml`` as
Humble's rosbag2 writes it (version 5, QoS profiles as a YAML string of numbers), which Humble,
Iron, Jazzy and Kilted all read: newer versions write QoS profiles as a YAML list that Humble
cannot parse.

``ResultWriter`` writes what ``seg-bag`` chose (``--outputs``) per camera frame. Per camera topic
``<ns>/<name>`` and model ``<model>``, under ``<ns>/segmentation/<model>/`` as the node names them,
with image_transport's ``compressed`` convention (``<image topic>/compressed``):

- ``image``: the camera frames, as recorded when compressed, else as JPEG on ``<ns>/<name>/compressed``;
- ``mask/compressed``: class index per pixel, 255 = none, PNG (lossless: bit-exact masks);
- ``color_mask/compressed`` and ``overlay/compressed``: JPEG (only when asked for);
- ``stats`` (``std_msgs/Float32MultiArray``): classes x (count, fraction, mean confidence).

Every output message carries the camera message's header and is written at its bag time, so
``ros2 bag play``, Foxglove and RViz2 show input and results in step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from rosbags.interfaces import (
    Connection,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer, WriterError

from seg_ros.bag.frames import Frame, frame_rgb
from seg_ros.bag.messages import COMPRESSED_IMAGE, STATS, TYPESTORE, compressed_message, serialize, stats_message
from seg_ros.bag.reader import BagError
from seg_ros.interface import output_prefix

if TYPE_CHECKING:
    from seg_ros.inference.segmenter import SegmentationResult

__all__ = ['CAMERA_QOS', 'DEFAULT_OUTPUTS', 'HUMBLE_METADATA_VERSION', 'OUTPUTS', 'RESULT_QOS', 'STORAGE_PLUGINS',
           'OutputBag', 'ResultWriter', 'parse_outputs', 'result_prefix']

OUTPUTS = ('image', 'mask', 'color_mask', 'overlay', 'stats')
"""What ``seg-bag`` can write per frame (``--outputs``)."""
DEFAULT_OUTPUTS = ('image', 'mask', 'stats')
STORAGE_PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
HUMBLE_METADATA_VERSION = 5

_NO_DURATION = QosTime(0, 0)  # rmw's "unspecified": the middleware's default (infinite)
RESULT_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.VOLATILE, _NO_DURATION,
                 _NO_DURATION, QosLiveliness.SYSTEM_DEFAULT, _NO_DURATION, False)
"""What ``segment_node`` offers its results with (``seg_ros.ros.qos.OUTPUT``; a test holds them equal)."""
CAMERA_QOS = Qos(QosHistory.KEEP_LAST, 1, QosReliability.BEST_EFFORT, QosDurability.VOLATILE, _NO_DURATION,
                 _NO_DURATION, QosLiveliness.SYSTEM_DEFAULT, _NO_DURATION, False)
"""Sensor-data QoS, as camera drivers and ``sample_camera`` offer frames (``seg-bag make``)."""


def result_prefix(image_topic: str, model: str) -> str:
    """``/cam/image_raw`` or ``/cam/image_raw/compressed`` and ``enet`` -> ``/cam/segmentation/enet``."""
    return f'{output_prefix(image_topic)}/{model}'


def parse_outputs(text: str) -> tuple[str, ...]:
    """``--outputs mask,overlay`` -> ('mask', 'overlay'); an unknown name is a ``ValueError``."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(',') if name.strip()))
    unknown = [name for name in names if name not in OUTPUTS]
    if unknown or not names:
        raise ValueError(f'--outputs {text!r}: choose from {", ".join(OUTPUTS)} (comma-separated)')
    return names


def _humble_metadata(path: Path) -> None:
    """Rewrite ``metadata.yaml`` (rosbags writes version 8) the way Humble's rosbag2 writes it."""
    metadata = path / 'metadata.yaml'
    document = yaml.safe_load(metadata.read_text())
    info = document['rosbag2_bagfile_information']
    info['version'] = HUMBLE_METADATA_VERSION
    for topic in info['topics_with_message_count']:
        topic['topic_metadata'].pop('type_description_hash', None)
    info.pop('ros_distro', None)
    # Humble reads no custom_data (version 6 added it) and ignores the key; seg-bag reads it itself.
    if not info.get('custom_data'):
        info.pop('custom_data', None)
    metadata.write_text(yaml.safe_dump(document, sort_keys=False))


class OutputBag:
    """A new rosbag2 written as messages come (``storage``: ``mcap`` or ``sqlite3``; MCAP chunks
    zstd-compressed unless ``compress_chunks`` is False)."""

    def __init__(self, path: str | Path, storage: str = 'mcap', *, compress_chunks: bool = True) -> None:
        if storage not in STORAGE_PLUGINS:
            raise ValueError(f'storage {storage!r} is not one of {", ".join(STORAGE_PLUGINS)}')
        self.path = Path(path)
        # Version 8 is the newest whose QoS strings Humble parses; close() rewrites it as Humble's 5.
        self._writer = Writer(self.path, version=8, storage_plugin=STORAGE_PLUGINS[storage])
        if storage == 'mcap' and compress_chunks:  # as rosbag2's zstd_fast storage preset writes them
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        try:
            self._writer.open()
        except WriterError as error:
            raise BagError(f'output bag {self.path}: {error}') from None
        self._connections: dict[str, Connection] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, msgtype: str, timestamp: int, raw: bytes | memoryview,
              qos: Sequence[Qos] = (RESULT_QOS,)) -> None:
        """One serialised message at bag time ``timestamp`` (ns); ``qos``: the topic's offered profiles."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE,
                                                     offered_qos_profiles=list(qos))
            self._connections[topic] = connection
        self._writer.write(connection, timestamp, raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def set_custom_data(self, key: str, value: str) -> None:
        """A ``custom_data`` entry of ``metadata.yaml``."""
        self._writer.set_custom_data(key, value)

    def close(self) -> None:
        """Write the index and ``metadata.yaml``; the bag is complete only after this."""
        self._writer.close()
        _humble_metadata(self.path)


class ResultWriter:
    """Writes the chosen ``outputs`` of every frame into ``bag``.

    ``camera_qos``: per camera topic the QoS profiles it was recorded with (copied to the output).
    """

    def __init__(self, bag: OutputBag, outputs: Sequence[str], camera_qos: dict[str, list[Qos]],
                 jpeg_quality: int = 90) -> None:
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f'outputs {sorted(unknown)} are not among {", ".join(OUTPUTS)}')
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f'--jpeg-quality {jpeg_quality} is not in 1..100')
        self.bag, self.outputs, self.jpeg_quality = bag, tuple(outputs), jpeg_quality
        self.camera_qos = camera_qos

    def write(self, frame: Frame, results: dict[str, SegmentationResult]) -> None:
        if 'image' in self.outputs:
            self._write_image(frame)
        for name, result in results.items():
            prefix = result_prefix(frame.topic, name)
            if 'mask' in self.outputs:
                self._write_compressed(f'{prefix}/mask', frame, result.mask, 'png')
            for output in ('color_mask', 'overlay'):
                if output in self.outputs:
                    self._write_compressed(f'{prefix}/{output}', frame, getattr(result, output), 'jpeg')
            if 'stats' in self.outputs:
                self.bag.write(f'{prefix}/stats', STATS, frame.timestamp, serialize(stats_message(result)))

    def _write_image(self, frame: Frame) -> None:
        qos = self.camera_qos.get(frame.topic) or [CAMERA_QOS]
        if frame.msgtype == COMPRESSED_IMAGE:
            self.bag.write(frame.topic, frame.msgtype, frame.timestamp, frame.raw, qos)
        else:
            self._write_compressed(frame.topic, frame, frame_rgb(frame), 'jpeg', qos)

    def _write_compressed(self, image_topic: str, frame: Frame, pixels: np.ndarray, format: str,
                          qos: Sequence[Qos] = (RESULT_QOS,)) -> None:
        msg = compressed_message(pixels, format, frame.header, jpeg_quality=self.jpeg_quality)
        self.bag.write(f'{image_topic}/compressed', COMPRESSED_IMAGE, frame.timestamp, serialize(msg), qos)
