"""The one evaluation path: the trainer's validation and ``seg-eval`` both score through here.

Predictions are scored at the label's full resolution: the network sees the image at
``input_size`` (or its own size), its logits are resized bilinearly to the label's size, and the
argmax goes into a ``ConfusionMatrix``. Optional test-time augmentation averages the soft-max of
horizontally flipped and rescaled views.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seg_ros.labels import CITYSCAPES19, IGNORE_INDEX, LabelSet
from seg_ros.metrics import CITYSCAPES_CATEGORIES, CITYSCAPES_CATEGORY_NAMES, ConfusionMatrix
from seg_ros.vocabulary import percent

__all__ = ['agg_pyplot', 'autocast_context', 'check_same_classes', 'evaluate', 'format_report',
           'plot_confusion', 'plot_per_class_iou', 'predict_scores', 'summarize']

_AUTOCAST_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def autocast_context(device: torch.device, precision: str) -> torch.autocast:
    """Autocast for ``fp16``/``bf16`` on ``device``; a disabled one for ``fp32``."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _logits_of(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def predict_scores(model: nn.Module, images: torch.Tensor, out_size: Sequence[int], *,
                   input_size: Sequence[int] | None = None, flip: bool = False,
                   scales: Sequence[float] = (1.0,), forward_options: dict[str, Any] | None = None
                   ) -> torch.Tensor:
    """(N, C, *out_size) class scores whose argmax is the prediction.

    One view gives the resized logits; several views (``flip``, more than one scale) give the
    mean of their soft-max probabilities. ``input_size`` (height, width) is the size the network
    sees at scale 1 (None: the images' own size).
    """
    base_h, base_w = input_size or images.shape[-2:]
    out_size = tuple(int(v) for v in out_size)
    views = [(scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]
    total = None
    for scale, flipped in views:
        size = (max(1, round(base_h * scale)), max(1, round(base_w * scale)))
        x = images if tuple(images.shape[-2:]) == size else F.interpolate(
            images, size=size, mode='bilinear', align_corners=False)
        logits = _logits_of(model(x.flip(-1) if flipped else x, **(forward_options or {})))
        if flipped:
            logits = logits.flip(-1)
        logits = logits.float()
        if tuple(logits.shape[-2:]) != out_size:
            logits = F.interpolate(logits, size=out_size, mode='bilinear', align_corners=False)
        scores = logits.softmax(1) if len(views) > 1 else logits
        total = scores if total is None else total + scores
    return total


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
            scores = predict_scores(model, images, labels.shape[-2:], input_size=input_size, flip=flip,
                                    scales=scales, forward_options=forward_options)
        confusion.update(scores.argmax(1), labels)
    confusion.all_reduce()
    return confusion


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
