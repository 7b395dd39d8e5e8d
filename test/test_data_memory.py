"""A split decoded into memory, and batch augmentation as tensor operations (seg_ros.data.memory)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from seg_ros.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from seg_ros.data import DatasetError, TrainTransform, build_dataset
from seg_ros.data.memory import BatchAugment, FramesInMemory, InMemoryLoader, PerFrameAugment
from seg_ros.labels import IGNORE_INDEX

from .support.datasets import write_shapes


def _normalized(image_hwc: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (torch.from_numpy(image_hwc).permute(2, 0, 1).float() / 255 - mean) / std


def _random_batch(count: int = 3, size: tuple[int, int] = (36, 48), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, *size, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 11, (count, *size), dtype=torch.uint8, generator=generator)
    return images, labels


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return build_dataset('folder', write_shapes(tmp_path_factory.mktemp('shapes'), train=6, val=2), 'train')


def test_frames_in_memory_hold_what_the_reader_decodes(shapes):
    frames = FramesInMemory.load(shapes, torch.device('cpu'), threads=2)
    assert len(frames) == len(shapes) == 6
    assert frames.images.shape == (6, 48, 64, 3) and frames.labels.shape == (6, 48, 64)
    assert frames.nbytes == FramesInMemory.estimated_bytes(shapes) == 6 * 48 * 64 * 4
    for index in range(len(shapes)):
        image, label = shapes[index]
        assert np.array_equal(frames.images[index].numpy(), image)
        assert np.array_equal(frames.labels[index].numpy(), label)


def test_frames_of_several_sizes_are_refused_naming_the_frame(tmp_path):
    root = write_shapes(tmp_path / 'data', train=3, val=1)
    odd = root / 'images' / 'train' / '002.png'
    cv2.imwrite(str(odd), np.zeros((40, 64, 3), np.uint8))
    cv2.imwrite(str(root / 'labels' / 'train' / '002.png'), np.zeros((40, 64), np.uint8))
    with pytest.raises(DatasetError, match=r'002\.png: 64x40 frame .* first frame is 64x48'):
        FramesInMemory.load(build_dataset('folder', root, 'train'), torch.device('cpu'))


def test_batch_augment_at_scale_one_over_the_whole_frame_only_normalises():
    images, labels = _random_batch()
    out, target = BatchAugment((36, 48), scale_range=(1.0, 1.0), hflip=False)(images, labels)
    assert out.dtype == torch.float32 and target.dtype == torch.int64
    for index in range(len(images)):
        assert torch.allclose(out[index], _normalized(images[index].numpy()), atol=1e-4)
        assert torch.equal(target[index], labels[index].long())


def test_batch_augment_crop_is_a_window_of_the_frame_and_flip_mirrors_image_and_label():
    images, labels = _random_batch(count=6)
    torch.manual_seed(1)
    out, target = BatchAugment((20, 30), scale_range=(1.0, 1.0), hflip=True)(images, labels)
    flipped = 0
    for index in range(len(images)):
        frame, label = _normalized(images[index].numpy()), labels[index].long()
        windows = [(y, x) for y in range(36 - 20 + 1) for x in range(48 - 30 + 1)
                   if torch.equal(label[y:y + 20, x:x + 30], target[index])
                   or torch.equal(label[y:y + 20, x:x + 30].flip(-1), target[index])]
        assert len(windows) == 1, 'the label is exactly one window of the frame, maybe mirrored'
        y, x = windows[0]
        window = frame[:, y:y + 20, x:x + 30]
        mirrored = not torch.equal(label[y:y + 20, x:x + 30], target[index])
        flipped += mirrored
        assert torch.allclose(out[index], window.flip(-1) if mirrored else window, atol=1e-4)
    assert 0 < flipped < 6


def test_batch_augment_pads_with_the_mean_and_ignore_and_matches_opencv_resizing():
    images, labels = _random_batch(count=2, size=(40, 60))
    out, target = BatchAugment((40, 60), scale_range=(0.5, 0.5), hflip=False)(images, labels)
    for index in range(2):
        inside = target[index] != IGNORE_INDEX
        rows, cols = inside.any(1).nonzero()[:, 0], inside.any(0).nonzero()[:, 0]
        assert (len(rows), len(cols)) == (20, 30)  # the frame at half size, somewhere in the crop
        top, left = int(rows[0]), int(cols[0])
        assert torch.count_nonzero(out[index][:, ~inside]) == 0  # the mean colour, 0 once normalised
        resized = cv2.resize(images[index].numpy(), (30, 20), interpolation=cv2.INTER_LINEAR)
        placed = out[index][:, top:top + 20, left:left + 30]
        # OpenCV rounds to uint8 with fixed-point weights; half a grey level, normalised, is ~0.01
        assert (placed - _normalized(resized)).abs().max() < 0.04


def test_batch_augment_draws_from_torch_and_checks_its_input():
    images, labels = _random_batch()
    augment = BatchAugment((24, 32), scale_range=(0.5, 1.5))
    torch.manual_seed(5)
    first = augment(images, labels)
    torch.manual_seed(5)
    again = augment(images, labels)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(ValueError, match=r'expected images \(N, H, W, 3\) uint8'):
        augment(images.float(), labels)
    with pytest.raises(ValueError, match='crop_size'):
        BatchAugment((0, 32))
    with pytest.raises(ValueError, match='scale_range'):
        BatchAugment((24, 32), scale_range=(2.0, 1.0))


def test_per_frame_augment_is_the_train_transform_frame_by_frame():
    images, labels = _random_batch()
    transform = TrainTransform((24, 32), scale_range=(0.5, 1.5))
    torch.manual_seed(7)
    batch, targets = PerFrameAugment(transform)(images, labels)
    torch.manual_seed(7)
    for index in range(len(images)):
        image, label = transform(images[index].numpy(), labels[index].numpy())
        assert torch.equal(batch[index], image) and torch.equal(targets[index], label)


def test_in_memory_loader_follows_the_sampler_and_drops_the_partial_batch(shapes):
    frames = FramesInMemory.load(shapes, torch.device('cpu'))
    order = [5, 0, 3, 1, 4, 2, 0]
    loader = InMemoryLoader(frames, order, batch_size=2, augment=BatchAugment((48, 64), (1.0, 1.0), hflip=False))
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    seen = [label for _, labels in batches for label in labels]
    for position, label in enumerate(seen):
        assert torch.equal(label, frames.labels[order[position]].long())
