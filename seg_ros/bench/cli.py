"""``seg-bench``: how fast the networks, the inference path and the node are, measured here.

Sections (``--sections``; all by default), each printed as markdown tables, every figure saved
with ``--json PATH``:

- ``forward``: each network x resolution x precision x execution mode (``MODES``): median and p99
  latency of a batch-1 forward, frames/s, the spread of repeated runs, parameters, GMACs/GFLOPs,
  weights and peak memory, and for plain eager fp32 where its time goes (op shares).
- ``segment``: the whole ``Segmenter.segment()`` call (upload, resize, forward, soft-max,
  argmax, statistics) of each network's shipped checkpoint at camera sizes, for plain eager fp32
  PyTorch, every backend x precision, and the automatic choice (measured afresh, its start-up
  time and what it chose): median ms, the ratio to plain eager, and the share of pixels whose
  class agrees with fp32 PyTorch on the sample frames (``--images``, default the bundled sample).
- ``messages``: the path around the network at camera sizes: message -> array, the Segmenter's
  pre/post-processing step by step, array -> message and publish of the mask and overlay.
- ``node``: ``segment_node`` as a separate process over real DDS (Fast DDS profile
  ``config/fastdds.xml``): cameras publish at a set rate, a subscriber receives the masks;
  latency from each image's stamp to its mask's arrival, output rate, dropped frames, CPU use,
  and the ratio of end-to-end latency to the bare forward at the same settings.
- ``overload``: frames at twice the node's capacity: latency, drops and memory over time.
- ``training``: training images/s with data loading, per network: the streamed fp32 trainer against
  today's (split in memory, the precision and layout measured fastest).
- ``ground``: the ground grid and scan of one camera (``seg_ros.ground``) at camera sizes: building
  its pixel-to-ground lookup once, then the work per frame, on the synthetic scene's masks.

Then the targets of the project, met or missed by how much, from the figures above.

Timing: warm-up calls first; on CUDA the device is synchronised around every timed call; inputs
rotate through several random tensors. Frames/s is 1000 / median latency x batch (sequential
batch-1 inference, as the papers time it). GFLOPs counts a multiply-add as 2 FLOPs
(``torch.utils.flop_counter``); GMACs (= GFLOPs / 2) is what the papers call GFLOPs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seg_ros.checkpoint import Checkpoint, save_checkpoint
from seg_ros.data import SegmentationDataset, build_dataset
from seg_ros.ground import (
    CameraModel,
    CameraPose,
    GroundGrid,
    build_lookup,
    class_role_table,
    default_class_roles_file,
    load_class_roles,
    project_mask,
    scan_ranges,
)
from seg_ros.inference.backends import (
    REFERENCE,
    SERVES,
    Candidate,
    ChoiceCache,
    candidates,
    cpu_supports_bf16,
    make_forward,
)
from seg_ros.inference.preparation import latencies_ms, prepare_model
from seg_ros.inference.segmenter import Segmenter, resolve_device, resolve_precision
from seg_ros.labels import CAMVID11
from seg_ros.models import build_model, count_parameters, list_models
from seg_ros.paths import default_checkpoint, fastdds_profile
from seg_ros.reporting import machine_info, markdown_table
from seg_ros.vocabulary import PRECISION_CHOICES, PRECISIONS, format_size, parse_size

__all__ = ['MODES', 'PAPER_FIGURES', 'Mode', 'PaperFigure', 'main', 'run_benchmark']

SECTIONS = ('forward', 'segment', 'messages', 'node', 'overload', 'training', 'ground')
RESOLUTIONS = ((320, 480), (360, 640), (512, 1024), (720, 1280), (1080, 1920), (1024, 2048))
NODE_RESOLUTIONS = ((360, 640), (720, 1280))
# SegFast's paper times its networks at 224x224 (Table 4): the segment section adds that size for them.
PAPER_SIZE_NETWORKS = {'segfast': (224, 224), 'segfast_basic': (224, 224)}
MIN_NODE_FRAMES = 5  # per camera and run: a slow configuration runs longer than --node-seconds
CALIBRATION_FRAMES = 15  # outputs (about) that measure the node's capacity before an overload run
SETTLED_AFTER_SECONDS = 5.0  # into an overload run (at most half of it): warm-up before memory is compared
MIB = 2 ** 20
GROUND_GRID = GroundGrid(0.1, -10.0, 40.0, -20.0, 20.0)  # segment_node's default grid


# -- the papers' figures -------------------------------------------------------------------------

@dataclass(frozen=True)
class PaperFigure:
    """A forward time a paper reports (batch 1), with its frames/s where the paper prints them."""

    network: str
    source: str
    hardware: str
    size: tuple[int, int]  # (height, width)
    ms: float
    printed_fps: float | None = None

    @property
    def fps(self) -> float:
        """The paper's frames/s; 1000 / ms where it prints none (its ms are rounded, its fps not)."""
        return self.printed_fps if self.printed_fps is not None else 1000.0 / self.ms


_TX1, _TITAN_X, _GTX_1080TI = 'Jetson TX1 (GPU)', 'Titan X Maxwell (GPU)', 'GTX 1080Ti (GPU)'
_XEON = 'Xeon E5-2623 v4, 8 cores / 16 threads (CPU)'
_ERFNET_TABLE, _DSNET_TABLE, _SEGFAST_TABLE = 'ERFNet Table IV', 'DSNet Table 8', 'SegFast Table 4'
PAPER_FIGURES: tuple[PaperFigure, ...] = (
    # ERFNet paper (papers/001), Table IV: forward pass (ms, fps); ENet's row is from its own paper.
    *(PaperFigure(net, _ERFNET_TABLE, _TX1, size, ms, fps) for net, size, ms, fps in (
        ('enet', (320, 480), 47, 21.1), ('enet', (360, 640), 69, 14.6), ('enet', (720, 1280), 262, 3.8),
        ('erfnet', (320, 480), 93, 10.8), ('erfnet', (360, 640), 141, 7.1), ('erfnet', (720, 1280), 535, 1.9))),
    *(PaperFigure(net, _ERFNET_TABLE, _TITAN_X, size, ms, fps) for net, size, ms, fps in (
        ('enet', (360, 640), 7, 135.4), ('enet', (720, 1280), 21, 46.8), ('enet', (1080, 1920), 46, 21.6),
        ('erfnet', (360, 640), 12, 83.3), ('erfnet', (720, 1280), 41, 24.4), ('erfnet', (1080, 1920), 88, 11.4))),
    # The same paper's text (section IV): 24 ms (41 FPS) at 1024x512 on the Titan X.
    PaperFigure('erfnet', 'ERFNet section IV', _TITAN_X, (512, 1024), 24, 41),
    # DSNet paper (papers/002), Table 8: ENet and ERFNet re-implemented in tensorpack.
    *(PaperFigure(net, _DSNET_TABLE, _GTX_1080TI, size, ms, fps) for net, size, ms, fps in (
        ('enet', (360, 640), 11.1, 89.7), ('enet', (720, 1280), 57.8, 17.3),
        ('enet', (1080, 1920), 126.6, 7.9), ('erfnet', (360, 640), 12.5, 79.9),
        ('erfnet', (720, 1280), 74.3, 13.4), ('erfnet', (1080, 1920), 165.2, 6.0),
        ('dsnet', (360, 640), 9.9, 100.5), ('dsnet', (720, 1280), 49.8, 20.1), ('dsnet', (1080, 1920), 102.0, 9.8))),
    # SegFast paper (papers/003), Table 4: forward pass in seconds on a CPU, 224x224 inputs.
    PaperFigure('segfast', _SEGFAST_TABLE, _XEON, (224, 224), 389),
    PaperFigure('segfast_basic', _SEGFAST_TABLE, _XEON, (224, 224), 419),
)


