"""``seg-train``, ``seg-eval`` and ``seg-card``: the command lines over the trainer, the evaluation and the model cards.

``seg-train RECIPE [KEY=VALUE ...] [--resume [CHECKPOINT]] [--check] [--print-recipe]``
    RECIPE is a YAML file or the name of a bundled one (``enet_camvid``); each KEY=VALUE sets a
    recipe key by its dotted name (``data.root=/data/camvid train.epochs=5 output.dir=runs/x``).
    Under ``torchrun --nproc-per-node N seg-train ...`` it trains on N processes.

``seg-eval CHECKPOINT --dataset NAME --data-root DIR [--split val] [--json PATH] ...``
    Scores a checkpoint on a labelled split: per-class IoU and accuracy, mIoU, pixel accuracy,
    mean class accuracy, Cityscapes' 7-category IoU where it applies; a table on stdout, a JSON
    report and a confusion-matrix PNG on request. It scores through the ``Segmenter`` the node runs.

``seg-card CHECKPOINT --recipe-command "seg-train ..." --hardware "..." [--out models]``
    Writes the checkpoint's model card and regenerates the folder's index
    (``seg_ros.training.modelcard``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from seg_ros.checkpoint import CheckpointError
from seg_ros.data import DatasetError, list_datasets
from seg_ros.inference.backends import BACKENDS
from seg_ros.inference.segmenter import resolve_device
from seg_ros.training.config import RecipeError, dump_recipe, load_recipe, recipe_dirs
from seg_ros.training.evaluate import evaluate_checkpoint, format_report, plot_confusion, write_report
from seg_ros.training.modelcard import write_card
from seg_ros.vocabulary import PRECISION_CHOICES, size_argument

__all__ = ['card_main', 'eval_main', 'train_main']

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


def _input_size(text: str) -> tuple[int, int] | str:
    """--input-size: ``WIDTHxHEIGHT`` or ``native``."""
    return text if text == 'native' else size_argument(text)


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
    parser.add_argument('--precision', default='fp32', choices=PRECISION_CHOICES,
                        help='as segment_node\'s parameter; auto measures (default: fp32)')
    parser.add_argument('--backend', default='torch', choices=BACKENDS,
                        help='as segment_node\'s parameter; auto measures (default: torch)')
    parser.add_argument('--input-size', type=_input_size, metavar='WxH',
                        help='what the network sees (default: the checkpoint\'s input size), or "native" for '
                             'each image\'s own size; scores are always at label size')
    parser.add_argument('--flip', action='store_true', help='test-time augmentation: add the mirrored image')
    parser.add_argument('--scales', type=float, nargs='+', default=[1.0], metavar='S',
                        help='test-time augmentation: input scales to average (e.g. 0.75 1.0 1.25)')
    parser.add_argument('--num-workers', type=int, default=2, help='processes that decode the files (default: 2)')
    parser.add_argument('--no-check-files', action='store_true',
                        help='skip reading every file before scoring (problems then show mid-way)')
    return parser


def eval_main(argv: Sequence[str] | None = None) -> int:
    """``seg-eval``; returns the exit status (0 done, 2 bad checkpoint, data or options)."""
    args = _eval_parser().parse_args(argv)
    _configure_logging()
    try:
        evaluation = evaluate_checkpoint(
            args.checkpoint, dataset=args.dataset, root=args.data_root, split=args.split, device=args.device,
            precision=args.precision, backend=args.backend, input_size=args.input_size, flip=args.flip,
            scales=args.scales, num_workers=args.num_workers, check_files=not args.no_check_files)
    except EXPECTED_ERRORS as exc:
        print(f'seg-eval: error: {exc}', file=sys.stderr)
        return 2
    report = evaluation.report
    print(f'{report["model"]} on {args.dataset} {args.split} ({report["images"]} images)')
    print(format_report(report))
    if args.json:
        print('report: {}\nconfusion matrix: {}'.format(*write_report(evaluation, args.json, args.plot)))
    elif args.plot:
        print(f'confusion matrix: {plot_confusion(evaluation.confusion.matrix, evaluation.labels, args.plot)}')
    return 0


def _card_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='seg-card',
        description='Write the model card of a trained checkpoint (<out>/<network>_<dataset>.md) and '
                    'regenerate <out>/README.md.',
        epilog='Example:\n'
               '  seg-card runs/enet_camvid/best.pt \\\n'
               '      --recipe-command "seg-train enet_camvid data.root=../shared/data/camvid" \\\n'
               '      --hardware "1x NVIDIA H100 80GB, 16 CPU cores"',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint', type=Path, help='a checkpoint seg-train wrote (best.pt)')
    parser.add_argument('--recipe-command', required=True,
                        help='the seg-train command line that trained it, quoted as one argument')
    parser.add_argument('--hardware', required=True, help='what it was trained on (e.g. "1x RTX 2080 Ti")')
    parser.add_argument('--out', type=Path, default=Path('models'),
                        help='folder of the cards (default: models)')
    parser.add_argument('--data-root', help='dataset folder (default: data.root of the checkpoint\'s recipe)')
    parser.add_argument('--split', help='split to score (default: the recipe\'s data.val_split)')
    parser.add_argument('--log', type=Path, help='the run\'s log.jsonl (default: beside the checkpoint)')
    parser.add_argument('--frames', type=int, default=100, help='timed frames for frames/s (default: 100)')
    parser.add_argument('--device', default='cpu', help='device to score and time on (default: cpu)')
    parser.add_argument('--num-workers', type=int, default=2, help='data loading processes of seg-eval')
    return parser


def card_main(argv: Sequence[str] | None = None) -> int:
    """``seg-card``: exit status 0 with the card written, 2 for a bad checkpoint, command, data or option."""
    args = _card_parser().parse_args(argv)
    try:
        if args.frames < 1 or args.num_workers < 0:
            raise ValueError(f'--frames must be >= 1 and --num-workers >= 0, got {args.frames} and '
                             f'{args.num_workers}')
        resolve_device(args.device)
        card = write_card(args.checkpoint, recipe_command=args.recipe_command, hardware=args.hardware,
                          out=args.out, data_root=args.data_root, split=args.split, log_path=args.log,
                          frames=args.frames, device=args.device, num_workers=args.num_workers)
    except EXPECTED_ERRORS as exc:
        print(f'seg-card: error: {exc}', file=sys.stderr)
        return 2
    print(f'card: {card}\nindex: {args.out / "README.md"}')
    return 0

