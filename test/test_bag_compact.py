"""seg-bag's outputs on CamVid frames recorded with ``seg-bag make``: a compact output bag (bit-exact
PNG masks, at most 0.3 MB per frame per model at 480x360) that ``ros2 bag`` reads from Humble on
(metadata version 5, QoS profiles), checked with the official MCAP reader; a browser-playable
H.264 video; ground truth used or loudly refused; an atomic ``seg-bag make``; a window outside the
bag refused."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest
import torch
import yaml
from mcap.reader import make_reader

from seg_ros.bag.cli import EXIT_MISSING, main
from seg_ros.bag.writer import CAMERA_QOS, RESULT_QOS
from seg_ros.checkpoint import Checkpoint, save_checkpoint
from seg_ros.inference.segmenter import Segmenter
from seg_ros.labels import CAMVID11, IGNORE_INDEX
from seg_ros.models import build_model

from .support.bags import iou_from_masks, pixels, read_bag

FRAMES = 4
VOID = 11  # CamVid's "unlabelled" value in its label PNGs
MB = 1_000_000


@pytest.fixture(scope='module')
def camvid(tmp_path_factory, camvid_root) -> SimpleNamespace:
    """CamVid val frames and labels as CamVid names them, a bag of them, and an untrained ENet."""
    root = tmp_path_factory.mktemp('compact')
    images, labels = root / 'images', root / 'labels'
    images.mkdir()
    labels.mkdir()
    pairs = [line.split() for line in (camvid_root / 'val.txt').read_text().splitlines()[:FRAMES]]
    for image, label in pairs:
        shutil.copy(camvid_root / image, images)
        shutil.copy(camvid_root / label, labels)
    assert main(['make', str(images), '--rate', '5', '--start-time', '1700000000', '--out', str(root / 'bag'),
                 '-q']) == 0
    torch.manual_seed(0)
    model = build_model('enet', CAMVID11.num_classes).eval()
    checkpoint = save_checkpoint(Checkpoint.from_model(model, 'enet', CAMVID11, input_size=(48, 64)),
                                 root / 'enet.pt')
    names = sorted(path.stem for path in images.iterdir())
    rgb = [cv2.imread(str(images / f'{name}.jpg'))[..., ::-1].copy() for name in names]
    truth = [cv2.imread(str(labels / f'{name}.png'), cv2.IMREAD_UNCHANGED) for name in names]
    return SimpleNamespace(root=root, bag=root / 'bag', images=images, labels=labels, checkpoint=checkpoint,
                           names=names, rgb=rgb, truth=truth)


def evaluate(camvid: SimpleNamespace, out: str, *options: str, expect: int = 0) -> dict:
    assert main([str(camvid.bag), '-c', f'enet={camvid.checkpoint}', '--out', str(camvid.root / out), '-q',
                 *options]) == expect
    return json.loads((camvid.root / out / 'report.json').read_text())


def test_output_bag_is_compact_with_bit_exact_masks(camvid):
    report = evaluate(camvid, 'default', '--no-video')
    assert report['run']['outputs'] == ['image', 'mask', 'stats']
    bag = camvid.root / 'default' / 'bag'
    per_frame_per_model = report['run']['output_bag_bytes'] / FRAMES
    assert per_frame_per_model <= 0.3 * MB, per_frame_per_model  # the recorded rgb8 frame alone is 0.52 MB
    output = read_bag(bag)
    assert set(output) == {'/camera/image_raw/compressed', '/camera/segmentation/enet/mask/compressed',
                           '/camera/segmentation/enet/stats'}
    segmenter = Segmenter(camvid.checkpoint, device='cpu')
    for (_, msg), rgb in zip(output['/camera/segmentation/enet/mask/compressed'], camvid.rgb, strict=True):
        assert msg.format == 'mono8; png compressed mono8'
        np.testing.assert_array_equal(pixels(msg), segmenter.segment(rgb, 'rgb8').mask)
    # Every output, colour masks and overlays as JPEG: still well under the target for one model.
    everything = evaluate(camvid, 'all', '--no-video', '--outputs', 'image,mask,color_mask,overlay,stats')
    assert everything['run']['output_bag_bytes'] / FRAMES <= 0.3 * MB
    assert set(read_bag(camvid.root / 'all' / 'bag')) > set(output)


def test_output_bag_metadata_is_humbles_with_qos_and_a_valid_mcap(camvid):
    evaluate(camvid, 'metadata', '--no-video')
    bag = camvid.root / 'metadata' / 'bag'
    info = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    # What Humble's rosbag2 writes (and Iron, Jazzy, Kilted read): version 5, its keys, QoS as a string.
    assert info['version'] == 5 and info['storage_identifier'] == 'mcap'
    assert set(info) == {'version', 'storage_identifier', 'relative_file_paths', 'duration', 'starting_time',
                         'message_count', 'topics_with_message_count', 'compression_format',
                         'compression_mode', 'files'}
    assert info['message_count'] == 3 * FRAMES and info['relative_file_paths'] == ['bag.mcap']
    qos = {}
    for entry in info['topics_with_message_count']:
        topic = entry['topic_metadata']
        assert set(topic) == {'name', 'type', 'serialization_format', 'offered_qos_profiles'}
        assert isinstance(topic['offered_qos_profiles'], str)
        profile, = yaml.safe_load(topic['offered_qos_profiles'])
        assert all(isinstance(profile[key], int) for key in ('history', 'reliability', 'durability'))
        qos[topic['name']] = profile
    # The camera keeps the QoS it was recorded with (seg-bag make: best effort); results get the node's.
    assert qos['/camera/image_raw/compressed']['reliability'] == CAMERA_QOS.reliability.value == 2
    assert qos['/camera/segmentation/enet/mask/compressed']['reliability'] == RESULT_QOS.reliability.value == 1
    with (bag / 'bag.mcap').open('rb') as file:  # the official MCAP reader
        reader = make_reader(file)
        summary = reader.get_summary()
        assert reader.get_header().profile == 'ros2'
        assert {chunk.compression for chunk in summary.chunk_indexes} == {'zstd'}
        assert {schema.encoding for schema in summary.schemas.values()} == {'ros2msg'}
        assert all('offered_qos_profiles' in channel.metadata for channel in summary.channels.values())
        assert sum(1 for _ in reader.iter_messages()) == 3 * FRAMES


def test_result_qos_is_the_nodes():
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, ReliabilityPolicy

    from seg_ros.ros.qos import OUTPUT

    assert (RESULT_QOS.history.value, RESULT_QOS.depth) == (HistoryPolicy.KEEP_LAST.value, OUTPUT.depth)
    assert RESULT_QOS.history.value == OUTPUT.history.value
    assert RESULT_QOS.reliability.value == OUTPUT.reliability.value == ReliabilityPolicy.RELIABLE.value
    assert RESULT_QOS.durability.value == OUTPUT.durability.value == DurabilityPolicy.VOLATILE.value


def test_video_is_h264_that_browsers_play(camvid):
    evaluate(camvid, 'video', '--no-bag')
    path = camvid.root / 'video' / 'camera_image_raw' / 'video.mp4'
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == 'h264' and stream.codec_context.pix_fmt == 'yuv420p'
        assert stream.width % 2 == 0 and stream.height % 2 == 0
        assert sum(1 for _ in container.decode(stream)) == FRAMES
    data = path.read_bytes()
    assert 0 < data.find(b'moov') < data.find(b'mdat')  # index first: plays while it loads


def test_camvid_labels_with_void_are_refused_loudly_then_used_with_label_ignore(camvid, capsys):
    refused = evaluate(camvid, 'void', '--gt-dir', str(camvid.labels), '--no-bag', '--no-video',
                       expect=EXIT_MISSING)
    err = capsys.readouterr().err
    assert f'{FRAMES} of {FRAMES} label image(s) hold values that are no class' in err
    assert 'pass --label-ignore 11' in err and 'none of its 4 label image(s) was used' in err
    assert refused['topics']['/camera/image_raw']['ground_truth'] == {}
    assert refused['ground_truth']['labels']['not_used'] == {'values': FRAMES}
    used = evaluate(camvid, 'ignored', '--gt-dir', str(camvid.labels), '--label-ignore', str(VOID), '--no-bag',
                    '--no-video')
    assert capsys.readouterr().err == ''
    assert used['ground_truth']['labels']['used'] == FRAMES and 'by the image file name' in \
        used['ground_truth']['source']
    score = used['topics']['/camera/image_raw']['ground_truth']['enet']
    segmenter = Segmenter(camvid.checkpoint, device='cpu')
    masks = [segmenter.segment(rgb, 'rgb8').mask for rgb in camvid.rgb]
    truth = [np.where(label == VOID, IGNORE_INDEX, label) for label in camvid.truth]
    expected = iou_from_masks(masks, truth, CAMVID11.num_classes)
    reported = np.array([np.nan if v is None else v for v in score['per_class_iou'].values()])
    np.testing.assert_allclose(reported, expected, rtol=1e-9)
    assert score['frames'] == FRAMES


def test_labels_by_pattern_and_unmatched_labels_counted(camvid, capsys):
    renamed = camvid.root / 'renamed'
    renamed.mkdir()
    for index, name in enumerate(camvid.names):
        shutil.copy(camvid.labels / f'{name}.png', renamed / f'{name}_L.png')
        shutil.copy(camvid.labels / f'{name}.png', renamed / f'frame_{index:06d}.png')
    by_name = evaluate(camvid, 'pattern', '--gt-dir', str(renamed), '--gt-pattern', '{name}_L.png',
                       '--label-ignore', '11', '--no-bag', '--no-video')
    assert by_name['ground_truth']['labels']['used'] == FRAMES
    assert by_name['ground_truth']['labels']['not_used'] == {'unmatched': FRAMES}  # the frame_ copies
    assert f'{FRAMES} of {2 * FRAMES} label image(s) matched no evaluated frame' in capsys.readouterr().err
    by_index = evaluate(camvid, 'by_index', '--gt-dir', str(renamed), '--gt-pattern', 'frame_{index:06d}.png',
                        '--label-ignore', '11', '--stride', '2', '--no-bag', '--no-video')
    assert by_index['topics']['/camera/image_raw']['frames_with_ground_truth'] == FRAMES // 2
    # CamVid's names end in a number that is no frame index: by index, nothing matches, and it says so.
    evaluate(camvid, 'wrong', '--gt-dir', str(camvid.labels), '--gt-match', 'index', '--label-ignore', '11',
             '--no-bag', '--no-video', expect=EXIT_MISSING)
    err = capsys.readouterr().err
    assert f'{FRAMES} of {FRAMES} label image(s) matched no evaluated frame' in err
    assert 'the first frame was looked up as 0' in err


def test_matching_by_name_needs_a_bag_that_records_names(tmp_path, camvid, capsys):
    assert main(['make', 'synthetic', '--max-frames', '2', '--out', str(tmp_path / 'bag'), '-q']) == 0
    assert main([str(tmp_path / 'bag'), '-c', str(camvid.checkpoint), '--gt-dir', str(camvid.labels),
                 '--gt-match', 'name', '--out', str(tmp_path / 'out'), '-q']) == 2
    assert 'the bag records no image file names' in capsys.readouterr().err
    assert main([str(tmp_path / 'bag'), '-c', str(camvid.checkpoint), '--gt-dir', str(camvid.labels),
                 '--gt-pattern', 'x{nope}.png', '--out', str(tmp_path / 'out'), '-q']) == 2
    assert "--gt-pattern 'x{nope}.png': not a file-name pattern" in capsys.readouterr().err


def test_a_label_topic_with_void_is_used_with_label_ignore(camvid, tmp_path):
    assert main(['make', str(camvid.images), '--labels', str(camvid.labels), '--label-ignore', '11',
                 '--out', str(tmp_path / 'labelled'), '-q']) == 0
    # seg-bag make refuses void without --label-ignore: and leaves nothing behind.
    assert main(['make', str(camvid.images), '--labels', str(camvid.labels), '--out', str(tmp_path / 'void'),
                 '-q']) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['labelled']
    assert main([str(tmp_path / 'labelled'), '-c', str(camvid.checkpoint), '--out', str(tmp_path / 'out'),
                 '--no-video', '-q']) == 0
    report = json.loads((tmp_path / 'out' / 'report.json').read_text())
    assert report['ground_truth']['labels'] == {'offered': FRAMES, 'used': FRAMES, 'not_used': {},
                                                'refused_values': [], 'warnings': []}


def test_make_is_atomic_and_a_rerun_succeeds(camvid, tmp_path, capsys):
    labels = tmp_path / 'labels'
    shutil.copytree(camvid.labels, labels)
    broken = labels / f'{camvid.names[2]}.png'
    cv2.imwrite(str(broken), np.zeros((10, 10), np.uint8))  # the third frame's label is the wrong size
    out = tmp_path / 'runs' / 'bag'
    assert main(['make', str(camvid.images), '--labels', str(labels), '--label-ignore', '11', '--out', str(out),
                 '-q']) == 2
    assert 'label of frame 2: label of size 10x10 for an image of 480x360' in capsys.readouterr().err
    assert list((tmp_path / 'runs').iterdir()) == []  # no partial bag, no temporary folder
    shutil.copy(camvid.labels / broken.name, broken)
    assert main(['make', str(camvid.images), '--labels', str(labels), '--label-ignore', '11', '--out', str(out),
                 '-q']) == 0
    assert [p.name for p in (tmp_path / 'runs').iterdir()] == ['bag']
    assert sorted(p.name for p in out.iterdir()) == ['bag.mcap', 'metadata.yaml']


def test_a_window_outside_the_bag_is_an_error_naming_its_duration(camvid, tmp_path, capsys):
    assert main([str(camvid.bag), '-c', str(camvid.checkpoint), '--start', '100', '--out', str(tmp_path / 'o'),
                 '-q']) == 2
    err = capsys.readouterr().err
    assert '--start 100 s is after the end of the bag' in err
    assert f'its messages span {(FRAMES - 1) * 0.2:.3f} s' in err
    assert not (tmp_path / 'o').exists()
