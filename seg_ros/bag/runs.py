"""Many road runs at once: several bags or folders of them, on worker processes or a Dask cluster.

Each run is one ``evaluate_bag`` into ``OUT/<run>/``, wherever it runs: in this process, on
``--workers N`` processes of this machine, or on the workers of a Dask cluster (``--scheduler
ADDRESS``; the workers need seg_ros installed and must see the bags and ``OUT`` under the same
paths, as on a shared file system). ``OUT/report.md`` and ``OUT/report.json`` combine the runs
(``seg_ros.bag.combined``).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from seg_ros.bag.combined import combine, format_combined_markdown
from seg_ros.bag.evaluate import EXPECTED_ERRORS, EvaluationOptions, evaluate_bag
from seg_ros.bag.reader import BagError
from seg_ros.bag.report import write_json
from seg_ros.frames.bagfiles import is_bag

__all__ = ['evaluate_one', 'evaluate_runs', 'find_bags']

RunCallback = Callable[[dict[str, Any]], None]
SCHEDULER_TIMEOUT_S = 10.0
"""How long to wait for a Dask scheduler to answer."""


def find_bags(paths: Sequence[Path]) -> dict[str, Path]:
    """Run name -> bag for bags and folders of bags (their bags in name order); names are unique."""
    bags: dict[str, Path] = {}
    for path in (Path(p).expanduser() for p in paths):
        if not path.exists():
            raise BagError(f'bag {path}: no such file or folder')
        found = [path] if is_bag(path) else sorted(child for child in path.iterdir() if is_bag(child))
        if not found:
            raise BagError(f'{path}: neither a bag (metadata.yaml, .mcap or .db3 files) nor a folder of bags')
        for bag in found:
            base = bag.stem if bag.is_file() else bag.name
            name, number = base, 2
            while name in bags:
                name, number = f'{base}_{number}', number + 1
            bags[name] = bag
    return bags


def evaluate_one(name: str, options: EvaluationOptions, threads: int | None = None) -> dict[str, Any]:
    """One run, in whichever process runs it: its report, or the error that stopped it."""
    if threads:
        torch.set_num_threads(threads)
    run = {'name': name, 'bag': str(options.bag), 'out': options.out.name}
    try:
        return {**run, 'status': 'done', 'report': evaluate_bag(options)}
    except EXPECTED_ERRORS as error:
        return {**run, 'status': 'failed', 'error': str(error)}


def _evaluate_on_dask_worker(name: str, options: EvaluationOptions) -> dict[str, Any]:
    """``evaluate_one`` with as many torch threads as the Dask worker runs tasks on."""
    from distributed import get_worker

    return evaluate_one(name, options, get_worker().state.nthreads)


def evaluate_runs(options: EvaluationOptions, bags: dict[str, Path], *, workers: int = 1,
                  scheduler: str | None = None, on_done: RunCallback | None = None) -> dict[str, Any]:
    """Every bag into ``options.out/<run>/``, then the combined report (returned, and written there).

    ``workers`` > 1: that many processes of this machine, each with its share of the cores;
    ``scheduler``: the address of a Dask scheduler whose workers take the runs instead.
    ``on_done`` is called with each run's result as it finishes.
    """
    if workers < 1:
        raise ValueError(f'--workers {workers} must be at least 1')
    out = options.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f'output folder {out} exists and is not empty; choose a new one')
    out.mkdir(parents=True, exist_ok=True)
    jobs = {name: replace(options, bag=bag, out=out / name, progress=False) for name, bag in bags.items()}
    report = on_done or (lambda result: None)
    began = time.perf_counter()
    if scheduler:
        results, where = _on_dask(jobs, scheduler, report), f'Dask cluster at {scheduler}'
    elif workers > 1:
        results, where = _on_processes(jobs, workers, report), f'{workers} worker processes'
    else:
        results, where = [], 'this process'
        for name, job in jobs.items():
            results.append(evaluate_one(name, job))
            report(results[-1])
    order = list(jobs)
    results.sort(key=lambda result: order.index(result['name']))
    combined = combine(results, time.perf_counter() - began, where)
    write_json(combined, out / 'report.json')
    (out / 'report.md').write_text(format_combined_markdown(combined))
    return combined


def _on_processes(jobs: dict[str, EvaluationOptions], workers: int, on_done: RunCallback) -> list[dict]:
    workers = min(workers, len(jobs))
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn: a fresh interpreter per worker, never a fork of a process whose torch threads already run.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        futures = [pool.submit(evaluate_one, name, job, threads) for name, job in jobs.items()]
        results = []
        for future in as_completed(futures):
            results.append(future.result())
            on_done(results[-1])
    return results


def _on_dask(jobs: dict[str, EvaluationOptions], address: str, on_done: RunCallback) -> list[dict]:
    try:
        from distributed import Client
        from distributed import as_completed as completed
    except ImportError:
        raise ValueError('--scheduler needs Dask\'s distributed package: pip install "distributed" '
                         '(the cluster extra of seg_ros)') from None
    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        raise ValueError(f'--scheduler {address}: no Dask scheduler answers there within '
                         f'{SCHEDULER_TIMEOUT_S:g} s ({error})') from None
    with client:
        # pure=False: a run writes files; two runs of the same bag are two tasks.
        futures = [client.submit(_evaluate_on_dask_worker, name, job, pure=False) for name, job in jobs.items()]
        results = []
        for future in completed(futures):
            results.append(future.result())
            on_done(results[-1])
    return results
