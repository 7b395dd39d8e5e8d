"""Scoring at the label's full resolution, the same way for the trainer and for ``seg-eval``.

The network sees the image at ``input_size`` (or its own size), its logits are resized bilinearly
to the label's size, and the argmax goes into a ``ConfusionMatrix``; optional test-time
augmentation averages the soft-max of flipped and rescaled views (``view_scores``).

``seg-eval`` (``evaluate_checkpoint``) scores what is deployed: the checkpoint through the
``Segmenter`` that the node runs (batch norm folded, the chosen backend and precision, uint8 frames
uploaded, resized and normalised on the device). The trainer's validation (``evaluate``) scores the
network it is training, from normalised tensors, with the same views and resizing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg_ros.checkpoint import load_checkpoint
from seg_ros.data import DatasetError, SegmentationDataset, build_dataset, validate_dataset
from seg_ros.inference.segmenter import Segmenter, view_scores
from seg_ros.labels import CITYSCAPES19, IGNORE_INDEX, LabelSet
from seg_ros.metrics import CITYSCAPES_CATEGORIES, CITYSCAPES_CATEGORY_NAMES, ConfusionMatrix
from seg_ros.vocabulary import format_size, percent

__all__ = [
    'Evaluation',
    'agg_pyplot',
    'autocast_context',
    'check_same_classes',
    'evaluate',
    'evaluate_checkpoint',
    'format_report',
    'plot_confusion',
    'plot_per_class_iou',
    'score_frames',
    'summarize',
    'write_report',
]

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def autocast_context(device: torch.device, precision: str) -> torch.autocast:
    """Autocast for ``fp16``/``bf16`` on ``device``; a disabled one for ``fp32``."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _logits_of(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, num_classes: int,
             device: torch.device, input_size: Sequence[int] | None = None, flip: bool = False,
             scales: Sequence[float] = (1.0,), precision: str = 'fp32', channels_last: bool = False,
             forward_options: dict[str, Any] | None = None) -> ConfusionMatrix:
    """Confusion matrix of ``model`` over ``batches`` of (normalised images, labels at full size).

    Summed over all processes when ``torch.distributed`` is running (each process passing its
    share of the data). The model is left in eval mode.
    """
    model.eval()
    confusion = ConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for images, labels in batches:
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast_context(device, precision):
            scores = view_scores(lambda x: _logits_of(model(x, **(forward_options or {}))), images,
                                 labels.shape[-2:], input_size=input_size, flip=flip, scales=scales)
        confusion.update(scores.argmax(1), labels)
    confusion.all_reduce()
    return confusion


class Evaluation(NamedTuple):
    """What ``evaluate_checkpoint`` found: the report (``summarize`` and what was scored), the
    confusion matrix and the classes."""

    report: dict[str, Any]
    confusion: ConfusionMatrix
    labels: LabelSet


def score_frames(segmenter: Segmenter, dataset: SegmentationDataset, *, native: bool = False, flip: bool = False,
                 scales: Sequence[float] = (1.0,), num_workers: int = 0, progress: bool = True) -> ConfusionMatrix:
    """Confusion matrix of ``segmenter`` over the frames of ``dataset`` (one by one, as a camera's
    arrive), each scored at its label's size; ``num_workers`` processes decode the files."""
    if dataset.transform is not None:
        raise ValueError(f'{dataset!r} has a transform; the segmenter takes the frames as they are stored')
    frames = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers)
    confusion = ConfusionMatrix(segmenter.num_classes, ignore_index=IGNORE_INDEX)
    for image, label in tqdm(frames, desc='seg-eval', unit='frame', dynamic_ncols=True,
                             disable=None if progress else True):
        scores = segmenter.class_scores(image.numpy(), out_size=label.shape, native=native, flip=flip,
                                        scales=scales)
        confusion.update(scores.argmax(0)[None], label[None])
    return confusion


def evaluate_checkpoint(checkpoint: str | os.PathLike, *, dataset: str, root: str | os.PathLike, split: str,
                        device: str = 'auto', precision: str = 'fp32', backend: str = 'torch',
                        input_size: tuple[int, int] | str | None = None, flip: bool = False,
                        scales: Sequence[float] = (1.0,), num_workers: int = 0, check_files: bool = True,
                        progress: bool = True) -> Evaluation:
    """``seg-eval``: a checkpoint scored on a dataset split through the ``Segmenter``.

    ``input_size`` is the (height, width) the network sees, ``'native'`` for each frame's own size,
    or None for the checkpoint's. Raises ``CheckpointError``, ``DatasetError`` or ``ValueError``
    naming the problem (different classes, unreadable files unless ``check_files`` is off).
    """
    if not scales or min(scales) <= 0 or num_workers < 0:
        raise ValueError(f'scales must be positive and num_workers >= 0, got {list(scales)} and {num_workers}')
    loaded = load_checkpoint(checkpoint)
    frames = build_dataset(dataset, root, split)
    check_same_classes(loaded.labels, frames.label_set, what=f'{checkpoint} on {frames!r}')
    if check_files:
        problems = validate_dataset(frames)
        if problems:
            raise DatasetError(f'{len(problems)} problem(s) in {frames!r}:\n  ' + '\n  '.join(problems))
    native = input_size == 'native'
    segmenter = Segmenter(loaded, device=device, precision=precision, backend=backend,
                          input_size=None if native else input_size, warmup=False, choice_cache=False)
    log.info('scoring %s (%s) on %r: %s, network input %s, flip %s, scales %s', checkpoint, loaded.model_name,
             frames, segmenter.describe(), 'native' if native else format_size(segmenter.input_size), flip,
             list(scales))
    confusion = score_frames(segmenter, frames, native=native, flip=flip, scales=scales, num_workers=num_workers,
                             progress=progress)
    report = summarize(confusion, loaded.labels)
    report.update({
        'checkpoint': str(checkpoint), 'model': loaded.model_name, 'dataset': dataset, 'split': split,
        'images': len(frames), 'input_size': 'native' if native else list(segmenter.input_size),
        'backend': segmenter.backend, 'precision': segmenter.precision, 'flip': flip, 'scales': list(scales),
    })
    return Evaluation(report, confusion, loaded.labels)


