"""The inference fast path shared by the Segmenter, the bag tool and the benchmark.

- ``fold_batchnorm``: batch-norm layers folded into the convolutions before them.
- ``prepare_model``: a network in its inference form (folded, frozen, on its device, in its
  precision and memory format).
- ``StaticShapeForward``: ``torch.compile`` and/or a captured CUDA graph per input shape, for the
  few fixed shapes a segmenter sees (its input size, times the number of cameras batched), with an
  eager fallback for any other shape.
- ``latencies_ms``: the timer all of them and the benchmark use (CUDA-synchronised).

Folding needs to know which batch-norm reads which convolution's output (or feeds which
convolution), which the module tree alone does not say. One traced forward answers it: hooks record
each convolution's and batch-norm's output tensor and the modules that read it. A batch-norm that
is the only reader of a convolution's output is folded into that convolution; one whose only
reader is an unpadded convolution (SegFast's pre-activation 1x1 convolutions) is folded into it.
The folded network is checked against the original on the traced input; a mismatch keeps the
original, so a network with an unusual wiring is never silently broken.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ['DTYPES', 'MAX_CHANGED_SHARE', 'Forward', 'StaticShapeForward', 'fold_batchnorm', 'latencies_ms',
           'prepare_model']

log = logging.getLogger(__name__)

_FOLDABLE = (nn.Conv2d, nn.ConvTranspose2d)

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
# Share of a network's outputs that may move beyond the tolerance after folding or export (a
# near-tie of a max-pool can flip; see fold_batchnorm) before the result counts as a different network.
MAX_CHANGED_SHARE = 1e-3
Forward = Callable[[torch.Tensor], torch.Tensor]


def _trace_readers(model: nn.Module, example: torch.Tensor) -> dict[str, list[str]]:
    """For each convolution and batch-norm, the leaf modules that read its output (one forward)."""
    produced: dict[int, str] = {}
    readers: dict[str, list[str]] = {}
    keep_alive: list[torch.Tensor] = []  # no id() reused while tracing
    hooks = []

    def on_output(name: str):
        def hook(_module, _inputs, output):
            produced[id(output)] = name
            keep_alive.append(output)
        return hook

    def on_input(name: str):
        def hook(_module, inputs):
            for tensor in inputs:
                if isinstance(tensor, torch.Tensor) and id(tensor) in produced:
                    readers.setdefault(produced[id(tensor)], []).append(name)
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (*_FOLDABLE, nn.BatchNorm2d)):
            hooks.append(module.register_forward_hook(on_output(name)))
        if not list(module.children()):
            hooks.append(module.register_forward_pre_hook(on_input(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    return readers


def _fold_pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(conv, batch-norm) pairs where the batch-norm is the sole reader of the conv's output, and
    (batch-norm, conv) pairs of a batch-norm whose sole reader is a convolution it folds into exactly."""
    modules = dict(model.named_modules())
    sole = {name: users[0] for name, users in _trace_readers(model, example).items() if len(users) == 1}
    after = [(conv, bn) for conv, bn in sole.items()
             if isinstance(modules[conv], _FOLDABLE) and isinstance(modules[bn], nn.BatchNorm2d)]
    taken = {bn for _, bn in after}
    before = [(bn, conv) for bn, conv in sole.items() if isinstance(modules[bn], nn.BatchNorm2d)
              and bn not in taken and _takes_input_norm(modules[conv])]
    return after, before


def _takes_input_norm(module: nn.Module) -> bool:
    """Whether a batch-norm before ``module`` folds into it exactly: a convolution without padding.

    Padding would be applied to the normalised input in the original and to the raw input in the
    folded one; a transposed convolution's bias cannot carry a shift that varies with position.
    """
    return type(module) is nn.Conv2d and all(p == 0 for p in module.padding)


def _norm_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias.detach() - bn.running_mean * scale


