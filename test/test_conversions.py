"""sensor_msgs <-> numpy conversions: every encoding against OpenCV, round trips, zero copy, bad input."""

from __future__ import annotations

import array
import tracemalloc
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from seg_ros.ros.conversions import (
    DIRECT_ENCODINGS,
    MAX_PIXELS,
    SUPPORTED_ENCODINGS,
    ConversionError,
    array_to_compressed,
    array_to_image,
    compressed_to_array,
    image_to_array,
)

SIZES = [(1, 2), (2, 2), (3, 5), (7, 33), (48, 64), (37, 50)]  # (height, width); odd sizes included
EVEN_SIZES = [(2, 2), (4, 6), (10, 34), (48, 64)]  # chroma-subsampled encodings need even sizes
CHANNELS = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
# Explicitly named OpenCV codes (independent of the module's table of OpenCV's older names).
BAYER_CODES = {
    'rggb': cv2.COLOR_BayerRGGB2RGB,
    'bggr': cv2.COLOR_BayerBGGR2RGB,
    'gbrg': cv2.COLOR_BayerGBRG2RGB,
    'grbg': cv2.COLOR_BayerGRBG2RGB,
}
# Offsets (row, column) of R, G and B in each 2x2 Bayer cell; the second G is at the remaining cell.
BAYER_SITES = {
    'rggb': ((0, 0), (0, 1), (1, 1)),
    'bggr': ((1, 1), (0, 1), (0, 0)),
    'gbrg': ((1, 0), (0, 0), (0, 1)),
    'grbg': ((0, 1), (0, 0), (1, 0)),
}


def random_pixels(shape: tuple[int, ...], seed: int = 0, dtype: type = np.uint8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def smooth_rgb(height: int, width: int) -> np.ndarray:
    """A gradient of at most ~2.5 levels per pixel: demosaicing and chroma subsampling keep it close."""
    y, x = np.mgrid[0:height, 0:width] / 64
    return np.stack([40 + 150 * x, 60 + 120 * y, 200 - 100 * x], -1).clip(0, 255).astype(np.uint8)


def pad_rows(msg: Image, pad: int) -> Image:
    """``msg`` with ``pad`` junk bytes after every row (a larger ``step``), as some drivers send."""
    rows = np.frombuffer(msg.data, np.uint8).reshape(-1, msg.step)
    padded = np.pad(rows, ((0, 0), (0, pad)), constant_values=0xAB)
    msg.step += pad
    msg.data = array.array('B', padded.tobytes())
    return msg


def bayer_mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample one channel per pixel the way a Bayer sensor with ``pattern`` does."""
    mosaic = rgb[:, :, 1].copy()  # green everywhere, then red and blue at their sites
    (r_row, r_col), _, (b_row, b_col) = BAYER_SITES[pattern]
    mosaic[r_row::2, r_col::2] = rgb[r_row::2, r_col::2, 0]
    mosaic[b_row::2, b_col::2] = rgb[b_row::2, b_col::2, 2]
    return mosaic


def nv12_from_rgb(rgb: np.ndarray, swap_chroma: bool = False) -> np.ndarray:
    """(H * 3 / 2, W) NV12 (or NV21) made from OpenCV's planar I420."""
    height, width = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1)
    luma, chroma = i420[: height * width], i420[height * width :].reshape(2, -1)
    u, v = (chroma[1], chroma[0]) if swap_chroma else (chroma[0], chroma[1])
    interleaved = np.stack([u, v], -1).reshape(height // 2, width)
    return np.concatenate([luma.reshape(height, width), interleaved])


def data_view(msg: Image | CompressedImage) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8)


# --- direct encodings: zero copy -------------------------------------------------------------------


@pytest.mark.parametrize('encoding', sorted(DIRECT_ENCODINGS))
@pytest.mark.parametrize('size', SIZES)
def test_direct_encodings_round_trip_without_copy(encoding: str, size: tuple[int, int]) -> None:
    channels = CHANNELS[encoding]
    pixels = random_pixels(size if channels == 1 else (*size, channels), seed=sum(size))
    msg = array_to_image(pixels, encoding)
    assert isinstance(msg.data, array.array)
    assert (msg.height, msg.width, msg.step) == (*size, size[1] * channels)

    result, result_encoding = image_to_array(msg)

    assert result_encoding == encoding
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, pixels)
    assert np.shares_memory(result, data_view(msg))


