"""Camera image buffers <-> numpy arrays, without ROS: the core of ``seg_ros.ros.conversions``.

The functions read and write only the fields of ``sensor_msgs/Image`` (``encoding``, ``width``,
``height``, ``step``, ``is_bigendian``, ``data``) and ``sensor_msgs/CompressedImage`` (``format``,
``data``), so they serve rclpy messages in the node and messages deserialised by ``rosbags`` in
the bag tool alike, and this module imports no ROS package.

The encodings the inference core takes directly (``DIRECT_ENCODINGS``) come back as views of the
message buffer with no copy; every other supported encoding is converted to ``rgb8`` with OpenCV.
Every message is validated before anything is allocated for it, so a header that claims a huge
image over a few bytes of data is an error, not an allocation. All failures raise
``ConversionError``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

__all__ = [
    'DIRECT_ENCODINGS',
    'DIRECT_LAYOUTS',
    'MAX_PIXELS',
    'SUPPORTED_ENCODINGS',
    'CompressedImageLike',
    'ConversionError',
    'ImageLike',
    'array_to_image_fields',
    'compressed_to_array',
    'direct_to_rgb',
    'encode_compressed',
    'image_to_array',
]

MAX_PIXELS = 8192 * 8192
"""Default upper bound on width x height of an incoming image (raw or compressed)."""


class ConversionError(ValueError):
    """A message that cannot be converted: unsupported encoding, inconsistent fields, corrupt payload."""


class ImageLike(Protocol):
    """The fields of a ``sensor_msgs/Image`` that the conversions read (any message library)."""

    encoding: str
    width: int
    height: int
    step: int
    is_bigendian: int
    data: Any


class CompressedImageLike(Protocol):
    """The fields of a ``sensor_msgs/CompressedImage`` that the conversions read."""

    format: str
    data: Any


@dataclass(frozen=True)
class _Layout:
    """How the pixels of one encoding lie in ``Image.data``."""

    channels: int  # samples per pixel; packed 4:2:2 has 2 (luma + alternating chroma)
    sample_bytes: int  # 1, or 2 for the 16-bit encodings
    to_rgb: int | None = None  # OpenCV colour code to RGB; None: the samples already are RGB or direct
    planar_420: bool = False  # NV12/NV21: a half-height plane of interleaved chroma follows the luma rows

    @property
    def pixel_bytes(self) -> int:
        return self.channels * self.sample_bytes


# OpenCV names a Bayer pattern after the 2x2 block that starts at the second row and column,
# so ROS 'rggb' is OpenCV 'BG' (the same table as cv_bridge).
_BAYER_TO_RGB = {
    'rggb': cv2.COLOR_BayerBG2RGB,
    'bggr': cv2.COLOR_BayerRG2RGB,
    'gbrg': cv2.COLOR_BayerGR2RGB,
    'grbg': cv2.COLOR_BayerGB2RGB,
}

_LAYOUTS: dict[str, _Layout] = {
    'rgb8': _Layout(3, 1),
    'bgr8': _Layout(3, 1),
    'rgba8': _Layout(4, 1),
    'bgra8': _Layout(4, 1),
    'mono8': _Layout(1, 1),
    'rgb16': _Layout(3, 2),
    'bgr16': _Layout(3, 2, cv2.COLOR_BGR2RGB),
    'rgba16': _Layout(4, 2, cv2.COLOR_RGBA2RGB),
    'bgra16': _Layout(4, 2, cv2.COLOR_BGRA2RGB),
    'mono16': _Layout(1, 2, cv2.COLOR_GRAY2RGB),
    **{f'bayer_{pattern}8': _Layout(1, 1, code) for pattern, code in _BAYER_TO_RGB.items()},
    **{f'bayer_{pattern}16': _Layout(1, 2, code) for pattern, code in _BAYER_TO_RGB.items()},
    # 'yuv422' and 'yuv422_yuy2' are the older names of 'uyvy' and 'yuyv'.
    'uyvy': _Layout(2, 1, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422': _Layout(2, 1, cv2.COLOR_YUV2RGB_UYVY),
    'yuyv': _Layout(2, 1, cv2.COLOR_YUV2RGB_YUY2),
    'yuv422_yuy2': _Layout(2, 1, cv2.COLOR_YUV2RGB_YUY2),
    'nv12': _Layout(1, 1, cv2.COLOR_YUV2RGB_NV12, planar_420=True),
    'nv21': _Layout(1, 1, cv2.COLOR_YUV2RGB_NV21, planar_420=True),
}

DIRECT_LAYOUTS: dict[str, tuple[int, tuple[int, ...]]] = {
    'rgb8': (3, (0, 1, 2)),
    'bgr8': (3, (2, 1, 0)),
    'rgba8': (4, (0, 1, 2)),
    'bgra8': (4, (2, 1, 0)),
    'mono8': (1, (0, 0, 0)),
}
"""Encodings that ``image_to_array`` returns unchanged and the inference core takes directly:
encoding -> (channels in the array, the channel order that gives RGB)."""

DIRECT_ENCODINGS = frozenset(DIRECT_LAYOUTS)
"""Encodings that ``image_to_array`` returns unchanged, as views of the message data."""

SUPPORTED_ENCODINGS = frozenset(_LAYOUTS)
"""Every ``Image.encoding`` that ``image_to_array`` and ``array_to_image_fields`` accept."""

_CHROMA_PAIRS = ('uyvy', 'yuv422', 'yuyv', 'yuv422_yuy2', 'nv12', 'nv21')


def _layout_of(encoding: str) -> _Layout:
    try:
        return _LAYOUTS[encoding]
    except KeyError:
        raise ConversionError(
            f'Image encoding {encoding!r} is not supported; supported: {", ".join(sorted(_LAYOUTS))}'
        ) from None


def _buffer_rows(layout: _Layout, height: int) -> int:
    """Rows of ``step`` bytes that hold an image of ``height`` rows."""
    return height * 3 // 2 if layout.planar_420 else height


def _check_image_fields(encoding: str, width: int, height: int, step: int, layout: _Layout,
                        max_pixels: int) -> None:
    """Reject inconsistent or oversized headers using only the header fields."""
    name = f'Image ({encoding})'
    if width <= 0 or height <= 0:
        raise ConversionError(f'{name}: width {width} and height {height} must both be positive')
    if width * height > max_pixels:
        raise ConversionError(
            f'{name}: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}'
            ' (max_pixels)'
        )
    if encoding in _CHROMA_PAIRS and width % 2:
        raise ConversionError(f'{name}: width {width} must be even (chroma is shared by pixel pairs)')
    if layout.planar_420 and height % 2:
        raise ConversionError(f'{name}: height {height} must be even (chroma is shared by row pairs)')
    row_bytes = width * layout.pixel_bytes
    if step < row_bytes:
        raise ConversionError(
            f'{name}: step {step} is smaller than width {width} x {layout.pixel_bytes} bytes per pixel'
            f' = {row_bytes}'
        )


def _data_bytes(data: object, what: str) -> np.ndarray:
    """A flat uint8 view of a message's ``data`` (``array.array`` from rclpy, bytes, numpy)."""
    try:
        return np.frombuffer(data, np.uint8)
    except (TypeError, ValueError) as error:
        raise ConversionError(f'{what}: data of type {type(data).__name__} is not a byte buffer') from error


