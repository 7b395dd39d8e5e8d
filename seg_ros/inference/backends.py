"""Inference backends and the measured choice among them (``backend: auto``, ``precision: auto``).

A *candidate* is a backend at a precision. On a CPU: PyTorch at fp32 (the reference) and bf16,
ONNX Runtime at fp32, OpenVINO at fp32 and bf16, bf16 only where the CPU has bf16 instructions
(AVX512-BF16 or AMX; elsewhere it is emulated and slower, docs/BENCHMARKS.md). On CUDA: PyTorch
at fp32, fp16 and bf16. ``backend`` and ``precision`` each name one or say ``auto``; the
candidates are those both allow.

With more than one candidate, ``choose_forward`` runs each on a few sample frames at the input
size the caller will use and keeps the fastest whose masks agree with fp32 PyTorch on at least
``MIN_AGREEMENT`` of the pixels (reduced precision can flip near-ties of the top classes). A
reduced precision is kept only when it beats the fastest fp32 candidate by more than
``AUTO_MARGIN``, so that timing noise does not trade exactness for nothing. The candidates take
turns call by call, so that a change of the machine's load falls on all of them. The start-up
cost is bounded: a candidate whose call takes ``SLOWER_CUTOFF`` times the best agreeing call of
its round (``FIRST_CALL_CUTOFF`` in the first) runs no further, and once ``budget_s`` is spent
no candidate is built and no round started beyond the first timed one (what was left out is
logged). The decision is cached per CPU (or GPU) model, threads, network and weights, input
size, request and library versions (``ChoiceCache``, under the user's cache directory), so a
restart does not repeat it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg_ros import __version__
from seg_ros.inference.preparation import DTYPES, Forward, StaticShapeForward, prepare_model
from seg_ros.vocabulary import PRECISION_CHOICES

__all__ = ['AUTO_MARGIN', 'BACKENDS', 'MIN_AGREEMENT', 'REFERENCE', 'Candidate', 'Choice',
           'ChoiceCache', 'candidates', 'choose_forward', 'cpu_name', 'cpu_supports_bf16', 'default_cache_dir',
           'library_versions', 'make_forward', 'weights_digest']

log = logging.getLogger(__name__)

BACKENDS = ('auto', 'torch', 'onnxruntime', 'openvino')
# The precisions each backend serves, and where.
SERVES = {'torch': ('fp32', 'fp16', 'bf16'), 'onnxruntime': ('fp32',), 'openvino': ('fp32', 'bf16')}
CPU_ONLY = ('onnxruntime', 'openvino')
# Share of pixels whose class must match fp32 PyTorch's for a candidate to be kept.
MIN_AGREEMENT = 0.995
# A reduced precision must take less than this share of the fastest fp32 candidate's time.
AUTO_MARGIN = 0.9
# A candidate whose timed call takes this many times the best of its round runs no further; after
# the first call (which compiles, allocates and selects kernels), this many.
SLOWER_CUTOFF = 2.0
FIRST_CALL_CUTOFF = 3.0
DEFAULT_BUDGET_S = 15.0
# Calls per candidate, cycling through the sample frames: warm-up calls first (OpenVINO's second
# call at a new shape was still 20 % slower than the later ones, ENet 1280x720), then the timed
# ones, whose median counts (a shared CPU's load changes from one call to the next).
WARMUP_CALLS = 2
TIMED_CALLS = 3


@dataclass(frozen=True)
class Candidate:
    """A backend at a precision."""

    backend: str
    precision: str

    def __str__(self) -> str:
        return f'{self.backend} {self.precision}'


REFERENCE = Candidate('torch', 'fp32')


def cpu_supports_bf16() -> bool:
    """Native bf16 arithmetic (AVX512-BF16 or AMX). oneDNN also runs bf16 on plain AVX-512, by
    emulation, measured 2x slower than fp32 there (docs/BENCHMARKS.md)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform says."""
    with contextlib.suppress(OSError):
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or 'unknown'


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries a choice depends on (None: not installed), without importing them."""
    versions: dict[str, str | None] = {'seg_ros': __version__, 'torch': torch.__version__}
    for package in ('onnxruntime', 'openvino'):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _installed(backend: str) -> bool:
    return backend == 'torch' or library_versions()[backend] is not None