# -- execution modes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mode:
    """How the network runs: each mode after ``eager`` is the Segmenter's fast path, or part of it."""

    name: str
    description: str
    fold_bn: bool = True
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool = False
    backend: str = 'torch'

    def unavailable(self, device: torch.device, precision: str) -> str | None:
        """Why this mode cannot run on ``device`` at ``precision``, or None."""
        if self.cuda_graph and device.type != 'cuda':
            return 'CUDA graphs need a CUDA device'
        if self.backend != 'torch' and (device.type != 'cpu' or precision not in SERVES[self.backend]):
            return f'the {self.backend} backend runs {" or ".join(SERVES[self.backend])} on a CPU'
        return None


MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode('eager', 'plain PyTorch: batch-norm layers kept, NCHW', fold_bn=False),
    Mode('folded', 'batch-norm folded into the convolutions, NCHW'),
    Mode('channels_last', 'folded, NHWC (channels_last)', channels_last=True),
    Mode('compile', 'folded, NHWC, torch.compile (inductor)', channels_last=True, compile=True),
    Mode('cuda_graph', 'folded, NHWC, replay of one captured CUDA graph', channels_last=True,
         cuda_graph=True),
    Mode('compile_cuda_graph', 'folded, NHWC, torch.compile inside a CUDA graph', channels_last=True,
         compile=True, cuda_graph=True),
    Mode('onnxruntime', 'folded, ONNX Runtime CPU execution provider (NCHW)', backend='onnxruntime'),
    Mode('openvino', 'folded, OpenVINO CPU plugin from the ONNX graph (NCHW; bf16: its inference precision)',
         backend='openvino'),
)}
DEFAULT_MODES = {'cpu': ('eager', 'folded', 'channels_last', 'onnxruntime', 'openvino'),
                 'cuda': ('eager', 'folded', 'channels_last', 'cuda_graph')}
DEFAULT_PRECISIONS = {'cpu': ('fp32',), 'cuda': ('fp32', 'fp16', 'bf16')}


# -- small helpers ---------------------------------------------------------------------------------

def _summary(times_ms: np.ndarray) -> dict[str, float]:
    return {'p50_ms': float(np.median(times_ms)), 'p99_ms': float(np.percentile(times_ms, 99)),
            'max_ms': float(times_ms.max())}


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def random_checkpoint(network: str, size: tuple[int, int], folder: Path, seed: int = 0) -> Path:
    """A checkpoint of ``network`` with random weights (speed does not depend on the weights)."""
    torch.manual_seed(seed)
    model = build_model(network, num_classes=CAMVID11.num_classes)
    return save_checkpoint(Checkpoint.from_model(model, network, CAMVID11, input_size=size,
                                                 meta={'purpose': 'seg-bench, random weights'}),
                           folder / f'{network}_{size[1]}x{size[0]}.pt')


# -- forward ---------------------------------------------------------------------------------------

def count_flops(model: nn.Module, size: tuple[int, int]) -> int:
    """FLOPs of one batch-1 forward at ``size`` (a multiply-add = 2), counted on the meta device."""
    meta = copy.deepcopy(model).to('meta')
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, 3, *size, device='meta'))
    return int(counter.get_total_flops())


def peak_forward_memory_mib(forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    """Peak of the tensors one ``forward(x)`` allocates (activations and output), in MiB.

    On a CPU PyTorch keeps no allocator statistics; the profiler's allocation events are summed
    in order instead. On CUDA it is the allocator's peak above what was allocated before.
    """
    if x.device.type == 'cuda':
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        before = torch.cuda.memory_allocated(x.device)
        forward(x)
        torch.cuda.synchronize(x.device)
        return (torch.cuda.max_memory_allocated(x.device) - before) / MIB
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward(x)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == '[memory]'),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak / MIB


_OP_GROUPS = (('convolution', ('conv',)), ('batch_norm', ('batch_norm',)),
              ('activation', ('relu', 'prelu', 'elu', 'sigmoid', 'hardtanh', 'clamp')),
              ('pooling/unpooling', ('pool', 'scatter', 'unpool')),
              ('elementwise/copy', ('add', 'mul', 'copy', 'cat', 'pad', 'slice', 'fill', 'clone',
                                    'contiguous')))


