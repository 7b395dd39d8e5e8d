"""The one inference path: uint8 camera images in, masks, overlays and statistics out.

The node, the rosbag evaluator and the benchmark all go through ``Segmenter``; none of them
runs the network itself. Per frame the uint8 image is uploaded once; channel reordering,
resizing, normalisation, the forward pass, soft-max confidence, argmax, palette lookup, overlay
blending and the class histogram all run on the device, and only uint8 arrays and the small
per-class vectors come back.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seg_ros.checkpoint import Checkpoint, load_checkpoint
from seg_ros.frames.codecs import DIRECT_LAYOUTS
from seg_ros.frames.synthetic import SyntheticRoadScene
from seg_ros.inference.backends import (
    DEFAULT_BUDGET_S,
    Candidate,
    Choice,
    ChoiceCache,
    candidates,
    choose_forward,
    cpu_name,
    cpu_supports_bf16,
    library_versions,
    make_forward,
    weights_digest,
)
from seg_ros.inference.onnx import export_onnx
from seg_ros.inference.preparation import Forward, prepare_model
from seg_ros.labels import IGNORE_INDEX, LabelSet
from seg_ros.vocabulary import PRECISION_CHOICES, format_size

__all__ = [
    'DEFAULT_OUTPUTS',
    'OPTIONAL_OUTPUTS',
    'SegmentationError',
    'SegmentationResult',
    'Segmenter',
    'resolve_device',
    'view_scores',
]

log = logging.getLogger(__name__)

SAMPLE_FRAMES = 3  # bundled sample frames the automatic choice runs on (in turn, see backends.TIMED_CALLS)
# Outputs a caller may ask for, and those it gets when it does not say (entropy costs a full soft-max).
OPTIONAL_OUTPUTS = frozenset({'confidence', 'color_mask', 'overlay', 'entropy'})
DEFAULT_OUTPUTS = frozenset({'confidence', 'color_mask', 'overlay'})



class SegmentationError(RuntimeError):
    """A frame that could not be segmented; the caller drops it and serves the next one."""


@dataclass
class SegmentationResult:
    """What one image gives. Arrays are uint8 at the output size unless said otherwise."""

    mask: np.ndarray
    """(H, W) class index per pixel, ``IGNORE_INDEX`` (255) where no class is predicted."""
    class_counts: np.ndarray
    """(C,) int64 pixels per class."""
    class_confidence: np.ndarray
    """(C,) float32 mean top-class probability over each class's pixels (0 where none)."""
    confidence: np.ndarray | None = None
    """(H, W) top-class probability scaled to 0..255."""
    color_mask: np.ndarray | None = None
    """(H, W, 3) RGB palette colour of each pixel's class."""
    overlay: np.ndarray | None = None
    """(H, W, 3) RGB input blended with ``color_mask``."""
    mean_entropy: float | None = None
    """Mean over the pixels of the soft-max entropy in nats (0: certain, log C: uniform)."""

    @property
    def class_fractions(self) -> np.ndarray:
        """(C,) float32 share of the image's pixels per class."""
        return (self.class_counts / max(self.mask.size, 1)).astype(np.float32)


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; errors name the fix."""
    spec = spec.strip().lower()
    if spec == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f'device {spec!r} is not one of auto, cpu, cuda, cuda:N') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'device {spec!r} requested but CUDA is not available to this torch '
                             f'({torch.__version__}); use device "cpu" or "auto"')
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(f'device {spec!r} requested but only {torch.cuda.device_count()} CUDA '
                             'device(s) are visible')
        return torch.device('cuda', index)
    if device.type != 'cpu':
        raise ValueError(f'device {spec!r} is not supported (auto, cpu, cuda, cuda:N)')
    return device


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str | None]:
    """The precision asked for as it will be used and, when it differs, the warning to give.

    On a CPU, fp16 is slower than fp32 (no native half arithmetic), and bf16 helps only where the
    CPU has native bf16 instructions; elsewhere the request is mapped to fp32 with one warning.
    ``auto`` stays ``auto``: the candidates it allows are measured (``seg_ros.inference.backends``).
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f'precision {precision!r} is not one of {", ".join(PRECISION_CHOICES)}')
    if precision == 'auto' or device.type == 'cuda' or precision == 'fp32':
        if precision == 'bf16' and not torch.cuda.is_bf16_supported():
            return 'fp16', f'bf16 is not supported by {torch.cuda.get_device_name(device)}; using fp16'
        return precision, None
    if precision == 'bf16' and cpu_supports_bf16():
        return 'bf16', None
    return 'fp32', (f'precision {precision} does not speed up inference on this CPU '
                    '(no native support); using fp32')


