"""``seg-study``: the studies of paper 000 (Lourenço et al., section VI) rerun through the trainer.

``seg-study {losses,procedures,mixup} --data-root DIR [--recipe enet_camvid] [--out DIR] [--epochs N]
[--runs NAME,NAME] [KEY=VALUE ...]``

A study is a list of named runs; each run is a recipe (``enet_camvid`` by default: ENet on CamVid)
plus the overrides the paper's study varies, trained in this process by
:class:`~seg_ros.training.trainer.Trainer` into ``<out>/<run>/`` and scored on the validation
split from its ``best.pt`` by ``seg-eval``, the one evaluation path. The table (per-class IoU,
mIoU, epochs, wall time, the paper's figure) is rewritten as ``<out>/results.md`` and
``<out>/results.json`` after every run, so it is there even when a later run breaks.

- ``losses``: 000 Table III (CE, balanced CE, OHEM, Dice, focal) and 002's OWFL and OWFL + SEL.
- ``procedures``: 000 Table II (baseline, + mixed precision, + progressive scaling) with wall times.
- ``mixup``: 000 VI-C (the baseline, and the baseline with mixup).

A run whose folder holds ``best.pt`` and the done marker ``study_run.json`` is not trained again;
one that stopped part-way goes on from its ``last.pt``. A run that fails is a row saying why, the
others go on, and the exit status is 1. KEY=VALUE overrides apply to every run, before the study's
own: a study sets the keys it compares. ``--epochs N`` sets ``train.epochs``, the baseline's epochs,
from which the runs that train longer (mixup) or in stages (progressive scaling) take theirs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from seg_ros.data import DatasetError, build_dataset, class_frequencies
from seg_ros.inference.segmenter import resolve_device
from seg_ros.reporting import clock_duration, machine_info, markdown_table
from seg_ros.training.config import RecipeError, load_recipe
from seg_ros.training.evaluate import evaluate_checkpoint, write_report
from seg_ros.training.feeding import resolve_num_workers
from seg_ros.training.modelcard import training_wall_time
from seg_ros.training.runlog import LOG, read_epoch_records
from seg_ros.training.trainer import BEST, Trainer, TrainingError
from seg_ros.vocabulary import percent_text

__all__ = ['STUDIES', 'Run', 'Study', 'main', 'run_study']

log = logging.getLogger(__name__)

DONE = 'study_run.json'
RESULTS = 'results'


@dataclass(frozen=True)
class Run:
    """One row of a study: the recipe with ``overrides``, named as the paper's table names it."""

    name: str                        # folder under --out, and what --runs selects
    label: str                       # the row as the paper's table writes it
    overrides: tuple[str, ...]
    source: str                      # where in the papers the settings come from
    published: str | None = None     # the paper's figure for this row (000: ENet on Cityscapes val)
    not_applicable: str | None = None  # why this network cannot run it (the row says so)


@dataclass(frozen=True)
class Study:
    """A named list of runs, built from the base recipe and the device the runs train on."""

    name: str
    title: str
    runs: Callable[[dict[str, Any], torch.device], list[Run]]
    class_frequency_row: bool = False  # 000 Table III lists the classes' pixel shares


def _single_stage_epochs(recipe: dict[str, Any], study: str) -> int:
    if recipe['stages']:
        raise RecipeError(f'the {study} study sets epochs and stages itself: it needs a recipe with '
                          'train.epochs and no stages (stages=[] train.epochs=N)')
    return recipe['train']['epochs']