@pytest.mark.parametrize('encoding', sorted(DIRECT_ENCODINGS))
def test_padded_step_is_a_view_that_skips_the_padding(encoding: str) -> None:
    channels = CHANNELS[encoding]
    pixels = random_pixels((9, 13) if channels == 1 else (9, 13, channels), seed=3)
    msg = pad_rows(array_to_image(pixels, encoding), pad=7)

    result, _ = image_to_array(msg)

    np.testing.assert_array_equal(result, pixels)
    assert np.shares_memory(result, data_view(msg))
    result[0, 0] = 17  # a view: writes reach the message
    assert msg.data[0] == 17


def test_view_survives_rclpy_serialization_round_trip() -> None:
    pixels = random_pixels((24, 31, 3), seed=5)
    stamp = Time(sec=12, nanosec=345)
    msg = array_to_image(pixels, 'bgr8', Header(stamp=stamp, frame_id='camera'))

    received = deserialize_message(serialize_message(msg), Image)
    result, encoding = image_to_array(received)

    assert (encoding, received.header.frame_id, received.header.stamp) == ('bgr8', 'camera', stamp)
    np.testing.assert_array_equal(result, pixels)
    assert np.shares_memory(result, data_view(received))


def test_rosbags_style_message_with_numpy_data() -> None:
    pixels = random_pixels((6, 5), seed=6)
    msg = SimpleNamespace(
        encoding='mono8', height=6, width=5, step=5, is_bigendian=0, data=pixels.reshape(-1)
    )

    result, _ = image_to_array(msg)

    np.testing.assert_array_equal(result, pixels)
    assert np.shares_memory(result, pixels)


# --- converted encodings, against OpenCV on the same raw pixels ---------------------------------


