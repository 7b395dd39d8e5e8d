"""Conversions between ``sensor_msgs`` images and numpy arrays, without cv_bridge.

Paired pure functions in the manner of vision_opencv's ``cv_bridge/core.py``:

- ``image_to_array`` / ``array_to_image`` for ``sensor_msgs/Image``;
- ``compressed_to_array`` / ``array_to_compressed`` for ``sensor_msgs/CompressedImage`` (JPEG, PNG).

The pixel work lives in ``seg_ros.frames.codecs``, which imports no ROS package (the bag tool uses it
on messages deserialised by ``rosbags``); this module adds the rclpy message types. The encodings
the inference core takes directly (``DIRECT_ENCODINGS``) come back as views of the message buffer
with no copy; every other supported encoding is converted to ``rgb8`` with OpenCV. All failures
raise ``ConversionError``.
"""

from __future__ import annotations

import array

import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from seg_ros.frames.codecs import (
    DIRECT_ENCODINGS,
    MAX_PIXELS,
    SUPPORTED_ENCODINGS,
    ConversionError,
    array_to_image_fields,
    compressed_to_array,
    encode_compressed,
    image_to_array,
)

__all__ = [
    'DIRECT_ENCODINGS',
    'MAX_PIXELS',
    'SUPPORTED_ENCODINGS',
    'ConversionError',
    'array_to_compressed',
    'array_to_image',
    'compressed_to_array',
    'image_to_array',
]


def _byte_array(data: np.ndarray) -> array.array:
    """``array.array('B')`` holding the bytes of a flat uint8 array, copied once.

    rclpy stores ``uint8[]`` fields as ``array.array('B')`` and takes one as is, while bytes or a
    memoryview are checked (Humble: always) or converted element by element, hundreds of times
    slower for a camera frame. ``frombytes`` copies straight from the numpy buffer.
    """
    result = array.array('B')
    result.frombytes(data)
    return result


def array_to_image(array_: np.ndarray, encoding: str = 'rgb8', header: Header | None = None) -> Image:
    """An ``Image`` holding a copy of ``array_`` in ``encoding`` (layouts: ``array_to_image_fields``)."""
    fields = array_to_image_fields(array_, encoding)
    data = _byte_array(fields.pop('data'))
    msg = Image(header=header if header is not None else Header(), **fields)
    msg.data = data
    return msg


def array_to_compressed(
    array_: np.ndarray, format: str = 'jpeg', *, jpeg_quality: int = 90, header: Header | None = None
) -> CompressedImage:
    """A ``CompressedImage`` (``'jpeg'`` or ``'png'``) of an HxWx3 RGB or HxW mono uint8 array.

    ``format`` is written the way ``compressed_image_transport`` writes it (``'rgb8; jpeg compressed bgr8'``).
    """
    format_string, payload = encode_compressed(array_, format, jpeg_quality=jpeg_quality)
    msg = CompressedImage(header=header if header is not None else Header(), format=format_string)
    msg.data = _byte_array(payload)
    return msg
