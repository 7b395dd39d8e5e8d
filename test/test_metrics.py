"""ConfusionMatrix against direct numpy computations on random label maps."""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seg_ros.labels import CITYSCAPES19
from seg_ros.metrics import CITYSCAPES_CATEGORIES, CITYSCAPES_CATEGORY_NAMES, ConfusionMatrix

IGNORE = 255


def random_maps(seed: int, num_classes: int, shape=(3, 17, 23), ignore_fraction=0.2):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, num_classes, shape).astype(np.uint8)
    target[rng.random(shape) < ignore_fraction] = IGNORE
    # Predictions right about half the time, so every score is informative.
    pred = np.where(rng.random(shape) < 0.5, target, rng.integers(0, num_classes, shape)).astype(np.int64)
    pred[target == IGNORE] = rng.integers(0, num_classes, int((target == IGNORE).sum()))
    return pred, target


def direct_scores(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    """Scores straight from the definitions, one class at a time."""
    labelled = target != IGNORE
    p, t = pred[labelled], target[labelled]
    iou, recall = [], []
    for c in range(num_classes):
        tp = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        iou.append(tp / union if union else math.nan)
        recall.append(tp / np.sum(t == c) if np.sum(t == c) else math.nan)
    return {'iou': np.array(iou), 'recall': np.array(recall), 'pixel_accuracy': np.mean(p == t)}


def test_matches_direct_computation_on_random_data():
    cm = ConfusionMatrix(6)
    preds, targets = [], []
    for seed in range(4):
        pred, target = random_maps(seed, 6)
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
        preds.append(pred)
        targets.append(target)
    pred, target = np.concatenate(preds), np.concatenate(targets)
    expected = direct_scores(pred, target, 6)

    matrix = np.zeros((6, 6), np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if t != IGNORE:
            matrix[t, p] += 1
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, matrix)
    np.testing.assert_allclose(cm.iou(), expected['iou'])
    assert cm.miou() == pytest.approx(np.mean(expected['iou']))
    assert cm.pixel_accuracy() == pytest.approx(expected['pixel_accuracy'])
    assert cm.mean_class_accuracy() == pytest.approx(np.mean(expected['recall']))


def test_numpy_and_torch_inputs_of_any_integer_dtype_agree():
    pred, target = random_maps(5, 4)
    from_numpy, from_torch = ConfusionMatrix(4), ConfusionMatrix(4)
    from_numpy.update(pred.astype(np.uint8), target)
    read_only = target.copy()
    read_only.flags.writeable = False
    from_numpy.update(pred.astype(np.int32), read_only)
    from_torch.update(torch.from_numpy(pred), torch.from_numpy(target).long())
    from_torch.update(torch.from_numpy(pred).short(), torch.from_numpy(target))
    np.testing.assert_array_equal(from_numpy.matrix, from_torch.matrix)
    assert from_numpy.matrix.sum() == 2 * np.sum(target != IGNORE)


def test_absent_class_is_nan_and_left_out_of_the_means():
    cm = ConfusionMatrix(4)
    cm.update(np.array([[0, 1, 1, 0]]), np.array([[0, 1, 0, IGNORE]]))
    iou = cm.iou()
    assert iou[0] == pytest.approx(1 / 2) and iou[1] == pytest.approx(1 / 2)
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert cm.miou() == pytest.approx(0.5)
    assert cm.mean_class_accuracy() == pytest.approx((1 / 2 + 1) / 2)
    assert cm.pixel_accuracy() == pytest.approx(2 / 3)


def test_predictions_outside_the_classes_count_as_misses():
    cm = ConfusionMatrix(3)
    target = np.array([[0, 0, 1, 1, 2, IGNORE]])
    cm.update(np.array([[0, 255, 1, 1, -1, 255]]), target)
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 2, 0], [0, 0, 0]])
    np.testing.assert_array_equal(cm.missed, [1, 0, 1])
    np.testing.assert_allclose(cm.iou(), [1 / 2, 1.0, 0.0])
    assert cm.pixel_accuracy() == pytest.approx(3 / 5)
    np.testing.assert_allclose(cm.class_accuracy(), [1 / 2, 1.0, 0.0])


