"""``seg-models``: list the networks with their parameter counts and output shapes."""

from __future__ import annotations

import argparse

import torch

from seg_ros.models import build_model, count_parameters, list_models
from seg_ros.vocabulary import size_argument

# Figures the papers report, for the table printed beside ours.
PAPER_PARAMETERS = {
    'enet': ('0.37 M', 'ENet (Paszke et al. 2016), as cited by 001 Table IV / 002 Table 8'),
    'erfnet': ('2.06 M', '001 (ERFNet), section IV, 19 classes'),
    'dsnet': ('0.91 M', '002 (DSNet), Table 8'),
    'segfast': ('603,288', '003 (SegFast), Table 5'),
    'segfast_basic': ('2,965,976', '003 (SegFast), Table 5'),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='seg-models', description=__doc__)
    parser.add_argument('--num-classes', type=int, default=19)
    parser.add_argument('--size', type=size_argument, default=(360, 480), metavar='WxH',
                        help='input size (default: 480x360)')
    args = parser.parse_args(argv)
    height, width = args.size

    size = f'1x3x{height}x{width}'
    print(f'| network | parameters ({args.num_classes} classes) | paper | output for {size} |')
    print('| --- | ---: | ---: | --- |')
    x = torch.rand(1, 3, height, width)
    for name in list_models():
        if name not in PAPER_PARAMETERS:
            continue  # networks registered by users or tests
        model = build_model(name, args.num_classes).eval()
        with torch.inference_mode():
            shape = tuple(model(x).shape)
        print(f'| {name} | {count_parameters(model):,} | {PAPER_PARAMETERS[name][0]} | {shape} |')
    return 0