def _fold(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    """conv followed by bn -> conv: scale each output channel, shift its bias."""
    scale, shift = _norm_scale_shift(bn)
    weight = conv.weight.detach()
    if isinstance(conv, nn.ConvTranspose2d):
        # weight is (in, out / groups, kh, kw): output channel o = g * (out / groups) + j.
        groups = conv.groups
        w = weight.view(groups, weight.shape[0] // groups, weight.shape[1], *weight.shape[2:])
        w = w * scale.view(groups, 1, -1, 1, 1)
        conv.weight.data = w.reshape_as(weight)
    else:
        conv.weight.data = weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift)
    conv.bias = nn.Parameter(bias * scale + shift)


def _fold_input_norm(bn: nn.BatchNorm2d, conv: nn.Conv2d) -> None:
    """bn followed by conv -> conv: scale each input channel's weights, add their shift to the bias."""
    scale, shift = _norm_scale_shift(bn)
    weight = conv.weight.detach()
    groups = conv.groups
    # weight is (out, in / groups, kh, kw): group g of outputs reads input channels g * (in / groups) + j.
    w = weight.view(groups, weight.shape[0] // groups, weight.shape[1], -1)
    shift_by_output = (w * shift.view(groups, 1, -1, 1)).sum(dim=(2, 3)).reshape(-1)
    conv.weight.data = (w * scale.view(groups, 1, -1, 1)).reshape_as(weight)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(shift_by_output)
    conv.bias = nn.Parameter(bias + shift_by_output)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition('.')
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def fold_batchnorm(model: nn.Module, example: torch.Tensor, atol: float = 1e-4) -> nn.Module:
    """A copy of ``model`` (in eval mode) with batch-norms folded into the convolutions before them
    or, where exact (no padding), after them."""
    model = model.eval()
    folded = copy.deepcopy(model)
    after, before = _fold_pairs(folded, example)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in after:
        _fold(modules[conv_name], modules[bn_name])
    for bn_name, conv_name in before:
        _fold_input_norm(modules[bn_name], modules[conv_name])
    for bn_name in [bn for _, bn in after] + [bn for bn, _ in before]:
        _replace(folded, bn_name, nn.Identity())
    with torch.no_grad():
        reference, result = model(example), folded(example)
    # Folding is exact arithmetic, but rounding differences can still flip a near-tie in a max-pool
    # and move an unpooled value (ENet at 1280x720, random weights: 0.7% off at a few outputs). A
    # wrong wiring changes most outputs; a share beyond MAX_CHANGED_SHARE rejects the folding.
    changed = ((reference - result).abs() > atol * max(reference.abs().max().item(), 1.0)).float().mean().item()
    if changed > MAX_CHANGED_SHARE:
        log.warning('batch-norm folding changed %.3g%% of the outputs; keeping the unfolded network',
                    100 * changed)
        return model
    log.debug('folded %d batch-norm layers (%.2g%% of the outputs changed)', len(after) + len(before),
              100 * changed)
    return folded


def prepare_model(model: nn.Module, *, device: torch.device | str = 'cpu', precision: str = 'fp32',
                  channels_last: bool = False, fold_bn: bool = True,
                  example_size: tuple[int, int] = (64, 96)) -> nn.Module:
    """A copy of ``model`` in its inference form: eval mode, batch-norm folded (checked on an input
    of ``example_size``), frozen, on ``device``, with weights in ``precision`` and ``channels_last``.

    The weights are cast once instead of autocasting every forward: the forward then has no cast
    kernels, which counts where it takes a millisecond or two and a CUDA graph replays every kernel.
    """
    if precision not in DTYPES:
        raise ValueError(f'precision {precision!r} is not one of {", ".join(DTYPES)}')
    original = model
    if fold_bn:
        model = fold_batchnorm(model, example=torch.rand(1, 3, *example_size))
    if model is original:  # not folded: the steps below must not change the caller's network
        model = copy.deepcopy(model).eval()
    model = model.to(device=device, dtype=DTYPES[precision])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def latencies_ms(forward: Forward, inputs: Sequence[torch.Tensor], *, iterations: int,
                 warmup: int = 2) -> np.ndarray:
    """Wall time in ms of each of ``iterations`` calls of ``forward``, rotating through ``inputs``.

    ``warmup`` calls come first (allocator, kernel selection, compilation). On CUDA the device is
    synchronised before and after each call, so a time is the latency of a result, not of a launch.
    """
    if iterations < 1 or not inputs:
        raise ValueError(f'need at least one input and one iteration, got {len(inputs)} and {iterations}')
    device = inputs[0].device
    synchronize = torch.cuda.synchronize if device.type == 'cuda' else (lambda _device: None)
    for index in range(warmup):
        forward(inputs[index % len(inputs)])
    times = np.empty(iterations)
    for index in range(iterations):
        x = inputs[index % len(inputs)]
        synchronize(device)
        start = time.perf_counter()
        forward(x)
        synchronize(device)
        times[index] = (time.perf_counter() - start) * 1e3
    return times


class _CapturedGraph:
    """One CUDA graph of ``forward`` at the shape of ``example``, replayed on static buffers."""

    def __init__(self, forward: Forward, example: torch.Tensor, warmup: int = 3) -> None:
        self.static_input = example.clone()  # same shape, dtype and memory format
        # Warm-up on a side stream, as capture requires: cuDNN picks its kernels, the allocator fills.
        side = torch.cuda.Stream(example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                forward(self.static_input)
        torch.cuda.current_stream(example.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = forward(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.static_input.copy_(x)
        self.graph.replay()
        # The next replay overwrites the static output; the caller gets its own copy.
        return self.static_output.clone()


class StaticShapeForward:
    """A network's forward specialised to the shapes it is called with.

    The first ``max_shapes`` distinct input shapes each get a ``torch.compile`` specialisation
    (``compile``) and/or a captured CUDA graph (``cuda_graph``, CUDA only); any later shape runs
    the eager network, so a change of shape costs speed, never a failure. A capture that fails
    or a compilation that fails leaves that shape eager, with a warning.
    """

    def __init__(self, model: nn.Module, *, compile: bool = False, cuda_graph: bool = False,
                 max_shapes: int = 4) -> None:
        if not (compile or cuda_graph):
            raise ValueError('StaticShapeForward needs compile and/or cuda_graph')
        if cuda_graph and next(model.parameters()).device.type != 'cuda':
            raise ValueError('CUDA graphs need a network on a CUDA device')
        self.model = model
        self.max_shapes = max_shapes
        # Freezing: the weights become constants of the compiled graph (inference only), which lets
        # inductor pre-pack them for its convolution kernels.
        self._compiled: Forward = (torch.compile(model, dynamic=False, options={'freezing': True})
                                   if compile else model)
        self._cuda_graph = cuda_graph
        self._runners: dict[tuple, Forward] = {}

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The input shapes that have a specialised runner."""
        return [key[0] for key in self._runners]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, x.stride())
        runner = self._runners.get(key)
        if runner is None:
            if len(self._runners) >= self.max_shapes:
                return self.model(x)
            runner = self._runners[key] = self._specialise(x)
        return runner(x)

    def _specialise(self, example: torch.Tensor) -> Forward:
        # Compiling (and capturing) now, on the example, turns a failure (no C++ compiler, an
        # operation a CUDA graph cannot hold) into an eager fallback rather than a failed frame.
        try:
            if self._cuda_graph:
                return _CapturedGraph(self._compiled, example)
            self._compiled(example)
            return self._compiled
        except RuntimeError as error:
            log.warning('%s failed at input %s (%s); that shape runs eagerly',
                        'CUDA graph capture' if self._cuda_graph else 'torch.compile', tuple(example.shape),
                        str(error).splitlines()[0] if str(error) else type(error).__name__)
            return self.model
