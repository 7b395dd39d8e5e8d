"""The report of a bag evaluation: JSON (every number), markdown (the tables), and plots over time.

Units: IoU, mIoU, pixel accuracy and agreement in percent (as ``seg-eval`` reports them); class
shares, confidence and stability as fractions 0..1; entropy in nats; times in seconds from the
bag's first message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from seg_ros.labels import LabelSet
from seg_ros.training.evaluate import agg_pyplot
from seg_ros.vocabulary import format_size

__all__ = ['FrameLog', 'format_markdown', 'number_text', 'plot_class_share', 'plot_confidence', 'table_lines',
           'write_json']

_MAX_PLOT_POINTS = 1000


def write_json(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2) + '\n')
    return path


class FrameLog:
    """One JSON line per frame with each model's numbers for that frame (``frames.jsonl``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open('w')
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + '\n')
        self.lines += 1

    def close(self) -> None:
        self._file.close()

    def records(self) -> Iterator[dict[str, Any]]:
        with self.path.open() as file:
            for line in file:
                yield json.loads(line)


# -- markdown ---------------------------------------------------------------------------------------

def number_text(value: float | None, digits: int = 2, scale: float = 1.0) -> str:
    return 'n/a' if value is None else f'{value * scale:.{digits}f}'


def table_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    return ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header),
            *('| ' + ' | '.join(row) + ' |' for row in rows), '']


def _bag_section(report: dict[str, Any]) -> list[str]:
    bag, run = report['bag'], report['run']
    start, end = run['window_s']
    window = 'the whole bag' if start is None and end is None else \
        f'{start or 0:g} to {"its end" if end is None else f"{end:g}"} s'
    lines = ['# seg-bag report', '',
             f'Bag `{bag["path"]}` ({bag["storage"]}), {bag["duration_s"]:.2f} s; evaluated {window}, '
             f'stride {run["stride"]}: {run["frames"]} frames in {run["wall_time_s"]:.1f} s '
             f'({run["frames_per_second"]:.2f} frames/s) on {run["device"]} at {run["precision"]} '
             f'({run["backend"]}).', '']
    stopped = report['stopped']
    if stopped:
        at = 'before the first message' if stopped['last_time_s'] is None else \
            f'after {stopped["messages_read"]} messages, the last at {stopped["last_time_s"]:.3f} s'
        lines += [f'**Reading stopped early** {at}: {stopped["reason"]}', '']
    lines += [f'- {note}' for note in bag['notes']] + ([''] if bag['notes'] else [])
    rows = [[f'`{name}`', m['model'], m['label_set'], format_size(m['input_size']),
             f'`{m["checkpoint"]}`'] for name, m in report['models'].items()]
    lines += ['## Models', '', *table_lines(['name', 'network', 'classes', 'input', 'checkpoint'], rows)]
    gt = report['ground_truth']
    if gt:
        labels = gt['labels']
        ignored = f', values {gt["label_ignore"]} read as ignore' if gt['label_ignore'] else ''
        lines += [f'Ground truth: {gt["source"]}, classes {gt["label_set"]}{ignored}: {labels["used"]} of '
                  f'{labels["offered"]} label image(s) used.', '']
        lines += [f'- **Not used**: {warning}' for warning in labels['warnings']]
        lines += [''] if labels['warnings'] else []
    if run['output_bag']:
        size = run['output_bag_bytes'] / 2**20
        per_frame = f', {size / run["frames"]:.3f} MiB per frame' if run['frames'] else ''
        lines += [f'Output bag `bag/` ({", ".join(run["outputs"])}): {size:.2f} MiB{per_frame}.', '']
    lines += ['Units: IoU and agreement in %; shares, confidence and stability as fractions; '
              'entropy in nats.', '']
    return lines


def _topic_section(topic: str, camera: dict[str, Any]) -> list[str]:
    labelled = f', {camera["frames_with_ground_truth"]} with ground truth' if camera['ground_truth'] else ''
    rate = number_text(camera['rate_hz'])
    lines = [f'## {topic}', '', f'{camera["frames"]} frames at {rate} Hz{labelled}.', '']
    if camera['skipped']:
        lines += [f'Skipped {camera["skipped"]} message(s) that could not be decoded; the first: '
                  f'{camera["skip_reason"]}', '']
    for name, count in camera['segmentation_errors'].items():
        lines += [f'`{name}` failed on {count} frame(s).', '']
    models = camera['models']
    rows = [[f'`{name}`', str(m['frames']), number_text(m['mean_confidence'], 3), number_text(m['mean_entropy'], 3),
             number_text(m['stability'], 3)] for name, m in models.items()]
    lines += table_lines(['model', 'frames', 'confidence', 'entropy', 'stability'], rows)
    for name, m in models.items():
        rows = [[class_name, number_text(share, 2, 100.0), number_text(m['class_confidence'][class_name], 3)]
                for class_name, share in m['class_share'].items()]
        lines += [f'### `{name}`: class share', '', *table_lines(['class', 'share %', 'confidence'], rows)]
    if camera['agreement']:
        rows = [[f'`{a["reference"]}`', f'`{a["other"]}`', a['label_set'], number_text(a['pixel_agreement']),
                 number_text(a['miou'])] for a in camera['agreement']]
        lines += ['### Agreement between models', '',
                  *table_lines(['reference', 'other', 'compared in', 'pixels agreeing %', 'mIoU %'], rows)]
    for pair in camera['not_compared']:
        lines += [f'`{pair["reference"]}` and `{pair["other"]}` not compared: {pair["reason"]}', '']
    if camera['ground_truth']:
        lines += _ground_truth_table(camera['ground_truth'])
    for name, reason in camera['not_scored'].items():
        lines += [f'`{name}` not scored against the ground truth: {reason}', '']
    outputs = camera['outputs']
    lines += ['Files: ' + ', '.join(f'[{kind}]({path})' for kind, path in outputs.items()), '']
    return lines


