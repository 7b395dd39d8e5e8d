"""What a stage's batches come from: the datasets of a recipe, the split in memory or streamed, the
loader that feeds the step, and the class frequencies the balanced losses read."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from seg_ros.data import DatasetError, SegmentationDataset, build_dataset, class_frequencies, validate_dataset
from seg_ros.data.memory import BatchAugment, FramesInMemory, InMemoryLoader, PerFrameAugment, memory_budget_bytes
from seg_ros.labels import LabelSet
from seg_ros.training.config import Stage
from seg_ros.training.evaluate import check_same_classes
from seg_ros.training.losses import Criterion
from seg_ros.training.processes import seed_worker
from seg_ros.training.schedules import LRSchedule

__all__ = ['LazyClassFrequencies', 'SplitCache', 'StageRun', 'check_datasets', 'describe_feeding', 'open_dataset',
           'recipe_datasets', 'remaining_steps', 'resize_target', 'resolve_num_workers', 'train_loader']

log = logging.getLogger(__name__)


def resolve_num_workers(setting: int | str, *, cached: bool) -> int:
    """``data.num_workers``; auto: none when the split is in memory, else a core for the step and the rest
    (up to 4) for decoding."""
    if setting != 'auto':
        return int(setting)
    return 0 if cached else min(4, max(0, (os.cpu_count() or 1) - 1))


class LazyClassFrequencies:
    """Class frequencies computed (and cached) only if a loss asks for them.

    ``build_criterion`` checks ``len()`` against the number of classes; only losses that weight
    classes (balanced CE, OWFL) read the values, which costs a pass over the training labels.
    """

    def __init__(self, dataset: SegmentationDataset, cache_path: Path, announce: bool) -> None:
        self.dataset = dataset
        self.cache_path = cache_path
        self.announce = announce
        self._values: np.ndarray | None = None

    def __len__(self) -> int:
        return self.dataset.label_set.num_classes

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if self._values is None:
            if self.announce:
                log.info('class frequencies of %r (cached in %s)', self.dataset, self.cache_path)
            self._values = class_frequencies(self.dataset, cache_path=self.cache_path, progress=self.announce)
        return self._values if dtype is None else self._values.astype(dtype)


def open_dataset(data: dict[str, Any], split: str,
                 transform: Callable | None = None) -> SegmentationDataset:
    """``split`` of a stage's ``data`` section, read with the section's reader options."""
    return build_dataset(data['dataset'], data['root'], split, transform, **data['options'])


def resize_target(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Labels (N, H, W) or soft targets (N, C, H, W) at ``size`` by nearest neighbour (ERFNet, 001)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    if target.is_floating_point():
        return F.interpolate(target, size=size, mode='nearest')
    return F.interpolate(target[:, None].float(), size=size, mode='nearest')[:, 0].long()


def describe_feeding(loader: DataLoader | InMemoryLoader) -> str:
    """How batches reach the step, for the stage summary."""
    if isinstance(loader, InMemoryLoader):
        where = 'on ' + str(loader.frames.images.device)
        augment = 'per frame (OpenCV)' if isinstance(loader.augment, PerFrameAugment) else 'per batch (tensors)'
        return f'in memory {where}, augmented {augment}'
    return f'streamed by {loader.num_workers or "no"} worker process(es)'


class SplitCache:
    """Training splits decoded into memory, each once per device, as ``data.cache`` asks."""

    def __init__(self) -> None:
        self._frames: dict[str, FramesInMemory | None] = {}

    def frames(self, data: dict[str, Any], split: str, device: torch.device) -> FramesInMemory | None:
        """``split`` in memory on ``device``, or None to stream it: ``data.cache`` false, or auto and it takes
        more than a quarter of the free memory or holds frames of several sizes. With true, a split that
        cannot be held is a ``DatasetError``."""
        key = json.dumps([data['dataset'], data['root'], split, data['options'], str(device)], sort_keys=True)
        if key not in self._frames:
            self._frames[key] = None if data['cache'] is False else self._load(data, split, device)
        return self._frames[key]

    @staticmethod
    def _load(data: dict[str, Any], split: str, device: torch.device) -> FramesInMemory | None:
        dataset = open_dataset(data, split)
        needed, budget = FramesInMemory.estimated_bytes(dataset), memory_budget_bytes(device)
        if data['cache'] == 'auto' and needed > budget:
            log.info('streaming %r: %.0f MB would exceed a quarter of the free memory (%.0f MB)',
                     dataset, needed / 1e6, budget * 4 / 1e6)
            return None
        try:
            frames = FramesInMemory.load(dataset, device)
        except DatasetError as exc:
            if data['cache'] is True:
                raise
            log.info('streaming %r: %s', dataset, exc)
            return None
        log.info('%r decoded into memory on %s: %.0f MB', dataset, device, frames.nbytes / 1e6)
        return frames


def train_loader(train_set: SegmentationDataset, sampler: Sampler[int], batch_size: int,
                 frames: FramesInMemory | None, *, on_device: bool, workers: int,
                 pin_memory: bool) -> DataLoader | InMemoryLoader:
    """Batches in ``sampler``'s order: from ``frames`` in memory (augmented per batch on the device or per
    frame with ``train_set``'s transform), or decoded from disk by ``workers`` processes."""
    transform = train_set.transform
    if frames is not None:
        augment = (BatchAugment(transform.crop_size, transform.scale_range, transform.hflip,
                                transform.normalize.mean, transform.normalize.std, transform.ignore_index)
                   if on_device else PerFrameAugment(transform))
        return InMemoryLoader(frames, sampler, batch_size, augment)
    return DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                      pin_memory=pin_memory, worker_init_fn=seed_worker, generator=torch.Generator())


