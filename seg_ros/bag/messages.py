"""The ROS 2 messages the bag tool reads and writes, as ``rosbags`` objects (no ROS installation).

Images go through the ROS-free conversions of ``seg_ros.frames.codecs``, the same ones the node's
``seg_ros.ros.conversions`` uses. The stats message has the node's layout.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from seg_ros.frames.bagfiles import TYPESTORE
from seg_ros.frames.codecs import array_to_image_fields, compressed_to_array, encode_compressed, image_to_array
from seg_ros.interface import stats_dimensions, stats_table

if TYPE_CHECKING:
    from seg_ros.inference.segmenter import SegmentationResult

__all__ = ['COMPRESSED_IMAGE', 'IMAGE', 'IMAGE_TYPES', 'STATS', 'STRING', 'TYPESTORE',
           'compressed_message', 'decode_image', 'decode_label', 'deserialize', 'header_message',
           'image_message', 'serialize', 'stamp_ns', 'stats_message', 'string_message']


IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)
STATS = 'std_msgs/msg/Float32MultiArray'
"""Columns of a stats message; its rows are the classes (the node's ``stats`` layout)."""
STRING = 'std_msgs/msg/String'

_Image = TYPESTORE.types[IMAGE]
_CompressedImage = TYPESTORE.types[COMPRESSED_IMAGE]
_Header = TYPESTORE.types['std_msgs/msg/Header']
_Time = TYPESTORE.types['builtin_interfaces/msg/Time']
_Float32MultiArray = TYPESTORE.types[STATS]
_String = TYPESTORE.types[STRING]
_MultiArrayLayout = TYPESTORE.types['std_msgs/msg/MultiArrayLayout']
_MultiArrayDimension = TYPESTORE.types['std_msgs/msg/MultiArrayDimension']


def deserialize(raw: bytes | memoryview, msgtype: str) -> Any:
    return TYPESTORE.deserialize_cdr(raw, msgtype)


def serialize(msg: Any) -> bytes:
    return bytes(TYPESTORE.serialize_cdr(msg, msg.__msgtype__))


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def header_message(stamp: int, frame_id: str) -> Any:
    """A ``std_msgs/Header`` at ``stamp`` ns."""
    return _Header(stamp=_Time(sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame_id)


def decode_image(msg: Any) -> tuple[np.ndarray, str]:
    """Pixels and encoding of a deserialised ``Image`` or ``CompressedImage`` (``ConversionError``)."""
    if msg.__msgtype__ == COMPRESSED_IMAGE:
        return compressed_to_array(msg)
    return image_to_array(msg)


def decode_label(msg: Any) -> np.ndarray:
    """(H, W) uint8 class indices of a label ``Image`` (``mono8``, or OpenCV's name for it, ``8UC1``)."""
    if msg.__msgtype__ == IMAGE and msg.encoding == '8UC1':
        msg = dataclasses.replace(msg, encoding='mono8')
    pixels, encoding = decode_image(msg)
    if encoding != 'mono8':
        raise ValueError(f'label image has encoding {msg.encoding!r}; labels must be mono8 class indices')
    return pixels


def image_message(array: np.ndarray, encoding: str, header: Any) -> Any:
    """An ``Image`` of ``array`` in ``encoding`` (``array_to_image_fields`` layouts)."""
    return _Image(header=header, **array_to_image_fields(array, encoding))


def compressed_message(array: np.ndarray, format: str, header: Any, *, jpeg_quality: int = 90) -> Any:
    """A ``CompressedImage`` (``'jpeg'`` or ``'png'``) of an RGB or mono uint8 array."""
    format_string, payload = encode_compressed(array, format, jpeg_quality=jpeg_quality)
    return _CompressedImage(header=header, format=format_string, data=payload)


def stats_message(result: SegmentationResult) -> Any:
    """Per class (rows) the pixel count, fraction of the image and mean confidence (columns)."""
    table = stats_table(result)
    layout = _MultiArrayLayout(dim=[_MultiArrayDimension(label=label, size=size, stride=stride)
                                    for label, size, stride in stats_dimensions(table.shape[0])],
                               data_offset=0)
    return _Float32MultiArray(layout=layout, data=table.ravel())


def string_message(text: str) -> Any:
    return _String(data=text)
