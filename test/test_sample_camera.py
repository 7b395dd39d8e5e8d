"""Frame sources (seg_ros.frames.sources) and the sample_camera node that publishes them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.time import Time
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image

from seg_ros.frames.sources import (
    BagSource,
    ImageFolderSource,
    SourceError,
    SyntheticSource,
    VideoSource,
    open_source,
    play,
)
from seg_ros.ros.conversions import compressed_to_array, image_to_array
from seg_ros.ros.qos import input_qos
from seg_ros.ros.sample_camera import SampleCamera

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]  # RGB of the test frames, in order
CAMERA = [sys.executable, '-c', 'import sys; from seg_ros.ros.sample_camera import main; sys.exit(main())']
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)


def _solid(rgb: tuple[int, int, int], width: int = 64, height: int = 48) -> np.ndarray:
    return np.tile(np.array(rgb, np.uint8), (height, width, 1))


def _mean_colour(frame: np.ndarray) -> tuple[int, ...]:
    return tuple(round(float(c)) for c in frame.reshape(-1, 3).mean(axis=0))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three solid images whose file names sort in COLOURS order, beside a file that is not an image."""
    folder = tmp_path / 'frames'
    folder.mkdir()
    for name, colour in zip(['frame_02.png', 'frame_10.PNG', 'frame_11.bmp'], COLOURS, strict=True):
        cv2.imwrite(str(folder / name), cv2.cvtColor(_solid(colour), cv2.COLOR_RGB2BGR))
    (folder / 'notes.txt').write_text('not an image')
    return folder


# --- sources ---------------------------------------------------------------------------------


def test_synthetic_source_moves_and_never_ends():
    source = open_source('synthetic', width=160, height=96, rate=10.0)
    assert isinstance(source, SyntheticSource) and source.endless
    frames = [frame for frame, _ in zip(play(source, loop=False), range(3), strict=False)]
    assert [f.shape for f in frames] == [(96, 160, 3)] * 3 and frames[0].dtype == np.uint8
    assert not np.array_equal(frames[0], frames[2])


def test_image_folder_is_read_in_name_order_and_loops(image_folder):
    source = open_source(str(image_folder))
    assert isinstance(source, ImageFolderSource) and len(source.files) == 3
    once = list(play(source))
    assert [_mean_colour(f) for f in once] == COLOURS
    looped = [_mean_colour(f) for f, _ in zip(play(source, loop=True), range(7), strict=False)]
    assert looped == COLOURS * 2 + COLOURS[:1]


def test_frames_are_resized_to_the_requested_size(image_folder):
    frames = list(play(open_source(str(image_folder)), width=100, height=30))
    assert [f.shape for f in frames] == [(30, 100, 3)] * 3
    assert [_mean_colour(f) for f in frames] == COLOURS


def test_video_file_frames(tmp_path):
    path = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (64, 48))
    for colour in COLOURS:
        writer.write(cv2.cvtColor(_solid(colour), cv2.COLOR_RGB2BGR))
    writer.release()
    source = open_source(str(path))
    assert isinstance(source, VideoSource)
    frames = list(play(source))
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3)
    for frame, colour in zip(frames, COLOURS, strict=True):  # JPEG-compressed: close, not exact
        assert np.abs(np.subtract(_mean_colour(frame), colour)).max() <= 8


