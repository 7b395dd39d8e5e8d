"""seg-bench ``segment``: the whole ``Segmenter.segment()`` call of each shipped checkpoint, every
backend x precision and the automatic choice."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from seg_ros.bench.common import load_average, random_checkpoint, time_calls
from seg_ros.inference.backends import (
    REFERENCE,
    ChoiceCache,
    candidates,
)
from seg_ros.inference.segmenter import Segmenter
from seg_ros.paths import default_checkpoint
from seg_ros.vocabulary import format_size

__all__ = ['AUTO', 'EAGER', 'PAPER_SIZE_NETWORKS', 'bench_segment', 'segment_speedups']

# SegFast's paper times its networks at 224x224 (Table 4): the segment section adds that size for them.
PAPER_SIZE_NETWORKS = {'segfast': (224, 224), 'segfast_basic': (224, 224)}
EAGER = 'eager fp32'  # plain PyTorch: batch-norm kept, NCHW, fp32 (the authors' kind of code)
AUTO = 'auto'


def _sample_images(args: argparse.Namespace, size: tuple[int, int]) -> list[np.ndarray]:
    """The frames segment() is timed on: ``--images`` (RGB, resized by the Segmenter), else the
    bundled sample the automatic choice uses by default."""

    from seg_ros.frames.synthetic import SyntheticRoadScene

    if args.images:
        images = []
        for path in args.images:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f'--images: {path} is not a readable image')
            images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return images
    scene = SyntheticRoadScene(width=max(size[1], 32), height=max(size[0], 32))
    return [scene.frame(t)[0] for t in np.linspace(0.0, 4.0, 3)]


def _segment_checkpoint(network: str, size: tuple[int, int], folder: Path) -> tuple[Path, str]:
    """The shipped checkpoint of ``network`` (trained: agreement means something), else random weights."""
    with contextlib.suppress(FileNotFoundError):
        return default_checkpoint(network), 'shipped'
    return random_checkpoint(network, size, folder), 'random'


def bench_segment(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict]:
    """Per network and size: segment() of plain eager fp32, of each backend x precision, and of
    the automatic choice, timed interleaved; the ratio of each to eager in the same run."""
    rows = []
    for network in args.segment_networks:
        sizes = [*args.segment_resolutions, *([PAPER_SIZE_NETWORKS[network]] if network in PAPER_SIZE_NETWORKS
                                              and args.segment_paper_sizes else [])]
        for size in dict.fromkeys(sizes):
            rows += _segment_rows(args, device, network, size, folder)
    return rows


def _segment_rows(args: argparse.Namespace, device: torch.device, network: str, size: tuple[int, int],
                  folder: Path) -> list[dict]:
    checkpoint, weights = _segment_checkpoint(network, size, folder)
    images = _sample_images(args, size)
    common = {'device': str(device), 'input_size': size, 'warmup': True}
    segmenters = {EAGER: Segmenter(checkpoint, backend='torch', precision='fp32', fold_bn=False,
                                   channels_last=False, **common)}
    for candidate in candidates(device):
        segmenters[str(candidate)] = Segmenter(checkpoint, backend=candidate.backend,
                                               precision=candidate.precision, **common)
    # A cache of its own: the choice is measured in this run, on these frames.
    start = time.perf_counter()
    segmenters[AUTO] = Segmenter(checkpoint, sample_frames=images, choice_cache=ChoiceCache(
        folder / f'choices_{network}_{format_size(size)}.json'), **common)
    auto_startup_s = time.perf_counter() - start
    with torch.inference_mode():
        reference = [segmenters[str(REFERENCE)].segment(image, outputs=set()).mask for image in images]
    load = load_average()
    # Call by call in turn, so that a change of the machine's load falls on all of them alike.
    calls = {name: _rotating_segment(segmenter, images) for name, segmenter in segmenters.items()}
    times: dict[str, list[float]] = {name: [] for name in segmenters}
    for index in range(args.repeats * args.iterations):
        for name, call in calls.items():
            times[name] += time_calls(call, device, iterations=1, warmup=index == 0).tolist()
    eager_ms = float(np.median(times[EAGER]))
    rows = []
    for name, segmenter in segmenters.items():
        masks = [segmenter.segment(image, outputs=set()).mask for image in images]
        agreement = float(np.mean([np.mean(m == r) for m, r in zip(masks, reference, strict=True)]))
        median = float(np.median(times[name]))
        row = {'network': network, 'resolution': format_size(size), 'weights': weights, 'config': name,
               'backend': segmenter.backend, 'precision': segmenter.precision,
               'p50_ms': median, 'p99_ms': float(np.percentile(times[name], 99)), 'iterations': len(times[name]),
               'vs_eager': eager_ms / median, 'agreement_pct': 100 * agreement, 'load_average': load}
        if name == AUTO:
            row.update(config=f'auto: {segmenter.choice.candidate}', startup_s=auto_startup_s,
                       choice_s=segmenter.choice.seconds, choice=segmenter.choice.summary(),
                       choice_timings_ms=segmenter.choice.timings_ms, choice_agreement=segmenter.choice.agreement)
        rows.append(row)
        print(f'  segment {network} {format_size(size)} {row["config"]}: {median:.1f} ms '
              f'({row["vs_eager"]:.2f}x eager)', file=sys.stderr, flush=True)
    return rows


def _rotating_segment(segmenter: Segmenter, images: Sequence[np.ndarray]) -> Callable[[], Any]:
    """A call of segment() (mask and statistics, as the node always publishes) on the next image."""
    frames = itertools.cycle(images)
    return lambda: segmenter.segment(next(frames), outputs=set())


def segment_speedups(rows: Sequence[dict]) -> list[dict]:
    """The automatic choice against plain eager fp32 PyTorch, per network and size."""
    return [{'network': r['network'], 'resolution': r['resolution'], 'choice': r['config'].removeprefix('auto: '),
             'auto_ms': r['p50_ms'], 'eager_ms': r['p50_ms'] * r['vs_eager'], 'speedup': r['vs_eager'],
             'agreement_pct': r['agreement_pct'], 'startup_s': r['startup_s']}
            for r in rows if r['config'].startswith('auto:')]