def write_report(evaluation: Evaluation, json_path: Path, plot_path: Path | None = None) -> tuple[Path, Path]:
    """The report as JSON and the confusion-matrix PNG (default beside it: ``<stem>_confusion.png``)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(evaluation.report, indent=1))
    plot_path = plot_path or json_path.with_name(f'{json_path.stem}_confusion.png')
    return json_path, plot_confusion(evaluation.confusion.matrix, evaluation.labels, plot_path)


def check_same_classes(model_labels: LabelSet, data_labels: LabelSet, *, what: str) -> None:
    """A ``ValueError`` unless both sets name the same classes in the same order."""
    if tuple(model_labels.names) != tuple(data_labels.names):
        raise ValueError(
            f'{what}: the model predicts {model_labels.num_classes} classes of {model_labels.name!r} '
            f'({", ".join(model_labels.names)}) but the dataset is labelled with {data_labels.num_classes} '
            f'classes of {data_labels.name!r} ({", ".join(data_labels.names)}); scores are only '
            'meaningful on a dataset with the same classes in the same order')


def summarize(confusion: ConfusionMatrix, labels: LabelSet) -> dict[str, Any]:
    """Scores in percent (None where undefined), for the JSON report and the checkpoint's metadata.

    ``miou``, ``per_class_iou`` (by class name), ``pixel_accuracy``, ``mean_class_accuracy``,
    ``per_class_accuracy``, the raw ``confusion_matrix`` (rows = ground truth) and, for
    Cityscapes' 19 classes, ``category_iou`` and ``category_miou`` over its 7 categories.
    """
    report = confusion.to_dict(labels.names)
    accuracy = confusion.class_accuracy()
    report['per_class_accuracy'] = {name: percent(v) for name, v in zip(labels.names, accuracy, strict=True)}
    if tuple(labels.names) == tuple(CITYSCAPES19.names):
        categories = confusion.category_iou(CITYSCAPES_CATEGORIES)
        report['category_iou'] = {name: percent(v)
                                  for name, v in zip(CITYSCAPES_CATEGORY_NAMES, categories, strict=True)}
        present = categories[~np.isnan(categories)]
        report['category_miou'] = percent(present.mean()) if present.size else None
    report['classes'] = list(labels.names)
    report['confusion_matrix'] = confusion.matrix.tolist()
    return report


def _cell(value: float | None) -> str:
    return '   n/a' if value is None else f'{value:6.2f}'


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table: per-class IoU and accuracy, then the means."""
    names = list(report['per_class_iou'])
    width = max(12, *(len(n) for n in names))
    lines = [f'{"class":<{width}}  IoU %   acc %', '-' * (width + 16)]
    for name in names:
        lines.append(f'{name:<{width}}  {_cell(report["per_class_iou"][name])}  '
                     f'{_cell(report["per_class_accuracy"][name])}')
    lines.append('-' * (width + 16))
    lines.append(f'{"mIoU":<{width}}  {_cell(report["miou"])}')
    lines.append(f'{"pixel acc":<{width}}  {_cell(report["pixel_accuracy"])}')
    lines.append(f'{"mean acc":<{width}}  {_cell(report["mean_class_accuracy"])}')
    if 'category_iou' in report:
        lines.append('')
        for name, value in report['category_iou'].items():
            lines.append(f'{"cat. " + name:<{width}}  {_cell(value)}')
        lines.append(f'{"cat. mIoU":<{width}}  {_cell(report["category_miou"])}')
    return '\n'.join(lines)


def agg_pyplot():
    """``matplotlib.pyplot`` on the Agg backend: files only, never a window."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, labels: LabelSet, path: str | os.PathLike) -> Path:
    """Heat-map PNG of the confusion matrix, each row normalised to the ground truth's pixels."""
    plt = agg_pyplot()
    rows = matrix.sum(1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = max(5.0, 0.45 * labels.num_classes + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap='viridis', vmin=0, vmax=1)
    ticks = np.arange(labels.num_classes)
    ax.set_xticks(ticks, labels.names, rotation=90)
    ax.set_yticks(ticks, labels.names)
    ax.set_xlabel('prediction')
    ax.set_ylabel('ground truth')
    ax.set_title('confusion matrix (rows normalised)')
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _save_figure(plt, fig, path)


def _save_figure(plt, fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_class_iou(per_class_iou: dict[str, float | None], labels: LabelSet,
                       path: str | os.PathLike, *, title: str = 'per-class IoU') -> Path:
    """Bar chart PNG of IoU per class (percent), each bar in its class colour."""
    plt = agg_pyplot()
    names = list(per_class_iou)
    values = [per_class_iou[n] or 0.0 for n in names]
    colors = [tuple(c / 255 for c in labels.colors[i]) for i in range(len(names))]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), values, color=colors, edgecolor='black', linewidth=0.5)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_ylim(0, 100)
    ax.set_ylabel('IoU %')
    ax.set_title(title)
    return _save_figure(plt, fig, path)
