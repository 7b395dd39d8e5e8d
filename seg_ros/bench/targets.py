"""The project's speed targets, met or missed by how much, from the figures of the other sections."""

from __future__ import annotations

from typing import Any

import torch

from seg_ros.bench.papers import PAPER_FIGURES
from seg_ros.vocabulary import format_size

__all__ = ['evaluate_targets']


def evaluate_targets(results: dict[str, Any], device: torch.device) -> list[dict]:
    """The project's speed targets that the measured sections can answer, met or missed by how much."""
    targets = []
    for row in results.get('node', []):
        if row['network'] == 'enet' and row['resolution'] == '640x360' and row['cameras'] == 1 \
                and 'e2e_over_forward' in row and device.type == 'cpu':
            targets.append(_target('node e2e p50 within 1.2x of the bare forward (ENet, 640x360, CPU)',
                                   row['e2e_over_forward'], 1.2, higher_is_better=False, unit='x'))
    for row in results.get('speedup', []):
        targets.append(_target(f'fast path >= 2x plain fp32 eager ({row["network"]}, {row["resolution"]}, '
                               f'best: {row["best_mode"]} {row["best_precision"]})', row['speedup'], 2.0,
                               higher_is_better=True, unit='x'))
    for row in results.get('training', []):
        if row['trainer'] == 'now':
            targets.append(_target(f'training images/s >= 2x the streamed fp32 trainer ({row["network"]}, '
                                   f'{row["crop"]}, batch {row["batch"]})', row['speedup'], 2.0,
                                   higher_is_better=True, unit='x'))
    amx = any(flag.startswith('amx') for flag in results.get('machine', {}).get('cpu_flags', []))
    for row in results.get('segment_speedup', []) if device.type == 'cpu' else []:
        required = 3.0 if row['network'] == 'erfnet' and amx else 2.0
        targets.append(_target(f'segment(), automatic choice >= {required:g}x plain fp32 eager ({row["network"]}, '
                               f'{row["resolution"]}, chose {row["choice"]})', row['speedup'], required,
                               higher_is_better=True, unit='x'))
    overload = results.get('overload', {})
    if 'p99_over_p50' in overload:
        targets.append(_target('overload: latency bounded, p99 within 2x p50', overload['p99_over_p50'], 2.0,
                               higher_is_better=False, unit='x'))
    if 'rss_settled_min_mib' in overload:  # flat: ends within 5 % of its lowest after the warm-up
        targets.append(_target('overload: node memory flat (end / settled minimum)',
                               overload['rss_end_mib'] / overload['rss_settled_min_mib'], 1.05,
                               higher_is_better=False, unit='x'))
    if device.type != 'cuda':
        return targets
    forward = results.get('forward', [])
    for figure in PAPER_FIGURES:
        candidates = [r for r in forward if r['network'] == figure.network and r['precision'] == 'fp16'
                      and (r['height'], r['width']) == figure.size and r['batch'] == 1]
        if candidates:
            best = max(candidates, key=lambda r: r['fps'])
            targets.append(_target(f'{figure.network} fp16 >= 20x {figure.source} ({figure.hardware}, '
                                   f'{format_size(figure.size)}: {figure.fps:.1f} fps)',
                                   best['fps'], 20 * figure.fps, higher_is_better=True, unit='fps'))
    for row in results.get('node', []):
        if row['resolution'] == '1280x720' and row['cameras'] == 1 and 'overhead_ms' in row:
            targets.append(_target(f'node overhead beyond the forward < 1 ms ({row["network"]}, 1280x720)',
                                   row['overhead_ms'], 1.0, higher_is_better=False, unit='ms'))
        if row['network'] == 'erfnet' and row['resolution'] == '1280x720' and row['cameras'] == 4 \
                and row['rate_hz'] >= 30 and 'latency_p99_ms' in row:
            targets.append(_target('ERFNet, 4 cameras 1280x720 at 30 Hz: p99 < 20 ms',
                                   row['latency_p99_ms'], 20.0, higher_is_better=False, unit='ms'))
    return targets


def _target(name: str, measured: float, required: float, *, higher_is_better: bool, unit: str) -> dict:
    met = measured >= required if higher_is_better else measured <= required
    return {'target': name, 'measured': measured, 'required': required, 'unit': unit, 'met': met,
            'factor_missing': None if met else (required / measured if higher_is_better
                                                else measured / required)}
