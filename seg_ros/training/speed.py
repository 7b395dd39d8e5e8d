"""How fast a training step runs, and the fastest precision and memory layout for a network.

Whether bf16 and channels_last pay off depends on the network and the processor: measured on one
2-core Xeon with AMX, bf16 made ERFNet 1.7x and SegFast 2.4x faster and ENet and DSNet slower; on
an EPYC with AVX512-BF16, ENet ran 1.6x faster in bf16 and slower in bf16 with channels_last. So
``train.precision: auto`` and ``train.channels_last: auto`` time a few real optimiser steps of each
candidate on the run's own network, crop and batch, and keep the fastest.

>>> choice = choose_step_settings(net, device, batch=8, crop=(360, 480), num_classes=11)
>>> choice.settings, choice.timings
"""

from __future__ import annotations

import copy
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.data import SegmentationDataset, TrainTransform, build_dataset
from seg_ros.data.memory import FramesInMemory
from seg_ros.inference.segmenter import resolve_precision
from seg_ros.labels import IGNORE_INDEX
from seg_ros.models import build_model
from seg_ros.training.evaluate import autocast_context
from seg_ros.training.feeding import train_loader
from seg_ros.vocabulary import format_size

__all__ = ['StepChoice', 'StepSettings', 'candidate_settings', 'choose_step_settings', 'compare_trainers',
           'compile_pays',
           'fastest_of', 'images_per_second', 'mixed_precision_of', 'step_timer', 'training_step']


@dataclass(frozen=True)
class StepSettings:
    """The numeric format of a training step: autocast precision and memory layout."""

    precision: str
    channels_last: bool

    def __str__(self) -> str:
        return f'{self.precision}{" channels_last" if self.channels_last else ""}'


@dataclass
class StepChoice:
    """The chosen settings and the seconds per step measured for every candidate (empty if none ran)."""

    settings: StepSettings
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ''


def mixed_precision_of(device: torch.device) -> str | None:
    """The device's native reduced precision: bf16 where it has it, fp16 on a CUDA GPU without; else None."""
    precision, _ = resolve_precision('bf16', device)
    return None if precision == 'fp32' else precision


def candidate_settings(device: torch.device, precision: str = 'auto',
                       channels_last: bool | str = 'auto') -> list[StepSettings]:
    """Every combination the request leaves open (``auto`` tries fp32 and the native mixed precision)."""
    mixed = mixed_precision_of(device)
    precisions = ['fp32', *([mixed] if mixed else [])] if precision == 'auto' else [precision]
    layouts = [False, True] if channels_last == 'auto' else [bool(channels_last)]
    return [StepSettings(p, c) for p in precisions for c in layouts]