def loss_runs(recipe: dict[str, Any], device: torch.device) -> list[Run]:
    """000 VI-E, Table III: the baseline with only the loss changed; OWFL and OWFL + SEL from 002.

    000 says the learning rate "has to be adjusted for each loss" but publishes no rates, and its
    reference code (bernardomig/torch_semantic_segmentation, scripts/train3.py) takes one rate per
    run from its config: every loss keeps the recipe's rate here. SEL needs a context head (DSNet
    built with ``context_head``); for a network without one the OWFL + SEL row says so and the OWFL
    row stands alone.
    """
    model = recipe['model']
    no_context = None if model['options'].get('context_head') else (
        f'{model["name"]} has no context head, which the semantic encoding loss (002 eq. 7) needs '
        '(DSNet with context_head: --recipe dsnet_camvid); the OWFL row is this network\'s result')
    return [
        Run('ce', 'Cross Entropy', ('loss={name: ce}',), '000 eq. 2', '45.0'),
        Run('balanced_ce', 'Balanced CE', ('loss={name: balanced_ce, c: 1.02}',),
            '000 eqs. 3-4, c = 1.02 (ENet weights)', '53.1'),
        # threshold and kept share: the reference code's OHEMLoss (numel_frac=0.05)
        Run('ohem', 'OHEM', ('loss={name: ohem, threshold: 0.7, min_kept: 0.05}',),
            '000 eq. 6; t = 0.7, p = 0.05 (reference code)', '52.8'),
        Run('dice', 'Dice', ('loss={name: dice}',), '000 eq. 7', '53.8'),
        Run('focal', 'Focal Loss', ('loss={name: focal, gamma: 2}',), '000 eq. 5; gamma = 2 (reference code)',
            '49.7'),
        Run('owfl', 'OWFL', ('loss={name: owfl, c: 1.02}',), '002 eqs. 2-4, c = 1.02'),
        Run('owfl_sel', 'OWFL + SEL',
            ('loss=[{name: owfl, c: 1.02, weight: 1.0}, {name: sel, weight: 1.0}]',),
            '002 eqs. 1-7, lambda1 = lambda2 = 1', not_applicable=no_context),
    ]


# 000 Table II, BL + MP + PS: crop side as a share of the largest crop, batch as a multiple of the
# batch at the largest crop (384, 512, 768 with 64, 32, 16); 100 of the 300 epochs each.
PROGRESSIVE_STAGES = ((1 / 2, 4), (2 / 3, 2), (1, 1))


def _split_epochs(epochs: int, parts: int) -> list[int]:
    """``epochs`` in ``parts`` nearly equal shares, the later ones larger; at least 1 each."""
    share, extra = divmod(epochs, parts)
    return [max(1, share + (index >= parts - extra)) for index in range(parts)]


def procedure_runs(recipe: dict[str, Any], device: torch.device) -> list[Run]:
    """000 VI-D, Table II: baseline (fp32), + mixed precision, + progressive scaling.

    000 trained ENet on Cityscapes with crops of up to 768x768: batch 8 in fp32 (what fit in the
    GPU's memory), 16 in mixed precision, and under progressive scaling crops of 384, 512 and 768
    with batches 64, 32 and 16, 100 epochs each. Here the recipe's crop and batch play 768 and 16:
    the baseline trains half the batch, the stages 1/2, 2/3 and all of the crop side with 4, 2 and
    1 times the batch, a third of the epochs each. 000 gives no stage learning rates; its Table I
    found that the rate should stay constant while the pixels per batch do (as they do across
    these stages), so each stage keeps the recipe's rate, with a fresh schedule over its epochs.
    Mixed precision is fp16 autocast on CUDA (000 used Apex) and bf16 autocast on a CPU, where
    fp16 autocast is not available.
    """
    epochs = _single_stage_epochs(recipe, 'procedures')
    height, width = recipe['augment']['crop_size']
    batch = recipe['train']['batch_size']
    mixed = 'fp16' if device.type == 'cuda' else 'bf16'
    stages = []
    for (side, multiple), stage_epochs in zip(PROGRESSIVE_STAGES, _split_epochs(epochs, 3), strict=True):
        crop = f'{round(height * side)}, {round(width * side)}'
        stages.append(f'{{name: crop{crop.replace(", ", "x")}, epochs: {stage_epochs}, crop_size: [{crop}], '
                      f'batch_size: {batch * multiple}}}')
    return [
        Run('baseline', 'BL', (f'train.batch_size={max(1, batch // 2)}', 'train.precision=fp32'),
            '000 Table II: fp32, half the mixed-precision batch', '56.8 in 12h30'),
        Run('mixed_precision', 'BL + MP', (f'train.batch_size={batch}', f'train.precision={mixed}'),
            f'000 Table II: mixed precision ({mixed}), twice the batch', '52.4 in 8h30'),
        Run('progressive_scaling', 'BL + MP + PS',
            (f'train.precision={mixed}', 'train.epochs=null', f'stages=[{", ".join(stages)}]'),
            '000 Table II and III-D: three stages of growing crops and shrinking batches', '56.9 in 5h30'),
    ]


