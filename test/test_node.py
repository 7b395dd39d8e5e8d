"""segment_node over real DDS: the node runs in-process with the deterministic test network, a probe
node publishes camera frames and checks every output against the ``Segmenter`` run offline."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32MultiArray, String

from seg_ros.inference.segmenter import SegmentationError, Segmenter
from seg_ros.interface import output_prefix
from seg_ros.ros.conversions import array_to_compressed, array_to_image, compressed_to_array, image_to_array
from seg_ros.ros.node import SegmentNode
from seg_ros.ros.parameters import PARAMETERS
from seg_ros.ros.qos import LATCHED

from .support import CHANNEL_NET, channel_checkpoint, expected_channel_mask
from .support.ros import (
    HEIGHT,
    TIMEOUT,
    WIDTH,
    Probe,
    Ros,
    camera_image,
    pixels,
    stamped,
    started_nodes,
    values,
    wait_for,
)

REPO = Path(__file__).resolve().parents[1]














@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return channel_checkpoint(tmp_path_factory.mktemp('node') / 'channel.pt', input_size=(HEIGHT, WIDTH))


@pytest.fixture(scope='module')
def reference(checkpoint: Path) -> Segmenter:
    """The same network run offline: what every node output must equal."""
    return Segmenter(checkpoint, device='cpu')


@pytest.fixture
def start_node(ros: Ros, checkpoint: Path):
    with started_nodes(ros, SegmentNode, model=CHANNEL_NET, weights=str(checkpoint)) as start:
        yield lambda topics, **parameters: start(image_topics=topics, **parameters)




def test_outputs_equal_the_offline_segmenter(ros: Ros, start_node, reference: Segmenter) -> None:
    start_node(['/t1/image_raw'], publish_confidence=True)
    probe = ros.probe
    inboxes = {name: probe.listen(f'/t1/segmentation/{name}', Image)
               for name in ('mask', 'color_mask', 'overlay', 'confidence')}
    stats = probe.listen('/t1/segmentation/stats', Float32MultiArray)
    class_info = probe.listen('/t1/segmentation/class_info', String, LATCHED)  # subscribed after the start
    publisher = probe.create_publisher(Image, '/t1/image_raw', 10)

    image = camera_image(1)
    msg = probe.frame(image, frame_id='front_camera')
    probe.exchange(publisher, msg, inboxes['mask'])
    received = {name: wait_for(lambda inbox=inbox: stamped(inbox, msg.header.stamp), what=name)
                for name, inbox in inboxes.items()}
    wait_for(lambda: stats and class_info, what='stats and class_info')

    expected = reference.segment(image, overlay_alpha=0.5)
    for name, out in received.items():
        assert out.header.stamp == msg.header.stamp and out.header.frame_id == 'front_camera', name
        assert (out.height, out.width) == (HEIGHT, WIDTH), name
        assert out.encoding == ('rgb8' if name in ('color_mask', 'overlay') else 'mono8'), name
        np.testing.assert_array_equal(pixels(out), getattr(expected, name), err_msg=name)
    # Independent of the Segmenter: the class is the dominant channel wherever one channel dominates.
    ordered = np.sort(image, axis=2)
    dominant = ordered[:, :, 2] > ordered[:, :, 1]
    np.testing.assert_array_equal(pixels(received['mask'])[dominant], expected_channel_mask(image)[dominant])

    table = stats[-1]
    assert [(d.label, d.size, d.stride) for d in table.layout.dim] == [
        ('classes', 3, 9), ('count,fraction,mean_confidence', 3, 3)]
    rows = np.asarray(table.data, np.float64).reshape(3, 3)
    assert rows[:, 0].sum() == HEIGHT * WIDTH
    np.testing.assert_array_equal(rows[:, 0], expected.class_counts)
    np.testing.assert_allclose(rows[:, 1], expected.class_counts / (HEIGHT * WIDTH), rtol=1e-6)
    np.testing.assert_allclose(rows[:, 2], expected.class_confidence, rtol=1e-6)

    info = json.loads(class_info[-1].data)
    assert info == {'model': CHANNEL_NET, 'label_set': 'rgb3', 'names': ['red', 'green', 'blue'],
                    'colors': [[255, 0, 0], [0, 255, 0], [0, 0, 255]]}


def test_other_encodings_and_sizes(ros: Ros, start_node, reference: Segmenter) -> None:
    start_node(['/t2/image_raw'])
    probe = ros.probe
    masks = probe.listen('/t2/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/t2/image_raw', 10)
    rgb = camera_image(2, height=30, width=40)  # not the network size: resized in, mask back at 40x30
    cases = {
        'bgr8': (rgb[:, :, ::-1].copy(), 'bgr8'),
        'mono8': (rgb[:, :, 1].copy(), 'mono8'),
        'rgb16': (rgb.astype(np.uint16) * 257, 'rgb16'),  # converted to rgb8 by the conversions module
    }
    for name, (array, encoding) in cases.items():
        msg = probe.frame(array, encoding)
        out = probe.exchange(publisher, msg, masks)
        assert (out.height, out.width) == (30, 40), name
        offline, offline_encoding = image_to_array(msg)
        np.testing.assert_array_equal(pixels(out), reference.segment(offline, offline_encoding).mask,
                                      err_msg=name)


def test_output_size_network(ros: Ros, start_node, checkpoint: Path) -> None:
    start_node(['/t2n/image_raw'], output_size='network')
    probe = ros.probe
    masks = probe.listen('/t2n/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/t2n/image_raw', 10)
    image = camera_image(2, height=30, width=40)
    out = probe.exchange(publisher, probe.frame(image), masks)
    assert (out.height, out.width) == (HEIGHT, WIDTH)
    offline = Segmenter(checkpoint, device='cpu', output_size='network', warmup=False)
    np.testing.assert_array_equal(pixels(out), offline.segment(image).mask)


def test_compressed_input(ros: Ros, start_node, reference: Segmenter) -> None:
    start_node(['/t3/image_raw/compressed'])
    probe = ros.probe
    masks = probe.listen('/t3/segmentation/mask', Image)
    publisher = probe.create_publisher(CompressedImage, '/t3/image_raw/compressed', 10)
    image = camera_image(3)
    for fmt in ('png', 'jpeg'):
        msg = array_to_compressed(image, fmt)
        probe.stamp(msg)
        out = probe.exchange(publisher, msg, masks)
        decoded, _ = compressed_to_array(msg)
        if fmt == 'png':
            np.testing.assert_array_equal(decoded, image)
        np.testing.assert_array_equal(pixels(out), reference.segment(decoded).mask, err_msg=fmt)
        assert (out.height, out.width) == (HEIGHT, WIDTH)


def _bad_images() -> dict[str, Image]:
    good = array_to_image(camera_image(4), 'rgb8')
    unknown = Image(height=HEIGHT, width=WIDTH, encoding='yuv9000', step=WIDTH * 3, data=good.data)
    short = Image(height=HEIGHT, width=WIDTH, encoding='rgb8', step=WIDTH * 3, data=good.data[:100])
    empty = Image(height=0, width=0, encoding='rgb8', step=0)
    huge = Image(height=65536, width=65536, encoding='rgb8', step=65536 * 3, data=good.data[:64])
    return {'unknown encoding': unknown, 'short data': short, 'zero size': empty, 'huge claimed size': huge}


def _bad_compressed() -> dict[str, CompressedImage]:
    jpeg = array_to_compressed(camera_image(5), 'jpeg')
    png = array_to_compressed(camera_image(5), 'png')
    corrupt = CompressedImage(format='jpeg', data=bytes(jpeg.data[:2]) + bytes(200))
    truncated = CompressedImage(format='jpeg', data=bytes(jpeg.data[: len(jpeg.data) // 3]))
    bomb = bytearray(png.data)
    bomb[16:24] = (100000).to_bytes(4, 'big') * 2  # IHDR claims 100000 x 100000
    return {'corrupt jpeg': corrupt, 'truncated jpeg': truncated, 'empty': CompressedImage(format='jpeg'),
            'png bomb': CompressedImage(format='png', data=bytes(bomb))}


def _publish_until_counted(probe: Probe, publisher: Any, msg: Any, topic: str, key: str, count: int) -> None:
    wait_for(lambda: probe.counter(topic, key) >= count, what=f'{topic}: {key} reaching {count}',
             every=lambda: publisher.publish(msg))


def test_bad_frames_are_counted_and_the_next_good_frame_is_served(ros: Ros, start_node) -> None:
    start_node(['/t4/image_raw', '/t4c/image_raw/compressed'], diagnostics_period=0.1)
    probe = ros.probe
    cameras = {
        '/t4/image_raw': (Image, _bad_images(), lambda: probe.frame(camera_image(6))),
        '/t4c/image_raw/compressed': (CompressedImage, _bad_compressed(),
                                      lambda: array_to_compressed(camera_image(6), 'png')),
    }
    for topic, (msg_type, bad_frames, good_frame) in cameras.items():
        publisher = probe.create_publisher(msg_type, topic, 10)
        masks = probe.listen(f'{output_prefix(topic, "segmentation")}/mask', Image)
        for count, (case, bad) in enumerate(bad_frames.items(), start=1):
            _publish_until_counted(probe, publisher, bad, topic, 'bad frames', count)
            status = probe.status(topic)
            assert status.level == DiagnosticStatus.WARN and 'bad frame' in status.message, case
            good = good_frame()
            probe.stamp(good)
            probe.exchange(publisher, good, masks)  # the node is alive and serves the next frame


def test_max_image_pixels_takes_effect_at_once(ros: Ros, start_node) -> None:
    node = start_node(['/t4m/image_raw'], diagnostics_period=0.1)
    probe = ros.probe
    masks = probe.listen('/t4m/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/t4m/image_raw', 10)
    assert node.set_parameters([Parameter('max_image_pixels', value=HEIGHT * WIDTH - 1)])[0].successful
    _publish_until_counted(probe, publisher, probe.frame(camera_image(6)), '/t4m/image_raw', 'bad frames', 1)
    assert node.set_parameters([Parameter('max_image_pixels', value=HEIGHT * WIDTH)])[0].successful
    probe.exchange(publisher, probe.frame(camera_image(6)), masks)


FAULTS = {
    'nan': SegmentationError('test_channel_argmax produced non-finite logits (NaN or inf); frame skipped'),
    'oom': torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB'),
    'bug': RuntimeError('a bug in the segmenter'),
}


def inject_faults(segmenter: Segmenter, faults: list[str]) -> None:
    """The segmenter's next calls raise the listed errors (``FAULTS``); after them it works again."""
    segment_batch = segmenter.segment_batch

    def faulty(*args, **kwargs):
        if faults:
            raise FAULTS[faults.pop(0)]
        return segment_batch(*args, **kwargs)

    segmenter.segment_batch = faulty


