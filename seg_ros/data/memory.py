"""A training split decoded once into memory, and augmentation of whole batches as tensor operations.

Worker processes that decode JPEGs compete with the training step for a small machine's cores, and
ship every batch back through shared memory. A split that fits in memory (CamVid's 367 training
frames at 480x360 are 190 MB as uint8) is decoded once and kept as uint8 tensors on the training
device. Each batch is then augmented where it is cheapest:

- on a GPU, ``BatchAugment``: random scale, crop and flip (paper 000, III-B) as one ``grid_sample``
  over the batch, on the device;
- on a CPU, ``PerFrameAugment``: ``TrainTransform`` frame by frame in the main process; OpenCV's
  resize measured 3-6x faster than ``grid_sample`` on the same batch on a 2-core CPU.

``BatchAugment`` draws the same kinds of parameters as ``TrainTransform`` (scale ~ U(min, max),
a random window of the scaled frame, padded with the mean and ignore where it is smaller than the
crop, a flip with probability 1/2), from torch's default generator, so a resumed run that restores
that generator replays its epochs exactly.

>>> frames = FramesInMemory.load(build_dataset('camvid', root, 'train'), torch.device('cpu'))
>>> augment = BatchAugment(crop_size=(360, 480), scale_range=(0.5, 1.5))
>>> loader = InMemoryLoader(frames, sampler, batch_size=8, augment=augment)
>>> images, labels = next(iter(loader))   # (8, 3, 360, 480) float32, (8, 360, 480) int64
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seg_ros.checkpoint import IMAGENET_MEAN, IMAGENET_STD
from seg_ros.data.datasets import DatasetError, SegmentationDataset
from seg_ros.data.transforms import TrainTransform
from seg_ros.labels import IGNORE_INDEX

__all__ = ['BatchAugment', 'FramesInMemory', 'InMemoryLoader', 'PerFrameAugment', 'memory_budget_bytes']

BYTES_PER_PIXEL = 4  # uint8 RGB + uint8 label


def memory_budget_bytes(device: torch.device, share: float = 0.25) -> int:
    """``share`` of the memory that is free now on ``device`` (host RAM for a CPU)."""
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * share)
    return int(os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') * share)


@dataclass
class FramesInMemory:
    """A split as ``images`` (N, H, W, 3) uint8 RGB and ``labels`` (N, H, W) uint8 train ids."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.labels.nbytes

    @staticmethod
    def estimated_bytes(dataset: SegmentationDataset) -> int:
        """Bytes the split takes in memory, from its first frame's size (all frames must share it)."""
        height, width = dataset.read_image(dataset.files[0][0]).shape[:2]
        return len(dataset) * height * width * BYTES_PER_PIXEL

    @classmethod
    def load(cls, dataset: SegmentationDataset, device: torch.device, *,
             threads: int | None = None) -> FramesInMemory:
        """Decode every frame of ``dataset`` (OpenCV releases the GIL: ``threads`` decode at once).

        Frames of different sizes cannot share one tensor: that is a ``DatasetError`` naming the
        first frame that differs (the caller then streams the split instead).
        """
        first_image = dataset.read_image(dataset.files[0][0])
        height, width = first_image.shape[:2]
        images = torch.empty(len(dataset), height, width, 3, dtype=torch.uint8)
        labels = torch.empty(len(dataset), height, width, dtype=torch.uint8)

        def decode(index: int) -> None:
            image_path, label_path = dataset.files[index]
            image, label = dataset.read_image(image_path), dataset.read_label(label_path)
            if image.shape[:2] != (height, width) or label.shape != (height, width):
                raise DatasetError(f'{image_path}: {image.shape[1]}x{image.shape[0]} frame (label '
                                   f'{label.shape[1]}x{label.shape[0]}) in a split whose first frame is '
                                   f'{width}x{height}; frames of several sizes are streamed, not cached')
            images[index] = torch.from_numpy(image)
            labels[index] = torch.from_numpy(label)

        with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(decode, range(len(dataset))))
        return cls(images.to(device), labels.to(device))


