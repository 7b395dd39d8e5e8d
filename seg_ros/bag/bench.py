"""``seg-bag bench``: how many frames per second ``seg-bag`` evaluates over several runs, with 1 and 2
worker processes (or the counts given), on this machine.

It records ``--runs`` bags of ``--frames`` frames each with ``seg-bag make`` (from an image folder,
e.g. CamVid's, or the synthetic road scene), evaluates all of them with every worker count in
turn (default outputs: output bag, video, mosaic, plots, report), and prints frames/s over the
whole set: all frames / wall time from the first run's start to the last one's end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seg_ros.bag.evaluate import EXPECTED_ERRORS, EvaluationOptions
from seg_ros.bag.make import MakeOptions, make_bag
from seg_ros.bag.report import table_lines
from seg_ros.bag.runs import evaluate_runs
from seg_ros.paths import default_checkpoint

__all__ = ['bench_main', 'bench_workers']


def bench_workers(bags: dict[str, Path], checkpoint: Path, workers: Sequence[int], folder: Path,
                  options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Evaluate ``bags`` once per worker count; one row per count with frames, wall time and frames/s."""
    rows = []
    for count in workers:
        evaluation = EvaluationOptions(bag=next(iter(bags.values())), checkpoints={'model': checkpoint},
                                       out=folder / f'workers_{count}', device='cpu', progress=False,
                                       **(options or {}))
        totals = evaluate_runs(evaluation, bags, workers=count)['totals']
        if totals['runs_failed']:
            raise RuntimeError(f'{totals["runs_failed"]} run(s) failed with {count} worker(s); see '
                               f'{evaluation.out / "report.md"}')
        rows.append({'workers': count, 'runs': totals['runs'], 'frames': totals['frames'],
                     'wall_time_s': round(totals['wall_time_s'], 2),
                     'frames_per_second': round(totals['frames_per_second'], 2)})
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='seg-bag bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--images', type=Path, metavar='DIR',
                        help='image folder the bags are made of (default: the synthetic scene, 640x360)')
    parser.add_argument('--frames', type=int, default=30, help='frames per bag (default: 30)')
    parser.add_argument('--runs', type=int, default=4, help='bags (default: 4)')
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2], help='worker counts (default: 1 2)')
    parser.add_argument('--checkpoint', type=Path, help='default: the shipped ENet CamVid model')
    parser.add_argument('--json', type=Path, metavar='PATH', help='save the rows here')
    return parser


def bench_main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    checkpoint = args.checkpoint or default_checkpoint('enet')
    try:
        with tempfile.TemporaryDirectory(prefix='seg_bag_bench_') as tmp:
            folder = Path(tmp)
            source = str(args.images) if args.images else 'synthetic'
            bags = {}
            for run in range(args.runs):
                bags[f'run{run}'] = folder / f'run{run}'
                make_bag(MakeOptions(source=source, out=bags[f'run{run}'], rate=10.0, max_frames=args.frames,
                                     encoding='jpeg', progress=False))
            rows = bench_workers(bags, checkpoint, args.workers, folder)
    except (*EXPECTED_ERRORS, RuntimeError) as error:
        print(f'seg-bag bench: error: {error}', file=sys.stderr)
        return 2
    print(f'seg-bag on {os.cpu_count()} cores, {args.runs} bags x {args.frames} frames of {source}, '
          f'model {checkpoint.name}:')
    header = ['workers', 'runs', 'frames', 'wall s', 'frames/s']
    print('\n'.join(table_lines(header, [[str(row[key]) for key in ('workers', 'runs', 'frames', 'wall_time_s',
                                                                  'frames_per_second')] for row in rows])))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + '\n')
    return 0
