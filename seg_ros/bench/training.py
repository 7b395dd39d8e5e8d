"""seg-bench ``training``: training images/s with data loading, the streamed fp32 trainer against today's."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import torch

from seg_ros.bench.common import load_average
from seg_ros.data import SegmentationDataset, build_dataset
from seg_ros.labels import CAMVID11

__all__ = ['bench_training', 'synthetic_training_split']


def synthetic_training_split(folder: Path, size: tuple[int, int], frames: int) -> SegmentationDataset:
    """``frames`` JPEG frames of the synthetic road scene with their exact labels, as a ``folder`` dataset."""
    from seg_ros.frames.synthetic import SyntheticRoadScene

    scene = SyntheticRoadScene(width=size[1], height=size[0])
    for sub in ('images/train', 'labels/train'):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / 'classes.txt').write_text(''.join(f'{n} {r} {g} {b}\n' for n, (r, g, b)
                                                in zip(CAMVID11.names, CAMVID11.colors, strict=True)))
    for index in range(frames):
        image, label = scene.frame(index / 15)
        cv2.imwrite(str(folder / 'images' / 'train' / f'{index:04d}.jpg'), image[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(folder / 'labels' / 'train' / f'{index:04d}.png'), label)
    return build_dataset('folder', folder, 'train')


def bench_training(args: argparse.Namespace, device: torch.device, folder: Path) -> list[dict]:
    """Training images/s, data loading included: the streamed fp32 trainer against today's, per network."""
    from seg_ros.training.speed import compare_trainers

    needed = args.train_batch * (args.train_iterations + 1)
    if args.train_data:
        dataset = build_dataset('camvid', args.train_data, 'train')
    else:
        dataset = synthetic_training_split(folder / 'training_frames', args.train_size, needed)
    rows = []
    for network in args.train_networks:
        for row in compare_trainers(network, dataset, device, batch=args.train_batch, crop=args.train_size,
                                    batches=args.train_iterations):
            rows.append({**row, 'load_average': load_average()})
    return rows