class BatchAugment:
    """Random scale, fixed-size crop, horizontal flip and normalisation of a uint8 batch, on its device.

    Output pixel (y, x) of sample i reads the scaled frame at (y - dst_y + src_y, x - dst_x + src_x)
    (mirrored in x when flipped), which maps back to the source frame with OpenCV's half-pixel
    convention; images are sampled bilinearly (edges replicated, as ``cv2.resize`` does), labels by
    nearest neighbour. Where the window leaves the scaled frame the image is the mean colour (0
    after normalisation) and the label ``ignore_index``.
    """

    def __init__(self, crop_size: Sequence[int], scale_range: Sequence[float] = (0.5, 2.0), hflip: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 ignore_index: int = IGNORE_INDEX) -> None:
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f'crop_size must be a positive (height, width), got {crop_size}')
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f'scale_range must be (min, max) with 0 < min <= max, got {scale_range}')
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f'mean and std need three values each, std positive; got mean={mean}, std={std}')
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip
        self.ignore_index = ignore_index
        self._scale = torch.tensor([1 / (255 * s) for s in std]).view(1, 3, 1, 1)
        self._offset = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W, 3) uint8 and (N, H, W) uint8 -> (N, 3, h, w) float32 and (N, h, w) int64."""
        _check_batch(images, labels)
        count, height, width, _ = images.shape
        low, high = self.scale_range
        scales = low + (high - low) * torch.rand(count, dtype=torch.float64)
        flips = (torch.rand(count) < 0.5) if self.hflip else torch.zeros(count, dtype=torch.bool)
        gy, valid_y = self._axis(height, self.crop_size[0], scales, torch.zeros(count, dtype=torch.bool))
        gx, valid_x = self._axis(width, self.crop_size[1], scales, flips)
        device = images.device
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1).float().to(device)
        valid = (valid_y[:, :, None] & valid_x[:, None, :]).to(device)
        sampled = F.grid_sample(images.permute(0, 3, 1, 2).float(), grid, mode='bilinear', padding_mode='border',
                                align_corners=False)
        normalized = sampled * self._scale.to(device) - self._offset.to(device)
        normalized *= valid[:, None]
        label_grid = F.grid_sample(labels[:, None].float(), grid, mode='nearest', padding_mode='border',
                                   align_corners=False)[:, 0].long()
        return normalized, torch.where(valid, label_grid, self.ignore_index)

    @staticmethod
    def _axis(length: int, crop: int, scales: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: the normalised source coordinate of each output position, and where it is inside."""
        scaled = torch.clamp((length * scales).round(), min=1)
        spare = (scaled - crop).abs()  # room for the window (larger frame) or the frame (smaller one)
        offset = torch.floor(torch.rand(scales.shape[0], dtype=torch.float64) * (spare + 1))
        src = torch.where(scaled >= crop, offset, 0)
        dst = torch.where(scaled >= crop, 0, offset)
        span = torch.minimum(scaled, torch.tensor(float(crop), dtype=torch.float64))
        position = torch.arange(crop, dtype=torch.float64).expand(scales.shape[0], crop)
        position = torch.where(flips[:, None], crop - 1 - position, position)
        inside = (position >= dst[:, None]) & (position < (dst + span)[:, None])
        in_scaled = position - dst[:, None] + src[:, None]
        # Scaled-frame pixel centre u + 0.5 lies at (u + 0.5) * length / scaled in the source, and
        # grid_sample(align_corners=False) maps source coordinate c to 2 * c / length - 1.
        return 2 * (in_scaled + 0.5) / scaled[:, None] - 1, inside

    def __repr__(self) -> str:
        return (f'BatchAugment(crop_size={self.crop_size}, scale_range={self.scale_range}, '
                f'hflip={self.hflip}, ignore_index={self.ignore_index})')


class PerFrameAugment:
    """``TrainTransform`` applied frame by frame to a uint8 batch in memory (OpenCV, on the CPU)."""

    def __init__(self, transform: TrainTransform) -> None:
        self.transform = transform

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W, 3) uint8 and (N, H, W) uint8 on the CPU -> (N, 3, h, w) float32 and (N, h, w) int64."""
        _check_batch(images, labels)
        pairs = [self.transform(image.numpy(), label.numpy()) for image, label in zip(images, labels, strict=True)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def __repr__(self) -> str:
        return f'PerFrameAugment({self.transform!r})'


def _check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] != 3 \
            or labels.shape != images.shape[:3]:
        raise ValueError(f'expected images (N, H, W, 3) uint8 and labels (N, H, W), got '
                         f'{tuple(images.shape)} {images.dtype} and {tuple(labels.shape)}')


class InMemoryLoader:
    """Batches of ``frames`` in the order of ``sampler``, augmented by ``augment``; drops the last partial batch.

    Stands where a ``DataLoader`` over the streamed split would, without worker processes.
    """

    def __init__(self, frames: FramesInMemory, sampler: Iterable[int], batch_size: int,
                 augment: BatchAugment | PerFrameAugment) -> None:
        self.frames = frames
        self.sampler = sampler
        self.batch_size = batch_size
        self.augment = augment

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        for batch in range(len(self)):
            chosen = order[batch * self.batch_size:(batch + 1) * self.batch_size].to(self.frames.images.device)
            yield self.augment(self.frames.images[chosen], self.frames.labels[chosen])
