"""The combined report of several runs: a row per run, and totals over all their frames.

Totals pool, they do not average: each model's ground-truth confusion matrices of every run and
camera are summed (``ConfusionMatrix.add_counts``) before per-class IoU and mIoU are taken, so a
run of 1000 labelled frames weighs 100 times one of 10; confidence and entropy are weighted by
pixels the same way. Units as in the single-run report (``seg_ros.bag.report``).
"""

from __future__ import annotations

from typing import Any

from seg_ros.bag.report import number_text, table_lines
from seg_ros.metrics import ConfusionMatrix

__all__ = ['combine', 'format_combined_markdown']


def _run_row(result: dict[str, Any]) -> dict[str, Any]:
    row = {'name': result['name'], 'bag': result['bag'], 'out': result['out'], 'status': result['status']}
    if result['status'] != 'done':
        return {**row, 'error': result['error']}
    report = result['report']
    run, truth = report['run'], report['ground_truth']
    cameras = report['topics'].values()
    scores: dict[str, Any] = {}
    for camera in cameras:
        for model, score in camera['ground_truth'].items():
            scores[model] = {'miou': score['miou'], 'frames': score['frames'], 'label_set': score['label_set']}
    return {**row,
            'frames': run['frames'],
            'duration_s': report['bag']['duration_s'],
            'wall_time_s': run['wall_time_s'],
            'frames_per_second': run['frames_per_second'],
            'labelled_frames': sum(camera['frames_with_ground_truth'] for camera in cameras),
            'labels': truth['labels'] if truth else None,
            'ground_truth_requested': bool(truth and truth['requested']),
            'scores': scores,
            'stopped': report['stopped'],
            'output_bag_bytes': run['output_bag_bytes'],
            'memory': run['memory']}


class _ModelTotals:
    """One model's numbers over every run and camera."""

    def __init__(self) -> None:
        self.frames = self.pixels = 0
        self.confidence_sum = self.entropy_sum = 0.0
        self.scores: dict[str, tuple[list[str], ConfusionMatrix, list[int]]] = {}
        """Label set scored in -> (class names, pooled confusion, frames)."""

    def add(self, stats: dict[str, Any], score: dict[str, Any] | None) -> None:
        self.frames += stats['frames']
        self.pixels += stats['pixels']
        self.confidence_sum += (stats['mean_confidence'] or 0.0) * stats['pixels']
        self.entropy_sum += (stats['mean_entropy'] or 0.0) * stats['pixels']
        if score is None:
            return
        classes = score['classes']
        _, confusion, frames = self.scores.setdefault(
            score['label_set'], (classes, ConfusionMatrix(len(classes)), [0]))
        confusion.add_counts(score['confusion_matrix'], score['missed'])
        frames[0] += score['frames']

    def summary(self) -> dict[str, Any]:
        pixels = self.pixels or None
        return {
            'frames': self.frames,
            'pixels': self.pixels,
            'mean_confidence': None if pixels is None else self.confidence_sum / pixels,
            'mean_entropy': None if pixels is None else self.entropy_sum / pixels,
            'ground_truth': {label_set: {'frames': frames[0], **confusion.to_dict(names),
                                         'confusion_matrix': confusion.matrix.tolist(),
                                         'missed': confusion.missed.tolist(), 'classes': names}
                             for label_set, (names, confusion, frames) in self.scores.items()},
        }


def combine(results: list[dict[str, Any]], wall_time_s: float, where: str) -> dict[str, Any]:
    """The combined report of the runs' results (``runs.evaluate_one``), in run order."""
    models: dict[str, _ModelTotals] = {}
    for result in results:
        if result['status'] != 'done':
            continue
        for camera in result['report']['topics'].values():
            for name, stats in camera['models'].items():
                models.setdefault(name, _ModelTotals()).add(stats, camera['ground_truth'].get(name))
    rows = [_run_row(result) for result in results]
    done = [row for row in rows if row['status'] == 'done']
    frames = sum(row['frames'] for row in done)
    return {
        'runs': rows,
        'totals': {
            'runs': len(rows),
            'runs_failed': len(rows) - len(done),
            'frames': frames,
            'labelled_frames': sum(row['labelled_frames'] for row in done),
            'labels_used': sum(row['labels']['used'] for row in done if row['labels']),
            'ground_truth_requested': any(row['ground_truth_requested'] for row in done),
            'wall_time_s': wall_time_s,
            'frames_per_second': frames / wall_time_s if wall_time_s > 0 else 0.0,
            'where': where,
            'models': {name: totals.summary() for name, totals in models.items()},
        },
    }


def format_combined_markdown(combined: dict[str, Any]) -> str:
    totals = combined['totals']
    lines = ['# seg-bag report: several runs', '',
             f'{totals["runs"]} run(s) on {totals["where"]}: {totals["frames"]} frames in '
             f'{totals["wall_time_s"]:.1f} s ({totals["frames_per_second"]:.2f} frames/s), '
             f'{totals["labelled_frames"]} with ground truth. Each run\'s own report is in its folder.', '']
    models = list(totals['models'])
    header = ['run', 'status', 'frames', 'duration s', 'frames/s', 'labelled',
              *(f'`{model}` mIoU %' for model in models), 'peak memory MiB']
    rows = []
    for row in combined['runs']:
        if row['status'] != 'done':
            rows.append([f'`{row["name"]}`', f'failed: {row["error"]}', *([''] * (len(header) - 2))])
            continue
        status = 'stopped early' if row['stopped'] else 'done'
        rows.append([f'[`{row["name"]}`]({row["out"]}/report.md)', status, str(row['frames']),
                     number_text(row['duration_s']), number_text(row['frames_per_second']), str(row['labelled_frames']),
                     *(number_text(row['scores'].get(model, {}).get('miou')) for model in models),
                     number_text(row['memory'].get('peak_mib'), 0)])
    lines += ['## Runs', '', *table_lines(header, rows)]
    for row in combined['runs']:
        for warning in (row.get('labels') or {}).get('warnings', []):
            lines += [f'- `{row["name"]}`, labels not used: {warning}']
    lines += ['', '## Totals over all frames', '',
              'Per-class IoU pooled over every labelled frame of every run (confusion matrices summed).', '']
    rows = [[f'`{name}`', str(model['frames']), number_text(model['mean_confidence'], 3),
             number_text(model['mean_entropy'], 3)] for name, model in totals['models'].items()]
    lines += table_lines(['model', 'frames', 'confidence', 'entropy'], rows)
    for name, model in totals['models'].items():
        for label_set, score in model['ground_truth'].items():
            rows = [[class_name, number_text(iou)] for class_name, iou in score['per_class_iou'].items()]
            rows += [['**mIoU**', f'**{number_text(score["miou"])}**'],
                     ['pixel accuracy', number_text(score['pixel_accuracy'])], ['frames', str(score['frames'])]]
            lines += [f'### `{name}` against ground truth in {label_set} (IoU %)', '',
                      *table_lines(['class', 'IoU %'], rows)]
    return '\n'.join(lines).rstrip('\n') + '\n'
