"""What every seg-bench section times with: summaries, device synchronisation, random checkpoints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg_ros.checkpoint import Checkpoint, save_checkpoint
from seg_ros.labels import CAMVID11
from seg_ros.models import build_model
from seg_ros.vocabulary import format_size

__all__ = ['MIB', 'load_average', 'random_checkpoint', 'summarize_times', 'synchronize', 'time_calls']

MIB = 2 ** 20


def summarize_times(times_ms: np.ndarray) -> dict[str, float]:
    return {'p50_ms': float(np.median(times_ms)), 'p99_ms': float(np.percentile(times_ms, 99)),
            'max_ms': float(times_ms.max())}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def random_checkpoint(network: str, size: tuple[int, int], folder: Path, seed: int = 0) -> Path:
    """A checkpoint of ``network`` with random weights (speed does not depend on the weights)."""
    torch.manual_seed(seed)
    model = build_model(network, num_classes=CAMVID11.num_classes)
    return save_checkpoint(Checkpoint.from_model(model, network, CAMVID11, input_size=size,
                                                 meta={'purpose': 'seg-bench, random weights'}),
                           folder / f'{network}_{format_size(size)}.pt')


def time_calls(call: Callable[[], Any], device: torch.device, iterations: int, warmup: bool = True) -> np.ndarray:
    if warmup:
        call()
    times = np.empty(iterations)
    for index in range(iterations):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times[index] = (time.perf_counter() - start) * 1e3
    return times
