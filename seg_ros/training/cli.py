"""``seg-train`` and ``seg-eval``: the command lines over the trainer and the evaluation path.

``seg-train RECIPE [KEY=VALUE ...] [--resume [CHECKPOINT]] [--check] [--print-recipe]``
    RECIPE is a YAML file or the name of a bundled one (``enet_camvid``); each KEY=VALUE sets a
    recipe key by its dotted name (``data.root=/data/camvid train.epochs=5 output.dir=runs/x``).
    Under ``torchrun --nproc-per-node N seg-train ...`` it trains on N processes.

``seg-eval CHECKPOINT --dataset NAME --data-root DIR [--split val] [--json PATH] ...``
    Scores a checkpoint on a labelled split: per-class IoU and accuracy, mIoU, pixel accuracy,
    mean class accuracy, Cityscapes' 7-category IoU where it applies; a table on stdout, a JSON
    report and a confusion-matrix PNG on request.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from seg_ros.checkpoint import CheckpointError, load_checkpoint
from seg_ros.data import DatasetError, EvalTransform, build_dataset, list_datasets, validate_dataset
from seg_ros.inference.segmenter import resolve_device
from seg_ros.training.config import RecipeError, dump_recipe, load_recipe, recipe_dirs
from seg_ros.training.evaluate import check_same_classes, evaluate, format_report, plot_confusion, summarize
from seg_ros.vocabulary import PRECISIONS

__all__ = ['eval_main', 'train_main']

log = logging.getLogger('seg_ros.training')

# Bad recipes, data, checkpoints and options, and the file system refusing (permissions, full disk).
EXPECTED_ERRORS = (RecipeError, DatasetError, CheckpointError, ValueError, OSError)


def _configure_logging(verbose: bool = True) -> None:
    rank = int(os.environ.get('RANK', '0'))
    level = logging.INFO if verbose and rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')


def _list_recipes() -> str:
    names = sorted({p.stem for d in recipe_dirs() for p in d.glob('*.yaml')})
    return ', '.join(names) or 'none found'


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='seg-train',
        description='Train a segmentation network from a recipe (config/train/<network>_<dataset>.yaml).',
        epilog='Examples:\n'
               '  seg-train enet_camvid data.root=../shared/data/camvid\n'
               '  seg-train erfnet_cityscapes data.root=/data/cityscapes train.precision=bf16\n'
               '  seg-train enet_camvid data.root=DIR train.epochs=1 train.device=cpu data.num_workers=0\n'
               '  seg-train enet_camvid data.root=DIR --resume\n'
               '  torchrun --nproc-per-node 4 $(which seg-train) dsnet_cityscapes data.root=DIR\n'
               f'Bundled recipes: {_list_recipes()}',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('recipe', help='recipe YAML file, or the name of a bundled recipe')
    parser.add_argument('overrides', nargs='*', metavar='KEY=VALUE',
                        help='set a recipe key by its dotted name; the value is YAML '
                             '(e.g. augment.crop_size=[512,512], loss={name: ohem})')
    parser.add_argument('--resume', nargs='?', const=True, default=False, metavar='CHECKPOINT',
                        help='continue the run in output.dir from its last.pt (or from CHECKPOINT); '
                             'starts from the beginning when there is no last.pt yet')
    parser.add_argument('--check', action='store_true',
                        help='check the recipe, every file of the data and every stage (one forward pass), '
                             'then exit without training')
    parser.add_argument('--print-recipe', action='store_true',
                        help='print the resolved recipe (defaults and overrides applied) and exit')
    return parser


def train_main(argv: Sequence[str] | None = None) -> int:
    """``seg-train``; returns the exit status (0 done, 2 bad recipe/data/checkpoint, 130 interrupted)."""
    from seg_ros.training.trainer import Trainer, TrainingError

    args = _train_parser().parse_args(argv)
    _configure_logging()
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        if args.print_recipe:
            print(dump_recipe(recipe), end='')
            return 0
        trainer = Trainer(recipe, resume=args.resume)
        if args.check:
            for line in trainer.check():
                print(line)
            print('check passed: the recipe, the data and every stage are usable')
            return 0
        last = trainer.fit()
        if trainer.procs.is_main:
            best = 'none' if trainer.best_miou is None else f'{trainer.best_miou:.2f}'
            print(f'done: {last} (best: {last.parent / "best.pt"}, best val mIoU {best})')
        return 0
    except (*EXPECTED_ERRORS, TrainingError) as exc:
        print(f'seg-train: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('seg-train: interrupted; continue with --resume', file=sys.stderr)
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _input_size(values: list[str] | None) -> tuple[int, int] | str | None:
    """--input-size: two integers, 'native', or absent (the checkpoint's)."""
    if values is None:
        return 'checkpoint'
    if values == ['native']:
        return None
    try:
        height, width = (int(v) for v in values)
    except ValueError:
        raise ValueError(f'--input-size takes HEIGHT WIDTH or "native", got {" ".join(values)}') from None
    if height < 1 or width < 1:
        raise ValueError(f'--input-size must be positive, got {height} {width}')
    return height, width


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='seg-eval',
        description='Score a seg_ros checkpoint on a labelled dataset split at full label resolution.',
        epilog='Example:\n'
               '  seg-eval runs/enet_camvid/best.pt --dataset camvid --data-root ../shared/data/camvid '
               '--split val --json camvid_val.json',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', help='a seg_ros checkpoint (.pt), e.g. runs/<name>/best.pt')
    parser.add_argument('--dataset', required=True, help=f'dataset reader: {", ".join(list_datasets())}')
    parser.add_argument('--data-root', required=True, help='the dataset folder')
    parser.add_argument('--split', default='val', help='split to score (default: val)')
    parser.add_argument('--json', type=Path, help='write the report (scores in percent) to this JSON file')
    parser.add_argument('--plot', type=Path,
                        help='confusion-matrix heat-map PNG (default: beside --json, <stem>_confusion.png)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N (default: auto)')
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS,
                        help='fp32, or autocast to fp16 / bf16 (default: fp32)')
    parser.add_argument('--input-size', nargs='+', metavar='SIZE',
                        help='HEIGHT WIDTH the network sees (default: the checkpoint\'s input size), '
                             'or "native" for each image\'s own size; scores are always at label size')
    parser.add_argument('--flip', action='store_true', help='test-time augmentation: add the mirrored image')
    parser.add_argument('--scales', type=float, nargs='+', default=[1.0], metavar='S',
                        help='test-time augmentation: input scales to average (e.g. 0.75 1.0 1.25)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per batch (equal sizes only)')
    parser.add_argument('--num-workers', type=int, default=2, help='data loading processes')
    parser.add_argument('--no-check-files', action='store_true',
                        help='skip reading every file before scoring (problems then show mid-way)')
    return parser


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``seg-eval``; returns the exit status (0 done, 2 bad checkpoint, data or options)."""
    args = _eval_parser().parse_args(argv)
    _configure_logging()
    try:
        if args.batch_size < 1 or args.num_workers < 0 or min(args.scales) <= 0:
            raise ValueError('--batch-size must be >= 1, --num-workers >= 0 and --scales positive')
        input_size = _input_size(args.input_size)
        device = resolve_device(args.device)
        checkpoint = load_checkpoint(args.checkpoint)
        if input_size == 'checkpoint':
            input_size = checkpoint.input_size
        dataset = build_dataset(args.dataset, args.data_root, args.split,
                                EvalTransform(checkpoint.mean, checkpoint.std))
        check_same_classes(checkpoint.labels, dataset.label_set, what=f'{args.checkpoint} on {dataset!r}')
        if not args.no_check_files:
            problems = validate_dataset(dataset)
            if problems:
                raise DatasetError(f'{len(problems)} problem(s) in {dataset!r}:\n  ' + '\n  '.join(problems))
        model = checkpoint.build_model().to(device)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                            pin_memory=device.type == 'cuda')
        log.info('scoring %s (%s) on %r, network input %s, flip %s, scales %s', args.checkpoint,
                 checkpoint.model_name, dataset, input_size or 'native', args.flip, args.scales)
        batches = tqdm(loader, desc='seg-eval', unit='batch', dynamic_ncols=True, disable=None)
        confusion = evaluate(model, batches, num_classes=checkpoint.num_classes, device=device,
                             input_size=input_size, flip=args.flip, scales=args.scales,
                             precision=args.precision)
    except EXPECTED_ERRORS as exc:
        print(f'seg-eval: error: {exc}', file=sys.stderr)
        return 2
    report = summarize(confusion, checkpoint.labels)
    report.update({
        'checkpoint': str(args.checkpoint),
        'model': checkpoint.model_name,
        'dataset': args.dataset,
        'split': args.split,
        'images': len(dataset),
        'input_size': list(input_size) if input_size else 'native',
        'flip': args.flip,
        'scales': args.scales,
    })
    print(f'{checkpoint.model_name} on {args.dataset} {args.split} ({len(dataset)} images)')
    print(format_report(report))
    plot_path = args.plot or (args.json.with_name(f'{args.json.stem}_confusion.png') if args.json else None)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
        print(f'report: {args.json}')
    if plot_path:
        plot_confusion(confusion.matrix, checkpoint.labels, plot_path)
        print(f'confusion matrix: {plot_path}')
    return 0