@pytest.mark.parametrize('big_endian', [False, True])
@pytest.mark.parametrize('size', SIZES)
def test_mono16_keeps_the_high_byte(size: tuple[int, int], big_endian: bool) -> None:
    values = random_pixels(size, seed=1, dtype=np.uint16)
    msg = pad_rows(array_to_image(values.astype('>u2' if big_endian else '<u2'), 'mono16'), pad=3)
    assert msg.is_bigendian == big_endian

    result, encoding = image_to_array(msg)

    assert encoding == 'rgb8'
    expected = cv2.cvtColor((values >> 8).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize('big_endian', [False, True])
@pytest.mark.parametrize(
    ('encoding', 'channels', 'code'),
    [
        ('rgb16', 3, None),
        ('bgr16', 3, cv2.COLOR_BGR2RGB),
        ('rgba16', 4, cv2.COLOR_RGBA2RGB),
        ('bgra16', 4, cv2.COLOR_BGRA2RGB),
    ],
)
def test_colour16_encodings(encoding: str, channels: int, code: int | None, big_endian: bool) -> None:
    values = random_pixels((11, 17, channels), seed=2, dtype=np.uint16)
    msg = pad_rows(array_to_image(values.astype('>u2' if big_endian else '<u2'), encoding), pad=2)

    result, result_encoding = image_to_array(msg)

    high = (values >> 8).astype(np.uint8)
    assert result_encoding == 'rgb8'
    np.testing.assert_array_equal(result, high if code is None else cv2.cvtColor(high, code))


@pytest.mark.parametrize('pattern', sorted(BAYER_CODES))
@pytest.mark.parametrize('size', SIZES)
def test_bayer8_matches_opencv_demosaicing(pattern: str, size: tuple[int, int]) -> None:
    mosaic = bayer_mosaic(random_pixels((*size, 3), seed=4), pattern)
    msg = pad_rows(array_to_image(mosaic, f'bayer_{pattern}8'), pad=5)

    result, encoding = image_to_array(msg)

    assert encoding == 'rgb8'
    np.testing.assert_array_equal(result, cv2.cvtColor(mosaic, BAYER_CODES[pattern]))


@pytest.mark.parametrize('pattern', sorted(BAYER_CODES))
def test_bayer_pattern_recovers_a_flat_colour(pattern: str) -> None:
    colour = np.array([200, 100, 50], np.uint8)
    mosaic = bayer_mosaic(np.broadcast_to(colour, (8, 10, 3)), pattern)

    result, _ = image_to_array(array_to_image(mosaic, f'bayer_{pattern}8'))

    np.testing.assert_array_equal(result[2:-2, 2:-2], np.broadcast_to(colour, (4, 6, 3)))


@pytest.mark.parametrize('big_endian', [False, True])
@pytest.mark.parametrize('pattern', sorted(BAYER_CODES))
def test_bayer16_demosaics_the_high_byte(pattern: str, big_endian: bool) -> None:
    mosaic = bayer_mosaic(random_pixels((10, 14, 3), seed=7, dtype=np.uint16), pattern)
    msg = array_to_image(mosaic.astype('>u2' if big_endian else '<u2'), f'bayer_{pattern}16')

    result, _ = image_to_array(msg)

    np.testing.assert_array_equal(result, cv2.cvtColor((mosaic >> 8).astype(np.uint8), BAYER_CODES[pattern]))


@pytest.mark.parametrize(
    ('encoding', 'pack', 'unpack'),
    [
        ('uyvy', cv2.COLOR_RGB2YUV_UYVY, cv2.COLOR_YUV2RGB_UYVY),
        ('yuv422', cv2.COLOR_RGB2YUV_UYVY, cv2.COLOR_YUV2RGB_UYVY),
        ('yuyv', cv2.COLOR_RGB2YUV_YUY2, cv2.COLOR_YUV2RGB_YUY2),
        ('yuv422_yuy2', cv2.COLOR_RGB2YUV_YUY2, cv2.COLOR_YUV2RGB_YUY2),
    ],
)
@pytest.mark.parametrize('size', EVEN_SIZES)
def test_packed_yuv422(encoding: str, pack: int, unpack: int, size: tuple[int, int]) -> None:
    rgb = smooth_rgb(*size)
    packed = cv2.cvtColor(rgb, pack)
    msg = pad_rows(array_to_image(packed, encoding), pad=4)

    result, result_encoding = image_to_array(msg)

    assert result_encoding == 'rgb8'
    np.testing.assert_array_equal(result, cv2.cvtColor(packed, unpack))
    assert np.abs(result.astype(int) - rgb).max() <= 8  # chroma shared by pixel pairs of a gradient


@pytest.mark.parametrize(
    ('encoding', 'code'), [('nv12', cv2.COLOR_YUV2RGB_NV12), ('nv21', cv2.COLOR_YUV2RGB_NV21)]
)
@pytest.mark.parametrize('size', EVEN_SIZES)
def test_semi_planar_nv12_nv21(encoding: str, code: int, size: tuple[int, int]) -> None:
    rgb = smooth_rgb(*size)
    planes = nv12_from_rgb(rgb, swap_chroma=encoding == 'nv21')
    msg = pad_rows(array_to_image(planes, encoding), pad=6)
    assert (msg.height, msg.width) == size

    result, _ = image_to_array(msg)

    np.testing.assert_array_equal(result, cv2.cvtColor(planes, code))
    assert np.abs(result.astype(int) - rgb).max() <= 8


def test_every_supported_encoding_is_covered_here() -> None:
    tested = DIRECT_ENCODINGS | {'mono16', 'rgb16', 'bgr16', 'rgba16', 'bgra16', 'uyvy', 'yuv422', 'yuyv'}
    tested |= {'yuv422_yuy2', 'nv12', 'nv21'} | {f'bayer_{p}{bits}' for p in BAYER_CODES for bits in (8, 16)}
    assert tested == SUPPORTED_ENCODINGS


@settings(max_examples=300, deadline=None)
@given(
    encoding=st.sampled_from([*sorted(SUPPORTED_ENCODINGS), '32FC1', '']),
    width=st.integers(-1, 40),
    height=st.integers(-1, 40),
    step=st.integers(-1, 200),
    data_size=st.integers(0, 5000),
    big_endian=st.booleans(),
)
def test_arbitrary_fields_either_convert_or_raise_conversion_error(
    encoding: str, width: int, height: int, step: int, data_size: int, big_endian: bool
) -> None:
    msg = SimpleNamespace(
        encoding=encoding,
        width=width,
        height=height,
        step=step,
        is_bigendian=big_endian,
        data=bytes(data_size),
    )
    try:
        result, result_encoding = image_to_array(msg)
    except ConversionError:
        return
    assert result.shape[:2] == (height, width)
    assert result_encoding in DIRECT_ENCODINGS


# --- bad raw images ------------------------------------------------------------------------------


def raw_image(
    encoding: str = 'rgb8', width: int = 4, height: int = 3, step: int | None = None, size: int | None = None
) -> Image:
    """An ``Image`` with zeroed data of ``size`` bytes (default ``step * height``)."""
    step = width * 3 if step is None else step
    data = bytes(step * height if size is None else size)
    return Image(encoding=encoding, width=width, height=height, step=step, data=array.array('B', data))


@pytest.mark.parametrize(
    ('msg', 'message'),
    [
        (raw_image(encoding='32FC1'), "encoding '32FC1' is not supported"),
        (raw_image(encoding='RGB8'), "encoding 'RGB8' is not supported"),
        (raw_image(width=0), 'width 0 and height 3 must both be positive'),
        (raw_image(height=0, step=12), 'width 4 and height 0 must both be positive'),
        (raw_image(step=11), r'step 11 is smaller than width 4 x 3 bytes per pixel = 12'),
        (raw_image(size=35), r'data has 35 bytes, fewer than step 12 x 3 rows = 36'),
        (raw_image(encoding='mono16', step=7, size=21), r'step 7 is smaller than width 4 x 2'),
        (raw_image(encoding='uyvy', width=3, step=6), 'width 3 must be even'),
        (raw_image(encoding='nv12', step=4), 'height 3 must be even'),
        (raw_image(encoding='nv12', height=4, step=4, size=16), r'fewer than step 4 x 6 rows = 24'),
    ],
)
def test_inconsistent_images_are_rejected(msg: Image, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        image_to_array(msg)


def test_huge_claimed_size_is_rejected_before_allocating() -> None:
    msg = Image(encoding='rgb8', width=100_000, height=100_000, step=300_000, data=array.array('B', b'tiny'))
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=r'100000x100000 = 10000000000 pixels exceeds the limit'):
            image_to_array(msg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert MAX_PIXELS < 100_000 * 100_000


def test_max_pixels_is_configurable() -> None:
    msg = array_to_image(random_pixels((10, 10)), 'mono8')
    with pytest.raises(ConversionError, match='limit of 99'):
        image_to_array(msg, max_pixels=99)
    assert image_to_array(msg, max_pixels=100)[0].shape == (10, 10)


def test_data_that_is_not_a_buffer_is_rejected() -> None:
    msg = SimpleNamespace(encoding='mono8', width=2, height=1, step=2, is_bigendian=0, data=[1, 2])
    with pytest.raises(ConversionError, match='data of type list is not a byte buffer'):
        image_to_array(msg)


@pytest.mark.parametrize(
    ('pixels', 'encoding', 'message'),
    [
        (np.zeros((4, 4, 3), np.float32), 'rgb8', r'needs a uint8 array of shape \(H, W, 3\), got float32'),
        (np.zeros((4, 4, 4), np.uint8), 'rgb8', r'shape \(H, W, 3\), got uint8 \(4, 4, 4\)'),
        (np.zeros((4, 4), np.int16), 'mono16', r'needs a uint16 array of shape \(H, W\)'),
        (np.zeros((4, 4), np.uint8), 'mono16', 'needs a uint16 array'),
        (np.zeros((4, 4, 3), np.uint8), 'mono8', r'shape \(H, W\), got uint8 \(4, 4, 3\)'),
        (np.zeros((4, 4), np.uint8), 'nv12', r'4 rows is not 3/2 of an image height'),
        (np.zeros((2, 3, 2), np.uint8), 'yuyv', 'width 3 must be even'),
        (np.zeros((0, 4, 3), np.uint8), 'rgb8', 'must both be positive'),
        (np.zeros((4, 4), np.uint8), 'jpeg', "encoding 'jpeg' is not supported"),
    ],
)
def test_array_to_image_rejects_arrays_that_do_not_fit(
    pixels: np.ndarray, encoding: str, message: str
) -> None:
    with pytest.raises(ConversionError, match=message):
        array_to_image(pixels, encoding)


def test_array_to_image_copies_non_contiguous_arrays_and_keeps_the_header() -> None:
    pixels = random_pixels((20, 30, 3), seed=8)[::2, ::3]
    header = Header(stamp=Time(sec=1, nanosec=2), frame_id='cam')

    msg = array_to_image(pixels, 'rgb8', header)

    assert msg.header == header
    assert (msg.height, msg.width, msg.step, msg.is_bigendian) == (10, 10, 30, 0)
    np.testing.assert_array_equal(image_to_array(msg)[0], pixels)


def test_mono8_mask_with_channel_axis() -> None:
    mask = random_pixels((5, 8, 1), seed=9)
    msg = array_to_image(mask, 'mono8')
    assert (msg.height, msg.width, msg.step) == (5, 8, 8)
    np.testing.assert_array_equal(image_to_array(msg)[0], mask[:, :, 0])


# --- compressed images ---------------------------------------------------------------------------


@pytest.mark.parametrize('size', [(1, 1), (7, 33), (48, 64)])
def test_png_round_trip_is_exact(size: tuple[int, int]) -> None:
    rgb = random_pixels((*size, 3), seed=10)
    msg = array_to_compressed(rgb, 'png')
    assert msg.format == 'rgb8; png compressed bgr8'

    result, encoding = compressed_to_array(msg)

    assert encoding == 'rgb8'
    np.testing.assert_array_equal(result, rgb)


def test_mono_png_decodes_to_grey_rgb() -> None:
    mono = random_pixels((9, 12), seed=11)
    msg = array_to_compressed(mono, 'png')
    assert msg.format == 'mono8; png compressed mono8'
    np.testing.assert_array_equal(compressed_to_array(msg)[0], np.repeat(mono[:, :, None], 3, axis=2))


def test_jpeg_round_trip_is_close_and_keeps_the_header() -> None:
    rgb = smooth_rgb(72, 96)
    header = Header(stamp=Time(sec=3), frame_id='cam')
    msg = array_to_compressed(rgb, 'jpeg', jpeg_quality=95, header=header)
    assert msg.header == header
    assert msg.format == 'rgb8; jpeg compressed bgr8'

    received = deserialize_message(serialize_message(msg), CompressedImage)
    result, _ = compressed_to_array(received)

    assert result.shape == rgb.shape
    assert np.abs(result.astype(int) - rgb).mean() < 2.0
    np.testing.assert_array_equal(
        result, cv2.cvtColor(cv2.imdecode(data_view(msg), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    )


def compressed(payload: bytes, format: str = 'jpeg') -> CompressedImage:
    return CompressedImage(format=format, data=array.array('B', payload))


def with_size_in_header(msg: CompressedImage, width: int, height: int) -> bytes:
    """The payload of ``msg`` with its JPEG SOF0 / PNG IHDR size replaced (a decompression bomb)."""
    payload = bytearray(data_view(msg).tobytes())
    if payload.startswith(b'\x89PNG'):
        payload[16:24] = width.to_bytes(4, 'big') + height.to_bytes(4, 'big')
    else:
        sof = payload.index(b'\xff\xc0')
        payload[sof + 5 : sof + 9] = height.to_bytes(2, 'big') + width.to_bytes(2, 'big')
    return bytes(payload)


@pytest.mark.parametrize('format', ['jpeg', 'png'])
def test_decompression_bomb_header_is_refused_before_decoding(format: str) -> None:
    bomb = with_size_in_header(array_to_compressed(smooth_rgb(16, 16), format), 65_000, 65_000)
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=rf'\({format}\): header claims 65000x65000 pixels'):
            compressed_to_array(compressed(bomb, format))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_compressed_max_pixels_is_configurable() -> None:
    msg = array_to_compressed(smooth_rgb(10, 10), 'png')
    with pytest.raises(ConversionError, match='needs 1..99'):
        compressed_to_array(msg, max_pixels=99)
    assert compressed_to_array(msg, max_pixels=100)[0].shape == (10, 10, 3)


def test_zero_size_in_header_is_refused() -> None:
    payload = with_size_in_header(array_to_compressed(smooth_rgb(8, 8), 'jpeg'), 0, 8)
    with pytest.raises(ConversionError, match='header claims 0x8 pixels'):
        compressed_to_array(compressed(payload))


def test_corrupt_payloads_are_rejected() -> None:
    jpeg = data_view(array_to_compressed(smooth_rgb(32, 32), 'jpeg')).tobytes()
    png = data_view(array_to_compressed(smooth_rgb(32, 32), 'png')).tobytes()
    cases = [
        (b'', 'payload of 0 bytes is neither JPEG nor PNG'),
        (b'GIF89a' + bytes(100), 'neither JPEG nor PNG'),
        (b'\xff\xd8' + bytes(50), r'no marker at byte 2'),
        (b'\xff\xd8\xff\xda' + bytes(50), r'no frame header \(SOF\)'),
        (jpeg[: len(jpeg) // 2], r'\(jpeg\): \d+ bytes could not be decoded'),
        (png[:8] + b'\x00\x00\x00\x0dJUNK' + bytes(40), 'no IHDR chunk'),
        (png[: len(png) // 2], r'\(png\): \d+ bytes could not be decoded'),
    ]
    for payload, message in cases:
        with pytest.raises(ConversionError, match=message):
            compressed_to_array(compressed(payload))


@pytest.mark.parametrize(
    ('pixels', 'format', 'message'),
    [
        (np.zeros((4, 4, 3), np.uint8), 'bmp', "format 'bmp' is not one of"),
        (np.zeros((4, 4, 3), np.float32), 'png', r'got float32 \(4, 4, 3\)'),
        (np.zeros((4, 4, 4), np.uint8), 'png', r'got uint8 \(4, 4, 4\)'),
        (np.zeros((0, 4), np.uint8), 'jpeg', r'non-empty'),
    ],
)
def test_array_to_compressed_rejects_bad_input(pixels: np.ndarray, format: str, message: str) -> None:
    with pytest.raises(ConversionError, match=message):
        array_to_compressed(pixels, format)