def test_inference_errors_skip_the_frame_and_the_next_is_served(ros: Ros, start_node,
                                                                reference: Segmenter) -> None:
    node = start_node(['/t5/image_raw'], diagnostics_period=0.1)
    inject_faults(node.segmenter, ['nan', 'oom'])
    probe = ros.probe
    masks = probe.listen('/t5/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/t5/image_raw', 10)
    first = probe.frame(camera_image(7))
    _publish_until_counted(probe, publisher, first, '/t5/image_raw', 'failed frames', 2)
    assert probe.counter('/t5/image_raw', 'failed frames') == 2
    image = camera_image(8)
    out = probe.exchange(publisher, probe.frame(image), masks)
    np.testing.assert_array_equal(pixels(out), reference.segment(image).mask)


def test_an_unexpected_worker_error_stops_the_node_instead_of_going_silent(checkpoint: Path) -> None:
    ros = Ros()  # its own context: this test shuts it down
    try:
        node = SegmentNode(context=ros.context, parameter_overrides=[
            Parameter('model', value=CHANNEL_NET), Parameter('weights', value=str(checkpoint)),
            Parameter('image_topics', value=['/t5x/image_raw'])])
        ros.executor.add_node(node)
        inject_faults(node.segmenter, ['bug'])
        publisher = ros.probe.create_publisher(Image, '/t5x/image_raw', 10)
        msg = ros.probe.frame(camera_image(7))
        wait_for(publisher.get_subscription_count, what='the node subscribed')
        publisher.publish(msg)
        wait_for(lambda: not ros.context.ok(), what='the context shut down by the node')
        assert isinstance(node.fatal_error, RuntimeError) and 'bug in the segmenter' in str(node.fatal_error)
        node.destroy_node()
    finally:
        ros.close()