def _ground_truth_table(scores: dict[str, dict[str, Any]]) -> list[str]:
    names = list(scores)
    classes = list(dict.fromkeys(c for s in scores.values() for c in s['per_class_iou']))
    rows = [[class_name, *(number_text(scores[n]['per_class_iou'].get(class_name)) for n in names)]
            for class_name in classes]
    rows += [['**mIoU**', *(f'**{number_text(scores[n]["miou"])}**' for n in names)],
             ['pixel accuracy', *(number_text(scores[n]['pixel_accuracy']) for n in names)],
             ['scored in', *(scores[n]['label_set'] for n in names)],
             ['frames', *(str(scores[n]['frames']) for n in names)]]
    return ['### Against ground truth (IoU %)', '', *table_lines(['class', *(f'`{n}`' for n in names)], rows)]


def format_markdown(report: dict[str, Any]) -> str:
    lines = _bag_section(report)
    for topic, camera in report['topics'].items():
        lines += _topic_section(topic, camera)
    return '\n'.join(lines).rstrip('\n') + '\n'


# -- plots ------------------------------------------------------------------------------------------

def _binned(log: FrameLog, value: str, models: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Times and per-model values of ``value`` averaged into at most ``_MAX_PLOT_POINTS`` bins."""
    bins = max(1, min(_MAX_PLOT_POINTS, log.lines))
    per_bin = log.lines / bins
    times, counts = np.zeros(bins), np.zeros(bins)
    sums: dict[str, Any] = {}
    for line, record in enumerate(log.records()):
        index = min(bins - 1, int(line / per_bin))
        times[index] += record['time']
        counts[index] += 1
        for name in models:
            number = record['models'].get(name, {}).get(value)
            if number is None:
                continue
            number = np.asarray(number, np.float64)
            if name not in sums:
                sums[name] = (np.zeros((bins, *number.shape)), np.zeros(bins))
            total, seen = sums[name]
            total[index] += number
            seen[index] += 1
    means = {}
    for name, (total, seen) in sums.items():
        shape = (-1,) + (1,) * (total.ndim - 1)
        means[name] = np.where(seen.reshape(shape) > 0, total / np.maximum(seen, 1).reshape(shape), np.nan)
    return times / np.maximum(counts, 1), means


def plot_class_share(log: FrameLog, labels: dict[str, LabelSet], path: Path, title: str) -> Path:
    """One stacked-area panel per model: each class's share of the frame over time."""
    plt = agg_pyplot()
    times, shares = _binned(log, 'shares', list(labels))
    fig, axes = plt.subplots(len(labels), 1, figsize=(10, 2.6 * len(labels) + 0.6), squeeze=False,
                             sharex=True)
    for ax, (name, label_set) in zip(axes[:, 0], labels.items(), strict=True):
        colors = [tuple(c / 255 for c in color) for color in label_set.colors]
        if name in shares:
            ax.stackplot(times, np.nan_to_num(shares[name]).T * 100, colors=colors, labels=label_set.names)
        ax.set_ylim(0, 100)
        ax.set_ylabel('share %')
        ax.set_title(f'{name} ({label_set.name})', fontsize=10)
        ax.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel('time (s from the start of the bag)')
    fig.suptitle(f'class share over time, {title}')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_confidence(log: FrameLog, models: list[str], path: Path, title: str) -> Path:
    """Mean top-class confidence, mean entropy and frame-to-frame stability over time, per model."""
    plt = agg_pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    panels = (('confidence', 'mean confidence', (0, 1)), ('entropy', 'mean entropy (nats)', None),
              ('stability', 'unchanged pixels', (0, 1)))
    for ax, (value, label, limits) in zip(axes, panels, strict=True):
        times, series = _binned(log, value, models)
        for name in models:
            if name in series:
                ax.plot(times, series[name], label=name, linewidth=1.2)
        if limits:
            ax.set_ylim(*limits)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xlabel('time (s from the start of the bag)')
    fig.suptitle(f'confidence over time, {title}')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