def candidates(device: torch.device, backend: str = 'auto', precision: str = 'auto') -> list[Candidate]:
    """The candidates ``backend`` and ``precision`` allow on ``device``, in the order of preference.

    An explicit precision is taken as asked (``inference.resolve_precision`` maps one a CPU lacks);
    ``auto`` adds bf16 only where it is native. ``auto`` backends leave out a library that is not
    installed; an explicit one that is not installed fails when it is built, naming the extra.
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend {backend!r} is not one of {", ".join(BACKENDS)}')
    if precision not in PRECISION_CHOICES:
        raise ValueError(f'precision {precision!r} is not one of {", ".join(PRECISION_CHOICES)}')
    if device.type == 'cuda':
        if backend in CPU_ONLY:
            raise ValueError(f'the {backend} backend runs on a CPU, not {device}; use backend "torch" or "auto"')
        bf16 = ('bf16',) if torch.cuda.is_bf16_supported() else ()
        precisions = ('fp32', 'fp16', *bf16) if precision == 'auto' else (precision,)
        return [Candidate('torch', p) for p in precisions]
    native = ('fp32', 'bf16') if cpu_supports_bf16() else ('fp32',)
    precisions = native if precision == 'auto' else (precision,)
    backends = [b for b in SERVES if _installed(b)] if backend == 'auto' else [backend]
    found = [Candidate(b, p) for p in precisions for b in backends if p in SERVES[b]]
    if not found:
        raise ValueError(f'the {backend} backend runs {" or ".join(SERVES[backend])}, not {precision}; '
                         'use backend "torch" (or "auto")')
    return found


def make_forward(candidate: Candidate, model: nn.Module, *, channels_last: bool = True, compile: bool = False,
                 cuda_graph: bool = False, onnx: Callable[[], bytes] | None = None) -> Forward:
    """The forward of ``candidate``: takes a float32 normalised batch (N, 3, H, W) on the model's
    device in any memory format and returns float32 logits (N, C, H, W), contiguous.

    ``model`` is the float32 inference form of the network (``prepare_model``); PyTorch at another
    precision runs a cast copy. ``onnx`` returns the exported graph (ONNX Runtime and OpenVINO
    share one export); default: export ``model``. ``compile`` and ``cuda_graph`` apply to PyTorch.
    """
    if candidate.precision not in SERVES[candidate.backend]:
        raise ValueError(f'the {candidate.backend} backend does not run {candidate.precision}')
    device = next(model.parameters()).device
    if candidate.backend != 'torch':
        if device.type != 'cpu':
            raise ValueError(f'the {candidate.backend} backend runs on a CPU, not {device}')
        from seg_ros.inference.onnx import OnnxRuntimeForward, OpenVinoForward, export_onnx  # optional dependencies

        graph = onnx() if onnx else export_onnx(model)
        if candidate.backend == 'onnxruntime':
            return OnnxRuntimeForward(graph)
        return OpenVinoForward(graph, precision=candidate.precision)
    if candidate.precision != 'fp32':
        model = prepare_model(model, device=device, precision=candidate.precision, channels_last=channels_last,
                              fold_bn=False)
    return _TorchForward(model, DTYPES[candidate.precision], channels_last=channels_last, compile=compile,
                         cuda_graph=cuda_graph)


class _TorchForward:
    """A PyTorch network fed in its own precision and memory format."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, *, channels_last: bool, compile: bool,
                 cuda_graph: bool) -> None:
        self.model = model
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.run: Forward = (StaticShapeForward(model, compile=compile, cuda_graph=cuda_graph)
                             if compile or cuda_graph else model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.run(x.to(dtype=self.dtype, memory_format=self.memory_format))
        # Float32 NCHW, as the other runtimes give it, in one copy: the post-processing's soft-max
        # over the classes is fastest there (1280x720, 11 classes: 109 ms on NCHW, 178 ms on
        # NHWC), and a choice that times this forward then times what a frame costs.
        return logits.to(dtype=torch.float32, memory_format=torch.contiguous_format)


# -- the cache of decisions ---------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/seg_ros``, or ``~/.cache/seg_ros``."""
    return Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'seg_ros'


def weights_digest(model: nn.Module) -> str:
    """A short digest of a network's weights and buffers (another checkpoint: another choice)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().float().numpy().tobytes())  # C order, whatever the strides
    return digest.hexdigest()[:16]


class ChoiceCache:
    """Decisions of ``choose_forward`` in one JSON file, one record per key.

    A file that cannot be read (corrupt, from another version) counts as empty and one that cannot
    be written (read-only home) is reported and skipped: the cache saves time, never a start.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_dir() / 'backend_choices.json'

    @staticmethod
    def _digest(key: Mapping[str, Any]) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]

    def _records(self) -> dict[str, Any]:
        try:
            records = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning('backend choice cache %s unreadable (%s); measuring again', self.path, error)
            return {}
        return records if isinstance(records, dict) else {}

    def get(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        record = self._records().get(self._digest(key))
        return record if isinstance(record, dict) and record.get('key') == dict(key) else None

    def put(self, key: Mapping[str, Any], record: dict[str, Any]) -> None:
        records = self._records()
        records[self._digest(key)] = {'key': dict(key), **record}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f'.{os.getpid()}.tmp')
            partial.write_text(json.dumps(records, indent=1, sort_keys=True))
            partial.replace(self.path)  # atomic: a concurrent reader sees the old or the new file
        except OSError as error:
            log.warning('backend choice not cached in %s: %s', self.path, error)


