"""Networks as ONNX graphs with dynamic batch, height and width, and the two backends that run them.

The exported graph is the inference form of the network (batch-norm folded, see
``seg_ros.inference.preparation``), input ``image`` (N, 3, H, W) float32 normalised RGB, output ``logits``
(N, C, H, W). Any H and W work: the padding to the network's size divisor and the crop back are
computed from the input shape inside the graph (``SegmentationNet.forward``), and ENet's
max-unpooling is a scatter (``ScatterElements``), not ``MaxUnpool``. ``verify_onnx`` runs an export
with ONNX Runtime at several sizes and compares it with PyTorch (``seg-export`` does, for every file).

The graph is written by the TorchScript-based exporter (``dynamo=False``): the torch.export-based
one needs ``onnxscript``, which the project does not depend on.

``OnnxRuntimeForward`` and ``OpenVinoForward`` are the ``onnxruntime`` and ``openvino`` backends
of the ``Segmenter`` (CPU deployments); both run the same exported graph.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from seg_ros.inference.preparation import MAX_CHANGED_SHARE
from seg_ros.vocabulary import format_size

__all__ = ['DEFAULT_OPSET', 'DEFAULT_TOLERANCE', 'ExportCheck', 'OnnxRuntimeForward', 'OpenVinoForward',
           'export_onnx', 'verify_onnx']

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME, OUTPUT_NAME = 'image', 'logits'
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
                             f'{tuple(expected.shape)} at input {format_size(size)}')
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