def _write_bag(path: Path, storage: StoragePlugin, topics: dict[str, str]) -> None:
    """A bag with the COLOURS frames on each topic: {topic: 'bgr8' | 'mono8' | 'png' | 'string'}."""
    writer = Writer(path, version=9, storage_plugin=storage)
    with writer:
        for topic, kind in topics.items():
            msgtype = {'png': 'sensor_msgs/msg/CompressedImage', 'string': 'std_msgs/msg/String'}.get(
                kind, 'sensor_msgs/msg/Image')
            connection = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            for index, colour in enumerate(COLOURS):
                stamp = TYPESTORE.types['builtin_interfaces/msg/Time'](sec=index, nanosec=0)
                header = TYPESTORE.types['std_msgs/msg/Header'](stamp=stamp, frame_id='cam')
                rgb = _solid(colour)
                if kind == 'string':
                    msg = TYPESTORE.types['std_msgs/msg/String'](data='hello')
                elif kind == 'png':
                    encoded = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1]
                    msg = TYPESTORE.types['sensor_msgs/msg/CompressedImage'](
                        header=header, format='png', data=encoded.ravel())
                else:
                    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR if kind == 'bgr8' else cv2.COLOR_RGB2GRAY)
                    msg = TYPESTORE.types['sensor_msgs/msg/Image'](
                        header=header, height=48, width=64, encoding=kind, is_bigendian=0,
                        step=64 * pixels[0, 0].size, data=pixels.ravel())
                writer.write(connection, index * 10**9, TYPESTORE.serialize_cdr(msg, msgtype))


def test_bag_with_several_image_topics_needs_bag_topic(tmp_path):
    bag = tmp_path / 'bag'
    _write_bag(bag, StoragePlugin.SQLITE3, {'/cam/image_raw': 'bgr8', '/cam/image_raw/compressed': 'png',
                                            '/chatter': 'string'})
    with pytest.raises(SourceError, match='/cam/image_raw, /cam/image_raw/compressed'):
        open_source(str(bag))
    with pytest.raises(SourceError, match="no Image or CompressedImage topic '/chatter'"):
        open_source(str(bag), bag_topic='/chatter')
    raw = open_source(str(bag), bag_topic='/cam/image_raw')
    assert isinstance(raw, BagSource)
    assert [_mean_colour(f) for f in play(raw)] == COLOURS
    compressed = list(play(open_source(str(bag), bag_topic='/cam/image_raw/compressed')))
    assert all(np.array_equal(f, _solid(c)) for f, c in zip(compressed, COLOURS, strict=True))


def test_mcap_bag_with_one_image_topic_is_played_from_the_folder_or_the_file(tmp_path):
    bag = tmp_path / 'bag'
    _write_bag(bag, StoragePlugin.MCAP, {'/mono/image_raw': 'mono8', '/chatter': 'string'})
    (mcap_file,) = bag.glob('*.mcap')
    grey = [(int(v),) * 3 for v in cv2.cvtColor(np.array([COLOURS], np.uint8), cv2.COLOR_RGB2GRAY)[0]]
    for path in (bag, mcap_file):
        source = open_source(str(path))
        assert source.topic == '/mono/image_raw'
        assert [_mean_colour(f) for f in play(source)] == grey


@pytest.mark.parametrize(('spec', 'message'), [
    ('/no/such/video.mp4', "source '/no/such/video.mp4': no such file or folder"),
    ('', "source '': no such file or folder"),
    ('v4l2:/dev/no_such_video9', 'V4L2 camera /dev/no_such_video9: no such device'),
])
def test_missing_sources_are_named_in_the_error(spec, message):
    with pytest.raises(SourceError, match=message):
        open_source(spec)


def test_unreadable_sources_are_named_in_the_error(tmp_path, image_folder):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(SourceError, match=f'image folder {empty}: no images'):
        open_source(str(empty))
    fake_video = tmp_path / 'clip.mp4'
    fake_video.write_text('not a video')
    with pytest.raises(SourceError, match='cannot decode'):
        open_source(str(fake_video))
    broken_bag = tmp_path / 'broken.db3'
    broken_bag.write_text('not a database')
    with pytest.raises(SourceError, match='broken.db3: cannot be read'):
        open_source(str(broken_bag))
    no_metadata = tmp_path / 'no_metadata'  # a bag's storage file without its metadata.yaml
    no_metadata.mkdir()
    (no_metadata / 'run_0.mcap').write_text('not a bag')
    with pytest.raises(SourceError, match='no_metadata: cannot be read'):
        open_source(str(no_metadata))
    (image_folder / 'frame_10.PNG').write_bytes(b'\x89PNG truncated')
    with pytest.raises(SourceError, match='frame_10.PNG is not a readable image'):
        list(play(open_source(str(image_folder))))


# --- the node --------------------------------------------------------------------------------


