"""Several runs at once: a folder of bags and single bags, on worker processes and on a local Dask
cluster, into one combined report whose totals pool every frame; memory per worker flat with bag
length; the throughput bench. Bags are made with ``seg-bag make`` from CamVid frames."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from distributed import LocalCluster

from seg_ros.bag.bench import bench_workers
from seg_ros.bag.cli import main
from seg_ros.bag.runs import find_bags
from seg_ros.checkpoint import Checkpoint, save_checkpoint
from seg_ros.labels import CAMVID11, IGNORE_INDEX
from seg_ros.models import build_model

from .support.bags import iou_from_masks, pixels, read_bag

RUN_FRAMES = {'a': 2, 'b': 3, 'c': 4}  # frames of each run's bag
VOID = 11


def _images(camvid_root: Path, folder: Path, first: int, count: int, labels: Path | None = None) -> Path:
    folder.mkdir(parents=True)
    for line in (camvid_root / 'val.txt').read_text().splitlines()[first:first + count]:
        image, label = line.split()
        shutil.copy(camvid_root / image, folder)
        if labels is not None:
            labels.mkdir(exist_ok=True)
            shutil.copy(camvid_root / label, labels)
    return folder


@pytest.fixture(scope='module')
def runs(tmp_path_factory, camvid_root) -> SimpleNamespace:
    """Bags a and b in a folder, c on its own (all labelled as CamVid names them), an untrained ENet."""
    root = tmp_path_factory.mktemp('runs')
    labels = root / 'labels'
    first = 0
    for name, count in RUN_FRAMES.items():
        images = _images(camvid_root, root / 'images' / name, first, count, labels)
        first += count
        target = root / ('drives' if name != 'c' else '') / name
        assert main(['make', str(images), '--rate', '5', '--out', str(target), '-q']) == 0
    torch.manual_seed(0)
    model = build_model('enet', CAMVID11.num_classes).eval()
    checkpoint = save_checkpoint(Checkpoint.from_model(model, 'enet', CAMVID11, input_size=(48, 64)),
                                 root / 'enet.pt')
    return SimpleNamespace(root=root, labels=labels, checkpoint=checkpoint,
                           argv=[str(root / 'drives'), str(root / 'c'), '-c', f'enet={checkpoint}',
                                 '--gt-dir', str(labels), '--label-ignore', str(VOID), '--no-video', '-q'])


def test_find_bags_takes_bags_and_folders_of_them(runs):
    assert find_bags([runs.root / 'drives', runs.root / 'c', runs.root / 'drives' / 'a']) == {
        'a': runs.root / 'drives' / 'a', 'b': runs.root / 'drives' / 'b', 'c': runs.root / 'c',
        'a_2': runs.root / 'drives' / 'a'}


def pooled_iou_from_output_bags(runs: SimpleNamespace, out: Path) -> np.ndarray:
    """Per-class IoU over every frame of every run, from the output bags' masks and the label PNGs."""
    masks, truth = [], []
    for run in RUN_FRAMES:
        recorded = read_bag(runs.root / 'drives' / run if run != 'c' else runs.root / run)
        names = [Path(msg.data).stem for _, msg in recorded['/camera/file_name']]
        output = read_bag(out / run / 'bag')['/camera/segmentation/enet/mask/compressed']
        for (_, msg), name in zip(output, names, strict=True):
            masks.append(pixels(msg))
            label = cv2.imread(str(runs.labels / f'{name}.png'), cv2.IMREAD_UNCHANGED)
            truth.append(np.where(label == VOID, IGNORE_INDEX, label))
    return iou_from_masks(masks, truth, CAMVID11.num_classes)


@pytest.fixture(scope='module')
def on_workers(runs) -> dict:
    out = runs.root / 'workers'
    assert main([*runs.argv, '--workers', '2', '--out', str(out)]) == 0
    return json.loads((out / 'report.json').read_text())


def test_two_workers_write_a_run_folder_each_and_one_combined_report(runs, on_workers):
    out = runs.root / 'workers'
    rows = on_workers['runs']
    assert [row['name'] for row in rows] == list(RUN_FRAMES)
    assert [row['frames'] for row in rows] == list(RUN_FRAMES.values())
    assert all(row['status'] == 'done' and row['labelled_frames'] == row['frames'] for row in rows)
    for row in rows:
        report = json.loads((out / row['name'] / 'report.json').read_text())
        assert report['run']['frames'] == row['frames'] and (out / row['name'] / 'bag').is_dir()
    totals = on_workers['totals']
    assert totals['frames'] == totals['labelled_frames'] == sum(RUN_FRAMES.values())
    assert totals['where'] == '2 worker processes' and totals['frames_per_second'] > 0
    markdown = (out / 'report.md').read_text()
    assert '| [`a`](a/report.md) | done | 2 |' in markdown and '## Totals over all frames' in markdown