def test_optional_outputs_are_computed_only_while_subscribed(ros: Ros, start_node) -> None:
    node = start_node(['/t6/image_raw'])
    requested: list[frozenset[str]] = []
    segment_batch = node.segmenter.segment_batch

    def spy(images, encodings, **options):
        requested.append(frozenset(options['outputs']))
        return segment_batch(images, encodings, **options)

    node.segmenter.segment_batch = spy
    probe = ros.probe
    masks = probe.listen('/t6/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/t6/image_raw', 10)
    probe.exchange(publisher, probe.frame(camera_image(9)), masks)
    assert requested[-1] == frozenset()  # color_mask and overlay are on, but nobody listens

    overlays = probe.listen('/t6/segmentation/overlay', Image)
    probe.exchange(publisher, probe.frame(camera_image(10)), overlays)
    assert requested[-1] == {'overlay'}

    node.set_parameters([Parameter('publish_overlay', value=False)])
    probe.exchange(publisher, probe.frame(camera_image(11)), masks)
    assert requested[-1] == frozenset()


def test_parameters_dynamic_invalid_and_read_only(ros: Ros, start_node, reference: Segmenter) -> None:
    start_node(['/t7/image_raw'])
    probe = ros.probe
    overlays = probe.listen('/t7/segmentation/overlay', Image)
    masks = probe.listen('/t7/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/t7/image_raw', 10)
    client = AsyncParameterClient(probe, 'segment_node')
    assert client.wait_for_services(timeout_sec=TIMEOUT)

    def set_parameter(name: str, value: Any):
        future = client.set_parameters([Parameter(name, value=value)])
        wait_for(future.done, what=f'set {name}')
        return future.result().results[0]

    result = set_parameter('overlay_alpha', 0.2)
    assert result.successful
    image = camera_image(12)
    out = probe.exchange(publisher, probe.frame(image), overlays)
    np.testing.assert_array_equal(pixels(out), reference.segment(image, overlay_alpha=0.2).overlay)
    assert not np.array_equal(pixels(out), reference.segment(image, overlay_alpha=0.5).overlay)

    result = set_parameter('min_confidence', 0.9)
    assert result.successful
    out = probe.exchange(publisher, probe.frame(image), masks)
    strict = Segmenter(reference.checkpoint, device='cpu', min_confidence=0.9, warmup=False)
    np.testing.assert_array_equal(pixels(out), strict.segment(image).mask)
    assert (pixels(out) == 255).any()

    rejected = {  # value, words the reason must hold
        'overlay_alpha': (1.5, ('overlay_alpha', 'out of range')),
        'camera_timeout': (0.0, ('camera_timeout', 'out of range')),
        'min_confidence': ('high', ('Wrong parameter type',)),
        'model': ('erfnet', ('model', 'read-only')),
        'qos_depth': (5, ('qos_depth', 'read-only')),
    }
    for name, (value, words) in rejected.items():
        result = set_parameter(name, value)
        assert not result.successful, name
        assert all(word in result.reason for word in words), result.reason
    future = client.get_parameters(['overlay_alpha', 'model'])
    wait_for(future.done, what='get parameters')
    alpha, model = future.result().values
    assert (alpha.double_value, model.string_value) == (0.2, CHANNEL_NET)  # unchanged by the rejections