@pytest.fixture
def context():
    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.try_shutdown(context=context)


def _run_camera(context, overrides: dict[str, object], message_type: type) -> tuple[SampleCamera, list]:
    """Run a SampleCamera with ``overrides`` until its source ends; returns it and what was received."""
    parameters = [Parameter(name, value=value) for name, value in overrides.items()]
    camera = SampleCamera(context=context, parameter_overrides=parameters)
    listener = rclpy.create_node('listener', context=context)
    received = []
    listener.create_subscription(message_type, overrides['topic'], received.append,
                                 input_qos('reliable', 10))
    executor = SingleThreadedExecutor(context=context)
    for node in (camera, listener):
        executor.add_node(node)
    deadline = time.monotonic() + 10
    while camera.count_subscribers(overrides['topic']) == 0 and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    executor.spin_until_future_complete(camera.finished, timeout_sec=10)
    end = time.monotonic() + 2
    while len(received) < camera.published and time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
    executor.shutdown()
    camera.destroy_node()
    listener.destroy_node()
    return camera, received


def test_node_publishes_a_folder_once_resized_stamped_and_exits(context, image_folder):
    camera, received = _run_camera(context, {
        'source': str(image_folder), 'loop': False, 'rate': 20.0, 'width': 80, 'height': 40,
        'frame_id': 'test_optical_frame', 'qos_reliability': 'reliable', 'topic': '/test_cam/image_raw'},
        Image)
    assert camera.finished.result() == 0 and camera.published == 3
    assert len(received) == 3
    assert {(m.width, m.height, m.encoding, m.header.frame_id) for m in received} == {
        (80, 40, 'rgb8', 'test_optical_frame')}
    assert [_mean_colour(image_to_array(m)[0]) for m in received] == COLOURS
    stamps = [Time.from_msg(m.header.stamp).nanoseconds for m in received]
    assert stamps == sorted(stamps) and stamps[0] > 0 and len(set(stamps)) == 3


def test_node_publishes_jpeg_on_a_compressed_topic(context, image_folder):
    camera, received = _run_camera(context, {
        'source': str(image_folder), 'loop': False, 'rate': 20.0, 'qos_reliability': 'reliable',
        'topic': '/test_cam/image_raw/compressed'}, CompressedImage)
    assert camera.finished.result() == 0 and len(received) == 3
    frames = [compressed_to_array(m)[0] for m in received]
    assert {f.shape for f in frames} == {(360, 640, 3)}
    for frame, colour in zip(frames, COLOURS, strict=True):
        assert np.abs(np.subtract(_mean_colour(frame), colour)).max() <= 8


def test_executable_reports_a_missing_source_and_exits_1():
    result = subprocess.run([*CAMERA, '--ros-args', '-p', 'source:=/no/such/folder'],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "source '/no/such/folder': no such file or folder" in result.stderr


def test_executable_streams_the_synthetic_scene_over_dds_and_stops_on_sigint(context):
    listener = rclpy.create_node('listener', context=context)
    received = []
    topic = '/synthetic_cam/image_raw'
    listener.create_subscription(Image, topic, received.append, input_qos('best_effort', 10))
    process = subprocess.Popen([*CAMERA, '--ros-args', '-p', f'topic:={topic}',
                                '-p', 'width:=160', '-p', 'height:=96', '-p', 'rate:=20.0'],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(listener)
    try:
        deadline = time.monotonic() + 20
        while len(received) < 5 and time.monotonic() < deadline and process.poll() is None:
            executor.spin_once(timeout_sec=0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        executor.shutdown()
        listener.destroy_node()
    assert len(received) >= 5, stderr
    assert {(m.width, m.height, m.encoding, m.header.frame_id) for m in received} == {
        (160, 96, 'rgb8', 'camera_optical_frame')}
    assert not all(bytes(received[0].data) == bytes(m.data) for m in received[1:])  # the scene moves
    assert process.returncode == 0, stderr
    assert 'publishing synthetic road scene as 160x96 at 20 Hz on /synthetic_cam/image_raw' in stderr