def mixup_runs(recipe: dict[str, Any], device: torch.device) -> list[Run]:
    """000 VI-C: mixup with alpha = 0.1 on the baseline, 500 epochs for the baseline's 300."""
    epochs = _single_stage_epochs(recipe, 'mixup')
    return [
        Run('baseline', 'Baseline', (), '000 VI-A', '53.1'),
        Run('mixup', 'Baseline + mixup',
            ('augment.mixup_alpha=0.1', f'train.epochs={max(1, round(epochs * 5 / 3))}'),
            '000 VI-C: alpha = 0.1, 5/3 of the epochs (500 for 300)', '50.1'),
    ]


STUDIES = {study.name: study for study in (
    Study('losses', 'Influence of the loss function (000 Table III; OWFL and SEL from 002)', loss_runs,
          class_frequency_row=True),
    Study('procedures', 'Training procedures: baseline, mixed precision, progressive scaling (000 Table II)',
          procedure_runs),
    Study('mixup', 'Mixup training (000 VI-C)', mixup_runs),
)}


# -- running ------------------------------------------------------------------------------------------


def _finished(folder: Path, overrides: list[str]) -> dict[str, Any] | None:
    """The done marker of a finished run with these overrides; None when it has to (re)train.

    A finished run made with other overrides is an error: its numbers would be shown as this run's.
    """
    marker = folder / DONE
    if not (marker.is_file() and (folder / BEST).is_file()):
        return None
    try:
        done = json.loads(marker.read_text())
        made_with = done['recipe_overrides']
    except (ValueError, KeyError, TypeError):  # unreadable: score the finished run again, which rewrites it
        return None
    if made_with != overrides:
        raise TrainingError(f'{folder} holds a finished run made with other overrides '
                            f'({" ".join(made_with)}); choose another --out or remove the folder')
    return done


def _train_and_score(recipe_name: str, overrides: list[str], folder: Path) -> dict[str, Any]:
    """Train (or finish) the run in ``folder``, score its best.pt, write and return the done marker."""
    recipe = load_recipe(recipe_name, overrides)
    trainer = Trainer(recipe, resume=True)
    trainer.fit()
    data = recipe['data']
    # check_files=False: the trainer read every file before training
    evaluation = evaluate_checkpoint(folder / BEST, dataset=data['dataset'], root=data['root'],
                                     split=data['val_split'], device=recipe['train']['device'],
                                     num_workers=resolve_num_workers(data['num_workers'], cached=False),
                                     check_files=False)
    write_report(evaluation, folder / 'val.json')
    report = evaluation.report
    done = {
        'recipe_overrides': overrides,
        'finished': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'precision': trainer.precision,
        'epochs': len(read_epoch_records(folder / LOG)),
        'wall_time_s': training_wall_time(folder / LOG),
        **{key: report[key] for key in ('miou', 'pixel_accuracy', 'mean_class_accuracy', 'per_class_iou')},
    }
    scratch = folder / f'.{DONE}.tmp'  # written whole, then renamed: a marker is never half a file
    scratch.write_text(json.dumps(done, indent=1))
    os.replace(scratch, folder / DONE)
    return done


