"""The synthetic road scene: shapes, determinism, motion, classes in view and labels that fit the image."""

from __future__ import annotations

import time

import numpy as np
import pytest

from seg_ros.frames.synthetic import SyntheticRoadScene
from seg_ros.labels import CAMVID11

TIMES = [0.0, 2.5, 7.3, 19.0, 61.7, 143.2]


def label_edges_in_image(image: np.ndarray, label: np.ndarray) -> float:
    """Fraction of label boundaries (between neighbours) where the image also steps by > 30 levels."""
    steps = []
    for axis in (0, 1):
        boundary = np.diff(label.astype(np.int16), axis=axis) != 0
        contrast = np.abs(np.diff(image.astype(np.int16), axis=axis)).sum(-1)
        steps.append(contrast[boundary])
    return float((np.concatenate(steps) > 30).mean())


@pytest.mark.parametrize('size', [(640, 360), (333, 197)])
def test_frame_shapes_and_dtypes(size: tuple[int, int]) -> None:
    width, height = size
    image, label = SyntheticRoadScene(width, height).frame(1.0)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert label.shape == (height, width) and label.dtype == np.uint8
    assert image.flags.c_contiguous and label.flags.c_contiguous


def test_same_seed_and_time_give_the_same_frame() -> None:
    first, second = SyntheticRoadScene(seed=3), SyntheticRoadScene(seed=3)
    image, label = first.frame(4.2)
    image[:] = 0  # the caller owns the returned arrays
    for scene in (first, second):
        again_image, again_label = scene.frame(4.2)
        np.testing.assert_array_equal(again_label, label)
        assert again_image.any()
    np.testing.assert_array_equal(first.frame(4.2)[0], second.frame(4.2)[0])


def test_seeds_give_different_streets() -> None:
    image_a, label_a = SyntheticRoadScene(seed=0).frame(1.0)
    image_b, label_b = SyntheticRoadScene(seed=1).frame(1.0)
    assert (label_a != label_b).mean() > 0.01
    assert (image_a != image_b).any(-1).mean() > 0.5


def test_frames_move_over_time() -> None:
    scene = SyntheticRoadScene()
    previous_image, previous_label = scene.frame(0.0)
    for t in (0.1, 0.2, 0.3):
        image, label = scene.frame(t)
        assert (label != previous_label).mean() > 0.002
        assert (np.abs(image.astype(int) - previous_image).sum(-1) > 40).mean() > 0.01
        previous_image, previous_label = image, label


@pytest.mark.parametrize('size', [(640, 360), (160, 96)])
def test_every_camvid_class_is_in_view_in_every_frame(size: tuple[int, int]) -> None:
    scene = SyntheticRoadScene(*size, seed=5)
    for t in TIMES:
        _, label = scene.frame(t)
        assert label.max() < CAMVID11.num_classes
        counts = np.bincount(label.ravel(), minlength=CAMVID11.num_classes)
        missing = [name for name, count in zip(CAMVID11.names, counts, strict=True) if count == 0]
        assert not missing, f't={t}: {missing} not in view'


def test_labels_follow_the_drawn_shapes() -> None:
    scene = SyntheticRoadScene()
    for t in TIMES[:3]:
        image, label = scene.frame(t)
        assert label_edges_in_image(image, label) > 0.95
        # The same check fails for labels one pixel off, so it measures alignment.
        assert label_edges_in_image(image, np.roll(label, 1, axis=1)) < 0.7


def test_image_is_not_the_palette() -> None:
    image, label = SyntheticRoadScene().frame(3.0)
    palette_image = CAMVID11.palette()[label]
    assert np.abs(image.astype(int) - palette_image).mean() > 20
    sky = image[label == CAMVID11.names.index('sky')].astype(float)
    road = image[label == CAMVID11.names.index('road')].astype(float)
    assert sky[:, 2].mean() > sky[:, 0].mean() + 20  # a bluish sky
    assert np.ptp(road.mean(0)) < 15 and road.std() > 1.0  # grey, textured asphalt


def test_frames_are_fast() -> None:
    scene = SyntheticRoadScene()
    durations = []
    for t in np.arange(10) * 0.1:
        start = time.perf_counter()
        scene.frame(t)
        durations.append(time.perf_counter() - start)
    # A few ms on an idle core; the bound leaves room for a busy shared machine.
    assert min(durations) < 0.025


@pytest.mark.parametrize('size', [(16, 360), (640, 0)])
def test_too_small_size_is_rejected(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match='too small'):
        SyntheticRoadScene(*size)
