"""The bag tool's parts: topic choice, label pairing, mosaic sampling, names; flat memory over a long bag."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from seg_ros.bag.cli import _model_names, main
from seg_ros.bag.frames import (
    Frame,
    StampPairing,
    check_label,
    choose_camera_topics,
    choose_label_topic,
)
from seg_ros.bag.messages import IMAGE, header_message, image_message, serialize
from seg_ros.bag.reader import BagError, TopicInfo
from seg_ros.bag.video import MosaicRows
from seg_ros.bag.writer import OutputBag, result_prefix
from seg_ros.frames.synthetic import SyntheticRoadScene
from seg_ros.labels import CAMVID11

from .support import channel_checkpoint

IMAGE_TYPE, COMPRESSED_TYPE = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage'


def topics(**types: str) -> dict[str, TopicInfo]:
    """TopicInfo by name from keyword arguments: ``a__b='Image'`` is topic /a/b."""
    full = {'Image': IMAGE_TYPE, 'CompressedImage': COMPRESSED_TYPE, 'Imu': 'sensor_msgs/msg/Imu'}
    return {'/' + name.replace('__', '/'): TopicInfo('/' + name.replace('__', '/'), full[kind], 5)
            for name, kind in types.items()}


def test_camera_topics_leave_out_labels_and_results():
    bag = topics(cam__image_raw__compressed='CompressedImage', cam__labels='Image', imu='Imu',
                 cam__segmentation__enet__mask='Image')
    assert choose_camera_topics(bag, []) == ['/cam/image_raw/compressed']
    assert choose_label_topic(bag, ['/cam/image_raw/compressed'], None) == ('/cam/labels',
                                                                           '/cam/image_raw/compressed')
    assert choose_label_topic(topics(cam__image_raw='Image'), ['/cam/image_raw'], None) is None
    with pytest.raises(BagError, match='is a sensor_msgs/msg/Imu, not an Image'):
        choose_camera_topics(bag, ['/imu'])
    two = topics(left__image='Image', right__image='Image', left__labels='Image')
    with pytest.raises(BagError, match='2 camera topics'):
        choose_camera_topics(two, [])
    assert choose_label_topic(two, ['/left/image', '/right/image'], None) == ('/left/labels', '/left/image')
    with pytest.raises(BagError, match='beside none of the camera topics'):
        choose_label_topic(topics(a__image='Image', b__image='Image', gt__labels='Image'),
                           ['/a/image', '/b/image'], '/gt/labels')


def test_result_topics_sit_beside_the_camera():
    assert result_prefix('/cam/image_raw', 'enet') == '/cam/segmentation/enet'
    assert result_prefix('/cam/image_raw/compressed', 'enet') == '/cam/segmentation/enet'
    assert result_prefix('/image', 'm') == '/segmentation/m'


def frame(stamp: int) -> Frame:
    return Frame('/cam/image', stamp, stamp, header_message(stamp, 'cam'), np.zeros((2, 2, 3), np.uint8),
                 'rgb8', IMAGE_TYPE, b'')


def test_labels_pair_with_frames_by_stamp_in_either_order():
    matcher = StampPairing('label', 'stamp', window=2)
    label = {stamp: np.full((2, 2), stamp, np.uint8) for stamp in range(10)}
    assert matcher.add_value(0, label[0]) == []  # label first, then its frame: out at once
    first, = matcher.add_frame(frame(0))
    assert first.label is label[0]
    assert matcher.add_frame(frame(1)) == []  # frame first: held for its label
    second, = matcher.add_value(1, label[1])
    assert second.stamp == 1 and second.label is label[1]
    # A frame whose label never comes is let go, in order, once two newer frames wait behind it.
    assert matcher.add_frame(frame(2)) == [] and matcher.add_frame(frame(3)) == []
    released = matcher.add_frame(frame(4))
    assert [f.stamp for f in released] == [2] and released[0].label is None
    released = matcher.add_value(3, label[3])
    assert [f.stamp for f in released] == [3]
    assert [f.stamp for f in matcher.flush()] == [4]


@pytest.mark.parametrize('offered', [1, 3, 4, 9, 10, 57, 200])
def test_mosaic_rows_spread_evenly_in_bounded_memory(offered):
    rows = MosaicRows(count=4)
    held = 0
    for index in range(offered):
        rows.offer(index, lambda index=index: np.full((1, 1, 3), index % 256, np.uint8))
        held = max(held, len(rows._rows))
    chosen = [int(row[0, 0, 0]) for row in rows.rows()]
    assert held <= 2 * 4 + 1 and len(chosen) == min(4, offered) and chosen[0] == 0
    if offered > 4:
        gaps = np.diff(chosen)
        assert gaps.min() > 0 and gaps.max() <= 2 * gaps.min() + 1 and chosen[-1] >= offered // 2


def test_mosaic_rows_at_chosen_frames():
    rows = MosaicRows(indices=[5, 2])
    for index in range(8):
        rows.offer(index, lambda index=index: np.full((1, 1, 3), index, np.uint8))
    assert [int(row[0, 0, 0]) for row in rows.rows()] == [2, 5]


def test_labels_are_checked_against_their_classes():
    check_label(np.array([[0, 10], [255, 3]], np.uint8), CAMVID11, (2, 2, 3))
    with pytest.raises(ValueError, match=r'label values \[11\] are neither a class of camvid11'):
        check_label(np.array([[0, 11]], np.uint8), CAMVID11, (1, 2, 3))
    with pytest.raises(ValueError, match='label of size 2x1 for an image of 3x1'):
        check_label(np.zeros((1, 2), np.uint8), CAMVID11, (1, 3, 3))


def test_model_names_from_checkpoint_arguments(tmp_path):
    assert _model_names(['a=x.pt', 'runs/enet/best.pt', 'other/best.pt', '7up.pt']) == {
        'a': Path('x.pt'), 'best': Path('runs/enet/best.pt'), 'best_2': Path('other/best.pt'),
        'model_7up': Path('7up.pt')}
    odd = tmp_path / 'with=sign.pt'
    odd.touch()
    assert _model_names([str(odd)]) == {'with_sign': odd}  # an existing file is a path, '=' or not


def test_memory_stays_flat_over_a_longer_bag(tmp_path):
    """Python and numpy memory (tracemalloc) of 24 frames is that of 6: nothing per frame is kept."""
    checkpoint = channel_checkpoint(tmp_path / 'channel.pt', input_size=(30, 40))
    scene = SyntheticRoadScene(320, 240, seed=4)
    frames = [scene.frame(i * 0.1)[0] for i in range(24)]  # 230 kB each, the results 540 kB more
    peaks = {}
    for count in (3, 6, 24):  # the first run imports and caches what later runs find ready
        bag = OutputBag(tmp_path / f'in{count}', 'mcap')
        for index, rgb in enumerate(frames[:count]):
            time = 10**18 + index * 10**8
            msg = image_message(rgb, 'rgb8', header_message(time, 'cam'))
            bag.write('/cam/image', IMAGE, time, serialize(msg))
        bag.close()
        out = tmp_path / f'out{count}'
        tracemalloc.start()
        try:
            assert main([str(tmp_path / f'in{count}'), '-c', str(checkpoint), '--out', str(out), '--no-video',
                         '--mosaic-frames', '1', '-q']) == 0
            peaks[count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        report = json.loads((out / 'report.json').read_text())
        assert report['topics']['/cam/image']['frames'] == count
    # 18 more frames kept would be 4 MB (input) to 14 MB (with results). Bounded buffers fill in both
    # runs: the mosaic's (3 rows for one, 0.5 MB each) and the MCAP writer's chunk (1 MiB, copied
    # while it is written out), whose size at the moment it is closed varies by up to a frame.
    assert peaks[24] - peaks[6] < 2 * 2**20, peaks