def test_totals_pool_per_class_iou_over_all_frames(runs, on_workers):
    pooled = on_workers['totals']['models']['enet']['ground_truth']['camvid11']
    expected = pooled_iou_from_output_bags(runs, runs.root / 'workers')
    reported = np.array([np.nan if v is None else v for v in pooled['per_class_iou'].values()])
    np.testing.assert_allclose(reported, expected, rtol=1e-9)
    assert pooled['miou'] == pytest.approx(np.nanmean(expected))
    assert pooled['frames'] == sum(RUN_FRAMES.values())
    # Pooled, not averaged: the mean of the runs' mIoUs is another number.
    per_run = [row['scores']['enet']['miou'] for row in on_workers['runs']]
    assert pooled['miou'] != pytest.approx(np.mean(per_run), abs=1e-6)


def test_a_dask_cluster_gives_the_same_results(runs, on_workers):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        out = runs.root / 'dask'
        assert main([*runs.argv, '--scheduler', cluster.scheduler_address, '--out', str(out)]) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['totals']['where'] == f'Dask cluster at {cluster.scheduler_address}'
    assert [row['frames'] for row in report['runs']] == list(RUN_FRAMES.values())
    ours, theirs = (r['totals']['models']['enet']['ground_truth']['camvid11'] for r in (report, on_workers))
    assert ours['confusion_matrix'] == theirs['confusion_matrix']


def test_an_unreachable_scheduler_is_a_clear_error(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr('seg_ros.bag.runs.SCHEDULER_TIMEOUT_S', 1.0)
    assert main([*runs.argv, '--scheduler', 'tcp://127.0.0.1:9', '--out', str(tmp_path / 'out')]) == 2
    assert 'no Dask scheduler answers there' in capsys.readouterr().err


def test_a_failed_run_is_a_row_and_a_non_zero_exit(runs, tmp_path, capsys):
    junk = tmp_path / 'junk.mcap'
    junk.write_bytes(b'not an mcap file at all')
    out = tmp_path / 'out'
    assert main([str(runs.root / 'c'), str(junk), '-c', str(runs.checkpoint), '--no-video', '-q',
                 '--out', str(out)]) == 2
    rows = json.loads((out / 'report.json').read_text())['runs']
    assert [(row['name'], row['status']) for row in rows] == [('c', 'done'), ('junk', 'failed')]
    assert 'not an MCAP file' in rows[1]['error'] and 'junk: failed' in capsys.readouterr().err


def test_memory_per_worker_stays_flat_with_bag_length(tmp_path, runs):
    """A worker's peak memory after 16 frames and after 48 differs by far less than 32 frames' worth."""
    assert main(['make', 'synthetic', '--max-frames', '48', '--out', str(tmp_path / 'long'), '-q']) == 0
    out = tmp_path / 'out'
    assert main([str(tmp_path / 'long'), '-c', str(runs.checkpoint), '--workers', '2', '--no-video',
                 '--outputs', 'image,mask,color_mask,overlay,stats', '-q', '--out', str(out)]) == 0
    row, = json.loads((out / 'report.json').read_text())['runs']
    memory = row['memory']
    # 32 more 640x360 frames kept would be 21 MiB of input alone, 80 MiB with their results. What
    # does grow is bounded and full by then: the mosaic's rows and the MCAP writer's chunk.
    assert row['frames'] == 48 and memory['peak_mib'] - memory['peak_after_16_frames_mib'] < 12, memory


def test_bench_measures_frames_per_second_for_each_worker_count(runs, tmp_path):
    bags = {name: runs.root / 'drives' / name for name in ('a', 'b')}
    rows = bench_workers(bags, runs.checkpoint, [1, 2], tmp_path, {'write_video': False})
    assert [(row['workers'], row['frames']) for row in rows] == [(1, 5), (2, 5)]
    assert all(row['frames_per_second'] == pytest.approx(row['frames'] / row['wall_time_s'], rel=0.05)
               for row in rows)
