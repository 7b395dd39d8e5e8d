"""seg-eval and the evaluation path it shares with training: exact scores of a network whose output
is known, full-resolution scoring, test-time augmentation, reports, class-set checks."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seg_ros.data import EvalTransform, build_dataset
from seg_ros.inference import Segmenter
from seg_ros.inference.segmenter import view_scores
from seg_ros.labels import CITYSCAPES19, IGNORE_INDEX, LabelSet
from seg_ros.metrics import ConfusionMatrix
from seg_ros.training.cli import eval_main
from seg_ros.training.evaluate import evaluate, format_report, summarize
from test.support import CHANNEL_LABELS, ChannelArgmaxNet, channel_checkpoint, expected_channel_mask

SIZE = (24, 32)


def write_rgb_dataset(root: Path, *, count: int = 3, classes=CHANNEL_LABELS, seed: int = 0) -> list:
    """A ``folder`` dataset of images whose pixels are pure red, green or blue in 4x4 blocks.

    Labels are the true colour class, except that a fixed share is deliberately wrong and a few
    pixels are ignored, so the expected confusion matrix has off-diagonal and skipped entries.
    """
    rng = np.random.default_rng(seed)
    (root / 'images' / 'val').mkdir(parents=True)
    (root / 'labels' / 'val').mkdir(parents=True)
    (root / 'classes.txt').write_text(''.join(f'{n} {r} {g} {b}\n' for n, (r, g, b) in zip(
        classes.names, classes.colors, strict=True)))
    pairs = []
    for index in range(count):
        blocks = rng.integers(0, 3, (SIZE[0] // 4, SIZE[1] // 4))
        truth = np.kron(blocks, np.ones((4, 4), np.int64)).astype(np.uint8)
        image = (np.eye(3, dtype=np.uint8)[truth] * 200).astype(np.uint8)
        label = truth.copy()
        label[rng.random(SIZE) < 0.1] = rng.integers(0, classes.num_classes)
        label[0, :5] = IGNORE_INDEX
        cv2.imwrite(str(root / 'images' / 'val' / f'{index}.png'), image[..., ::-1])
        cv2.imwrite(str(root / 'labels' / 'val' / f'{index}.png'), label)
        pairs.append((image, label))
    return pairs


def expected_confusion(pairs, num_classes: int = 3) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for image, label in pairs:
        prediction = expected_channel_mask(image)
        keep = label != IGNORE_INDEX
        np.add.at(matrix, (label[keep], prediction[keep]), 1)
    return matrix


def channel_loader(root: Path) -> DataLoader:
    dataset = build_dataset('folder', root, 'val', EvalTransform((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    return DataLoader(dataset, batch_size=1)


def test_evaluate_counts_exactly_what_the_network_predicts(tmp_path):
    pairs = write_rgb_dataset(tmp_path)
    confusion = evaluate(ChannelArgmaxNet(), channel_loader(tmp_path), num_classes=3,
                         device=torch.device('cpu'))
    np.testing.assert_array_equal(confusion.matrix, expected_confusion(pairs))
    assert 0 < confusion.miou() < 1
    assert confusion.matrix.sum() == sum((label != IGNORE_INDEX).sum() for _, label in pairs)


def test_flip_tta_on_a_per_pixel_network_changes_nothing(tmp_path):
    pairs = write_rgb_dataset(tmp_path)
    kwargs = {'num_classes': 3, 'device': torch.device('cpu')}
    flipped = evaluate(ChannelArgmaxNet(), channel_loader(tmp_path), flip=True, **kwargs)
    np.testing.assert_array_equal(flipped.matrix, expected_confusion(pairs))


def test_scores_are_at_label_resolution_whatever_the_network_sees(tmp_path):
    """A half-size input (and a multi-scale average) still scores every label pixel; the 4x4 blocks
    survive the round trip, so the predictions are the expected ones."""
    pairs = write_rgb_dataset(tmp_path)
    model = ChannelArgmaxNet().eval()
    images = torch.stack([torch.from_numpy(img).permute(2, 0, 1).float() / 255 for img, _ in pairs])
    with torch.no_grad():
        scores = view_scores(model, images, SIZE, input_size=(12, 16), scales=(1.0, 1.5), flip=True)
    assert scores.shape == (len(pairs), 3, *SIZE)
    # four views (two scales, each also flipped): the sum of four soft-maxes
    assert torch.allclose(scores.sum(1), torch.full((len(pairs), *SIZE), 4.0))
    expected = np.stack([expected_channel_mask(img) for img, _ in pairs])
    agreement = (scores.argmax(1).numpy() == expected).mean()
    assert agreement > 0.97
    confusion = evaluate(model, channel_loader(tmp_path), num_classes=3, device=torch.device('cpu'),
                         input_size=(12, 16))
    assert confusion.matrix.sum() == expected_confusion(pairs).sum()


def test_summary_has_cityscapes_categories_and_a_readable_table():
    confusion = ConfusionMatrix(19)
    truth = torch.arange(19).repeat_interleave(10)
    prediction = truth.clone()
    prediction[truth == 0] = 1  # road taken for sidewalk: both 'flat'
    confusion.update(prediction, truth)
    report = summarize(confusion, CITYSCAPES19)
    assert report['per_class_iou']['road'] == 0 and report['per_class_iou']['car'] == 100
    assert report['category_iou']['flat'] == 100 and report['category_miou'] == 100
    assert len(report['category_iou']) == 7 and report['miou'] == pytest.approx(100 * 17.5 / 19)
    table = format_report(report)
    assert 'traffic_light' in table and 'cat. vehicle' in table and 'mIoU' in table


def test_summary_of_other_class_sets_has_no_categories_and_shows_absent_classes():
    confusion = ConfusionMatrix(3)
    confusion.update(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    report = summarize(confusion, CHANNEL_LABELS)
    assert 'category_iou' not in report and report['per_class_iou']['blue'] is None
    assert 'n/a' in format_report(report)


def test_seg_eval_prints_a_table_and_writes_json_and_heat_map(tmp_path, capsys):
    pairs = write_rgb_dataset(tmp_path / 'data')
    checkpoint = channel_checkpoint(tmp_path / 'channel.pt', input_size=SIZE)
    report_path = tmp_path / 'out' / 'report.json'
    assert eval_main([str(checkpoint), '--dataset', 'folder', '--data-root', str(tmp_path / 'data'),
                      '--split', 'val', '--json', str(report_path), '--num-workers', '0']) == 0
    out = capsys.readouterr().out
    assert 'mIoU' in out and 'red' in out
    report = json.loads(report_path.read_text())
    expected = expected_confusion(pairs)
    iou = np.diag(expected) / (expected.sum(0) + expected.sum(1) - np.diag(expected))
    assert report['miou'] == pytest.approx(100 * iou.mean())
    assert report['per_class_iou'] == pytest.approx(dict(zip(CHANNEL_LABELS.names, 100 * iou, strict=True)))
    assert report['pixel_accuracy'] == pytest.approx(100 * np.diag(expected).sum() / expected.sum())
    assert report['confusion_matrix'] == expected.tolist() and report['images'] == len(pairs)
    heat_map = tmp_path / 'out' / 'report_confusion.png'
    assert heat_map.read_bytes()[:4] == b'\x89PNG'


def test_seg_eval_refuses_a_dataset_with_other_classes(tmp_path, capsys):
    four = LabelSet('four', ('red', 'green', 'blue', 'white'), ((255, 0, 0), (0, 255, 0), (0, 0, 255),
                                                                  (255, 255, 255)))
    write_rgb_dataset(tmp_path / 'data', classes=four)
    checkpoint = channel_checkpoint(tmp_path / 'channel.pt')
    assert eval_main([str(checkpoint), '--dataset', 'folder', '--data-root', str(tmp_path / 'data'),
                      '--num-workers', '0']) == 2
    error = capsys.readouterr().err
    assert "'rgb3'" in error and "'data'" in error and 'white' in error and 'same classes' in error


@pytest.mark.parametrize(('argv', 'message'), [
    (['missing.pt', '--dataset', 'folder', '--data-root', '.'], 'no such file'),
    (['{ckpt}', '--dataset', 'nope', '--data-root', '.'], "unknown dataset 'nope'"),
    (['{ckpt}', '--dataset', 'folder', '--data-root', '.', '--scales', '0'], 'scales must be positive'),
])
def test_seg_eval_bad_input_is_a_clear_error(tmp_path, capsys, argv, message):
    checkpoint = channel_checkpoint(tmp_path / 'channel.pt')
    argv = [a.replace('{ckpt}', str(checkpoint)) for a in argv]
    assert eval_main(argv) == 2
    assert message in capsys.readouterr().err


def test_seg_eval_input_size_is_width_by_height_or_native(tmp_path, capsys):
    checkpoint = channel_checkpoint(tmp_path / 'channel.pt')
    with pytest.raises(SystemExit) as exit_info:
        eval_main([str(checkpoint), '--dataset', 'folder', '--data-root', '.', '--input-size', '12'])
    assert exit_info.value.code == 2 and "size '12' is not WIDTHxHEIGHT" in capsys.readouterr().err


@pytest.mark.parametrize('options', [[], ['--input-size', '16x12', '--flip', '--scales', '1.0', '1.5'],
                                     ['--input-size', 'native']], ids=['plain', 'tta', 'native'])
def test_seg_eval_scores_what_the_node_publishes(tmp_path, options):
    """seg-eval goes through the Segmenter the node runs: with one view its confusion matrix is that of
    the masks ``Segmenter.segment`` returns for the same frames, with test-time augmentation and at
    other input sizes the predictions stay those of the network (its output follows each pixel)."""
    pairs = write_rgb_dataset(tmp_path / 'data')
    checkpoint = channel_checkpoint(tmp_path / 'channel.pt', input_size=SIZE)
    report_path = tmp_path / 'report.json'
    assert eval_main([str(checkpoint), '--dataset', 'folder', '--data-root', str(tmp_path / 'data'),
                      '--json', str(report_path), '--num-workers', '0', *options]) == 0
    report = json.loads(report_path.read_text())
    assert report['backend'] == 'torch' and report['precision'] == 'fp32'
    assert report['input_size'] == ('native' if 'native' in options else [12, 16] if options else list(SIZE))
    segmenter = Segmenter(checkpoint, device='cpu', precision='fp32', backend='torch', choice_cache=False)
    published = ConfusionMatrix(3)
    for image, label in pairs:
        published.update(torch.from_numpy(segmenter.segment(image).mask).long(), torch.from_numpy(label).long())
    if options:
        agreement = np.diag(np.array(report['confusion_matrix'])).sum() / np.diag(published.matrix).sum()
        assert agreement > 0.97
    else:
        assert report['confusion_matrix'] == published.matrix.tolist()