def recipe_datasets(stages: Sequence[Stage]) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(what, data config, split) of every dataset the stages read, each once."""
    seen = set()
    for index, stage in enumerate(stages):
        data = stage.data
        for role, split in (('train', data['train_split']), ('val', data['val_split'])):
            key = (data['dataset'], data['root'], split, json.dumps(data['options'], sort_keys=True))
            if split is None or key in seen:
                continue
            seen.add(key)
            yield f'stage {index} ({stage.name}) {role}', data, split


def check_datasets(stages: Sequence[Stage], *, read_files: bool) -> tuple[LabelSet, list[str]]:
    """The classes all the stages' datasets share, and (``read_files``: where ``data.check_files``) every
    unreadable or mismatched file. A dataset that cannot be opened is a ``DatasetError`` naming the stage."""
    labels, problems = None, []
    for what, data, split in recipe_datasets(stages):
        try:
            dataset = open_dataset(data, split)
        except DatasetError as exc:
            raise DatasetError(f'{what}: {exc}') from None
        if labels is None:
            labels = dataset.label_set
        check_same_classes(labels, dataset.label_set, what=f'{what} ({dataset!r})')
        if data['check_files'] and read_files:
            log.info('checking every file of %r', dataset)
            problems += validate_dataset(dataset)
    return labels, problems


def remaining_steps(stages: Sequence[Stage], position: tuple[int, int]) -> int:
    """Optimiser steps a run has left from ``position`` (stage index, epochs done in it)."""
    def steps_per_epoch(stage: Stage) -> int:
        return len(open_dataset(stage.data, stage.data['train_split'])) // stage.batch_size

    first, done = position
    return sum(steps_per_epoch(s) * s.epochs for s in stages[first:]) - done * steps_per_epoch(stages[first])


@dataclass
class StageRun:
    """What one stage trains with."""

    stage: Stage
    loader: DataLoader | InMemoryLoader
    sampler: DistributedSampler
    val_loader: DataLoader | None
    criterion: Criterion
    forward_options: dict[str, Any]
    unused: list[str] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: LRSchedule | None = None
