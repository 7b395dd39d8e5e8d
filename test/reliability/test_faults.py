"""Injected faults: real ones, raised where they would arise, not mocks.

- The forward pass produces NaN, or asks the CPU allocator for more memory than there is: the
  frame is skipped, counted and logged, and the next frame is served (the node, in-process).
- The checkpoint file is replaced by a corrupt one while the node runs: the node keeps serving
  with the weights it loaded; a restart fails with one clear message.
- A label file goes missing after the data checks: the run stops with an error naming the file
  (one line from ``seg-train``), writes no checkpoint, and resumes once the file is back.
- A training run is killed with SIGKILL at ten random points (reliability): every checkpoint on
  disk loads at every point, every resume succeeds, and the final weights equal those of a run
  never interrupted.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import Image

from seg_ros.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from seg_ros.data import DatasetError
from seg_ros.inference.segmenter import Segmenter
from seg_ros.models import get_model_builder, register_model
from seg_ros.ros.node import SegmentNode, StartupError
from seg_ros.training.cli import train_main
from seg_ros.training.config import load_recipe
from seg_ros.training.runlog import read_epoch_records
from seg_ros.training.trainer import Trainer

from ..support import CHANNEL_LABELS, CHANNEL_NET, ChannelArgmaxNet, channel_checkpoint
from ..support.datasets import write_shapes
from ..support.ros import Ros, add_node, camera_image, pixels, remove_node, stamped, values, wait_for
from ..support.training import subprocess_env, tiny_recipe_file, train_command
from .harness import REPO

HEIGHT, WIDTH = 48, 64
FAULTY_NET = 'test_faulty_channel'
NAN_MARK = (1, 2, 3)  # pixel (0, 0) of a frame whose forward pass gives NaN
OOM_MARK = (3, 2, 1)  # ... whose forward pass asks for 4 EiB, more than any address space
IMPOSSIBLE_BYTES = 1 << 62


class FaultyChannelNet(ChannelArgmaxNet):
    """``ChannelArgmaxNet`` whose forward pass fails for real on marked frames (mean 0 and std 1, and
    frames at the input size, so that the network sees the marks as they are, scaled to 0..1)."""

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        corner = [round(value * 255) for value in x[0, :, 0, 0].tolist()]
        if corner == list(OOM_MARK):
            torch.empty(IMPOSSIBLE_BYTES, dtype=torch.uint8, device=x.device)
        logits = super().forward_padded(x)
        return logits * float('nan') if corner == list(NAN_MARK) else logits


try:
    get_model_builder(FAULTY_NET)
except KeyError:
    @register_model(FAULTY_NET)
    def faulty_channel(*, num_classes: int = 3) -> FaultyChannelNet:
        return FaultyChannelNet(num_classes)


def start_node(ros: Ros, weights: Path, model: str, topic: str, **parameters: Any) -> SegmentNode:
    return add_node(ros, SegmentNode, model=model, weights=str(weights), image_topics=[topic], device='cpu',
                    diagnostics_period=0.1, **parameters)


def marked(seed: int, mark: tuple[int, int, int]) -> np.ndarray:
    image = camera_image(seed)
    image[0, 0] = mark
    return image


def test_nan_and_out_of_memory_in_the_forward_skip_the_frame(ros: Ros, tmp_path: Path, capfd) -> None:
    model = FaultyChannelNet().eval()
    weights = save_checkpoint(Checkpoint.from_model(model, FAULTY_NET, CHANNEL_LABELS, input_size=(HEIGHT, WIDTH),
                                                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
                              tmp_path / 'faulty.pt')
    # PyTorch: the faults are Python in the forward, which an exported graph (ONNX Runtime,
    # OpenVINO: what backend auto may choose) does not keep.
    reference = Segmenter(weights, device='cpu', backend='torch', precision='fp32', warmup=False)
    with pytest.raises(RuntimeError, match="can't allocate memory|not enough memory"):  # a real allocator failure
        reference.segment(marked(0, OOM_MARK))
    node = start_node(ros, weights, FAULTY_NET, '/fault/image_raw', backend='torch', precision='fp32')
    probe = ros.probe
    masks = probe.listen('/fault/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/fault/image_raw', 10)
    try:
        wait_for(lambda: probe.counter('/fault/image_raw', 'failed frames') == 0, what='diagnostics')
        for seed, mark in enumerate((NAN_MARK, OOM_MARK)):
            failed = probe.counter('/fault/image_raw', 'failed frames')
            bad = probe.frame(marked(seed, mark))
            publisher.publish(bad)
            wait_for(lambda failed=failed: probe.counter('/fault/image_raw', 'failed frames') > failed,
                     what=f'the frame marked {mark} counted as failed', every=lambda bad=bad: publisher.publish(bad))
            status = probe.status('/fault/image_raw')
            assert status.level == DiagnosticStatus.WARN and 'failed in the network' in status.message
            assert stamped(masks, bad.header.stamp) is None
            good = camera_image(10 + seed)
            out = probe.exchange(publisher, probe.frame(good), masks)
            np.testing.assert_array_equal(pixels(out), reference.segment(good).mask)
        assert node.fatal_error is None and node.context.ok()
    finally:
        remove_node(ros, node)
    assert 'skipped frame(s) of /fault/image_raw' in capfd.readouterr().err


def test_a_checkpoint_replaced_under_the_running_node(ros: Ros, tmp_path: Path) -> None:
    weights = channel_checkpoint(tmp_path / 'channel.pt', input_size=(HEIGHT, WIDTH))
    reference = Segmenter(weights, device='cpu', warmup=False)
    node = start_node(ros, weights, CHANNEL_NET, '/swap/image_raw')
    probe = ros.probe
    masks = probe.listen('/swap/segmentation/mask', Image)
    publisher = probe.create_publisher(Image, '/swap/image_raw', 10)
    try:
        probe.exchange(publisher, probe.frame(camera_image(20)), masks)
        weights.write_bytes(weights.read_bytes()[:700] + bytes(300))  # overwritten in place, corrupt
        image = camera_image(21)
        out = probe.exchange(publisher, probe.frame(image), masks)
        np.testing.assert_array_equal(pixels(out), reference.segment(image).mask)  # the loaded weights
        model = wait_for(lambda: (s := probe.status('model')) and values(s)['checkpoint'] == str(weights) and s,
                         what='model diagnostics')
        assert model.level == DiagnosticStatus.OK
    finally:
        remove_node(ros, node)
    with pytest.raises(StartupError) as error:  # a restart
        start_node(ros, weights, CHANNEL_NET, '/swap/image_raw')
    message = str(error.value)
    assert 'channel.pt' in message and 'truncated or corrupt' in message and '\n' not in message


# -- training --------------------------------------------------------------------------------------------



def test_a_label_file_that_goes_missing_during_a_run(tmp_path: Path, one_thread, capsys) -> None:
    """(A missing file before a run: test_training.py::test_data_problems_are_reported_before_training.)"""
    root = write_shapes(tmp_path / 'data', train=4, val=2)
    recipe = tiny_recipe_file(tmp_path, root)
    overrides = [f'output.dir={tmp_path / "run"}', 'train.epochs=2', 'scheduler={name: constant}']
    trainer = Trainer(load_recipe(recipe, overrides))  # the data checks pass ...
    label = root / 'labels' / 'train' / '002.png'
    kept = label.read_bytes()
    label.unlink()  # ... then the file goes away
    with pytest.raises(DatasetError, match=r'label .*labels/train/002\.png: missing'):
        trainer.fit()
    assert not list((tmp_path / 'run').glob('*.pt'))
    assert train_main([str(recipe), *overrides, '--resume']) == 2  # the command line: one clear line
    error = capsys.readouterr().err
    assert 'seg-train: error: ' in error and 'labels/train/002.png: missing' in error

    label.write_bytes(kept)
    assert train_main([str(recipe), *overrides, '--resume']) == 0
    assert load_checkpoint(tmp_path / 'run' / 'last.pt').training['epoch'] == 2
    assert [r['epoch'] for r in read_epoch_records(tmp_path / 'run' / 'log.jsonl')] == [0, 1]


KILLS = 10
EPOCHS = 30  # more than ten kills, each at most three epochs into training, can interrupt
STARTUP_KILLS = 0.2  # the share of kills during start-up (imports, data checks, loading last.pt)


def checkpoints_load(run: Path) -> list[str]:
    """Every checkpoint in ``run`` loads (no half-written file under a checkpoint's name); their names."""
    names = []
    for path in sorted(run.glob('*.pt')):
        load_checkpoint(path)
        names.append(path.name)
    return names


def training_starts(run: Path) -> int:
    """How many times a run has started training (its 'start' records)."""
    log = run / 'log.jsonl'
    return log.read_text().count('"event": "start"') if log.exists() else 0


def kill_at_random(process: subprocess.Popen, run: Path, rng: random.Random, epoch_seconds: float) -> str:
    """SIGKILL ``process`` during start-up or up to three epochs into training; where it was."""
    if rng.random() < STARTUP_KILLS:
        time.sleep(rng.uniform(0.0, 2.0))
        where = 'start-up'
    else:
        starts = training_starts(run)
        wait_for(lambda: training_starts(run) > starts or process.poll() is not None, timeout=120,
                 what='the run to start training')
        time.sleep(rng.uniform(0.0, 3 * epoch_seconds))
        where = 'training'
    process.send_signal(signal.SIGKILL)
    return where


@pytest.mark.reliability
def test_training_killed_ten_times_at_random_points(tmp_path: Path, one_thread, figures) -> None:
    root = write_shapes(tmp_path / 'data', train=8, val=4)
    recipe = tiny_recipe_file(tmp_path, root)
    epochs = f'train.epochs={EPOCHS}'
    started = time.monotonic()
    Trainer(load_recipe(recipe, [f'output.dir={tmp_path / "whole"}', epochs])).fit()
    epoch_seconds = (time.monotonic() - started) / EPOCHS

    run = tmp_path / 'killed'
    rng = random.Random(8)
    kills: list[dict[str, Any]] = []
    for kill in range(KILLS):
        process = subprocess.Popen(train_command(recipe, run, epochs, '--resume'), env=subprocess_env(),
                                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        where = kill_at_random(process, run, rng, epoch_seconds)
        _, stderr = process.communicate()
        assert process.returncode == -signal.SIGKILL, f'kill {kill}: the run ended first\n{stderr[-2000:]}'
        names = checkpoints_load(run)
        epoch = load_checkpoint(run / 'last.pt').training['epoch'] if 'last.pt' in names else 0
        assert not kills or epoch >= kills[-1]['epochs_done'], 'a resume went backwards'
        kills.append({'during': where, 'epochs_done': epoch,
                      'temporary_files': len(list(run.glob('.*.tmp'))) if run.exists() else 0})

    final = subprocess.run(train_command(recipe, run, epochs, '--resume'), env=subprocess_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    whole, resumed = load_checkpoint(tmp_path / 'whole' / 'last.pt'), load_checkpoint(run / 'last.pt')
    identical = all(torch.equal(value, resumed.state_dict[key]) for key, value in whole.state_dict.items())
    figures(kills=len(kills), killed=kills, resumes_succeeded=KILLS + 1, epochs=EPOCHS,
            final_weights_equal_uninterrupted=identical, epoch_seconds=round(epoch_seconds, 2))
    assert whole.state_dict.keys() == resumed.state_dict.keys() and identical
    assert resumed.training['global_step'] == whole.training['global_step']
    assert [r['epoch'] for r in read_epoch_records(run / 'log.jsonl')] == list(range(EPOCHS))
