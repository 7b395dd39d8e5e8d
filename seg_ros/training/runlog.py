"""A run's record: the JSON-lines log (and TensorBoard scalars), its readers, its plots and provenance."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from seg_ros import __version__
from seg_ros.labels import LabelSet
from seg_ros.training.config import Stage
from seg_ros.training.evaluate import agg_pyplot, plot_per_class_iou

__all__ = ['LOG', 'RunLog', 'changed_keys', 'log_records', 'plot_curves', 'plot_run', 'provenance',
           'read_epoch_records', 'read_log', 'remaining_seconds']

log = logging.getLogger(__name__)

LOG = 'log.jsonl'


class RunLog:
    """JSON-lines records (``log.jsonl``) and, when tensorboard is installed, TensorBoard scalars."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOG
        self._file = self.path.open('a')
        self._tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.debug('tensorboard is not installed: JSON-lines log only')
        else:
            self._tensorboard = SummaryWriter(str(folder / 'tensorboard'))

    def write(self, record: dict[str, Any], *, step: int | None = None) -> None:
        record = {'time': round(time.time(), 3), **record}
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()
        if self._tensorboard is not None and step is not None:
            for key, value in _scalars(record):
                self._tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()


def _scalars(record: dict[str, Any], prefix: str = '') -> Iterator[tuple[str, float]]:
    for key, value in record.items():
        if key in ('time', 'event', 'stage', 'epoch', 'step', 'global_epoch'):
            continue
        if isinstance(value, dict):
            yield from _scalars(value, f'{prefix}{key}/')
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f'{record.get("event", "")}/{prefix}{key}', float(value)


def log_records(log_path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a run's JSON-lines log, in order, without the partial last line of a killed run."""
    for line in Path(log_path).read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def read_log(log_path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(step records, epoch records) of a run's JSON-lines log, in order.

    What a resumed run redid (the steps of the epoch it was killed in) counts once, as redone.
    """
    steps: dict[int, dict[str, Any]] = {}
    epochs: dict[tuple[int, int], dict[str, Any]] = {}
    for record in log_records(log_path):
        if record.get('event') == 'step':
            steps[record['step']] = record
        elif record.get('event') == 'epoch':
            epochs[(record['stage'], record['epoch'])] = record
    return [steps[k] for k in sorted(steps)], [epochs[k] for k in sorted(epochs)]


def read_epoch_records(log_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The epoch records of a run's JSON-lines log (see :func:`read_log`)."""
    return read_log(log_path)[1]


def plot_curves(steps: list[dict[str, Any]], epochs: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """PNG of the training loss and learning rate by step and the validation mIoU by epoch."""
    plt = agg_pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot([r['step'] for r in steps], [r['loss'] for r in steps], alpha=0.4, label='logged interval')
    axes[0].plot([e['end_step'] for e in epochs], [e['train_loss'] for e in epochs], marker='.',
                 label='epoch mean')
    axes[0].set(title='training loss', xlabel='step')
    axes[0].legend()
    axes[1].plot([r['step'] for r in steps], [r['lr'] for r in steps])
    axes[1].set(title='learning rate', xlabel='step')
    validated = [r for r in epochs if r.get('val')]
    axes[2].plot([r['global_epoch'] + 1 for r in validated], [r['val']['miou'] or 0.0 for r in validated],
                 marker='.')
    axes[2].set(title='validation mIoU %', xlabel='epoch')
    starts = {r['stage']: r for r in reversed(epochs)}  # each stage's first epoch
    for stage, first in starts.items():
        if stage == epochs[0]['stage']:
            continue
        axes[0].axvline(first['end_step'] - first['steps'], color='grey', linestyle='--', linewidth=0.8)
        axes[1].axvline(first['end_step'] - first['steps'], color='grey', linestyle='--', linewidth=0.8)
        axes[2].axvline(first['global_epoch'] + 0.5, color='grey', linestyle='--', linewidth=0.8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def provenance() -> dict[str, Any]:
    """Where and with what a checkpoint was made."""
    source = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(['git', '-C', str(source), 'rev-parse', 'HEAD'], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        'seg_ros': __version__,
        'git_commit': commit,
        'host': socket.gethostname(),
        'torch': str(torch.__version__),
        'cuda': torch.version.cuda,
        'time': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'command': ' '.join(sys.argv),
    }


def changed_keys(before: Any, after: Any, prefix: str = '') -> list[str]:
    """Dotted keys whose values differ between two recipes."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [key for k in sorted(set(before) | set(after), key=str)
                for key in changed_keys(before.get(k), after.get(k), f'{prefix}{k}.')]
    return [] if before == after else [prefix.rstrip('.')]


def plot_run(folder: Path, labels: LabelSet) -> None:
    """``curves.png`` and the last validation's ``per_class_iou.png`` of the run in ``folder``."""
    steps, records = read_log(folder / LOG)
    if not records:
        return
    plot_curves(steps, records, folder / 'curves.png')
    validated = [r for r in records if r.get('val')]
    if validated:
        last = validated[-1]
        miou = last['val']['miou']
        plot_per_class_iou(last['val']['per_class_iou'], labels, folder / 'per_class_iou.png',
                           title=f'per-class IoU, {last["stage_name"]} epoch {last["epoch"] + 1} '
                                 f'(mIoU {"n/a" if miou is None else f"{miou:.2f}"})')
    log.info('plots in %s (curves.png, per_class_iou.png)', folder)


def remaining_seconds(stages: Sequence[Stage], stage_index: int, epoch: int, seconds: float) -> float:
    """What the rest of a run takes after ``epoch`` of stage ``stage_index``, if every epoch costs that
    one's ``seconds`` per crop pixel."""
    def pixels(stage: Stage) -> int:
        return stage.augment['crop_size'][0] * stage.augment['crop_size'][1]

    stage = stages[stage_index]
    work = (stage.epochs - epoch - 1) * pixels(stage) + sum(s.epochs * pixels(s) for s in stages[stage_index + 1:])
    return seconds * work / pixels(stage)