def run_one(run: Run, recipe_name: str, common: list[str], folder: Path) -> dict[str, Any]:
    """The table row of ``run``: trained and scored now, taken from an earlier invocation, or why not."""
    row = {**asdict(run), 'overrides': list(run.overrides)}
    if run.not_applicable:
        return {**row, 'status': 'not_applicable', 'message': run.not_applicable}
    overrides = [*common, *run.overrides, f'output.dir={folder}']
    try:
        done = _finished(folder, overrides)
        if done is not None:
            log.info('%s: finished earlier, not trained again (%s)', run.name, folder)
            return {**row, **done, 'status': 'done', 'reused': True}
        log.info('%s: %s', run.name, ' '.join(run.overrides) or 'the recipe as it is')
        return {**row, **_train_and_score(recipe_name, overrides, folder), 'status': 'done', 'reused': False}
    except Exception as exc:  # a broken run is a row of the table, never the end of the study
        log.exception('%s failed', run.name)
        return {**row, 'status': 'failed', 'message': f'{type(exc).__name__}: {exc}'}


def _status(row: dict[str, Any]) -> str:
    if row['status'] == 'done':
        return 'done (earlier)' if row['reused'] else 'done'
    kind = 'n/a' if row['status'] == 'not_applicable' else 'failed'
    return f'{kind}: {row["message"]}'.replace('|', '/').replace('\n', ' ')


def format_results(results: dict[str, Any]) -> str:
    """The study's results as markdown: context, the table, and each run's settings."""
    classes = results['classes']
    columns = {'label': 'run', **{f'iou.{name}': name for name in classes}, 'miou': 'mIoU',
               'epochs': 'epochs', 'wall_time': 'wall time', 'precision': 'precision',
               'published': 'paper (000: Cityscapes)', 'status': 'status'}
    rows = []
    for row in results['runs']:
        per_class = row.get('per_class_iou') or {}
        rows.append({'label': row['label'], **{f'iou.{n}': percent_text(per_class.get(n), '-') for n in classes},
                     'miou': percent_text(row.get('miou'), '-'), 'epochs': row.get('epochs'),
                     'wall_time': clock_duration(row.get('wall_time_s')), 'precision': row.get('precision'),
                     'published': row['published'], 'status': _status(row)})
    frequency = results.get('class_frequency')
    if frequency:
        rows.append({'label': f'class frequency ({frequency["split"]})',
                     **{f'iou.{n}': f'{share:.2f}' for n, share in frequency['percent'].items()},
                     'status': 'pixel share %, not IoU'})
    machine = results['machine']
    lines = [
        f'# {results["title"]}', '',
        f'Recipe `{results["recipe"]}` with `{" ".join(results["overrides"]) or "no overrides"}`, '
        f'each run adding its own below; scored by seg-eval on `{results["val_split"]}` at full label '
        'resolution (IoU in %).', '',
        f'Trained on {machine["device"]} ({machine["cpu"]}, {machine["torch_threads"]} torch threads, '
        f'load average {machine["load_average_1_5_15"][0]} at the start), torch {machine["torch"]}; '
        f'updated {results["updated"]}.',
    ]
    if any(row.get('precision') == 'bf16' for row in results['runs']) and machine['device'] == 'cpu':
        lines.append('Mixed precision on a CPU is bf16 autocast: fp16 autocast is CUDA only.')
    lines += ['Wall time: training and validation, from the run\'s log.jsonl (start to last epoch).',
              'The paper column is 000\'s ENet on Cityscapes val: a reference, not the same data.', '',
              markdown_table(rows, columns), '', '## Runs', '']
    for row in results['runs']:
        settings = ' '.join(f'`{o}`' for o in row['overrides']) or 'the recipe as it is'
        lines.append(f'- `{row["name"]}` ({row["source"]}): {settings}')
    return '\n'.join(lines) + '\n'


def _class_frequency(recipe: dict[str, Any], out: Path) -> dict[str, Any]:
    data = recipe['data']
    dataset = build_dataset(data['dataset'], data['root'], data['train_split'])
    shares = class_frequencies(dataset, cache_path=out / f'class_frequencies_{data["dataset"]}_'
                                                         f'{data["train_split"]}.json')
    return {'split': data['train_split'],
            'percent': {name: 100.0 * float(share)
                        for name, share in zip(dataset.label_set.names, shares, strict=True)}}


