"""``seg-export``: networks to ONNX with dynamic batch, height and width, checked against PyTorch.

The exported graph is the inference form of the network (batch-norm folded, see
``seg_ros.fastpath``), input ``image`` (N, 3, H, W) float32 normalised RGB, output ``logits``
(N, C, H, W). Any H and W work: the padding to the network's size divisor and the crop back are
computed from the input shape inside the graph (``SegmentationNet.forward``), and ENet's
max-unpooling is a scatter (``ScatterElements``), not ``MaxUnpool``. Every export is run with ONNX
Runtime at several sizes, one of them odd (203x101 by default), and compared with PyTorch.

The graph is written by the TorchScript-based exporter (``dynamo=False``): the torch.export-based
one needs ``onnxscript``, which the project does not depend on.

``OnnxRuntimeForward`` and ``OpenVinoForward`` are the ``onnxruntime`` and ``openvino`` backends
of the ``Segmenter`` (CPU deployments); both run the same exported graph.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import Checkpoint, CheckpointError, load_checkpoint
from .fastpath import MAX_CHANGED_SHARE, prepare_model
from .labels import CAMVID11
from .models import build_model, list_models

__all__ = ['ExportCheck', 'OnnxRuntimeForward', 'OpenVinoForward', 'export_onnx', 'format_resolution', 'main',
           'parse_resolution', 'verify_onnx']

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = 'image', 'logits'
DEFAULT_CHECK_SIZES = ((360, 480), (101, 203))  # (height, width): one even, one odd
# Relative to the largest logit: float32 reorderings of the same sums stay far below it.
DEFAULT_TOLERANCE = 1e-4


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError('onnxruntime is not installed; install the onnx extra '
                          '(pip install "seg_ros[onnx]")') from None
    return onnxruntime


def _import_openvino():
    try:
        import openvino
    except ImportError:
        raise ImportError('openvino is not installed; install the openvino extra '
                          '(pip install "seg_ros[openvino]")') from None
    return openvino


@functools.cache
def _openvino_core(ov):
    """One OpenVINO runtime per process, as its documentation advises: each ``Core`` loads the CPU
    plugin and its thread pools again."""
    return ov.Core()


def parse_resolution(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` as cameras and the papers write it (``640x360``), as (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f'resolution {text!r} is not WIDTHxHEIGHT, for example 640x360') from None
    if height < 1 or width < 1:
        raise ValueError(f'resolution {text!r} must be positive')
    return height, width


def format_resolution(size: Sequence[int]) -> str:
    """(height, width) as ``WIDTHxHEIGHT``."""
    return f'{size[1]}x{size[0]}'


def export_onnx(model: nn.Module, *, example_size: tuple[int, int] = (64, 96),
                opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None) -> bytes:
    """The ONNX model (serialised) of a CPU float32 ``model`` in eval mode; batch, height and width dynamic.

    ``example_size`` is the size the graph is traced at; the graph serves every size.
    ``metadata`` becomes the model's ``metadata_props``.
    """
    import onnx

    parameter = next(model.parameters())
    if parameter.device.type != 'cpu' or parameter.dtype != torch.float32 or model.training:
        raise ValueError(f'export_onnx needs a float32 CPU model in eval mode, got {parameter.dtype} on '
                         f'{parameter.device}{" in training mode" if model.training else ""}')
    example = torch.rand(1, 3, *example_size)
    dynamic = {0: 'batch', 2: 'height', 3: 'width'}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Expected and harmless: the shape checks in forward become constants (TracerWarning), the
        # exporter is the TorchScript one (DeprecationWarning), the crop slices are not folded.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.filterwarnings('ignore', message='Constant folding', category=UserWarning)
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic})
    proto = onnx.load_from_string(buffer.getvalue())
    if metadata:
        onnx.helper.set_model_props(proto, metadata)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


class OnnxRuntimeForward:
    """A network's forward through ONNX Runtime's CPU execution provider.

    Called like the network with a float32 CPU tensor (N, 3, H, W) of any size, it returns the
    logits as a tensor that shares ONNX Runtime's output buffer (no copy either way).

    Args:
        model: a float32 CPU network in eval mode (``prepare_model``), or serialised ONNX bytes.
        example_size: size the graph is traced at (any size works afterwards).
        threads: ONNX Runtime's intra-op threads; default the number PyTorch uses, so that both
            backends compete on equal terms.
        spinning: let idle worker threads spin instead of sleeping. Off by default: on a CPU shared
            with other processes (a robot's other nodes, DDS) spinning threads take the cores the
            work needs (docs/BENCHMARKS.md has the measurement).
    """

    def __init__(self, model: nn.Module | bytes, *, example_size: tuple[int, int] = (64, 96),
                 threads: int | None = None, spinning: bool = False) -> None:
        ort = _import_onnxruntime()
        if isinstance(model, nn.Module):
            model = export_onnx(model, example_size=example_size)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry('session.intra_op.allow_spinning', '1' if spinning else '0')
        self.session = ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != 'cpu' or x.dtype != torch.float32:
            raise ValueError(f'the onnxruntime backend takes float32 CPU tensors, got {x.dtype} '
                             f'on {x.device}')
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.contiguous().numpy()})
        return torch.from_numpy(logits)


# Our precision names -> OpenVINO's inference precision hint.
_OPENVINO_PRECISIONS = {'fp32': 'f32', 'bf16': 'bf16'}


class OpenVinoForward:
    """A network's forward through OpenVINO's CPU plugin, from the exported ONNX graph.

    Called like the network with a float32 CPU tensor (N, 3, H, W) of any size, it returns float32
    logits. The graph is compiled once with dynamic batch, height and width (measured no slower
    than one compiled per static shape, ENet and ERFNet at 640x360).

    Args:
        model: a float32 CPU network in eval mode (``prepare_model``), or serialised ONNX bytes.
        precision: ``fp32`` or ``bf16`` (OpenVINO's inference precision: weights and activations in
            bf16, accumulation in fp32; fast only where the CPU has bf16 instructions).
        example_size: size the graph is traced at (any size works afterwards).
        threads: inference threads; default the number PyTorch uses. Threads are not pinned to cores:
            on a CPU shared with other processes a pinned thread waits for its own core.
    """

    def __init__(self, model: nn.Module | bytes, *, precision: str = 'fp32',
                 example_size: tuple[int, int] = (64, 96), threads: int | None = None) -> None:
        if precision not in _OPENVINO_PRECISIONS:
            raise ValueError(f'the openvino backend runs {" or ".join(_OPENVINO_PRECISIONS)}, not {precision!r}')
        ov = _import_openvino()
        if isinstance(model, nn.Module):
            model = export_onnx(model, example_size=example_size)
        config = {'INFERENCE_PRECISION_HINT': _OPENVINO_PRECISIONS[precision], 'PERFORMANCE_HINT': 'LATENCY',
                  'NUM_STREAMS': 1, 'INFERENCE_NUM_THREADS': threads or torch.get_num_threads(),
                  'ENABLE_CPU_PINNING': False}
        core = _openvino_core(ov)
        self.precision = precision
        self._request = core.compile_model(core.read_model(model=model), 'CPU', config).create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != 'cpu' or x.dtype != torch.float32:
            raise ValueError(f'the openvino backend takes float32 CPU tensors, got {x.dtype} on {x.device}')
        self._request.infer({INPUT_NAME: x.contiguous().numpy()}, share_inputs=True)
        # The request reuses its output buffer on the next call: the caller gets its own copy.
        return torch.from_numpy(self._request.get_output_tensor(0).data.copy())


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime against PyTorch on one random input.

    It passes when at most ``MAX_CHANGED_SHARE`` of the logits differ by more than the tolerance:
    the two runtimes round differently, which can flip a near-tie of a max-pool and move one
    unpooled value (ENet), while a wrong graph changes most logits.
    """

    size: tuple[int, int]
    max_abs_error: float
    max_abs_logit: float
    changed_share: float  # of the logits differing by more than the tolerance
    argmax_agreement: float  # share of pixels with the same class

    def passed(self) -> bool:
        return self.changed_share <= MAX_CHANGED_SHARE


def verify_onnx(onnx_model: bytes, model: nn.Module, sizes: Sequence[tuple[int, int]], *, batch: int = 1,
                seed: int = 0, tolerance: float = DEFAULT_TOLERANCE) -> list[ExportCheck]:
    """Run ``onnx_model`` (ONNX Runtime) and ``model`` (PyTorch) on the same random inputs of ``sizes``;
    ``tolerance`` is relative to the largest logit (at least 1)."""
    forward = OnnxRuntimeForward(onnx_model)
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for size in sizes:
        x = torch.randn(batch, 3, *size, generator=generator)
        with torch.inference_mode():
            expected = model(x)
        got = forward(x)
        if got.shape != expected.shape:
            raise ValueError(f'ONNX output shape {tuple(got.shape)} differs from PyTorch '
                             f'{tuple(expected.shape)} at input {size[0]}x{size[1]}')
        error = (got - expected).abs()
        max_abs_logit = float(expected.abs().max())
        checks.append(ExportCheck(
            size=tuple(size),
            max_abs_error=float(error.max()),
            max_abs_logit=max_abs_logit,
            changed_share=float((error > tolerance * max(max_abs_logit, 1.0)).float().mean()),
            argmax_agreement=float((got.argmax(1) == expected.argmax(1)).float().mean()),
        ))
    return checks


def _sources(args: argparse.Namespace) -> list[tuple[str, Checkpoint]]:
    """(output stem, checkpoint) for each network to export."""
    if args.checkpoint:
        return [(Path(path).stem, load_checkpoint(path)) for path in args.checkpoint]
    names = list_models() if args.all else args.model
    torch.manual_seed(args.seed)
    return [(name, Checkpoint.from_model(build_model(name, num_classes=CAMVID11.num_classes), name, CAMVID11,
                                         input_size=args.size or DEFAULT_CHECK_SIZES[0]))
            for name in names]


def _metadata(checkpoint: Checkpoint, weights: str) -> dict[str, str]:
    return {
        'model': checkpoint.model_name,
        'weights': weights,
        'labels': json.dumps({'name': checkpoint.labels.name, 'names': list(checkpoint.labels.names),
                              'colors': [list(c) for c in checkpoint.labels.colors]}),
        'input_size': json.dumps(list(checkpoint.input_size)),
        'mean': json.dumps(list(checkpoint.mean)),
        'std': json.dumps(list(checkpoint.std)),
    }


def _resolution_arg(text: str) -> tuple[int, int]:
    try:
        return parse_resolution(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='seg-export', description=__doc__.split('\n\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', nargs='+', metavar='PATH', help='checkpoint(s) to export')
    source.add_argument('--model', nargs='+', choices=list_models(), metavar='NAME',
                        help='network(s) with random weights, to check exportability: '
                             f'{", ".join(list_models())}')
    source.add_argument('--all', action='store_true', help='every registered network, random weights')
    parser.add_argument('--output', type=Path, default=Path('.'), help='folder for <name>.onnx (default: .)')
    parser.add_argument('--size', type=_resolution_arg, default=None, metavar='WxH',
                        help="resolution to trace at (default: the checkpoint's input size)")
    parser.add_argument('--check-sizes', type=_resolution_arg, nargs='+', default=list(DEFAULT_CHECK_SIZES),
                        metavar='WxH', help='resolutions at which ONNX Runtime is compared with PyTorch '
                        f'(default: {" ".join(format_resolution(s) for s in DEFAULT_CHECK_SIZES)})')
    parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE,
                        help='largest accepted |ONNX - PyTorch| relative to the largest logit '
                        f'(default: {DEFAULT_TOLERANCE:g})')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'(default: {DEFAULT_OPSET})')
    parser.add_argument('--no-fold-bn', action='store_true', help='keep batch-norm layers')
    parser.add_argument('--seed', type=int, default=0, help='random weights and inputs (default: 0)')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Export, verify and report; 1 if any export differs from PyTorch beyond the tolerance."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        sources = _sources(args)
    except (CheckpointError, FileNotFoundError) as error:
        print(f'seg-export: {error}', file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    failures = 0
    print('| network | file | size | max abs error | max abs logit | logits beyond tolerance | '
          'argmax agreement | result |')
    print('|' + ' --- |' * 8)
    for stem, checkpoint in sources:
        size = args.size or checkpoint.input_size
        model = prepare_model(checkpoint.build_model(), fold_bn=not args.no_fold_bn, example_size=size)
        onnx_model = export_onnx(model, example_size=size, opset=args.opset,
                                 metadata=_metadata(checkpoint, stem))
        path = args.output / f'{stem}.onnx'
        path.write_bytes(onnx_model)
        for check in verify_onnx(onnx_model, model, args.check_sizes, seed=args.seed, tolerance=args.tolerance):
            failures += not check.passed()
            print(f'| {checkpoint.model_name} | {path} | {format_resolution(check.size)} | '
                  f'{check.max_abs_error:.2e} | {check.max_abs_logit:.3g} | {check.changed_share:.3%} | '
                  f'{check.argmax_agreement:.3%} | {"ok" if check.passed() else "MISMATCH"} |')
    if failures:
        print(f'seg-export: {failures} check(s) with more than {MAX_CHANGED_SHARE:.1%} of the logits beyond '
              f'the tolerance {args.tolerance:g}', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
