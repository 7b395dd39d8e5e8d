"""Property-based inputs (hypothesis) for the image converters and the node's input path.

Raw images get random encodings, sizes, steps, data lengths and byte orders, from near-valid
layouts to wild header values; compressed images are real JPEG and PNG payloads truncated,
bit-flipped, padded with noise or given a rewritten size. Checked: nothing but
``ConversionError`` escapes, what is accepted has the size the header claims and no more pixels
than the limit, the node publishes no answer to a bad frame, counts it, and answers the next good
frame with the offline ``Segmenter``'s mask. The quick runs are part of the default suite; the
long ones (``reliability``) run many more examples.
"""

from __future__ import annotations

import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from seg_ros.inference.segmenter import Segmenter
from seg_ros.ros.conversions import (
    DIRECT_ENCODINGS,
    SUPPORTED_ENCODINGS,
    ConversionError,
    array_to_image,
    compressed_to_array,
    image_to_array,
)
from seg_ros.ros.node import SegmentNode

from ..support import CHANNEL_NET, channel_checkpoint
from ..support.ros import Ros, pixels, wait_for

MAX_PIXELS = 20_000  # small, so that rewritten header sizes cross it both ways
UINT32 = st.integers(0, 2**32 - 1)
ODD_ENCODINGS = ('', '32FC1', 'RGB8', 'rgb8 ', 'bayer_rggb', '8UC3', 'yuv420', 'jpeg')
# Bytes per pixel of each encoding (sensor_msgs/image_encodings.hpp), and those with 3/2 rows (NV12/NV21).
PIXEL_BYTES = {'mono8': 1, 'mono16': 2, 'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'rgb16': 6, 'bgr16': 6,
               'rgba16': 8, 'bgra16': 8, 'uyvy': 2, 'yuv422': 2, 'yuyv': 2, 'yuv422_yuy2': 2, 'nv12': 1, 'nv21': 1,
               **{f'bayer_{p}{bits}': bits // 8 for p in ('rggb', 'bggr', 'gbrg', 'grbg') for bits in (8, 16)}}
PLANAR_420 = ('nv12', 'nv21')


def random_bytes(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


@st.composite
def raw_images(draw: st.DrawFn) -> Image:
    """A ``sensor_msgs/Image``: half near a valid layout (a supported encoding, small sizes, and a
    step, row count and data length that are right or off by a little), half wild header values of
    the field types (uint32) over a few kB of data."""
    if draw(st.booleans()):
        encoding = draw(st.sampled_from(sorted(SUPPORTED_ENCODINGS)))
        width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
        pixel_bytes = draw(st.sampled_from((PIXEL_BYTES[encoding],) * 4 + (1, 2, 3, 4, 6, 8)))
        step = width * pixel_bytes + draw(st.sampled_from((0, 0, 0, 1, 3, 16)))
        rows = height * 3 // 2 if encoding in PLANAR_420 and draw(st.integers(0, 3)) else height
        size = max(0, step * rows + draw(st.sampled_from((0, 0, 0, 0, -1, 1, -step, 7))))
    else:
        encoding = draw(st.one_of(st.sampled_from(sorted(SUPPORTED_ENCODINGS)), st.sampled_from(ODD_ENCODINGS),
                                  st.text(max_size=16)))
        width, height, step = draw(UINT32), draw(UINT32), draw(UINT32)
        size = draw(st.integers(0, 4096))
    data = array.array('B', random_bytes(draw(st.integers(0, 2**32 - 1)), size))
    return Image(encoding=encoding, width=width, height=height, step=step,
                 is_bigendian=draw(st.integers(0, 255)), data=data)


def _encoded(image: np.ndarray, extension: str, params: tuple[int, ...] = ()) -> bytes:
    ok, payload = cv2.imencode(extension, image, list(params))
    assert ok
    return payload.tobytes()


def _base_payloads() -> list[bytes]:
    rng = np.random.default_rng(0)
    colour = cv2.GaussianBlur(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), (5, 5), 0)
    grey = colour[:, :, 1].copy()
    return [
        _encoded(colour, '.jpg'),
        _encoded(grey, '.jpg'),
        _encoded(colour, '.jpg', (cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        _encoded(colour, '.png'),
        _encoded(grey, '.png'),
        _encoded(colour.astype(np.uint16) * 257, '.png'),
    ]


BASE_PAYLOADS = _base_payloads()


def _rewrite_size(payload: bytearray, width: int, height: int) -> None:
    """Put ``width`` x ``height`` in the PNG IHDR or the first JPEG frame header (SOF0 or SOF2)."""
    if payload.startswith(b'\x89PNG'):
        payload[16:24] = width.to_bytes(4, 'big') + height.to_bytes(4, 'big')
        return
    sof = max(payload.find(b'\xff\xc0'), payload.find(b'\xff\xc2'))
    payload[sof + 5:sof + 9] = (height % 65536).to_bytes(2, 'big') + (width % 65536).to_bytes(2, 'big')


@st.composite
def compressed_images(draw: st.DrawFn) -> CompressedImage:
    """A real JPEG or PNG, then damaged: cut short, bits flipped, noise inserted, or a new size."""
    payload = bytearray(draw(st.sampled_from(BASE_PAYLOADS)))
    damage = draw(st.sampled_from(('none', 'truncate', 'flip', 'insert', 'size', 'noise')))
    if damage == 'truncate':
        del payload[draw(st.integers(0, len(payload) - 1)):]
    elif damage == 'flip':
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(payload) - 1))
            payload[position] ^= 1 << draw(st.integers(0, 7))
    elif damage == 'insert':
        position = draw(st.integers(0, len(payload)))
        payload[position:position] = random_bytes(draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 64)))
    elif damage == 'size':
        _rewrite_size(payload, draw(st.integers(0, 70_000)), draw(st.integers(0, 70_000)))
    elif damage == 'noise':  # a valid signature, then anything
        payload[8:] = random_bytes(draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 512)))
    msg_format = draw(st.sampled_from(('jpeg', 'png', 'rgb8; jpeg compressed bgr8', '', 'tiff')))
    return CompressedImage(format=msg_format, data=array.array('B', bytes(payload)))