def run_study(study: Study, *, recipe_name: str, overrides: Sequence[str], out: Path,
              only: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or reuse) every run of ``study``, writing ``results.md``/``.json`` in ``out`` after each."""
    common = list(overrides)
    base = load_recipe(recipe_name, common)
    if base['data']['val_split'] is None:
        raise RecipeError('a study scores every run on data.val_split, which is null')
    device = resolve_device(base['train']['device'])
    runs = study.runs(base, device)
    unknown = sorted(set(only) - {run.name for run in runs})
    if unknown:
        raise ValueError(f'--runs {",".join(unknown)}: not a run of the {study.name} study '
                         f'({", ".join(run.name for run in runs)})')
    runs = [run for run in runs if not only or run.name in only]
    out.mkdir(parents=True, exist_ok=True)
    labels = build_dataset(base['data']['dataset'], base['data']['root'], base['data']['val_split']).label_set
    results: dict[str, Any] = {
        'study': study.name, 'title': study.title, 'recipe': recipe_name, 'overrides': common,
        'val_split': base['data']['val_split'], 'classes': list(labels.names),
        'machine': machine_info(device), 'runs': [],
        'class_frequency': _class_frequency(base, out) if study.class_frequency_row else None,
    }
    for run in runs:
        results['runs'].append(run_one(run, recipe_name, common, out / run.name))
        results['updated'] = datetime.now(timezone.utc).isoformat(timespec='seconds')
        (out / f'{RESULTS}.json').write_text(json.dumps(results, indent=1))
        (out / f'{RESULTS}.md').write_text(format_results(results))
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='seg-study',
        description='Rerun a study of paper 000 (section VI) with the trainer: one run per row, each '
                    'scored on the validation split; a markdown + JSON table in --out.',
        epilog='Examples:\n'
               '  seg-study losses --data-root ../shared/data/camvid\n'
               '  seg-study procedures --data-root DIR --out runs/studies/procedures_gpu train.device=cuda\n'
               '  seg-study losses --data-root DIR --recipe dsnet_camvid --runs owfl,owfl_sel\n'
               '  seg-study mixup --data-root DIR --epochs 1 augment.crop_size=[90,120] train.batch_size=4',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('study', choices=sorted(STUDIES), help='which study')
    parser.add_argument('--data-root', required=True, help='the dataset folder (data.root)')
    parser.add_argument('--recipe', default='enet_camvid',
                        help='recipe the runs start from (default: enet_camvid)')
    parser.add_argument('--out', type=Path, help='output folder (default: runs/studies/<study>)')
    parser.add_argument('--epochs', type=int, help='train.epochs of the baseline (default: the recipe\'s)')
    parser.add_argument('--runs', type=lambda text: [name for name in text.split(',') if name], default=[],
                        metavar='NAME,NAME', help='only these runs of the study (comma-separated)')
    parser.add_argument('overrides', nargs='*', metavar='KEY=VALUE',
                        help='recipe overrides for every run (e.g. train.device=cuda data.num_workers=8)')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``seg-study``; exit status 0 when every run is done (or not applicable), 1 when one failed,
    2 for a bad study, recipe or data."""
    args = _parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s',
                        datefmt='%H:%M:%S')
    if args.epochs is not None and args.epochs < 1:
        print(f'seg-study: error: --epochs must be >= 1, got {args.epochs}', file=sys.stderr)
        return 2
    overrides = [f'data.root={args.data_root}', *([f'train.epochs={args.epochs}'] if args.epochs else []),
                 *args.overrides]
    out = args.out or Path('runs') / 'studies' / args.study
    started = time.perf_counter()
    try:
        results = run_study(STUDIES[args.study], recipe_name=args.recipe, overrides=overrides, out=out,
                            only=args.runs)
    except (RecipeError, DatasetError, ValueError, OSError) as exc:
        print(f'seg-study: error: {exc}', file=sys.stderr)
        return 2
    print(format_results(results))
    failed = [row['name'] for row in results['runs'] if row['status'] == 'failed']
    print(f'{len(results["runs"])} run(s) in {clock_duration(time.perf_counter() - started)}; table: '
          f'{out / RESULTS}.md' + (f'; failed: {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