# -- the choice -------------------------------------------------------------------------------

@dataclass
class Choice:
    """The forward kept, and how it was chosen."""

    candidate: Candidate
    forward: Forward
    timings_ms: dict[str, float] = field(default_factory=dict)
    """Median forward ms of each candidate timed (from the cache when ``cached``)."""
    agreement: dict[str, float] = field(default_factory=dict)
    """Share of sample pixels whose class matches fp32 PyTorch's, per candidate timed."""
    left_out: dict[str, str] = field(default_factory=dict)
    """Candidates not timed, with the reason."""
    seconds: float = 0.0
    """Start-up time of this choice (building and timing, or reading the cache)."""
    how: str = 'asked'
    """``asked`` (one candidate), ``measured`` or ``cached``."""

    def summary(self) -> str:
        """One line for the log and diagnostics."""
        if self.how == 'asked':
            return f'{self.candidate} (as configured)'
        timed = ', '.join(f'{name} {ms:.1f} ms ({100 * self.agreement.get(name, float("nan")):.2f} % agree)'
                          for name, ms in sorted(self.timings_ms.items(), key=lambda item: item[1]))
        left_out = ''.join(f'; {name} left out: {why}' for name, why in self.left_out.items())
        return f'{self.candidate} ({self.how} in {self.seconds:.1f} s: {timed}{left_out})'

    def record(self) -> dict[str, Any]:
        return {'backend': self.candidate.backend, 'precision': self.candidate.precision,
                'timings_ms': self.timings_ms, 'agreement': self.agreement, 'left_out': self.left_out,
                'measured_in_s': round(self.seconds, 2),
                'measured_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}


def _classes(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().argmax(dim=1)


def _timed(forward: Forward, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    synchronize = torch.cuda.synchronize if x.device.type == 'cuda' else (lambda: None)
    synchronize()
    start = time.perf_counter()
    classes = _classes(forward(x))
    synchronize()
    return classes, (time.perf_counter() - start) * 1e3


def choose_forward(options: Sequence[Candidate], build: Callable[[Candidate], Forward],
                   frames: Sequence[torch.Tensor], *, cache: ChoiceCache | None = None,
                   key: Mapping[str, Any] | None = None, budget_s: float = DEFAULT_BUDGET_S) -> Choice:
    """The forward to keep among ``options`` (from ``candidates``), built with ``build``.

    ``frames`` are normalised sample batches at the input size (at least two), run in turn: the
    first ``WARMUP_CALLS`` calls warm a candidate up, ``TIMED_CALLS`` more are timed; the masks of
    every candidate are compared with those of fp32 PyTorch on all of them. With ``cache`` and
    ``key`` a decision is read and stored.
    """
    start = time.perf_counter()
    if len(options) == 1:
        return Choice(options[0], build(options[0]), seconds=time.perf_counter() - start)
    if len(frames) < 2:
        raise ValueError(f'choosing a backend needs at least 2 sample frames, got {len(frames)}')
    record = cache.get(key) if cache is not None and key is not None else None
    cached = Candidate(record['backend'], record['precision']) if record else None
    if cached in options:
        return Choice(cached, build(cached), timings_ms=record.get('timings_ms', {}),
                      agreement=record.get('agreement', {}), left_out=record.get('left_out', {}),
                      seconds=time.perf_counter() - start, how='cached')
    choice = _measure(options, build, frames, budget_s, start)
    log.info('backend choice at input %s: %s', tuple(frames[0].shape), choice.summary())
    if cache is not None and key is not None:
        cache.put(key, choice.record())
    return choice


def _measure(options: Sequence[Candidate], build: Callable[[Candidate], Forward], frames: Sequence[torch.Tensor],
             budget_s: float, start: float) -> Choice:
    choice = Choice(REFERENCE, build(REFERENCE), how='measured')
    forwards = {REFERENCE: choice.forward}
    # The likeliest fastest first (reduced precision), so that a spent budget leaves out the slowest.
    for candidate in reversed([c for c in options if c != REFERENCE]):
        if time.perf_counter() - start > budget_s:
            choice.left_out[str(candidate)] = f'start-up budget of {budget_s:g} s spent'
            continue
        try:
            forwards[candidate] = build(candidate)
        except (RuntimeError, ValueError, ImportError) as error:  # a runtime that cannot run this network
            choice.left_out[str(candidate)] = f'failed: {(str(error) or repr(error)).splitlines()[0]}'
    timings, agreement = _time_round_robin(forwards, frames, budget_s, start, choice.left_out)
    for candidate in forwards:
        if candidate in options and timings[candidate]:
            choice.timings_ms[str(candidate)] = float(np.median(timings[candidate]))
            choice.agreement[str(candidate)] = agreement[candidate]
    agreeing = [c for c in options if choice.agreement.get(str(c), 0.0) >= MIN_AGREEMENT]
    if not agreeing:  # the reference always agrees with itself; only a request without it ends here
        raise RuntimeError(f'no backend agreed with fp32 PyTorch on {MIN_AGREEMENT:.1%} of the pixels: '
                           f'{choice.agreement or choice.left_out}')
    choice.candidate = _fastest(agreeing, choice.timings_ms)
    choice.forward = forwards[choice.candidate]
    choice.seconds = time.perf_counter() - start
    return choice


def _fastest(agreeing: Sequence[Candidate], timings_ms: Mapping[str, float]) -> Candidate:
    """The fastest candidate; reduced precision only when it beats the fastest fp32 one by more
    than ``AUTO_MARGIN`` (timing noise must not trade exactness for nothing)."""
    def fastest(group: list[Candidate]) -> Candidate | None:
        return min(group, key=lambda c: timings_ms[str(c)], default=None)

    exact = fastest([c for c in agreeing if c.precision == 'fp32'])
    reduced = fastest([c for c in agreeing if c.precision != 'fp32'])
    if exact is None or (reduced is not None and timings_ms[str(reduced)] < AUTO_MARGIN * timings_ms[str(exact)]):
        return reduced
    return exact


def _time_round_robin(forwards: dict[Candidate, Forward], frames: Sequence[torch.Tensor], budget_s: float,
                      start: float, left_out: dict[str, str]) -> tuple[dict[Candidate, list[float]],
                                                                      dict[Candidate, float]]:
    """Each forward on the frames in turn (``WARMUP_CALLS`` + ``TIMED_CALLS`` calls at least,
    cycling), the candidates taking turns call by call (a change of the machine's load falls on all
    of them): the timed calls and the share of pixels whose class matches the reference's. A
    candidate whose call takes ``SLOWER_CUTOFF`` times the best agreeing call of its round
    (``FIRST_CALL_CUTOFF`` times in the first round) runs no further; once ``budget_s`` is spent, no round is started
    after the first timed one."""
    timings: dict[Candidate, list[float]] = {candidate: [] for candidate in forwards}
    same = dict.fromkeys(forwards, 0)
    total = dict.fromkeys(forwards, 0)
    running = list(forwards)  # the reference first: its classes are what the others are compared with
    with torch.inference_mode():
        for index in range(WARMUP_CALLS + max(TIMED_CALLS, len(frames) - WARMUP_CALLS)):
            if index > WARMUP_CALLS and time.perf_counter() - start > budget_s:
                break
            x = frames[index % len(frames)]
            frame_ms: dict[Candidate, float] = {}
            for candidate in running:
                if candidate == REFERENCE:  # its failure is the network's: raised
                    reference, frame_ms[candidate] = _timed(forwards[candidate], x)
                    classes = reference
                else:
                    try:
                        classes, frame_ms[candidate] = _timed(forwards[candidate], x)
                    except RuntimeError as error:  # fails on this input: out, with the reason
                        left_out[str(candidate)] = f'failed: {(str(error) or repr(error)).splitlines()[0]}'
                        timings[candidate].clear()
                        continue
                same[candidate] += int((classes == reference).sum())
                total[candidate] += classes.numel()
            running = [c for c in running if c in frame_ms]
            # Measured against the best that agrees so far: a fast candidate that changes the masks
            # must not push out the ones that could be chosen.
            best = min(frame_ms[c] for c in running if same[c] >= MIN_AGREEMENT * total[c])
            if index == 0:  # a first call is slow for all, but one far behind the best will not catch up
                running = [c for c in running if c == REFERENCE or frame_ms[c] <= FIRST_CALL_CUTOFF * best]
            if index < WARMUP_CALLS:
                continue
            for candidate in running:
                timings[candidate].append(frame_ms[candidate])
            running = [c for c in running if c == REFERENCE or frame_ms[c] <= SLOWER_CUTOFF * best]
    return timings, {c: same[c] / total[c] for c in forwards if total[c]}