def training_step(net: nn.Module, settings: StepSettings,
                  device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimiser step (forward, cross-entropy, backward, SGD) of ``net`` on the batch it is given."""
    memory_format = torch.channels_last if settings.channels_last else torch.contiguous_format
    net = net.to(device, memory_format=memory_format).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-6)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == 'fp16')

    def step(images: torch.Tensor, target: torch.Tensor) -> None:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        with autocast_context(device, settings.precision):
            output = net(images)
        logits = output[0] if isinstance(output, tuple) else output
        loss = F.cross_entropy(logits.float(), target.to(device, non_blocking=True), ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def step_timer(net: nn.Module, settings: StepSettings, device: torch.device, *, batch: int,
               crop: Sequence[int], num_classes: int) -> Callable[[], None]:
    """``training_step`` on one fixed random batch, for timing the step alone."""
    step = training_step(net, settings, device)
    images = torch.randn(batch, 3, *crop, device=device)
    target = torch.randint(0, num_classes, (batch, *crop), device=device)
    return lambda: step(images, target)


def fastest_of(steps: dict[str, Callable[[], None]], device: torch.device, *, warmup: int = 1,
               rounds: int = 2) -> dict[str, float]:
    """Seconds per call of each named step: the minimum over ``rounds`` after ``warmup`` calls.

    The candidates take turns within each round, so a burst of load from other processes on a
    shared machine slows all of them rather than one.
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    best = dict.fromkeys(steps, float('inf'))
    for _ in range(rounds):
        for name, step in steps.items():
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            step()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def choose_step_settings(net: nn.Module, device: torch.device, *, batch: int, crop: Sequence[int],
                         num_classes: int, precision: str = 'auto', channels_last: bool | str = 'auto',
                         warmup: int = 1, rounds: int = 2) -> StepChoice:
    """The fastest candidate of ``candidate_settings``, timed on a copy of ``net`` (``net`` is untouched).

    torch's random generators are restored afterwards, so measuring does not change what the run
    draws (dropout, augmentation).
    """
    candidates = candidate_settings(device, precision, channels_last)
    if len(candidates) == 1:
        return StepChoice(candidates[0], reason='only candidate')
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == 'cuda' else None
    try:
        steps = {str(settings): step_timer(copy.deepcopy(net), settings, device, batch=batch, crop=crop,
                                           num_classes=num_classes) for settings in candidates}
        timings = fastest_of(steps, device, warmup=warmup, rounds=rounds)
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    fastest = min(candidates, key=lambda s: timings[str(s)])
    return StepChoice(fastest, timings, reason=f'fastest of {len(candidates)} measured at batch {batch}, '
                                               f'crop {format_size(crop)}')


# The trainer before the in-memory path and measured settings: fp32, NCHW, every batch decoded and
# augmented by DataLoader worker processes (4 by default, whatever the cores).
STREAMED_WORKERS = 4


def images_per_second(batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      step: Callable[[torch.Tensor, torch.Tensor], None], device: torch.device, *,
                      count: int, warmup: int = 1) -> float:
    """Images/s of ``step`` fed from ``batches``, data loading included (after ``warmup`` batches)."""
    iterator = iter(batches)
    for _ in range(warmup):
        step(*next(iterator))
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    started, images = time.perf_counter(), 0
    for _ in range(count):
        batch, target = next(iterator)
        step(batch, target)
        images += batch.shape[0]
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return images / (time.perf_counter() - started)


def streamed_images_per_second(network: str, dataset_spec: tuple[str, str, str], device: str, *, batch: int,
                               crop: tuple[int, int], batches: int, threads: int) -> float:
    """Images/s of the trainer as it was: fp32, NCHW, every batch decoded and augmented by DataLoader workers."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dataset = build_dataset(*dataset_spec, transform=TrainTransform(crop, scale_range=(0.5, 1.5), hflip=True))
    net = build_model(network, dataset.label_set.num_classes)
    streamed = train_loader(dataset, torch.randperm(len(dataset)).tolist(), batch, None, on_device=False,
                            workers=STREAMED_WORKERS, pin_memory=False)
    return images_per_second(streamed, training_step(net, StepSettings('fp32', False), torch.device(device)),
                             torch.device(device), count=batches)


def compare_trainers(network: str, dataset: SegmentationDataset, device: torch.device, *, batch: int,
                     crop: Sequence[int], batches: int = 3) -> list[dict[str, Any]]:
    """Training images/s of ``network`` on ``dataset``: the streamed fp32 trainer, then today's.

    Today's: the split decoded into memory, augmented per batch on a GPU or per frame on a CPU, in
    the precision and layout ``choose_step_settings`` measures fastest. Both read the same frames
    with the same augmentation (scale 0.5-1.5, crop, flip) into the same optimiser step.
    """
    num_classes = dataset.label_set.num_classes
    torch.manual_seed(0)
    net = build_model(network, num_classes)
    needed = batch * (batches + 1)
    if len(dataset) < needed:
        raise ValueError(f'{dataset!r}: {len(dataset)} frames, fewer than the {needed} the measurement reads')

    # In a process of its own: a process that has run DataLoader worker processes crashed later in an
    # rclpy run (seg-bench's node sections, in the tests).
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:
        before = pool.submit(streamed_images_per_second, network, (dataset.name, str(dataset.root), dataset.split),
                             str(device), batch=batch, crop=tuple(crop), batches=batches,
                             threads=torch.get_num_threads()).result()

    choice = choose_step_settings(net, device, batch=batch, crop=crop, num_classes=num_classes)
    on_device = device.type == 'cuda'  # as the trainer decides with data.batch_augment: auto
    train_set = build_dataset(dataset.name, dataset.root, dataset.split,
                              TrainTransform(tuple(crop), scale_range=(0.5, 1.5), hflip=True))
    frames = FramesInMemory.load(dataset, device if on_device else torch.device('cpu'))
    loader = train_loader(train_set, torch.randperm(len(frames)).tolist(), batch, frames, on_device=on_device,
                          workers=0, pin_memory=False)
    now = images_per_second(loader, training_step(copy.deepcopy(net), choice.settings, device), device,
                            count=batches)
    common = {'network': network, 'batch': batch, 'crop': format_size(crop)}
    return [
        {**common, 'trainer': 'before', 'precision': 'fp32', 'channels_last': False,
         'data': f'streamed, {STREAMED_WORKERS} workers', 'images_per_s': before, 'speedup': 1.0},
        {**common, 'trainer': 'now', 'precision': choice.settings.precision,
         'channels_last': choice.settings.channels_last,
         'data': f'in memory, {"per batch on the GPU" if on_device else "per frame (OpenCV)"}',
         'images_per_s': now, 'speedup': now / before, 'step_seconds': choice.timings},
    ]


# A compile trial costs minutes on a CPU (ENet: 159 s on 2 cores): only runs whose eager steps add up
# to this much are worth one.
COMPILE_TRIAL_MIN_RUN_S = 3600.0


def compile_pays(net: nn.Module, settings: StepSettings, device: torch.device, *, batch: int, crop: Sequence[int],
                 num_classes: int, run_steps: int, eager_step_s: float | None = None) -> tuple[bool, str]:
    """Whether ``torch.compile`` makes this run faster: timed on a copy of ``net`` when the run's eager
    steps (``eager_step_s`` each; timed here when None) add up to ``COMPILE_TRIAL_MIN_RUN_S`` or more,
    kept when the compiled step is faster and the saving over the run exceeds the compile time.
    Returns the decision and its reason."""
    if eager_step_s is None:
        eager = step_timer(copy.deepcopy(net), settings, device, batch=batch, crop=crop, num_classes=num_classes)
        eager_step_s = fastest_of({'eager': eager}, device)['eager']
    eager_run_s = run_steps * eager_step_s
    if eager_run_s < COMPILE_TRIAL_MIN_RUN_S:
        return False, f'eager run ~{eager_run_s / 60:.0f} min: too short to repay a compile'
    cpu_rng = torch.get_rng_state()
    try:
        started = time.perf_counter()
        step = step_timer(torch.compile(copy.deepcopy(net), dynamic=False), settings, device, batch=batch, crop=crop,
                          num_classes=num_classes)
        step()
        compile_s = time.perf_counter() - started
        compiled_step_s = fastest_of({'compiled': step}, device)['compiled']
    except Exception as exc:  # a backend that cannot compile this network (no compiler, an unsupported op)
        return False, f'compile failed ({type(exc).__name__}: {str(exc)[:200]})'
    finally:
        torch.set_rng_state(cpu_rng)
    saving_s = run_steps * (eager_step_s - compiled_step_s)
    reason = (f'step {eager_step_s:.3f} s eager, {compiled_step_s:.3f} s compiled; compiling took {compile_s:.0f} s, '
              f'saves ~{saving_s / 60:.0f} min over {run_steps} steps')
    return saving_s > compile_s, reason