def test_several_cameras_go_through_as_one_batch_and_stale_frames_are_dropped(
        ros: Ros, start_node, reference: Segmenter) -> None:
    node = start_node(['/ma/image_raw', '/mb/image_raw/compressed'], diagnostics_period=0.1)
    batch_sizes: list[int] = []
    entered, release = threading.Event(), threading.Event()
    segment_batch = node.segmenter.segment_batch

    def gated(images, encodings, **options):
        batch_sizes.append(len(images))
        entered.set()
        release.wait(TIMEOUT)
        return segment_batch(images, encodings, **options)

    node.segmenter.segment_batch = gated
    probe = ros.probe
    masks_a = probe.listen('/ma/segmentation/mask', Image)
    masks_b = probe.listen('/mb/segmentation/mask', Image)
    publisher_a = probe.create_publisher(Image, '/ma/image_raw', 10)
    publisher_b = probe.create_publisher(CompressedImage, '/mb/image_raw/compressed', 10)

    # Each frame is published once (after matching), so that the node's counters are exact.
    wait_for(lambda: publisher_a.get_subscription_count() and publisher_b.get_subscription_count(),
             what='the node subscribed')
    first, stale, latest_a = (probe.frame(camera_image(seed)) for seed in (13, 14, 15))
    latest_b = array_to_compressed(camera_image(16), 'png')
    probe.stamp(latest_b)

    def received(topic: str, count: int) -> Callable[[], bool]:
        return lambda: probe.counter(topic, 'frames received') >= count

    try:
        publisher_a.publish(first)
        wait_for(entered.is_set, what='the worker busy with the first frame')
        publisher_a.publish(stale)
        publisher_b.publish(latest_b)
        wait_for(received('/ma/image_raw', 2), what='the stale frame received')
        publisher_a.publish(latest_a)
        wait_for(received('/ma/image_raw', 3), what='the latest frame received')
        assert probe.counter('/ma/image_raw', 'dropped frames') == 1
        wait_for(received('/mb/image_raw/compressed', 1), what='camera b received')
    finally:
        release.set()
    out_a = wait_for(lambda: stamped(masks_a, latest_a.header.stamp), what='camera a answered')
    out_b = wait_for(lambda: stamped(masks_b, latest_b.header.stamp), what='camera b answered')
    assert batch_sizes == [1, 2]
    assert stamped(masks_a, stale.header.stamp) is None  # replaced before the worker took it
    np.testing.assert_array_equal(pixels(out_a), reference.segment(camera_image(15)).mask)
    np.testing.assert_array_equal(pixels(out_b), reference.segment(camera_image(16)).mask)


