"""This process' place in a run (one process, or several under ``torchrun``), its random generators and
the determinism switch: what exact resume and distributed training rest on."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from seg_ros.inference.segmenter import resolve_device

__all__ = ['Processes', 'configure_determinism', 'derived_seed', 'rng_state', 'seed_worker', 'set_rng_state',
           'start_processes']


@dataclass(frozen=True)
class Processes:
    """This process' place in the run: rank, number of processes, device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_processes(device_spec: str) -> Processes:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (env://), else one process."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size == 1:
        return Processes(0, 1, resolve_device(device_spec))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = device_spec != 'cpu' and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group('nccl' if use_cuda else 'gloo', init_method='env://')
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    return Processes(dist.get_rank(), dist.get_world_size(), device)


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and machines."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def seed_worker(worker_id: int) -> None:
    # torch seeds each worker (base_seed + id) and python's random; numpy is left to us.
    np.random.seed(torch.initial_seed() % 2**32)


def rng_state() -> dict[str, Any]:
    """This process' global generators as tensors and plain values (weights-only loadable)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    python_version, python_state, gauss_next = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'numpy': {'kind': kind, 'keys': torch.from_numpy(keys.astype(np.int64)), 'position': int(position),
                  'has_gauss': int(has_gauss), 'cached_gaussian': float(cached)},
        'python': {'version': python_version, 'state': list(python_state), 'gauss_next': gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['kind'], numpy_state['keys'].numpy().astype(np.uint32),
                         numpy_state['position'], numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    python_state = state['python']
    random.setstate((python_state['version'], tuple(python_state['state']), python_state['gauss_next']))


def configure_determinism(deterministic: bool) -> None:
    """Bit-exact algorithms (slower on GPUs) or the fastest ones (cuDNN autotuning)."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    # warn_only: a few CUDA kernels (e.g. bilinear upsampling backward) have no deterministic variant.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