def convert(msg: Image | CompressedImage) -> tuple[np.ndarray, str] | None:
    """What the node's converter makes of ``msg``: pixels and encoding, or None for a bad frame.

    Anything but ``ConversionError`` escapes (and fails the test); what comes back is checked
    against the header it came from.
    """
    to_array = compressed_to_array if isinstance(msg, CompressedImage) else image_to_array
    try:
        image, encoding = to_array(msg, max_pixels=MAX_PIXELS)
    except ConversionError:
        return None
    assert image.dtype == np.uint8 and image.shape[0] * image.shape[1] <= MAX_PIXELS
    if isinstance(msg, CompressedImage):
        assert encoding == 'rgb8' and image.ndim == 3 and image.shape[2] == 3
    else:
        assert image.shape[:2] == (msg.height, msg.width)
        assert encoding == msg.encoding if msg.encoding in DIRECT_ENCODINGS else encoding == 'rgb8'
    return image, encoding


def run_converter_fuzz(strategy: st.SearchStrategy, examples: int) -> Counter:
    outcomes: Counter = Counter()

    @settings(max_examples=examples, deadline=None, database=None)
    @given(msg=strategy)
    def check(msg: Image | CompressedImage) -> None:
        outcomes['accepted' if convert(msg) is not None else 'rejected'] += 1

    check()
    return outcomes


@pytest.mark.parametrize('kind', ['raw', 'compressed'])
def test_converters_take_anything(kind: str, figures) -> None:
    outcomes = run_converter_fuzz(raw_images() if kind == 'raw' else compressed_images(), 200)
    figures(examples=sum(outcomes.values()), **outcomes, exceptions_escaped=0)
    assert outcomes['accepted'] and outcomes['rejected']


@pytest.mark.reliability
@pytest.mark.parametrize('kind', ['raw', 'compressed'])
def test_converters_take_anything_long(kind: str, figures) -> None:
    outcomes = run_converter_fuzz(raw_images() if kind == 'raw' else compressed_images(), 5_000)
    figures(examples=sum(outcomes.values()), **outcomes, exceptions_escaped=0)
    assert outcomes['accepted'] and outcomes['rejected']


# -- through the node ------------------------------------------------------------------------------

RAW_TOPIC, COMPRESSED_TOPIC = '/fuzz/image_raw', '/fuzzc/image_raw/compressed'
MASK_TOPICS = {RAW_TOPIC: '/fuzz/segmentation/mask', COMPRESSED_TOPIC: '/fuzzc/segmentation/mask'}
HEIGHT, WIDTH = 24, 32


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return channel_checkpoint(tmp_path_factory.mktemp('fuzz') / 'channel.pt', input_size=(HEIGHT, WIDTH))