def image_to_array(msg: ImageLike, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Pixels of ``msg`` and their encoding.

    ``DIRECT_ENCODINGS`` come back unchanged as a view of ``msg.data`` (HxWxC, or HxW for
    ``mono8``; rows may be strided when ``step`` is padded): writing to it writes the message.
    Every other encoding is converted to a new contiguous HxWx3 ``rgb8`` array; 16-bit samples
    keep their most significant byte (``value >> 8``, honouring ``is_bigendian``).

    Raises ``ConversionError`` for an unsupported encoding, non-positive size, more than
    ``max_pixels`` pixels, ``step`` shorter than a row, or less data than ``step * height``.
    """
    layout = _layout_of(msg.encoding)
    width, height, step = int(msg.width), int(msg.height), int(msg.step)
    _check_image_fields(msg.encoding, width, height, step, layout, max_pixels)
    rows = _buffer_rows(layout, height)
    flat = _data_bytes(msg.data, f'Image ({msg.encoding})')
    if flat.size < step * rows:
        raise ConversionError(
            f'Image ({msg.encoding}): data has {flat.size} bytes, fewer than step {step} x {rows} rows'
            f' = {step * rows}'
        )
    samples = flat[: step * rows].reshape(rows, step)[:, : width * layout.pixel_bytes]
    if layout.sample_bytes == 2:
        samples = samples[:, 0 if msg.is_bigendian else 1 :: 2]
    if layout.channels > 1:
        samples = samples.reshape(rows, width, layout.channels)
    if msg.encoding in DIRECT_ENCODINGS:
        return samples, msg.encoding
    samples = np.ascontiguousarray(samples)
    if layout.to_rgb is None:
        return samples, 'rgb8'
    return cv2.cvtColor(samples, layout.to_rgb), 'rgb8'


def direct_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """H x W x 3 RGB from an array in one of ``DIRECT_LAYOUTS`` (what ``image_to_array`` returns)."""
    _, to_rgb = DIRECT_LAYOUTS[encoding]
    if to_rgb == (0, 1, 2) and pixels.ndim == 3 and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels)
    channels = pixels if pixels.ndim == 3 else pixels[..., None]
    return np.ascontiguousarray(channels[..., list(to_rgb)])


def array_to_image_fields(array_: np.ndarray, encoding: str = 'rgb8') -> dict[str, Any]:
    """The ``Image`` fields (all but ``header``) of ``array_`` in ``encoding``; ``data`` is flat uint8.

    ``array_`` is laid out as ``image_to_array`` would read it: (H, W) or (H, W, 1) for one-channel
    encodings such as ``mono8`` masks and Bayer mosaics, (H, W, C) otherwise ((H, W, 2) for packed
    4:2:2), and (H * 3 / 2, W) for NV12/NV21 as OpenCV holds them. 8-bit encodings take uint8,
    16-bit encodings uint16 in either byte order (``is_bigendian`` follows the array). ``data`` is
    a view of ``array_`` when it is C-contiguous, else a contiguous copy.
    """
    layout = _layout_of(encoding)
    array_ = np.asarray(array_)
    if layout.channels == 1 and array_.ndim == 3 and array_.shape[2] == 1:
        array_ = array_[:, :, 0]
    ndim = 2 if layout.channels == 1 else 3
    if (
        array_.dtype.kind != 'u'
        or array_.dtype.itemsize != layout.sample_bytes
        or array_.ndim != ndim
        or (ndim == 3 and array_.shape[2] != layout.channels)
    ):
        rows = 'H * 3 / 2' if layout.planar_420 else 'H'
        shape = f'({rows}, W)' if ndim == 2 else f'(H, W, {layout.channels})'
        raise ConversionError(
            f'{encoding} image: needs a uint{8 * layout.sample_bytes} array of shape {shape},'
            f' got {array_.dtype} {array_.shape}'
        )
    rows, width = array_.shape[:2]
    if layout.planar_420 and rows % 3:
        raise ConversionError(f'{encoding} image: {rows} rows is not 3/2 of an image height')
    height = rows * 2 // 3 if layout.planar_420 else rows
    step = width * layout.pixel_bytes
    _check_image_fields(encoding, width, height, step, layout, max_pixels=sys.maxsize)
    byte_order = array_.dtype.byteorder
    return {
        'height': height,
        'width': width,
        'encoding': encoding,
        'is_bigendian': int(byte_order == '>' or (byte_order == '=' and sys.byteorder == 'big')),
        'step': step,
        'data': np.ascontiguousarray(array_).reshape(-1).view(np.uint8),
    }


_JPEG_SOI = b'\xff\xd8'
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field: TEM and the restart markers RST0..RST7.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_SOS, _JPEG_EOI = 0xDA, 0xD9


def _jpeg_size(payload: memoryview) -> tuple[int, int]:
    """(width, height) from the first JPEG frame header, walking the marker segments."""
    pos = len(_JPEG_SOI)
    while pos + 4 <= len(payload):
        if payload[pos] != 0xFF:
            raise ConversionError(f'CompressedImage (jpeg): no marker at byte {pos}; corrupt header')
        marker = payload[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (_JPEG_SOS, _JPEG_EOI):
            break
        if marker in _JPEG_SOF and pos + 9 <= len(payload):
            height = int.from_bytes(payload[pos + 5 : pos + 7], 'big')
            width = int.from_bytes(payload[pos + 7 : pos + 9], 'big')
            return width, height
        pos += 2 + int.from_bytes(payload[pos + 2 : pos + 4], 'big')
    raise ConversionError('CompressedImage (jpeg): no frame header (SOF) before the image data')


def _png_size(payload: memoryview) -> tuple[int, int]:
    """(width, height) from the PNG IHDR chunk, which must come first."""
    ihdr = payload[len(_PNG_SIGNATURE) : len(_PNG_SIGNATURE) + 16]
    if len(ihdr) < 16 or ihdr[4:8].tobytes() != b'IHDR':
        raise ConversionError('CompressedImage (png): no IHDR chunk after the signature; corrupt header')
    return int.from_bytes(ihdr[8:12], 'big'), int.from_bytes(ihdr[12:16], 'big')


def compressed_to_array(msg: CompressedImageLike, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Decoded HxWx3 ``rgb8`` pixels of a JPEG or PNG ``CompressedImage``, and ``'rgb8'``.

    The format is recognised from the payload's signature (``msg.format`` strings vary between
    publishers). The size in the JPEG frame header or PNG IHDR is checked against ``max_pixels``
    before decoding, so a small file that claims a huge image (a decompression bomb) is refused
    without being decoded. Corrupt payloads raise ``ConversionError``.
    """
    payload = _data_bytes(msg.data, f'CompressedImage ({msg.format})')
    view = memoryview(payload)
    if view[: len(_PNG_SIGNATURE)].tobytes() == _PNG_SIGNATURE:
        kind, (width, height) = 'png', _png_size(view)
    elif view[: len(_JPEG_SOI)].tobytes() == _JPEG_SOI:
        kind, (width, height) = 'jpeg', _jpeg_size(view)
    else:
        raise ConversionError(
            f'CompressedImage (format {msg.format!r}): payload of {payload.size} bytes is neither'
            ' JPEG nor PNG'
        )
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise ConversionError(
            f'CompressedImage ({kind}): header claims {width}x{height} pixels; needs 1..{max_pixels}'
            ' (max_pixels)'
        )
    bgr = cv2.imdecode(payload, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ConversionError(
            f'CompressedImage ({kind}): {payload.size} bytes could not be decoded (corrupt data)'
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 'rgb8'


_EXTENSIONS = {'jpeg': '.jpg', 'png': '.png'}


def encode_compressed(array_: np.ndarray, format: str = 'jpeg', *, jpeg_quality: int = 90
                      ) -> tuple[str, np.ndarray]:
    """The ``CompressedImage`` ``format`` string and flat uint8 payload of an RGB or mono uint8 array.

    ``format`` is ``'jpeg'`` or ``'png'``; the string is written the way ``compressed_image_transport``
    writes it (``'rgb8; jpeg compressed bgr8'``).
    """
    if format not in _EXTENSIONS:
        raise ConversionError(f'CompressedImage: format {format!r} is not one of {sorted(_EXTENSIONS)}')
    array_ = np.asarray(array_)
    is_rgb = array_.ndim == 3 and array_.shape[2] == 3
    if array_.dtype != np.uint8 or not (is_rgb or array_.ndim == 2) or 0 in array_.shape:
        raise ConversionError(
            f'CompressedImage ({format}): needs a non-empty uint8 (H, W, 3) RGB or (H, W) mono array,'
            f' got {array_.dtype} {array_.shape}'
        )
    pixels = cv2.cvtColor(array_, cv2.COLOR_RGB2BGR) if is_rgb else array_
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if format == 'jpeg' else []
    ok, encoded = cv2.imencode(_EXTENSIONS[format], pixels, params)
    if not ok:
        raise ConversionError(f'CompressedImage: OpenCV could not encode {array_.shape} as {format}')
    source, target = ('rgb8', 'bgr8') if is_rgb else ('mono8', 'mono8')
    return f'{source}; {format} compressed {target}', encoded.reshape(-1)
