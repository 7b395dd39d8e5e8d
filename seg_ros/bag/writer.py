"""The output bag: the input camera topics as recorded, and every model's results beside them.

Per camera topic ``<ns>/<name>`` (or ``<ns>/<name>/compressed``) and model ``<model>``, under
``<ns>/segmentation/<model>/`` as the node names them:

- ``mask`` (``sensor_msgs/Image`` mono8): class index per pixel, 255 = none;
- ``color_mask`` and ``overlay`` (rgb8);
- ``stats`` (``std_msgs/Float32MultiArray``): classes x (count, fraction, mean confidence).

Every output message carries the camera message's header and is written at its bag time, so
``ros2 bag play``, Foxglove and RViz2 show input and results in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rosbags.interfaces import Connection
from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from ..outputs import output_prefix
from .messages import IMAGE, STATS, TYPESTORE, image_message, serialize, stats_message
from .reader import BagError

if TYPE_CHECKING:
    from ..inference import SegmentationResult

__all__ = ['RESULT_TOPICS', 'STORAGE_PLUGINS', 'OutputBag', 'result_prefix']

RESULT_TOPICS = {'mask': IMAGE, 'color_mask': IMAGE, 'overlay': IMAGE, 'stats': STATS}
"""Per model: topic name under its prefix -> message type."""
STORAGE_PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


def result_prefix(image_topic: str, model: str) -> str:
    """``/cam/image_raw`` or ``/cam/image_raw/compressed`` and ``enet`` -> ``/cam/segmentation/enet``."""
    return f'{output_prefix(image_topic)}/{model}'


class OutputBag:
    """A new rosbag2 written as frames come (``storage``: ``mcap`` or ``sqlite3``)."""

    def __init__(self, path: str | Path, storage: str = 'mcap') -> None:
        if storage not in STORAGE_PLUGINS:
            raise ValueError(f'storage {storage!r} is not one of {", ".join(STORAGE_PLUGINS)}')
        self.path = Path(path)
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST,
                              storage_plugin=STORAGE_PLUGINS[storage])
        try:
            self._writer.open()
        except WriterError as error:
            raise BagError(f'output bag {self.path}: {error}') from None
        self._connections: dict[str, Connection] = {}
        self.counts: dict[str, int] = {}

    def write(self, topic: str, msgtype: str, timestamp: int, raw: bytes | memoryview) -> None:
        """One serialised message at bag time ``timestamp`` (ns)."""
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            self._connections[topic] = connection
        self._writer.write(connection, timestamp, raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write_result(self, prefix: str, timestamp: int, header: Any, result: SegmentationResult) -> None:
        """A model's mask, color_mask, overlay and stats for the camera message with ``header``."""
        messages = {
            'mask': image_message(result.mask, 'mono8', header),
            'color_mask': image_message(result.color_mask, 'rgb8', header),
            'overlay': image_message(result.overlay, 'rgb8', header),
            'stats': stats_message(result),
        }
        for name, msg in messages.items():
            self.write(f'{prefix}/{name}', RESULT_TOPICS[name], timestamp, serialize(msg))

    def set_custom_data(self, key: str, value: str) -> None:
        """A ``custom_data`` entry of ``metadata.yaml``."""
        self._writer.set_custom_data(key, value)

    def close(self) -> None:
        """Write the index and ``metadata.yaml``; the bag is complete only after this."""
        self._writer.close()