def test_diagnostics_report_each_camera_and_the_model(ros: Ros, start_node) -> None:
    start_node(['/t8/image_raw'], diagnostics_period=0.1, camera_timeout=0.5)
    probe = ros.probe
    masks = probe.listen('/t8/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/t8/image_raw', 10)

    def stream() -> None:
        probe.exchange(publisher, probe.frame(camera_image(17)), masks)

    def healthy() -> DiagnosticStatus | None:
        status = probe.status('/t8/image_raw')
        healthy = status is not None and status.level == DiagnosticStatus.OK and \
            float(values(status)['output rate (Hz)']) > 0
        return status if healthy else None

    status = wait_for(healthy, what='camera OK with frames flowing', every=stream)
    fields = values(status)
    assert float(fields['input rate (Hz)']) > 0
    assert 0 <= float(fields['latency p50 (ms)']) <= float(fields['latency p99 (ms)']) < 5000
    assert int(fields['frames published']) >= 1
    assert {'dropped frames', 'bad frames', 'failed frames', 'incompatible QoS'} <= fields.keys()
    model = values(probe.status('model'))
    assert (model['model'], model['device']) == (CHANNEL_NET, 'cpu')
    # backend and precision auto (the defaults): what was chosen, and how, is reported.
    assert model['backend choice'].startswith(f"{model['backend']} {model['precision']} (")
    assert ' ms (100.00 % agree)' in model['backend choice']  # the candidates' timings
    assert model['input size'] == f'{WIDTH}x{HEIGHT}'  # WIDTHxHEIGHT, as every report writes sizes

    silent = wait_for(lambda: (s := probe.status('/t8/image_raw')) and s.level == DiagnosticStatus.WARN and s,
                      what='WARN after camera_timeout without frames')
    assert 'no frames' in silent.message
    wait_for(healthy, what='OK again once frames resume', every=stream)


def test_incompatible_publisher_qos_is_reported(ros: Ros, start_node) -> None:
    start_node(['/t9/image_raw'], qos_reliability='reliable', diagnostics_period=0.1, camera_timeout=0.1)
    probe = ros.probe
    best_effort = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    publisher = probe.create_publisher(Image, '/t9/image_raw', best_effort)
    msg = probe.frame(camera_image(18))
    status = wait_for(lambda: (s := probe.status('/t9/image_raw')) and values(s)['incompatible QoS'] != 'none'
                      and s, what='incompatible QoS reported', every=lambda: publisher.publish(msg))
    assert values(status)['incompatible QoS'] == 'RELIABILITY'
    assert status.level == DiagnosticStatus.WARN and 'incompatible QoS' in status.message


def test_config_file_lists_every_parameter_with_its_default() -> None:
    config = yaml.safe_load((REPO / 'config' / 'segment.yaml').read_text())
    parameters = config['/**']['ros__parameters']
    assert list(parameters) == list(PARAMETERS)
    for name, spec in PARAMETERS.items():
        assert parameters[name] == spec.default and type(parameters[name]) is type(spec.default), name


@pytest.mark.parametrize(('topic', 'prefix'), [
    ('/camera/image_raw', '/camera/segmentation'),
    ('/camera/image_raw/compressed', '/camera/segmentation'),
    ('/front/left/image_rect', '/front/left/segmentation'),
    ('/image_raw', '/segmentation'),
    ('image_raw', 'segmentation'),
    ('cam/image_raw/compressed', 'cam/segmentation'),
])
def test_output_prefix(topic: str, prefix: str) -> None:
    assert output_prefix(topic, 'segmentation') == prefix
