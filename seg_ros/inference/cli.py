"""``seg-export``: networks to ONNX files, each checked against PyTorch with ONNX Runtime.

Writes ``<name>.onnx`` into the ``--out`` folder for each checkpoint (or each registered network
with random weights, to check that it exports) and prints one table row per checked size; exits 1
when an export differs from PyTorch beyond the tolerance. The graph's form: ``seg_ros.inference.onnx``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from seg_ros.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from seg_ros.inference.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, export_onnx, verify_onnx
from seg_ros.inference.preparation import MAX_CHANGED_SHARE, prepare_model
from seg_ros.labels import CAMVID11
from seg_ros.models import build_model, list_models
from seg_ros.vocabulary import format_size, size_argument

__all__ = ['main']

DEFAULT_CHECK_SIZES = ((360, 480), (101, 203))  # (height, width): one even, one odd


def _sources(args: argparse.Namespace) -> list[tuple[str, Checkpoint]]:
    """(output stem, checkpoint) for each network to export."""
    if args.checkpoint:
        return [(Path(path).stem, load_checkpoint(path)) for path in args.checkpoint]
    names = list_models() if args.all else args.model
    torch.manual_seed(args.seed)
    return [(name, Checkpoint.from_model(build_model(name, num_classes=CAMVID11.num_classes), name, CAMVID11,
                                         input_size=args.size or DEFAULT_CHECK_SIZES[0]))
            for name in names]


def _metadata(checkpoint: Checkpoint, weights: str) -> dict[str, str]:
    return {
        'model': checkpoint.model_name,
        'weights': weights,
        'labels': json.dumps({'name': checkpoint.labels.name, 'names': list(checkpoint.labels.names),
                              'colors': [list(c) for c in checkpoint.labels.colors]}),
        'input_size': json.dumps(list(checkpoint.input_size)),
        'mean': json.dumps(list(checkpoint.mean)),
        'std': json.dumps(list(checkpoint.std)),
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='seg-export', description=__doc__.split('\n\n')[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', nargs='+', metavar='PATH', help='checkpoint(s) to export')
    source.add_argument('--model', nargs='+', choices=list_models(), metavar='NAME',
                        help='network(s) with random weights, to check exportability: '
                             f'{", ".join(list_models())}')
    source.add_argument('--all', action='store_true', help='every registered network, random weights')
    parser.add_argument('--out', type=Path, default=Path('.'), help='folder for <name>.onnx (default: .)')
    parser.add_argument('--size', type=size_argument, default=None, metavar='WxH',
                        help="resolution to trace at (default: the checkpoint's input size)")
    parser.add_argument('--check-sizes', type=size_argument, nargs='+', default=list(DEFAULT_CHECK_SIZES),
                        metavar='WxH', help='resolutions at which ONNX Runtime is compared with PyTorch '
                        f'(default: {" ".join(format_size(s) for s in DEFAULT_CHECK_SIZES)})')
    parser.add_argument('--tolerance', type=float, default=DEFAULT_TOLERANCE,
                        help='largest accepted |ONNX - PyTorch| relative to the largest logit '
                        f'(default: {DEFAULT_TOLERANCE:g})')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'(default: {DEFAULT_OPSET})')
    parser.add_argument('--no-fold-bn', action='store_true', help='keep batch-norm layers')
    parser.add_argument('--seed', type=int, default=0, help='random weights and inputs (default: 0)')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Export, verify and report; 1 if any export differs from PyTorch beyond the tolerance."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        sources = _sources(args)
    except (CheckpointError, FileNotFoundError) as error:
        print(f'seg-export: {error}', file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    print('| network | file | size | max abs error | max abs logit | logits beyond tolerance | '
          'argmax agreement | result |')
    print('|' + ' --- |' * 8)
    for stem, checkpoint in sources:
        size = args.size or checkpoint.input_size
        model = prepare_model(checkpoint.build_model(), fold_bn=not args.no_fold_bn, example_size=size)
        onnx_model = export_onnx(model, example_size=size, opset=args.opset,
                                 metadata=_metadata(checkpoint, stem))
        path = args.out / f'{stem}.onnx'
        path.write_bytes(onnx_model)
        for check in verify_onnx(onnx_model, model, args.check_sizes, seed=args.seed, tolerance=args.tolerance):
            failures += not check.passed()
            print(f'| {checkpoint.model_name} | {path} | {format_size(check.size)} | '
                  f'{check.max_abs_error:.2e} | {check.max_abs_logit:.3g} | {check.changed_share:.3%} | '
                  f'{check.argmax_agreement:.3%} | {"ok" if check.passed() else "MISMATCH"} |')
    if failures:
        print(f'seg-export: {failures} check(s) with more than {MAX_CHANGED_SHARE:.1%} of the logits beyond '
              f'the tolerance {args.tolerance:g}', file=sys.stderr)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