def test_category_iou_equals_iou_of_merged_labels():
    pred, target = random_maps(7, 19, shape=(2, 31, 29))
    pred[0, 0, :5] = 255  # misses stay misses after merging
    cm = ConfusionMatrix(19)
    cm.update(pred, target)
    lookup = np.full(256, 255, np.int64)
    lookup[:19] = CITYSCAPES_CATEGORIES
    merged = ConfusionMatrix(7)
    merged.update(lookup[pred], lookup[target])
    np.testing.assert_allclose(cm.category_iou(CITYSCAPES_CATEGORIES), merged.iou())
    assert len(CITYSCAPES_CATEGORIES) == CITYSCAPES19.num_classes
    assert len(CITYSCAPES_CATEGORY_NAMES) == max(CITYSCAPES_CATEGORIES) + 1
    named = dict(zip(CITYSCAPES19.names, (CITYSCAPES_CATEGORY_NAMES[c] for c in CITYSCAPES_CATEGORIES),
                     strict=True))
    assert named['rider'] == 'human' and named['bicycle'] == 'vehicle' and named['terrain'] == 'nature'
    assert named['traffic_sign'] == 'object' and named['wall'] == 'construction'
    assert named['sidewalk'] == 'flat' and named['sky'] == 'sky'
    with pytest.raises(ValueError, match='one integer category per class'):
        cm.category_iou([0, 1])


def test_to_dict_reports_percent_and_none_for_undefined():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1, 1, 1]]), np.array([[0, 1, 1, 0]]))
    report = cm.to_dict(['road', 'car', 'sky'])
    assert report['miou'] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert report['per_class_iou'] == {'road': pytest.approx(50.0), 'car': pytest.approx(200 / 3),
                                       'sky': None}
    assert report['pixel_accuracy'] == pytest.approx(75.0)
    assert report['mean_class_accuracy'] == pytest.approx(75.0)
    with pytest.raises(ValueError, match='2 class names for 3 classes'):
        cm.to_dict(['road', 'car'])


def test_empty_and_reset():
    cm = ConfusionMatrix(3)
    assert math.isnan(cm.miou()) and math.isnan(cm.pixel_accuracy()) and math.isnan(cm.mean_class_accuracy())
    cm.update(np.zeros((2, 2), np.int64), np.zeros((2, 2), np.int64))
    assert cm.pixel_accuracy() == 1.0
    cm.reset()
    assert cm.matrix.sum() == 0 and cm.missed.sum() == 0
    cm.all_reduce()  # no process group: nothing to do
    assert cm.matrix.sum() == 0


@pytest.mark.parametrize('pred, target, error, message', [
    (np.zeros((2, 3)), np.zeros((2, 3), np.int64), TypeError, 'integer class indices'),
    (np.zeros((2, 3), np.int64), np.zeros((3, 2), np.int64), ValueError, r'pred shape \(2, 3\) != target'),
    (np.zeros((1, 4, 2, 3)), np.zeros((1, 2, 3), np.int64), TypeError, 'integer class indices'),
    (np.zeros((1, 4, 2, 3), np.int64), np.zeros((1, 2, 3), np.int64), ValueError, 'argmax'),
    (np.zeros((2, 3), np.int64), np.full((2, 3), 7), ValueError, r'values \[7\] that are neither a class'),
    ([0, 1], np.zeros(2, np.int64), TypeError, 'torch tensor or numpy array'),
])
def test_bad_input_is_rejected(pred, target, error, message):
    with pytest.raises(error, match=message):
        ConfusionMatrix(4).update(pred, target)


def test_bad_construction_is_rejected():
    with pytest.raises(ValueError, match='positive integer'):
        ConfusionMatrix(0)
    with pytest.raises(ValueError, match='ignore_index 2 is a class index'):
        ConfusionMatrix(4, ignore_index=2)


def _reduce_worker(rank: int, world_size: int, init_file: str, results: dict) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        pred, target = random_maps(100 + rank, 5)
        cm = ConfusionMatrix(5)
        cm.update(pred, target)
        cm.all_reduce()
        results[rank] = cm.matrix
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_over_processes():
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        # fork: the workers need nothing but gloo on CPU, and skip re-importing torch.
        mp.start_processes(_reduce_worker, args=(2, os.path.join(tmp, 'init'), results), nprocs=2,
                           start_method='fork')
        reduced = dict(results)
    expected = ConfusionMatrix(5)
    for rank in range(2):
        expected.update(*random_maps(100 + rank, 5))
    np.testing.assert_array_equal(reduced[0], expected.matrix)
    np.testing.assert_array_equal(reduced[1], expected.matrix)