def op_shares(forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> dict[str, float]:
    """Share of one forward's self time per kind of operation (profiled once)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == 'cuda' else [])
    with profile(activities=activities) as prof:
        forward(x)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if not event.key.startswith('aten::'):
            continue
        name = event.key.removeprefix('aten::')
        group = next((g for g, keys in _OP_GROUPS if any(k in name for k in keys)), 'other')
        spent = event.self_device_time_total if x.device.type == 'cuda' else event.self_cpu_time_total
        totals[group] = totals.get(group, 0.0) + spent
    total = sum(totals.values()) or 1.0
    return {group: round(100.0 * spent / total, 1) for group, spent in sorted(totals.items())}


@dataclass
class _Candidate:
    """One precision and mode of a network at one size, ready to time."""

    precision: str
    mode: Mode
    backend: str
    model: nn.Module
    forward: Callable[[torch.Tensor], Any]
    inputs: list[torch.Tensor]
    runs: list[np.ndarray]


def bench_forward(args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[dict]]:
    """Forward rows, and the combinations skipped with the reason.

    The repeats of all precisions and modes of one network and size are interleaved, so that a
    change in the machine's load falls on all of them alike.
    """
    rows, skipped = [], []
    for network in args.networks:
        torch.manual_seed(args.seed)
        plain = build_model(network, num_classes=args.num_classes).eval()
        for size in args.resolutions:
            candidates = []
            for precision in args.precisions:
                for mode in (MODES[name] for name in args.modes):
                    reason = mode.unavailable(device, precision)
                    if reason:
                        skipped.append({'network': network, 'resolution': format_size(size),
                                        'precision': precision, 'mode': mode.name, 'reason': reason})
                    else:
                        candidates.append(_candidate(args, plain, size, precision, mode, device))
            load = _load_average()
            with torch.inference_mode():
                for repeat in range(args.repeats):
                    for candidate in candidates:
                        candidate.runs.append(latencies_ms(
                            candidate.forward, candidate.inputs, iterations=args.iterations,
                            warmup=args.warmup if repeat == 0 else 0))
            flops = count_flops(plain, size)
            for candidate in candidates:
                row = _forward_row(args, candidate, size, device)
                row.update(network=network, params=count_parameters(plain), gflops=flops / 1e9,
                           gmacs=flops / 2e9, load_average=load)
                rows.append(row)
                print(f'  forward {network} {row["resolution"]} {row["precision"]} {row["mode"]}: '
                      f'{row["p50_ms"]:.2f} ms', file=sys.stderr, flush=True)
            del candidates
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    return rows, skipped


def _candidate(args: argparse.Namespace, plain: nn.Module, size: tuple[int, int], precision: str, mode: Mode,
               device: torch.device) -> _Candidate:
    model = prepare_model(copy.deepcopy(plain), device=device, precision='fp32',
                          channels_last=mode.channels_last, fold_bn=mode.fold_bn)
    forward = make_forward(Candidate(mode.backend, precision), model, channels_last=mode.channels_last,
                           compile=mode.compile, cuda_graph=mode.cuda_graph)
    # PyTorch gets its inputs in its own precision and layout (the cast is not part of a forward);
    # the other runtimes take float32 NCHW.
    torch_net = getattr(forward, 'model', None)
    memory_format = torch.channels_last if mode.channels_last else torch.contiguous_format
    dtype = model_dtype(torch_net) if torch_net is not None else torch.float32
    generator = torch.Generator().manual_seed(args.seed)
    inputs = [torch.randn(args.batch, 3, *size, generator=generator).to(
        device=device, dtype=dtype, memory_format=memory_format) for _ in range(args.rotate)]
    return _Candidate(precision, mode, mode.backend, torch_net if torch_net is not None else model, forward,
                      inputs, runs=[])


def _forward_row(args: argparse.Namespace, candidate: _Candidate, size: tuple[int, int],
                 device: torch.device) -> dict[str, Any]:
    forward, example = candidate.forward, candidate.inputs[0]
    with torch.inference_mode():
        peak = peak_forward_memory_mib(forward, example) if candidate.backend == 'torch' else None
        profile = candidate.mode.name == 'eager' and candidate.precision == 'fp32' and args.op_shares
        shares = op_shares(forward, example) if profile else None
    times = np.concatenate(candidate.runs)
    medians = [float(np.median(run)) for run in candidate.runs]
    summary = _summary(times)
    # The other runtimes hold their own copy of the weights, in their own form: not shown.
    weights = sum(t.numel() * t.element_size() for t in [*candidate.model.parameters(), *candidate.model.buffers()]
                  ) / MIB if candidate.backend == 'torch' else None
    # A precision the Segmenter would not use here (no native support: emulated, slower) is still
    # measured, as the reason why.
    native = resolve_precision(candidate.precision, device)[0] == candidate.precision
    return {
        'resolution': format_size(size), 'height': size[0], 'width': size[1], 'batch': args.batch,
        'precision': candidate.precision, 'native_precision': native, 'mode': candidate.mode.name,
        'backend': candidate.backend, **summary,
        'fps': 1000.0 * args.batch / summary['p50_ms'], 'repeat_p50_ms': medians,
        'spread_pct': 100.0 * (max(medians) - min(medians)) / summary['p50_ms'],
        'iterations': int(times.size), 'weights_mib': weights, 'peak_activation_mib': peak,
        'op_shares_pct': shares,
    }


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def speedups(rows: Sequence[dict]) -> list[dict]:
    """Per network, resolution and precision: the fastest mode against plain eager fp32."""
    eager = {(r['network'], r['resolution']): r['p50_ms'] for r in rows
             if r['mode'] == 'eager' and r['precision'] == 'fp32'}
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row['network'], row['resolution'])
        if row['mode'] == 'eager' or key not in eager:
            continue
        if key not in best or row['p50_ms'] < best[key]['p50_ms']:
            best[key] = row
    return [{'network': key[0], 'resolution': key[1], 'eager_fp32_ms': eager[key], 'best_mode': row['mode'],
             'best_precision': row['precision'], 'best_ms': row['p50_ms'],
             'speedup': eager[key] / row['p50_ms']} for key, row in best.items()]


# -- the whole segment() call: every backend x precision and the automatic choice --------------------

EAGER = 'eager fp32'  # plain PyTorch: batch-norm kept, NCHW, fp32 (the authors' kind of code)
AUTO = 'auto'


def _sample_images(args: argparse.Namespace, size: tuple[int, int]) -> list[np.ndarray]:
    """The frames segment() is timed on: ``--images`` (RGB, resized by the Segmenter), else the
    bundled sample the automatic choice uses by default."""
    import cv2

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
    load = _load_average()
    # Call by call in turn, so that a change of the machine's load falls on all of them alike.
    calls = {name: _rotating_segment(segmenter, images) for name, segmenter in segmenters.items()}
    times: dict[str, list[float]] = {name: [] for name in segmenters}
    for index in range(args.repeats * args.iterations):
        for name, call in calls.items():
            times[name] += _time_calls(call, device, iterations=1, warmup=index == 0).tolist()
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


# -- messages and the path around the network -------------------------------------------------------

def bench_messages(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict]:
    """Per node resolution: conversions, the Segmenter's pre/post-processing, publishing (ENet)."""
    import rclpy
    from sensor_msgs.msg import Image

    from seg_ros.frames.synthetic import SyntheticRoadScene

    rows = []
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node('seg_bench_messages', context=context)
        # A subscriber, so that publishing does all its work (a publisher without one may skip it).
        publisher = node.create_publisher(Image, 'seg_bench/messages', 1)
        node.create_subscription(Image, 'seg_bench/messages', lambda _msg: None, 1)
        for size in dict.fromkeys(size for _, size in args.node_configs):
            image, _ = SyntheticRoadScene(width=size[1], height=size[0]).frame(0.0)
            segmenter = Segmenter(random_checkpoint(args.node_networks[0], size, folder), device=str(device),
                                  precision=args.node_precision)
            steps = _message_steps(segmenter, image, publisher)
            for step, call in steps.items():
                times = _time_calls(call, device, iterations=args.message_iterations)
                rows.append({'resolution': format_size(size), 'step': step, **_summary(times),
                             'load_average': _load_average()})
    finally:
        rclpy.try_shutdown(context=context)
    return rows


def _message_steps(segmenter: Segmenter, image: np.ndarray, publisher: Any) -> dict[str, Callable[[], Any]]:
    """The steps of a frame's way through the node besides DDS, each as a call to time."""
    from seg_ros.ros.conversions import array_to_image, image_to_array

    batch = torch.from_numpy(image).permute(2, 0, 1)[None].float().to(segmenter.device)
    msg = array_to_image(image, 'rgb8')
    result = segmenter.segment(image, outputs={'color_mask', 'overlay'})
    mask_msg, overlay_msg = array_to_image(result.mask, 'mono8'), array_to_image(result.overlay, 'rgb8')
    # The steps of segment() one by one (its private parts: what each costs at this size).
    uploaded = segmenter._upload(image, 'rgb8')
    logits = segmenter.forward(batch)
    resize = segmenter._resize
    return {
        'camera Image -> array (image_to_array: a view)': lambda: image_to_array(msg),
        'upload (uint8 to the device, RGB order)': lambda: segmenter._upload(image, 'rgb8'),
        'resize to the input size + normalise': lambda: segmenter._normalise(
            resize(uploaded, segmenter.input_size, 'bilinear')),
        f'network forward (Segmenter.forward, {segmenter.backend} {segmenter.precision})':
            lambda: segmenter.forward(batch),
        'post-processing: soft-max, argmax, confidence, statistics':
            lambda: segmenter._postprocess(logits, uploaded, set(), 0.5),
        'post-processing: + color_mask + overlay':
            lambda: segmenter._postprocess(logits, uploaded, {'color_mask', 'overlay'}, 0.5),
        'segment, mask only (upload, forward, argmax, stats)':
            lambda: segmenter.segment(image, outputs=set()),
        'segment, mask + color_mask + overlay':
            lambda: segmenter.segment(image, outputs={'color_mask', 'overlay'}),
        'mask -> Image (array_to_image mono8)': lambda: array_to_image(result.mask, 'mono8'),
        'overlay -> Image (array_to_image rgb8)': lambda: array_to_image(result.overlay, 'rgb8'),
        'publish mask': lambda: publisher.publish(mask_msg),
        'publish overlay': lambda: publisher.publish(overlay_msg),
    }


def _time_calls(call: Callable[[], Any], device: torch.device, iterations: int, warmup: bool = True) -> np.ndarray:
    if warmup:
        call()
    times = np.empty(iterations)
    for index in range(iterations):
        _synchronize(device)
        start = time.perf_counter()
        call()
        _synchronize(device)
        times[index] = (time.perf_counter() - start) * 1e3
    return times


# -- the node over DDS -------------------------------------------------------------------------------

@contextlib.contextmanager
def node_process(checkpoint: Path, network: str, topics: Sequence[str], *, device: str, precision: str,
                 size: tuple[int, int], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """``segment_node`` in its own process, stopped with SIGINT (as ros2 run would) on exit."""
    parameters = {'model': network, 'weights': str(checkpoint), 'image_topics': f'[{",".join(topics)}]',
                  'device': device, 'precision': precision, 'input_height': size[0], 'input_width': size[1]}
    command = [sys.executable, '-c', 'import sys; from seg_ros.ros.node import main; sys.exit(main())',
               '--ros-args', *(arg for key, value in parameters.items() for arg in ('-p', f'{key}:={value}'))]
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _Rig:
    """The cameras and the mask subscriber, in this process: publishes frames, records arrivals."""

    def __init__(self, context: Any, topics: Sequence[str], frames: Sequence[Sequence[np.ndarray]]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from seg_ros.interface import output_prefix
        from seg_ros.ros.conversions import array_to_image
        from seg_ros.ros.qos import LATCHED

        self.node = node = rclpy.create_node('seg_bench_rig', context=context)
        camera_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = [node.create_publisher(Image, topic, camera_qos) for topic in topics]
        self.frames = [[array_to_image(frame, 'rgb8') for frame in camera] for camera in frames]
        self.lock = threading.Lock()
        self.arrivals: list[dict[int, int]] = [{} for _ in topics]  # stamp ns -> arrival ns
        self.ready = [False] * len(topics)
        self.diagnostics: dict[str, dict[str, str]] = {}  # latest values per hardware_id
        self.node_inference_ms: list[float] = []  # the node's own segment_batch p50 of each report
        for index, topic in enumerate(topics):
            prefix = output_prefix(topic, 'segmentation')
            node.create_subscription(Image, f'{prefix}/mask', self._on_mask(index), 10)
            node.create_subscription(String, f'{prefix}/class_info', self._on_ready(index), LATCHED)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_mask(self, index: int) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            arrival = self.node.get_clock().now().nanoseconds
            stamp = msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec
            with self.lock:
                self.arrivals[index][stamp] = arrival
        return callback

    def _on_ready(self, index: int) -> Callable[[Any], None]:
        def callback(_msg: Any) -> None:
            self.ready[index] = True
        return callback

    def _on_diagnostics(self, msg: Any) -> None:
        with self.lock:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                self.diagnostics[status.hardware_id] = values
                if values.get('inference p50 (ms)', 'nan') != 'nan':
                    self.node_inference_ms.append(float(values['inference p50 (ms)']))

    def publish_for(self, rate_hz: float, seconds: float) -> list[list[int]]:
        """Every camera publishes its next frame (stamped now) at ``rate_hz`` for ``seconds``."""
        stamps: list[list[int]] = [[] for _ in self.publishers]
        period = 1.0 / rate_hz
        start = next_tick = time.perf_counter()
        count = 0
        while next_tick - start < seconds:
            for index, publisher in enumerate(self.publishers):
                msg = self.frames[index][count % len(self.frames[index])]
                now = self.node.get_clock().now()
                msg.header.stamp = now.to_msg()
                publisher.publish(msg)
                stamps[index].append(now.nanoseconds)
            count += 1
            next_tick += period
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        return stamps

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _wait(condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen,
          log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f'segment_node exited with {process.returncode} while waiting for {what}:\n'
                               + log_path.read_text()[-2000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f'timed out after {timeout:.0f} s waiting for {what}; node log:\n'
                               + log_path.read_text()[-2000:])
        time.sleep(0.05)


def run_node(args: argparse.Namespace, checkpoint: Path, network: str, size: tuple[int, int], cameras: int,
             rate_hz: float, seconds: float, folder: Path, overload: float | None = None) -> dict[str, Any]:
    """One end-to-end run of segment_node; latencies, rates, drops, CPU (and, overloaded, memory).

    With ``overload``, the settling phase runs at ``rate_hz`` (meant to saturate the node) long
    enough to measure the node's capacity from the masks it delivers, and the measured run then
    publishes at ``overload`` times that capacity while the node's memory is sampled.
    """
    import psutil
    import rclpy

    from seg_ros.frames.synthetic import SyntheticRoadScene

    topics = [f'/seg_bench/cam{index}/image_raw' for index in range(cameras)]
    frames = [[SyntheticRoadScene(width=size[1], height=size[0], seed=index).frame(t)[0]
               for t in (0.0, 0.5, 1.0, 1.5)] for index in range(cameras)]
    log_path = folder / f'node_{network}_{cameras}x{format_size(size)}.log'
    context = rclpy.Context()
    rclpy.init(context=context)
    rig = _Rig(context, topics, frames)
    try:
        with node_process(checkpoint, network, topics, device=args.node_device, precision=args.node_precision,
                          size=size, env=_node_env(args), log_path=log_path) as process:
            _wait(lambda: all(rig.ready), args.node_start_timeout, 'the node to start', process, log_path)
            node_ps, own_ps = psutil.Process(process.pid), psutil.Process()
            settle = args.node_settle
            if overload:  # rate_hz is 3x the estimated capacity: about CALIBRATION_FRAMES outputs
                settle = max(settle, 3.0 * CALIBRATION_FRAMES / rate_hz)
            settled = rig.publish_for(rate_hz, settle)  # discovery, first frames, allocator
            dropped_before = _node_drops(rig, topics, process, log_path)
            capacity_hz = None
            if overload:
                with rig.lock:
                    delivered = sum(s in rig.arrivals[i] for i, camera in enumerate(settled) for s in camera)
                if not delivered:
                    raise RuntimeError(f'segment_node delivered no mask in {settle:.1f} s of frames at '
                                       f'{rate_hz:.2f} Hz; node log:\n' + log_path.read_text()[-2000:])
                capacity_hz = delivered / cameras / settle
                rate_hz = overload * capacity_hz
            memory: list[tuple[float, float]] = []
            sampler = _MemorySampler(node_ps, memory) if overload else None
            with rig.lock:
                rig.node_inference_ms.clear()
            cpu_before = (node_ps.cpu_times(), own_ps.cpu_times(), time.perf_counter())
            stamps = rig.publish_for(rate_hz, seconds)
            cpu_after = (node_ps.cpu_times(), own_ps.cpu_times(), time.perf_counter())
            last = [camera[-1] for camera in stamps]
            with contextlib.suppress(RuntimeError):  # a frame dropped at the end never arrives
                _wait(lambda: all(s in rig.arrivals[i] for i, s in enumerate(last)),
                      max(2.0, 0.2 * seconds), 'the last masks', process, log_path)
            if sampler is not None:
                sampler.stop()
            node_dropped = _node_drops(rig, topics, process, log_path) - dropped_before
    finally:
        rig.close()
        rclpy.try_shutdown(context=context)
    wall = cpu_after[2] - cpu_before[2]
    latencies, received = [], 0
    with rig.lock:
        for camera, published in zip(rig.arrivals, stamps, strict=True):
            arrived = [camera[s] - s for s in published if s in camera]
            received += len(arrived)
            latencies += arrived
    published_total = sum(len(s) for s in stamps)
    times = np.asarray(latencies, np.float64) / 1e6
    row: dict[str, Any] = {
        'network': network, 'resolution': format_size(size), 'cameras': cameras, 'rate_hz': rate_hz,
        'seconds': seconds, 'published': published_total, 'received': received,
        'dropped': published_total - received, 'node_dropped': node_dropped,
        'output_rate_hz': received / cameras / wall,
        'node_cpu_cores': _cpu_seconds(cpu_before[0], cpu_after[0]) / wall,
        'rig_cpu_cores': _cpu_seconds(cpu_before[1], cpu_after[1]) / wall,
        # The node's own figure: segment_batch (conversion, pre/post-processing and forward).
        'node_segment_p50_ms': float(np.median(rig.node_inference_ms)) if rig.node_inference_ms else None,
        'load_average': _load_average(),
        **({'latency_' + k: v for k, v in _summary(times).items()} if times.size else {}),
    }
    if overload:
        row.update(capacity_hz=capacity_hz, memory_mib=memory)
    return row


def _node_drops(rig: _Rig, topics: Sequence[str], process: subprocess.Popen, log_path: Path) -> int:
    """The node's own count of dropped frames, from a diagnostics message published after now."""
    with rig.lock:
        rig.diagnostics.clear()
    _wait(lambda: all(topic in rig.diagnostics for topic in topics), 10.0, 'fresh diagnostics', process,
          log_path)
    with rig.lock:
        return sum(int(rig.diagnostics[topic]['dropped frames']) for topic in topics)


def _cpu_seconds(before: Any, after: Any) -> float:
    return (after.user - before.user) + (after.system - before.system)


class _MemorySampler:
    """Resident memory of a process every half second, as (seconds, MiB)."""

    def __init__(self, process: Any, samples: list[tuple[float, float]], period: float = 0.5) -> None:
        self.process, self.samples, self.period = process, samples, period
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.perf_counter() - self._start, 2),
                                 round(self.process.memory_info().rss / MIB, 1)))
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def forward_probe(spec: str) -> None:
    """Entry of the process ``probe_forward`` starts: prints the forward times (ms) as JSON."""
    options = json.loads(spec)
    segmenter = Segmenter(options['checkpoint'], device=options['device'], precision=options['precision'])
    frames = torch.rand(options['batch'], 3, *segmenter.input_size, device=segmenter.device) * 255
    period = 1.0 / options['rate_hz'] if options['rate_hz'] else 0.0
    times: list[float] = []

    def work() -> None:  # in a thread of its own, as the node's worker
        for _ in range(options['iterations']):
            start = time.perf_counter()
            times.extend(latencies_ms(segmenter.forward, [frames], iterations=1, warmup=0).tolist())
            time.sleep(max(0.0, period - (time.perf_counter() - start)))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    print(json.dumps(times))


def probe_forward(args: argparse.Namespace, checkpoint: Path, batch: int,
                  rate_hz: float | None = None) -> dict[str, float]:
    """The bare forward of the Segmenter the node builds (same checkpoint and settings), timed in
    a process of its own started like the node's, from a worker thread, called at ``rate_hz``
    (None: back to back): its median and p99 in ms.

    Timed in this process instead, the same forward measured up to 1.5x slower on the shared CPU
    (a process that has done other work is not a fair stand-in for the node).
    """
    iterations, period = args.node_forward_iterations, 0.0
    if rate_hz:  # paced: about as long as a node run, a few calls at least
        period = 1.0 / rate_hz
        iterations = max(3, min(iterations, math.ceil(args.node_seconds * rate_hz)))
    spec = json.dumps({'checkpoint': str(checkpoint), 'device': args.node_device,
                       'precision': args.node_precision, 'batch': batch, 'rate_hz': rate_hz,
                       'iterations': iterations})
    command = [sys.executable, '-c', 'import sys; from seg_ros.bench.cli import forward_probe; '
               'forward_probe(sys.argv[1])', spec]
    result = subprocess.run(command, capture_output=True, text=True, env=_node_env(args),
                            timeout=args.node_start_timeout + 3 * iterations * max(period, 1.0))
    if result.returncode != 0:
        raise RuntimeError(f'the forward probe failed ({result.returncode}):\n{result.stderr[-2000:]}')
    times = json.loads(result.stdout.strip().splitlines()[-1])
    return {'forward_p50_ms': float(np.median(times)), 'forward_p99_ms': float(np.percentile(times, 99))}


def _node_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    return env


def bench_node(args: argparse.Namespace, folder: Path) -> list[dict]:
    """End-to-end runs at half the measured capacity (or ``--node-rate``)."""
    rows = []
    for network in args.node_networks:
        for cameras, size in args.node_configs:
            checkpoint = random_checkpoint(network, size, folder)
            rate = args.node_rate
            if rate is None:  # batches/s: one frame of every camera in a batch
                rate = min(30.0, 0.5 * 1000.0 / probe_forward(args, checkpoint, cameras)['forward_p50_ms'])
            seconds = max(args.node_seconds, MIN_NODE_FRAMES / rate)
            row = run_node(args, checkpoint, network, size, cameras, rate, seconds, folder)
            row.update(probe_forward(args, checkpoint, cameras, rate), forward_batch=cameras)
            if 'latency_p50_ms' in row:
                row['e2e_over_forward'] = row['latency_p50_ms'] / row['forward_p50_ms']
                row['overhead_ms'] = row['latency_p50_ms'] - row['forward_p50_ms']
            rows.append(row)
            print(f'  node {network} {cameras} x {format_size(size)} at {rate:.2f} Hz: '
                  f'p50 {row.get("latency_p50_ms", float("nan")):.1f} ms', file=sys.stderr, flush=True)
    return rows


def bench_overload(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One camera at twice the node's capacity (measured from its output while saturated), with
    the node's memory sampled."""
    network, size = args.node_networks[0], args.overload_resolution
    checkpoint = random_checkpoint(network, size, folder)
    forward = probe_forward(args, checkpoint, 1)
    saturating = 3.0 * 1000.0 / forward['forward_p50_ms']
    row = run_node(args, checkpoint, network, size, 1, saturating, args.overload_seconds, folder, overload=2.0)
    row.update(forward)
    row['input_over_output_rate'] = row['rate_hz'] / row['output_rate_hz'] if row['output_rate_hz'] else None
    memory = np.asarray(row['memory_mib'], np.float64).reshape(-1, 2)
    settled = memory[memory[:, 0] >= min(SETTLED_AFTER_SECONDS, args.overload_seconds / 2)]
    if settled.shape[0] >= 2:
        row.update(rss_start_mib=float(memory[0, 1]), rss_settled_min_mib=float(settled[:, 1].min()),
                   rss_settled_max_mib=float(settled[:, 1].max()), rss_end_mib=float(memory[-1, 1]),
                   rss_settled_slope_mib_per_min=float(np.polyfit(settled[:, 0], settled[:, 1], 1)[0]) * 60.0)
    if 'latency_p50_ms' in row:
        row['p99_over_p50'] = row['latency_p99_ms'] / row['latency_p50_ms']
        row['latency_bounded'] = row['p99_over_p50'] <= 2.0
    return row


# -- training ----------------------------------------------------------------------------------------

def synthetic_training_split(folder: Path, size: tuple[int, int], frames: int) -> SegmentationDataset:
    """``frames`` JPEG frames of the synthetic road scene with their exact labels, as a ``folder`` dataset."""
    from seg_ros.frames.synthetic import SyntheticRoadScene

    scene = SyntheticRoadScene(width=size[1], height=size[0])
    for sub in ('images/train', 'labels/train'):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / 'classes.txt').write_text(''.join(f'{n} {r} {g} {b}\n' for n, (r, g, b)
                                                in zip(CAMVID11.names, CAMVID11.colors, strict=True)))
    for index in range(frames):
        image, label = scene.frame(index / 15)
        cv2.imwrite(str(folder / 'images' / 'train' / f'{index:04d}.jpg'), image[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(folder / 'labels' / 'train' / f'{index:04d}.png'), label)
    return build_dataset('folder', folder, 'train')


def bench_training(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict]:
    """Training images/s, data loading included: the streamed fp32 trainer against today's, per network."""
    from seg_ros.training.speed import compare_trainers

    needed = args.train_batch * (args.train_iterations + 1)
    if args.train_data:
        dataset = build_dataset('camvid', args.train_data, 'train')
    else:
        dataset = synthetic_training_split(folder / 'training_frames', args.train_size, needed)
    rows = []
    for network in args.train_networks:
        for row in compare_trainers(network, dataset, device, batch=args.train_batch, crop=args.train_size,
                                    batches=args.train_iterations):
            rows.append({**row, 'load_average': _load_average()})
    return rows


# -- targets -----------------------------------------------------------------------------------------

# -- ground grid and scan --------------------------------------------------------------------------

def bench_ground(args: argparse.Namespace) -> list[dict]:
    """Per resolution: one camera's lookup (undistorted and plumb_bob), then each frame's grid and scan."""
    rows = []
    for size in args.ground_resolutions:
        for step, (call, iterations) in _ground_steps(size, args.ground_iterations).items():
            times = _time_calls(call, torch.device('cpu'), iterations=iterations)
            rows.append({'resolution': format_size(size), 'step': step, 'cells': GROUND_GRID.cells,
                         **_summary(times), 'load_average': _load_average()})
    return rows


def _ground_steps(size: tuple[int, int], iterations: int) -> dict[str, tuple[Callable[[], Any], int]]:
    """The ground steps at a camera ``size`` on the synthetic scene's mask, each as (call, timed calls)."""
    from std_msgs.msg import Header

    from seg_ros.frames.synthetic import CAMERA_HEIGHT, SyntheticRoadScene
    from seg_ros.ros.ground_output import grid_message, scan_message

    grid = GROUND_GRID
    roles = class_role_table(CAMVID11, load_class_roles(default_class_roles_file(), CAMVID11))
    scene = SyntheticRoadScene(size[1], size[0])
    fx, fy, cx, cy = scene.intrinsics
    camera = CameraModel(size[1], size[0], (fx, 0, cx, 0, fy, cy, 0, 0, 1))
    distorted = CameraModel(size[1], size[0], camera.k, (-0.2, 0.05, 0.0, 0.0, 0.0))
    pose = CameraPose(0.0, 0.0, CAMERA_HEIGHT)
    lookup = build_lookup(camera, pose, grid, size)
    mask = scene.frame(0.0)[1]
    layer = project_mask(mask, lookup, roles, grid)
    header = Header(frame_id='base_link')
    return {
        'lookup, once per camera model (pinhole)': (partial(build_lookup, camera, pose, grid, size), 3),
        'lookup, once per camera model (plumb_bob)': (partial(build_lookup, distorted, pose, grid, size), 3),
        'per frame: mask -> grid and scan contacts': (partial(project_mask, mask, lookup, roles, grid), iterations),
        'per frame: scan ranges': (partial(scan_ranges, layer, grid), iterations),
        'per frame: OccupancyGrid + LaserScan messages':
            (lambda: (grid_message(layer, grid, header), scan_message(layer, grid, header)), iterations),
    }


def evaluate_targets(results: dict[str, Any], device: torch.device) -> list[dict]:
    """The project's speed targets that the measured sections can answer, met or missed by how much."""
    targets = []
    for row in results.get('node', []):
        if row['network'] == 'enet' and row['resolution'] == '640x360' and row['cameras'] == 1 \
                and 'e2e_over_forward' in row and device.type == 'cpu':
            targets.append(_target('node e2e p50 within 1.2x of the bare forward (ENet, 640x360, CPU)',
                                   row['e2e_over_forward'], 1.2, higher_is_better=False, unit='x'))
    for row in results.get('speedup', []):
        targets.append(_target(f'fast path >= 2x plain fp32 eager ({row["network"]}, {row["resolution"]}, '
                               f'best: {row["best_mode"]} {row["best_precision"]})', row['speedup'], 2.0,
                               higher_is_better=True, unit='x'))
    for row in results.get('training', []):
        if row['trainer'] == 'now':
            targets.append(_target(f'training images/s >= 2x the streamed fp32 trainer ({row["network"]}, '
                                   f'{row["crop"]}, batch {row["batch"]})', row['speedup'], 2.0,
                                   higher_is_better=True, unit='x'))
    amx = any(flag.startswith('amx') for flag in results.get('machine', {}).get('cpu_flags', []))
    for row in results.get('segment_speedup', []) if device.type == 'cpu' else []:
        required = 3.0 if row['network'] == 'erfnet' and amx else 2.0
        targets.append(_target(f'segment(), automatic choice >= {required:g}x plain fp32 eager ({row["network"]}, '
                               f'{row["resolution"]}, chose {row["choice"]})', row['speedup'], required,
                               higher_is_better=True, unit='x'))
    overload = results.get('overload', {})
    if 'p99_over_p50' in overload:
        targets.append(_target('overload: latency bounded, p99 within 2x p50', overload['p99_over_p50'], 2.0,
                               higher_is_better=False, unit='x'))
    if 'rss_settled_min_mib' in overload:  # flat: ends within 5 % of its lowest after the warm-up
        targets.append(_target('overload: node memory flat (end / settled minimum)',
                               overload['rss_end_mib'] / overload['rss_settled_min_mib'], 1.05,
                               higher_is_better=False, unit='x'))
    if device.type != 'cuda':
        return targets
    forward = results.get('forward', [])
    for figure in PAPER_FIGURES:
        candidates = [r for r in forward if r['network'] == figure.network and r['precision'] == 'fp16'
                      and (r['height'], r['width']) == figure.size and r['batch'] == 1]
        if candidates:
            best = max(candidates, key=lambda r: r['fps'])
            targets.append(_target(f'{figure.network} fp16 >= 20x {figure.source} ({figure.hardware}, '
                                   f'{format_size(figure.size)}: {figure.fps:.1f} fps)',
                                   best['fps'], 20 * figure.fps, higher_is_better=True, unit='fps'))
    for row in results.get('node', []):
        if row['resolution'] == '1280x720' and row['cameras'] == 1 and 'overhead_ms' in row:
            targets.append(_target(f'node overhead beyond the forward < 1 ms ({row["network"]}, 1280x720)',
                                   row['overhead_ms'], 1.0, higher_is_better=False, unit='ms'))
        if row['network'] == 'erfnet' and row['resolution'] == '1280x720' and row['cameras'] == 4 \
                and row['rate_hz'] >= 30 and 'latency_p99_ms' in row:
            targets.append(_target('ERFNet, 4 cameras 1280x720 at 30 Hz: p99 < 20 ms',
                                   row['latency_p99_ms'], 20.0, higher_is_better=False, unit='ms'))
    return targets


def _target(name: str, measured: float, required: float, *, higher_is_better: bool, unit: str) -> dict:
    met = measured >= required if higher_is_better else measured <= required
    return {'target': name, 'measured': measured, 'required': required, 'unit': unit, 'met': met,
            'factor_missing': None if met else (required / measured if higher_is_better
                                                else measured / required)}


# -- command line ------------------------------------------------------------------------------------

def _resolutions(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _node_config(text: str) -> tuple[int, tuple[int, int]]:
    cameras, _, resolution = text.partition('x')
    if not cameras.isdigit() or int(cameras) < 1:
        raise argparse.ArgumentTypeError(f'node config {text!r} is not CAMERASxWIDTHxHEIGHT, e.g. 4x640x360')
    return int(cameras), _resolutions(resolution)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='seg-bench', description=__doc__.split('\n\n')[0],
        epilog='Resolutions are WIDTHxHEIGHT. Defaults adapt to the device: see docs/BENCHMARKS.md.')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--quick', action='store_true',
                        help='a short run: ENet only, 640x360, few iterations, short node runs')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N (default: auto)')
    parser.add_argument('--threads', type=int, default=None,
                        help='PyTorch (and ONNX Runtime, and the node\'s) intra-op threads')
    parser.add_argument('--json', type=Path, default=None, metavar='PATH', help='save every figure here')
    parser.add_argument('--seed', type=int, default=0)
    forward = parser.add_argument_group('forward')
    forward.add_argument('--networks', nargs='+', choices=list_models(), default=None)
    forward.add_argument('--resolutions', nargs='+', type=_resolutions, default=None, metavar='WxH',
                         help='default: 640x360 on a CPU; 480x320 640x360 1024x512 1280x720 1920x1080 '
                              '2048x1024 on CUDA')
    forward.add_argument('--precisions', nargs='+', choices=PRECISIONS, default=None)
    forward.add_argument('--modes', nargs='+', choices=list(MODES), default=None)
    forward.add_argument('--num-classes', type=int, default=19,
                         help='output classes (default: 19, as Cityscapes)')
    forward.add_argument('--batch', type=int, default=1)
    forward.add_argument('--iterations', type=int, default=None, help='timed calls per repeat')
    forward.add_argument('--repeats', type=int, default=None, help='repeated timing runs (their spread)')
    forward.add_argument('--warmup', type=int, default=None)
    forward.add_argument('--rotate', type=int, default=3, help='distinct inputs cycled through')
    forward.add_argument('--no-op-shares', dest='op_shares', action='store_false',
                         help='skip profiling where eager fp32 spends its time')
    segment = parser.add_argument_group('segment')
    segment.add_argument('--segment-networks', nargs='+', choices=list_models(), default=None)
    segment.add_argument('--segment-resolutions', nargs='+', type=_resolutions, default=None, metavar='WxH',
                         help='default: 640x360 1280x720 (SegFast and SegFast-Basic also 224x224, their '
                              "paper's size, unless --no-paper-sizes)")
    segment.add_argument('--no-paper-sizes', dest='segment_paper_sizes', action='store_false',
                         help='leave out the papers\' sizes that are added to --segment-resolutions')
    segment.add_argument('--images', nargs='+', type=Path, default=None, metavar='PATH',
                         help='frames to time segment() on and to choose on (e.g. CamVid val images); '
                              'default: the bundled sample (synthetic road scenes)')
    node = parser.add_argument_group('node, overload and messages')
    node.add_argument('--node-networks', nargs='+', choices=list_models(), default=None)
    node.add_argument('--node-configs', nargs='+', type=_node_config, default=None, metavar='CAMERASxWxH',
                      help='runs of the node, e.g. 1x640x360 4x1280x720 (default: 1 and 4 cameras at '
                           '640x360 and 1280x720; on a CPU without 4x1280x720)')
    node.add_argument('--node-rate', type=float, default=None,
                      help='camera rate in Hz (default: half the measured capacity, at most 30)')
    node.add_argument('--node-seconds', type=float, default=None, help='measured seconds per run')
    node.add_argument('--node-settle', type=float, default=2.0, help='seconds published before measuring')
    node.add_argument('--node-start-timeout', type=float, default=180.0)
    node.add_argument('--node-precision', default='auto', choices=PRECISION_CHOICES)
    node.add_argument('--node-forward-iterations', type=int, default=None)
    node.add_argument('--message-iterations', type=int, default=None)
    node.add_argument('--overload-seconds', type=float, default=None)
    node.add_argument('--overload-resolution', type=_resolutions, default=(360, 640), metavar='WxH')
    training = parser.add_argument_group('training')
    training.add_argument('--train-networks', nargs='+', choices=list_models(), default=None)
    training.add_argument('--train-batch', type=int, default=None)
    training.add_argument('--train-size', type=_resolutions, default=None, metavar='WxH')
    training.add_argument('--train-iterations', type=int, default=None, help='timed batches per trainer')
    training.add_argument('--train-data', type=Path, default=None, metavar='CAMVID_ROOT',
                          help='read CamVid train frames from here (default: synthetic road frames)')
    ground = parser.add_argument_group('ground')
    ground.add_argument('--ground-resolutions', nargs='+', type=_resolutions, default=None, metavar='WxH',
                        help='camera sizes (default: 640x360 1280x720)')
    ground.add_argument('--ground-iterations', type=int, default=None, help='timed frames per step')
    return parser


def _defaults(args: argparse.Namespace, device: torch.device) -> None:
    """Fill what was not given: full matrices on CUDA, a few minutes' worth on a CPU."""
    cuda, quick = device.type == 'cuda', args.quick
    networks = ['enet'] if quick else list_models()
    choose = {
        'networks': networks,
        'resolutions': [(360, 640)] if quick or not cuda else list(RESOLUTIONS),
        # bf16 on a CPU where it is native (elsewhere emulated and slower: --precisions bf16 shows it).
        'precisions': ['fp32', 'bf16'] if not cuda and cpu_supports_bf16() else list(DEFAULT_PRECISIONS[device.type]),
        'modes': list(DEFAULT_MODES[device.type]),
        'iterations': 50 if cuda else 3,
        'repeats': 3 if cuda else 2,
        'warmup': 10 if cuda else 1,
        'segment_networks': networks,
        'segment_resolutions': [(360, 640)] if quick else list(NODE_RESOLUTIONS),
        'node_networks': ['enet', 'erfnet'] if cuda and not quick else ['enet'],
        'node_configs': [(1, (360, 640))] if quick else [
            (cameras, size) for size in NODE_RESOLUTIONS for cameras in (1, 4)
            if cuda or cameras * size[0] * size[1] < 4 * 720 * 1280],
        'node_seconds': 4.0 if quick else (15.0 if cuda else 10.0),
        'node_forward_iterations': 100 if cuda else 12,
        'message_iterations': 30 if cuda else 3,
        'overload_seconds': 8.0 if quick else 30.0,
        'train_networks': networks,
        'train_batch': 8,
        'train_size': (360, 480),
        'train_iterations': 10 if cuda else 3,
        'ground_resolutions': [(360, 640), (720, 1280)],
        'ground_iterations': 10 if quick else 30,
    }
    for key, value in choose.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.node_device = str(device)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested section; the results as one JSON-ready dict."""
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed shapes, as in the Segmenter
    _defaults(args, device)
    results: dict[str, Any] = {'machine': machine_info(device), 'command': args.command,
                               'modes': {name: mode.description for name, mode in MODES.items()},
                               'papers': [dict(vars(f), fps=f.fps) for f in PAPER_FIGURES]}
    if args.quick:
        args.segment_paper_sizes = False
    with tempfile.TemporaryDirectory(prefix='seg_bench_') as tmp:
        folder = Path(tmp)
        if 'forward' in args.sections:
            results['forward'], results['skipped'] = bench_forward(args, device)
            results['speedup'] = speedups(results['forward'])
        if 'segment' in args.sections:
            results['segment'] = bench_segment(args, device, folder)
            results['segment_speedup'] = segment_speedups(results['segment'])
        if {'messages', 'node', 'overload'} & set(args.sections):
            # Both this process and the node use the project's Fast DDS profile unless told otherwise.
            with contextlib.suppress(FileNotFoundError):
                os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds_profile()))
        if 'messages' in args.sections:
            results['messages'] = bench_messages(args, device, folder)
        if 'node' in args.sections:
            results['node'] = bench_node(args, folder)
        if 'overload' in args.sections:
            results['overload'] = bench_overload(args, folder)
        if 'training' in args.sections:
            results['training'] = bench_training(args, device, folder)
        if 'ground' in args.sections:
            results['ground'] = bench_ground(args)
    results['targets'] = evaluate_targets(results, device)
    results['machine']['load_average_end'] = [round(v, 2) for v in os.getloadavg()]
    return results


def report(results: dict[str, Any]) -> str:
    """The results as markdown."""
    machine = results['machine']
    parts = [f'# seg-bench on {machine.get("gpu") or machine["cpu"]}',
             f'CPU flags: {" ".join(machine.get("cpu_flags", [])) or "none of avx512f, avx512_bf16, amx"}; '
             f'torch {machine["torch"]}, onnxruntime {machine.get("onnxruntime", "-")}, '
             f'openvino {machine.get("openvino", "-")}, '
             f'{machine["torch_threads"]} threads, OMP_WAIT_POLICY {machine["omp_wait_policy"]}, '
             f'load average {machine["load_average_1_5_15"]} at start, {machine.get("load_average_end")} '
             f'at the end; command: `{results["command"]}`']
    if results.get('forward'):
        parts += ['## Forward (batch 1 unless stated)', markdown_table(results['forward'], {
            'network': 'network', 'resolution': 'WxH', 'precision': 'precision',
            'native_precision': 'native', 'mode': 'mode', 'p50_ms': 'median ms', 'p99_ms': 'p99 ms',
            'fps': 'frames/s', 'spread_pct': 'spread %', 'params': 'params', 'gmacs': 'GMACs',
            'weights_mib': 'weights MiB', 'peak_activation_mib': 'peak act. MiB', 'load_average': 'load'})]
        shares = [dict(network=r['network'], resolution=r['resolution'], **r['op_shares_pct'])
                  for r in results['forward'] if r.get('op_shares_pct')]
        if shares:
            groups = sorted({key for row in shares for key in row} - {'network', 'resolution'})
            parts += ['### Where eager fp32 spends its time (% of op self time)',
                      markdown_table(shares, {'network': 'network', 'resolution': 'WxH',
                                              **{g: g for g in groups}})]
        parts += ['### Fastest mode against plain eager fp32', markdown_table(results['speedup'], {
            'network': 'network', 'resolution': 'WxH', 'eager_fp32_ms': 'eager fp32 ms',
            'best_mode': 'fastest mode', 'best_precision': 'precision', 'best_ms': 'ms',
            'speedup': 'speed-up'})]
    if results.get('segment'):
        parts += ['## segment(): every backend x precision and the automatic choice', markdown_table(
            results['segment'], {'network': 'network', 'resolution': 'WxH', 'weights': 'weights', 'config': 'runs',
                                 'p50_ms': 'median ms', 'p99_ms': 'p99 ms', 'vs_eager': 'vs eager fp32',
                                 'agreement_pct': 'pixels as fp32 PyTorch %', 'startup_s': 'start-up s',
                                 'load_average': 'load'}),
                  '### The automatic choice against plain eager fp32', markdown_table(results['segment_speedup'], {
                      'network': 'network', 'resolution': 'WxH', 'choice': 'choice', 'eager_ms': 'eager fp32 ms',
                      'auto_ms': 'auto ms', 'speedup': 'speed-up', 'startup_s': 'start-up s'})]
        parts += [f'- {r["network"]} {r["resolution"]}: {r["choice"]}' for r in results['segment'] if r.get('choice')]
    if results.get('skipped'):
        parts += ['Skipped: ' + '; '.join(f'{s["network"]} {s["resolution"]} {s["precision"]} {s["mode"]} '
                                          f'({s["reason"]})' for s in results['skipped'])]
    if results.get('messages'):
        parts += ['## Around the network', markdown_table(results['messages'], {
            'resolution': 'WxH', 'step': 'step', 'p50_ms': 'median ms', 'p99_ms': 'p99 ms'})]
    if results.get('node'):
        parts += ['## segment_node end to end over DDS', markdown_table(results['node'], {
            'network': 'network', 'resolution': 'WxH', 'cameras': 'cameras', 'rate_hz': 'rate Hz',
            'latency_p50_ms': 'p50 ms', 'latency_p99_ms': 'p99 ms', 'output_rate_hz': 'out Hz/camera',
            'published': 'sent', 'dropped': 'dropped', 'node_cpu_cores': 'node CPU (cores)',
            'node_segment_p50_ms': 'node segment ms', 'forward_p50_ms': 'forward ms',
            'e2e_over_forward': 'e2e / forward', 'load_average': 'load'})]
    if results.get('overload'):
        parts += ['## Overload (twice the capacity)', markdown_table([results['overload']], {
            'network': 'network', 'resolution': 'WxH', 'rate_hz': 'rate Hz', 'seconds': 's',
            'latency_p50_ms': 'p50 ms', 'latency_p99_ms': 'p99 ms', 'p99_over_p50': 'p99 / p50',
            'forward_p50_ms': 'forward p50 ms', 'forward_p99_ms': 'forward p99 ms',
            'input_over_output_rate': 'input / output rate', 'published': 'sent', 'dropped': 'dropped',
            'node_dropped': 'node-counted drops',
            'rss_start_mib': 'RSS start MiB', 'rss_settled_min_mib': 'RSS min, settled',
            'rss_settled_max_mib': 'RSS max, settled', 'rss_end_mib': 'RSS end MiB',
            'rss_settled_slope_mib_per_min': 'RSS MiB/min, settled'})]
    if results.get('training'):
        parts += ['## Training throughput (data loading included)', markdown_table(results['training'], {
            'network': 'network', 'trainer': 'trainer', 'data': 'data', 'precision': 'precision',
            'channels_last': 'channels_last', 'batch': 'batch', 'crop': 'crop WxH', 'images_per_s': 'images/s',
            'speedup': 'speed-up', 'load_average': 'load'})]
    if results.get('ground'):
        parts += ['## Ground grid and scan, one camera (CPU)', markdown_table(results['ground'], {
            'resolution': 'WxH', 'step': 'step', 'cells': 'grid cells', 'p50_ms': 'median ms', 'p99_ms': 'p99 ms',
            'load_average': 'load'})]
    if results.get('targets'):
        parts += ['## Targets', markdown_table(results['targets'], {
            'target': 'target', 'measured': 'measured', 'required': 'required', 'unit': 'unit', 'met': 'met',
            'factor_missing': 'missed by (x)'})]
    return '\n\n'.join(parts) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the markdown report; 2 on a bad argument or a failed node run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.command = shlex.join(['seg-bench', *argv])
    try:
        results = run_benchmark(args)
    except (ValueError, RuntimeError, ImportError) as error:
        print(f'seg-bench: {error}', file=sys.stderr)
        return 2
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
