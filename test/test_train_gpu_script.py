"""scripts/train_gpu.sh on a CPU with a tiny budget, so that the one GPU run it gets works the first time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2

from seg_ros.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def small_camvid(source: Path, target: Path, frames: dict[str, int], size: tuple[int, int] = (96, 128)) -> Path:
    """The first frames of each real CamVid split, shrunk to ``size``, in CamVid's own layout."""
    for split, count in frames.items():
        lines = []
        for line in (source / f'{split}.txt').read_text().split('\n')[:count]:
            image_rel, label_rel = line.split()
            for rel, interpolation, flags in ((image_rel, cv2.INTER_AREA, cv2.IMREAD_COLOR),
                                              (label_rel, cv2.INTER_NEAREST, cv2.IMREAD_UNCHANGED)):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                shrunk = cv2.resize(cv2.imread(str(source / rel), flags), size[::-1], interpolation=interpolation)
                cv2.imwrite(str(target / rel), shrunk)
            lines.append(line)
        (target / f'{split}.txt').write_text('\n'.join(lines) + '\n')
    return target


def test_train_gpu_script_trains_scores_and_benchmarks_on_a_cpu(tmp_path, camvid_root):
    data = small_camvid(camvid_root, tmp_path / 'camvid', {'train': 16, 'val': 4})
    out = tmp_path / 'out'
    env = {**os.environ, 'PYTHON': sys.executable, 'CAMVID': str(data), 'TRAIN_GPU_DEVICE': 'cpu',
           'TRAIN_GPU_NETWORKS': 'enet', 'TRAIN_GPU_SIZE': '96x64', 'TRAIN_GPU_EPOCHS': '2', 'TRAIN_GPU_BATCH': '4',
           'TRAIN_GPU_BENCH': '--sections training --train-size 96x64 --train-iterations 1 --train-batch 2 '
                           '--train-networks enet',
           'OMP_NUM_THREADS': '1'}
    done = subprocess.run(['bash', str(REPO / 'scripts' / 'train_gpu.sh'), str(out), '1'], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    assert '== enet: 2 epochs' in done.stdout and 'exited with' not in done.stdout

    best = load_checkpoint(out / 'enet' / 'best.pt')
    assert best.model_name == 'enet' and best.meta['recipe']['train']['epochs'] == 2
    assert best.meta['recipe']['data']['root'] == str(data)
    assert best.meta['metrics']['miou'] is not None
    command = (out / 'command_enet.txt').read_text()
    assert command.startswith('seg-train enet_camvid ') and 'train.device=cpu' in command

    bench = json.loads((out / 'bench.json').read_text())
    assert [row['trainer'] for row in bench['training']] == ['before', 'now']
    assert '## Training throughput' in (out / 'bench.md').read_text()
