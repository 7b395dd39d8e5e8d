"""``seg-bag make`` from videos, image folders and the synthetic scene; command-line errors; no ROS needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from seg_ros.bag.cli import main
from seg_ros.frames.synthetic import SyntheticRoadScene
from seg_ros.labels import IGNORE_INDEX

from .support import channel_checkpoint

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 64, 96


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    messages: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            messages.setdefault(connection.topic, []).append(
                (timestamp, TYPESTORE.deserialize_cdr(raw, connection.msgtype)))
    return messages


def scene_frames(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    scene = SyntheticRoadScene(WIDTH, HEIGHT, seed=3)
    return [scene.frame(i * 0.2) for i in range(count)]


def test_make_from_a_video_with_labels_by_frame_index(tmp_path):
    frames = scene_frames(6)
    fourcc = cv2.VideoWriter_fourcc(*'mp4v')
    video = cv2.VideoWriter(str(tmp_path / 'drive.mp4'), fourcc, 8.0, (WIDTH, HEIGHT))
    for rgb, _ in frames:
        video.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    video.release()
    labels = tmp_path / 'labels'
    labels.mkdir()
    for index in (1, 4):
        label = frames[index][1].copy()
        label[:5] = 11  # CamVid's void, written as 255 with --label-ignore 11
        cv2.imwrite(str(labels / f'frame_{index:04d}.png'), label)
    assert main(['make', str(tmp_path / 'drive.mp4'), '--labels', str(labels), '--label-ignore', '11',
                 '--encoding', 'jpeg', '--start-time', '100.5', '--out', str(tmp_path / 'bag'), '-q']) == 0
    recorded = read_bag(tmp_path / 'bag')
    assert set(recorded) == {'/camera/image_raw/compressed', '/camera/labels'}
    times = [100_500_000_000 + round(i * 1e9 / 8) for i in range(6)]  # the video's own 8 frames/s
    assert [t for t, _ in recorded['/camera/image_raw/compressed']] == times
    for (_, msg), (rgb, _) in zip(recorded['/camera/image_raw/compressed'], frames, strict=True):
        assert msg.format == 'rgb8; jpeg compressed bgr8' and msg.header.frame_id == 'camera'
        decoded = cv2.imdecode(np.asarray(msg.data), cv2.IMREAD_COLOR)[..., ::-1]
        assert np.abs(decoded.astype(int) - rgb).mean() < 10  # MPEG-4, then JPEG
    assert [t for t, _ in recorded['/camera/labels']] == [times[1], times[4]]
    for (_, msg), index in zip(recorded['/camera/labels'], (1, 4), strict=True):
        label = np.asarray(msg.data).reshape(HEIGHT, WIDTH)
        expected = frames[index][1].copy()
        expected[:5] = IGNORE_INDEX
        assert msg.encoding == 'mono8'
        np.testing.assert_array_equal(label, expected)


def test_make_from_an_image_folder_in_bgr8_and_sqlite3(tmp_path, capsys):
    frames = scene_frames(3)
    images = tmp_path / 'images'
    images.mkdir()
    for index, (rgb, _) in enumerate(frames):
        cv2.imwrite(str(images / f'{index:03d}.png'), rgb[..., ::-1])
    assert main(['make', str(images), '--encoding', 'bgr8', '--storage', 'sqlite3', '--rate', '2',
                 '--topic', '/left/image', '--frame-id', 'left', '--start-time', '0',
                 '--out', str(tmp_path / 'bag'), '-q']) == 0
    assert '3 frames at 2 Hz on /left/image, /left/file_name' in capsys.readouterr().out
    assert (tmp_path / 'bag' / 'bag.db3').is_file()
    recorded = read_bag(tmp_path / 'bag')['/left/image']
    assert [t for t, _ in recorded] == [0, 500_000_000, 1_000_000_000]
    for (_, msg), (rgb, _) in zip(recorded, frames, strict=True):
        assert (msg.encoding, msg.header.frame_id, msg.step) == ('bgr8', 'left', 3 * WIDTH)
        np.testing.assert_array_equal(np.asarray(msg.data).reshape(HEIGHT, WIDTH, 3), rgb[..., ::-1])


def test_make_from_an_endless_source_needs_max_frames(tmp_path, capsys):
    assert main(['make', 'synthetic', '--out', str(tmp_path / 'a'), '-q']) == 2
    assert 'never ends; give --max-frames' in capsys.readouterr().err
    assert main(['make', 'synthetic', '--max-frames', '2', '--out', str(tmp_path / 'b'), '-q']) == 0
    assert len(read_bag(tmp_path / 'b')['/camera/image_raw']) == 2


@pytest.mark.parametrize(('argv', 'message'), [
    (['{tmp}/missing.mp4', '--out', '{tmp}/x'], 'no such file or folder'),
    (['synthetic', '--max-frames', '1', '--out', '{tmp}'], 'exists already'),
    (['synthetic', '--max-frames', '1', '--topic', 'camera', '--out', '{tmp}/x'], 'must be an absolute'),
    (['synthetic', '--max-frames', '1', '--labels', '{tmp}/none', '--out', '{tmp}/x'], 'no such folder'),
])
def test_make_rejects_bad_input_clearly(tmp_path, capsys, argv, message):
    assert main(['make', *(a.replace('{tmp}', str(tmp_path)) for a in argv)]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / 'x').exists()


@pytest.fixture(scope='module')
def small_bag(tmp_path_factory) -> tuple[Path, Path]:
    """A 3-frame synthetic bag and a checkpoint of the exact channel network."""
    root = tmp_path_factory.mktemp('small')
    assert main(['make', 'synthetic', '--max-frames', '3', '--start-time', '0', '--out', str(root / 'bag'),
                 '-q']) == 0
    return root / 'bag', channel_checkpoint(root / 'channel.pt', input_size=(45, 80))


@pytest.mark.parametrize(('options', 'message'), [
    (['-c', '{tmp}/missing.pt'], 'no such file'),
    (['-c', 'bad-name={ckpt}'], "model name 'bad-name' must be letters"),
    (['-c', 'a={ckpt}', '-c', 'a={ckpt}'], "model name 'a' is used twice"),
    (['-c', '{ckpt}', '--start', '2', '--end', '1'], '--end 1.0 is not after --start 2.0'),
    (['-c', '{ckpt}', '--topic', '/nope'], 'topic /nope is not in the bag'),
    (['-c', '{ckpt}', '--gt-topic', '/camera/nope'], 'ground-truth topic /camera/nope is not an Image topic'),
    (['-c', '{ckpt}', '--stride', '0'], 'stride 0 must be at least 1'),
    (['-c', '{ckpt}', '--gt-topic', '/camera/labels', '--gt-dir', '{tmp}'], 'two sources of ground truth'),
])
def test_seg_bag_rejects_bad_input_clearly(tmp_path, capsys, small_bag, options, message):
    bag, checkpoint = small_bag
    argv = [str(bag), '--out', str(tmp_path / 'out'), '-q',
            *(o.replace('{tmp}', str(tmp_path)).replace('{ckpt}', str(checkpoint)) for o in options)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_seg_bag_usage_errors_exit_with_2(tmp_path, capsys, small_bag):
    bag, checkpoint = small_bag
    with pytest.raises(SystemExit) as exit_info:
        main([str(bag), '-c', str(checkpoint), '--gt-labels', 'nope', '--out', str(tmp_path / 'out')])
    assert exit_info.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_seg_bag_refuses_an_output_folder_in_use(tmp_path, capsys, small_bag):
    bag, checkpoint = small_bag
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'notes.txt').write_text('mine')
    assert main([str(bag), '-c', str(checkpoint), '--out', str(tmp_path / 'out'), '-q']) == 2
    assert 'exists and is not empty' in capsys.readouterr().err
    assert [p.name for p in (tmp_path / 'out').iterdir()] == ['notes.txt']


def test_seg_bag_runs_without_ros(tmp_path, small_bag):
    """No rclpy and no ROS message package may be imported, even were they installed."""
    bag, checkpoint = small_bag
    script = f'''
import importlib.abc, sys
ROS = ('rclpy', 'sensor_msgs', 'std_msgs', 'builtin_interfaces', 'rosidl_runtime_py', 'rcl_interfaces')
class NoRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ROS:
            raise ImportError(f'{{name}} is blocked: seg-bag must run without ROS')
sys.meta_path.insert(0, NoRos())
import test.support  # registers the exact test network
from seg_ros.bag.cli import main
code = main([{str(bag)!r}, '-c', {str(checkpoint)!r}, '--out', {str(tmp_path / 'out')!r}, '-q'])
assert not [m for m in sys.modules if m.split('.')[0] in ROS]
sys.exit(code)
'''
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    done = subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert report['topics']['/camera/image_raw']['frames'] == 3