@pytest.fixture(scope='module')
def fuzzed_node(ros: Ros, checkpoint: Path):
    """The node (in-process) with a reliable queue, so that every frame sent reaches it."""
    node = SegmentNode(context=ros.context, parameter_overrides=[Parameter(name, value=value) for name, value in {
        'model': CHANNEL_NET, 'weights': str(checkpoint), 'image_topics': [RAW_TOPIC, COMPRESSED_TOPIC],
        'device': 'cpu', 'qos_reliability': 'reliable', 'qos_depth': 10, 'diagnostics_period': 0.05,
        'max_image_pixels': MAX_PIXELS}.items()])
    ros.executor.add_node(node)
    yield node
    ros.executor.remove_node(node)
    node.destroy_node()


class NodeFuzzer:
    """Sends one fuzzed frame and then one good frame, and checks what the node made of each."""

    def __init__(self, ros: Ros, node: SegmentNode, reference: Segmenter) -> None:
        self.probe, self.node, self.reference = ros.probe, node, reference
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = {RAW_TOPIC: self.probe.create_publisher(Image, RAW_TOPIC, reliable),
                           COMPRESSED_TOPIC: self.probe.create_publisher(CompressedImage, COMPRESSED_TOPIC,
                                                                         reliable)}
        self.masks = {topic: self.probe.listen(mask_topic, Image, reliable)
                      for topic, mask_topic in MASK_TOPICS.items()}
        self.sent = 0
        self.outcomes: Counter = Counter()
        wait_for(lambda: all(p.get_subscription_count() for p in self.publishers.values()),
                 what='the node subscribed')
        for topic in self.publishers:
            wait_for(lambda topic=topic: self.probe.counter(topic, 'bad frames') >= 0, what='diagnostics')

    def answer(self, topic: str, frame_id: str) -> Callable[[], Image | None]:
        return lambda: next((m for m in reversed(self.masks[topic]) if m.header.frame_id == frame_id), None)

    def send(self, topic: str, msg: Image | CompressedImage) -> str:
        self.sent += 1
        msg.header.frame_id = f'frame{self.sent}'
        msg.header.stamp.sec = self.sent
        self.publishers[topic].publish(msg)
        return msg.header.frame_id

    def check(self, msg: Image | CompressedImage) -> None:
        topic = COMPRESSED_TOPIC if isinstance(msg, CompressedImage) else RAW_TOPIC
        expected = convert(msg)
        bad_before = self.probe.counter(topic, 'bad frames')
        frame_id = self.send(topic, msg)
        if expected is None:
            wait_for(lambda: self.probe.counter(topic, 'bad frames') == bad_before + 1,
                     what=f'{topic}: the bad frame counted')
            assert self.answer(topic, frame_id)() is None, 'a bad frame was answered'
            self.outcomes['bad'] += 1
        else:
            answer = wait_for(self.answer(topic, frame_id), what=f'{topic}: the answer to an acceptable frame')
            image, encoding = expected
            np.testing.assert_array_equal(pixels(answer), self.reference.segment(image, encoding).mask)
            self.outcomes['answered'] += 1
        good = np.random.default_rng(self.sent).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        good_id = self.send(RAW_TOPIC, array_to_image(good, 'rgb8'))
        answer = wait_for(self.answer(RAW_TOPIC, good_id), what='the answer to the next good frame')
        np.testing.assert_array_equal(pixels(answer), self.reference.segment(good).mask)
        assert self.node.fatal_error is None and self.node.context.ok()


def run_node_fuzz(ros: Ros, node: SegmentNode, checkpoint: Path, examples: int) -> Counter:
    fuzzer = NodeFuzzer(ros, node, Segmenter(checkpoint, device='cpu', warmup=False))

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(msg=st.one_of(raw_images(), compressed_images()))
    def check(msg: Image | CompressedImage) -> None:
        fuzzer.check(msg)

    check()
    return fuzzer.outcomes


def test_node_input_path_takes_anything(ros: Ros, fuzzed_node: SegmentNode, checkpoint: Path, figures) -> None:
    outcomes = run_node_fuzz(ros, fuzzed_node, checkpoint, 25)
    figures(examples=sum(outcomes.values()), **outcomes, exceptions_escaped=0)


@pytest.mark.reliability
def test_node_input_path_takes_anything_long(ros: Ros, fuzzed_node: SegmentNode, checkpoint: Path,
                                             figures) -> None:
    outcomes = run_node_fuzz(ros, fuzzed_node, checkpoint, 600)
    figures(examples=sum(outcomes.values()), **outcomes, exceptions_escaped=0)
    assert outcomes['bad'] and outcomes['answered']