def view_scores(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, out_size: Sequence[int], *,
                input_size: Sequence[int] | None = None, flip: bool = False,
                scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """(N, C, *out_size) class scores of ``images`` whose argmax is the prediction.

    One view gives ``forward``'s logits resized to ``out_size``; several views (test-time
    augmentation: ``flip`` adds the mirrored image, each of ``scales`` resizes ``input_size``) give
    the mean of their soft-max probabilities. ``input_size`` (height, width) is what the network sees
    at scale 1 (None: the images' own size). Used by ``Segmenter.class_scores`` and by the trainer's
    validation, which scores the network it is training.
    """
    base_h, base_w = input_size or images.shape[-2:]
    out_size = tuple(int(v) for v in out_size)
    views = [(scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]
    total = None
    for scale, flipped in views:
        size = (max(1, round(base_h * scale)), max(1, round(base_w * scale)))
        x = images if tuple(images.shape[-2:]) == size else F.interpolate(
            images, size=size, mode='bilinear', align_corners=False)
        logits = forward(x.flip(-1) if flipped else x)
        if flipped:
            logits = logits.flip(-1)
        logits = logits.float()
        if tuple(logits.shape[-2:]) != out_size:
            logits = F.interpolate(logits, size=out_size, mode='bilinear', align_corners=False)
        scores = logits.softmax(1) if len(views) > 1 else logits
        total = scores if total is None else total + scores
    return total


class Segmenter:
    """A trained network ready for frames.

    Args:
        checkpoint: a ``Checkpoint`` or the path of one.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16`` (on a CPU a reduced precision only where
            it has native support, see ``resolve_precision``). ``auto`` measures (see ``backend``).
        input_size: network input (height, width); default the checkpoint's training resolution.
        output_size: ``input`` (results at each image's own size, aligned pixel for pixel with it
            and its CameraInfo) or ``network`` (results at ``input_size``, smaller and cheaper).
        min_confidence: pixels whose top-class probability is below this get ``IGNORE_INDEX``.
        channels_last: NHWC memory format for PyTorch: faster on CUDA and, measured, on CPUs too
            (docs/BENCHMARKS.md).
        fold_bn: fold batch-norm layers into the convolutions next to them (``preparation``).
        warmup: run the network a few times at start so that the first frame is not slow.
        backend: ``auto``, ``torch``, ``onnxruntime`` (CPU, fp32) or ``openvino`` (CPU, fp32 or
            bf16). Where ``backend`` and ``precision`` allow more than one candidate, each runs on
            ``sample_frames`` at ``input_size`` and the fastest whose masks agree with fp32 PyTorch
            is kept (``seg_ros.inference.backends``); ``choice`` says what was measured.
        compile: ``torch.compile`` the network for the input shapes it sees (PyTorch backend).
        cuda_graphs: replay a captured CUDA graph per input shape; default on for CUDA. With
            ``compile`` or CUDA graphs, shapes beyond the first few (the number of cameras in a
            batch changing often) run eagerly.
        sample_frames: images (uint8 RGB, any size) the automatic choice runs on; default a bundled
            sample (synthetic road scenes at the input size, ``SAMPLE_FRAMES`` of them).
        choice_cache: where decisions of the automatic choice are kept, so that a restart does not
            measure again: ``True`` the user's cache directory, a ``ChoiceCache`` of another file,
            ``False`` none.
        choice_budget_s: start-up seconds after which candidates not yet timed are left out.
    """

    def __init__(self, checkpoint: Checkpoint | str | Path, *, device: str = 'auto',
                 precision: str = 'auto', input_size: tuple[int, int] | None = None,
                 output_size: str = 'input', min_confidence: float = 0.0,
                 channels_last: bool = True, fold_bn: bool = True, warmup: bool = True,
                 backend: str = 'auto', compile: bool = False, cuda_graphs: bool | None = None,
                 sample_frames: Sequence[np.ndarray] | None = None,
                 choice_cache: ChoiceCache | bool = True,
                 choice_budget_s: float = DEFAULT_BUDGET_S) -> None:
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        requested_precision, precision_warning = resolve_precision(precision, self.device)
        if precision_warning:
            warnings.warn(precision_warning, stacklevel=2)
            log.warning(precision_warning)
        options = candidates(self.device, backend, requested_precision)
        self.input_size = self._check_size(input_size or self.checkpoint.input_size)
        if output_size not in ('input', 'network'):
            raise ValueError(f'output_size {output_size!r} is not "input" or "network"')
        self.output_size = output_size
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f'min_confidence {min_confidence} is outside 0..1')
        self.min_confidence = float(min_confidence)

        cuda = self.device.type == 'cuda'
        if cuda_graphs and not cuda:
            raise ValueError(f'cuda_graphs needs a CUDA device, not {self.device}')
        if cuda:
            torch.backends.cudnn.benchmark = True  # input shapes are fixed: let cuDNN time its kernels
        self.cuda_graphs = cuda if cuda_graphs is None else cuda_graphs
        self.compiled = compile
        mean = torch.tensor(self.checkpoint.mean, device=self.device) * 255.0
        std = torch.tensor(self.checkpoint.std, device=self.device) * 255.0
        self._mean = mean.view(1, 3, 1, 1)
        self._inv_std = (1.0 / std).view(1, 3, 1, 1)
        self._palette = torch.from_numpy(self.labels.palette()).to(self.device)

        # The fp32 inference form: PyTorch fp32 runs it, the other candidates derive from it.
        self.model = prepare_model(self.checkpoint.build_model(), device=self.device, precision='fp32',
                                   channels_last=channels_last, fold_bn=fold_bn, example_size=self.input_size)
        self.choice = self._choose(options, channels_last, sample_frames, choice_cache, choice_budget_s,
                                   key={'backend': backend, 'precision': requested_precision, 'fold_bn': fold_bn})
        self.backend, self.precision = self.choice.candidate.backend, self.choice.candidate.precision
        self._run = self.choice.forward
        # PyTorch alone runs NHWC, compiled or in CUDA graphs; the others take NCHW float32 as it is.
        on_torch = self.backend == 'torch'
        self.channels_last, self.compiled = channels_last and on_torch, compile and on_torch
        self.cuda_graphs = self.cuda_graphs and on_torch
        if warmup:
            self.warmup()

    def _choose(self, options: list[Candidate], channels_last: bool, sample_frames: Sequence[np.ndarray] | None,
                cache: ChoiceCache | bool, budget_s: float, key: dict) -> Choice:
        """The backend and precision to run (``seg_ros.inference.backends.choose_forward``)."""
        graph: list[bytes] = []

        def onnx() -> bytes:  # one export for ONNX Runtime and OpenVINO, traced small (any size runs)
            if not graph:
                graph.append(export_onnx(self.model))
            return graph[0]

        def build(candidate: Candidate) -> Forward:
            return make_forward(candidate, self.model, channels_last=channels_last, compile=self.compiled,
                                cuda_graph=self.cuda_graphs, onnx=onnx)

        if len(options) == 1:
            return choose_forward(options, build, [])
        if sample_frames is None:
            scene = SyntheticRoadScene(width=max(self.input_size[1], 32), height=max(self.input_size[0], 32))
            sample_frames = [scene.frame(t)[0] for t in np.linspace(0.0, 4.0, SAMPLE_FRAMES)]
        with torch.inference_mode():
            frames = [self._normalise(self._resize(self._upload(image, 'rgb8'), self.input_size, 'bilinear'))
                      for image in sample_frames]
        cache = ChoiceCache() if cache is True else cache or None
        key = {**key, 'cpu': cpu_name(), 'threads': torch.get_num_threads(), 'device': self._device_name(),
               'network': self.checkpoint.model_name, 'weights': weights_digest(self.model),
               'input_size': list(self.input_size), 'channels_last': channels_last, 'compile': self.compiled,
               'cuda_graphs': self.cuda_graphs, 'versions': library_versions()}
        return choose_forward(options, build, frames, cache=cache, key=key, budget_s=budget_s)

    def _device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == 'cuda' else 'cpu'

    @staticmethod
    def _check_size(size: Sequence[int]) -> tuple[int, int]:
        height, width = (int(v) for v in size)
        if height < 8 or width < 8:
            raise ValueError(f'input_size {format_size((height, width))} is too small (at least 8x8)')
        return height, width

    @property
    def labels(self) -> LabelSet:
        return self.checkpoint.labels

    @property
    def num_classes(self) -> int:
        return self.checkpoint.num_classes

    def describe(self) -> str:
        return (f'{self.checkpoint.model_name} ({self.num_classes} classes, {self.labels.name}) on '
                f'{self.device} at {self.precision}, input {format_size(self.input_size)}'
                f'{", channels_last" if self.channels_last else ""}{", compiled" if self.compiled else ""}'
                f'{", CUDA graphs" if self.cuda_graphs else ""}, backend {self.backend}')

    def warmup(self, iterations: int = 2) -> None:
        frame = np.zeros((*self.input_size, 3), np.uint8)
        for _ in range(iterations):
            self.segment(frame, outputs=OPTIONAL_OUTPUTS)

    # -- per frame -------------------------------------------------------------------------

    def segment(self, image: np.ndarray, encoding: str = 'rgb8', *,
                outputs: frozenset[str] | set[str] = DEFAULT_OUTPUTS,
                overlay_alpha: float = 0.5) -> SegmentationResult:
        """Segment one image (H x W x C uint8 in ``encoding``)."""
        return self.segment_batch([image], [encoding], outputs=outputs, overlay_alpha=overlay_alpha)[0]

    @torch.inference_mode()
    def segment_batch(self, images: Sequence[np.ndarray], encodings: Sequence[str] | None = None, *,
                      outputs: frozenset[str] | set[str] = DEFAULT_OUTPUTS,
                      overlay_alpha: float = 0.5) -> list[SegmentationResult]:
        """Segment several images (of any sizes) through the network as one batch."""
        encodings = list(encodings) if encodings is not None else ['rgb8'] * len(images)
        if len(encodings) != len(images) or not images:
            raise ValueError(f'{len(images)} images but {len(encodings)} encodings')
        unknown = set(outputs) - OPTIONAL_OUTPUTS
        if unknown:
            raise ValueError(f'unknown output(s) {sorted(unknown)}; choose from {sorted(OPTIONAL_OUTPUTS)}')
        if not 0.0 <= overlay_alpha <= 1.0:
            raise ValueError(f'overlay_alpha {overlay_alpha} is outside 0..1')

        rgb = [self._upload(image, encoding) for image, encoding in zip(images, encodings, strict=True)]
        batch = torch.cat([self._resize(x, self.input_size, 'bilinear') for x in rgb])
        logits = self.forward(batch)
        return [self._postprocess(logits[i:i + 1], rgb[i], outputs, overlay_alpha)
                for i in range(len(rgb))]

    @torch.inference_mode()
    def class_scores(self, image: np.ndarray, *, out_size: Sequence[int] | None = None, native: bool = False,
                     flip: bool = False, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        """(C, H, W) class scores of one H x W x 3 uint8 RGB image, on the device, at ``out_size``
        (default the image's own), whose argmax is the class of each pixel: ``view_scores`` through
        this segmenter's backend and precision, at ``input_size`` (the image's own size when
        ``native``). What ``seg-eval`` scores; ``flip`` and ``scales`` are its test-time augmentation."""
        rgb = self._upload(image, 'rgb8').float()
        size = rgb.shape[-2:] if native else self.input_size
        return view_scores(self.forward, rgb, out_size or rgb.shape[-2:], input_size=size, flip=flip,
                           scales=scales)[0]

    def _upload(self, image: np.ndarray, encoding: str) -> torch.Tensor:
        """(1, 3, H, W) uint8 RGB on the device, from one copy of the array."""
        if encoding not in DIRECT_LAYOUTS:
            raise ValueError(f'encoding {encoding!r} is not one the segmenter takes directly '
                             f'({", ".join(DIRECT_LAYOUTS)}); convert it with seg_ros.ros.conversions')
        channels, to_rgb = DIRECT_LAYOUTS[encoding]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise ValueError(f'image must be a uint8 numpy array, got {type(image).__name__} '
                             f'{getattr(image, "dtype", "")}')
        shape_ok = (image.ndim == 2 and channels == 1) or (image.ndim == 3 and image.shape[2] == channels)
        if not shape_ok or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f'image of shape {image.shape} does not match encoding {encoding} '
                             f'({channels} channel{"s" if channels > 1 else ""})')
        with warnings.catch_warnings():
            # Read-only buffers (bytes from a message) are fine: the tensor is only read.
            warnings.simplefilter('ignore', UserWarning)
            host = torch.from_numpy(image)
        if self.device.type == 'cuda':
            host = host.contiguous().pin_memory()
        pixels = host.to(self.device, non_blocking=True)
        pixels = pixels.reshape(*pixels.shape[:2], -1).permute(2, 0, 1)
        return pixels[list(to_rgb)].unsqueeze(0)

    def _resize(self, image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
        if tuple(image.shape[-2:]) == tuple(size):
            return image.float()
        align = {'align_corners': False} if mode == 'bilinear' else {}
        return F.interpolate(image.float(), size=size, mode=mode, **align)

    def _normalise(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch - self._mean) * self._inv_std

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Float32 logits of ``batch``, (N, 3, *input_size) RGB 0..255 floats on the device: the
        network step of ``segment_batch`` alone (normalisation and the backend's forward)."""
        logits = self._run(self._normalise(batch)).float()
        # NaN and inf survive a sum: one reduction instead of a test of every logit (60 of 62 ms
        # saved at 1280x720, 11 classes, 2 cores). Finite logits of a network cannot overflow it.
        if not torch.isfinite(logits.sum()):
            raise SegmentationError(f'{self.checkpoint.model_name} produced non-finite logits '
                                    '(NaN or inf); frame skipped')
        return logits

    def _postprocess(self, logits: torch.Tensor, rgb: torch.Tensor, outputs: frozenset[str] | set[str],
                     overlay_alpha: float) -> SegmentationResult:
        out_size = tuple(rgb.shape[-2:]) if self.output_size == 'input' else self.input_size
        logits = self._resize(logits, out_size, 'bilinear')[0]
        # One fused soft-max and one max give confidence and class (measured at 1280x720, 11
        # classes, 2 cores: 61 ms against 94 ms for max, subtract, exp and sum).
        probabilities = torch.softmax(logits, dim=0)
        confidence, mask = probabilities.max(dim=0)
        if self.min_confidence > 0:
            mask = torch.where(confidence >= self.min_confidence, mask, IGNORE_INDEX)
        mask = mask.to(torch.uint8)

        flat = mask.flatten().long()
        counts = torch.bincount(flat, minlength=256)[: self.num_classes]
        confidence_sums = torch.bincount(flat, weights=confidence.flatten(), minlength=256)
        class_confidence = confidence_sums[: self.num_classes] / counts.clamp(min=1)

        result = SegmentationResult(
            mask=mask.cpu().numpy(),
            class_counts=counts.cpu().numpy().astype(np.int64),
            class_confidence=class_confidence.float().cpu().numpy(),
        )
        if 'confidence' in outputs:
            result.confidence = (confidence * 255.0).round_().to(torch.uint8).cpu().numpy()
        if 'entropy' in outputs:
            # -sum p log p, with 0 log 0 = 0.
            result.mean_entropy = float(-torch.special.xlogy(probabilities, probabilities).sum(dim=0).mean())
        if outputs & {'color_mask', 'overlay'}:
            color = self._palette[mask.long()]
            if 'color_mask' in outputs:
                result.color_mask = color.cpu().numpy()
            if 'overlay' in outputs:
                base = self._resize(rgb, out_size, 'bilinear')[0].permute(1, 2, 0)
                blended = base * (1.0 - overlay_alpha) + color.float() * overlay_alpha
                result.overlay = blended.round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        return result
