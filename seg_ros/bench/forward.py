"""seg-bench ``forward``: each network x resolution x precision x execution mode, batch-1 forward latency,
FLOPs, memory and where the time goes."""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seg_ros.bench.common import MIB, load_average, summarize_times
from seg_ros.inference.backends import (
    SERVES,
    Candidate,
    make_forward,
)
from seg_ros.inference.preparation import latencies_ms, prepare_model
from seg_ros.inference.segmenter import resolve_precision
from seg_ros.models import build_model, count_parameters
from seg_ros.vocabulary import format_size

__all__ = ['DEFAULT_MODES', 'DEFAULT_PRECISIONS', 'MODES', 'Mode', 'bench_forward', 'count_flops', 'model_dtype',
           'op_shares', 'peak_forward_memory_mib', 'speedups']


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
            load = load_average()
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
    summary = summarize_times(times)
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
