"""seg-bag on damaged and awkward bags: a cut-off MCAP file, corrupt sqlite pages, a folder without
metadata.yaml, an image topic in an unsupported encoding, and bags that cannot be read at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from seg_ros.bag.cli import main
from seg_ros.bag.messages import IMAGE, header_message, image_message, serialize
from seg_ros.bag.writer import OutputBag
from seg_ros.frames.synthetic import SyntheticRoadScene

from .support import channel_checkpoint

START = 1_700_000_000 * 10**9
FRAMES = 8
# 360 x 480 rgb8 frames (518 kB) fill rosbags' 1 MiB MCAP chunks with two frames each.
HEIGHT, WIDTH = 360, 480


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    return channel_checkpoint(tmp_path_factory.mktemp('ckpt') / 'channel.pt', input_size=(45, 60))


@pytest.fixture(scope='module')
def frames() -> list[np.ndarray]:
    scene = SyntheticRoadScene(WIDTH, HEIGHT, seed=2)
    return [scene.frame(i * 0.1)[0] for i in range(FRAMES)]


def write_bag(path: Path, frames: list[np.ndarray], storage: str) -> list[int]:
    bag = OutputBag(path, storage)
    times = [START + i * 100_000_000 for i in range(len(frames))]
    for time, rgb in zip(times, frames, strict=True):
        msg = image_message(rgb, 'rgb8', header_message(time, 'cam'))
        bag.write('/cam/image_raw', IMAGE, time, serialize(msg))
    bag.close()
    return times


def evaluate(bag: Path, out: Path, checkpoint: Path, *options: str) -> dict:
    assert main([str(bag), '-c', str(checkpoint), '--out', str(out), '--no-video', '-q', *options]) == 0
    return json.loads((out / 'report.json').read_text())


def output_times(out: Path, topic: str = '/cam/segmentation/channel/mask/compressed') -> list[int]:
    with Reader(out / 'bag') as reader:
        return [t for c, t, _ in reader.messages() if c.topic == topic]


def test_a_cut_off_mcap_is_evaluated_up_to_its_last_complete_record(tmp_path, frames, checkpoint):
    times = write_bag(tmp_path / 'run', frames, 'mcap')
    storage = tmp_path / 'run' / 'run.mcap'
    size = storage.stat().st_size
    with storage.open('r+b') as file:  # what a recorder killed mid-write leaves: no summary, no footer
        file.truncate(size * 6 // 10)
    report = evaluate(tmp_path / 'run', tmp_path / 'out', checkpoint)
    camera = report['topics']['/cam/image_raw']
    read = camera['frames']
    assert 0 < read < FRAMES
    assert output_times(tmp_path / 'out') == times[:read]  # complete, and in order
    stopped = report['stopped']
    assert stopped['messages_read'] == read and stopped['last_timestamp'] == times[read - 1]
    assert stopped['last_time_s'] == pytest.approx((read - 1) * 0.1)
    assert 'run.mcap is cut off' in stopped['reason'] and f'of {size * 6 // 10}' in stopped['reason']
    assert any('no usable summary or footer' in note for note in report['bag']['notes'])
    markdown = (tmp_path / 'out' / 'report.md').read_text()
    assert '**Reading stopped early**' in markdown and f'after {read} messages' in markdown


def test_a_folder_without_metadata_is_read_from_its_storage_file(tmp_path, frames, checkpoint):
    times = write_bag(tmp_path / 'run', frames[:3], 'mcap')
    (tmp_path / 'run' / 'metadata.yaml').unlink()
    report = evaluate(tmp_path / 'run', tmp_path / 'out', checkpoint)
    assert report['stopped'] is None and report['topics']['/cam/image_raw']['frames'] == 3
    assert output_times(tmp_path / 'out') == times
    note, = report['bag']['notes']
    assert 'has no metadata.yaml' in note and 'run.mcap' in note


def test_corrupt_sqlite_pages_stop_the_evaluation_where_they_are(tmp_path, frames, checkpoint):
    times = write_bag(tmp_path / 'run', frames, 'sqlite3')
    database = tmp_path / 'run' / 'run.db3'
    page = 4096
    with database.open('r+b') as file:  # garbage over three pages of the later frames' data
        file.seek(database.stat().st_size * 6 // 10 // page * page)
        file.write(b'\xa5' * 3 * page)
    report = evaluate(tmp_path / 'run', tmp_path / 'out', checkpoint, '--storage', 'sqlite3')
    read = report['topics']['/cam/image_raw']['frames']
    assert 0 < read < FRAMES
    assert output_times(tmp_path / 'out') == times[:read]
    stopped = report['stopped']
    assert 'malformed' in stopped['reason'] and stopped['last_timestamp'] == times[read - 1]


def test_an_unsupported_encoding_is_reported_and_skipped(tmp_path, frames, checkpoint, capsys):
    bag = OutputBag(tmp_path / 'run', 'mcap')
    for index, rgb in enumerate(frames[:3]):
        time = START + index * 100_000_000
        header = header_message(time, 'cam')
        bag.write('/cam/image_raw', IMAGE, time, serialize(image_message(rgb[:90, :120], 'rgb8', header)))
        depth = image_message(np.zeros((90, 120, 4), np.uint8), 'rgba8', header)
        depth.encoding = '32FC1'  # one float per pixel: a depth image, nothing to segment
        bag.write('/depth/image', IMAGE, time, serialize(depth))
    bag.close()
    assert main([str(tmp_path / 'run'), '-c', str(checkpoint), '--out', str(tmp_path / 'auto')]) == 2
    assert '2 camera topics (/cam/image_raw, /depth/image)' in capsys.readouterr().err
    report = evaluate(tmp_path / 'run', tmp_path / 'out', checkpoint,
                      '--topic', '/cam/image_raw', '--topic', '/depth/image')
    depth, camera = report['topics']['/depth/image'], report['topics']['/cam/image_raw']
    assert (depth['frames'], depth['skipped'], camera['frames'], camera['skipped']) == (0, 3, 3, 0)
    assert "encoding '32FC1' is not supported" in depth['skip_reason']
    assert 'mosaic' not in depth['outputs'] and report['stopped'] is None
    assert 'Skipped 3 message(s)' in (tmp_path / 'out' / 'report.md').read_text()


def test_bags_that_cannot_be_read_are_clear_errors(tmp_path, checkpoint, capsys):
    junk = tmp_path / 'junk.mcap'
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / 'empty'
    empty.mkdir()
    for bag, message in ((junk, 'not an MCAP file'), (empty, 'neither a bag (metadata.yaml, .mcap or .db3 files)'),
                         (tmp_path / 'missing', 'no such file or folder')):
        out = tmp_path / f'out_{bag.name}'
        assert main([str(bag), '-c', str(checkpoint), '--out', str(out), '-q']) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_a_lone_mcap_file_that_lost_only_its_footer_is_read_whole(tmp_path, frames, checkpoint):
    write_bag(tmp_path / 'run', frames[:4], 'mcap')
    storage = tmp_path / 'run' / 'run.mcap'
    with storage.open('r+b') as file:
        file.truncate(storage.stat().st_size - 100)  # only the summary and footer lost
    shutil.copy(storage, tmp_path / 'alone.mcap')
    report = evaluate(tmp_path / 'alone.mcap', tmp_path / 'out', checkpoint)
    assert report['topics']['/cam/image_raw']['frames'] == 4 and 'cut off' in report['stopped']['reason']
    with Reader(tmp_path / 'out' / 'bag') as reader:  # the output bag is complete
        assert reader.message_count == 4 * 3  # image, mask, stats
