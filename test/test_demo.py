"""seg-demo end to end: segment_node and sample_camera as processes over real DDS, watched live."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import psutil
import pytest

from seg_ros.checkpoint import Checkpoint, save_checkpoint
from seg_ros.labels import CAMVID11
from seg_ros.models import build_model

DEMO = [sys.executable, '-m', 'seg_ros.ros.demo']
LIVE_LINE = re.compile(
    r'^\[\s*\d+ s\]\s+(?P<fps>[\d.]+) fps\s+latency\s+(?P<latency>\d+) ms\s+(?P<classes>.*)$', re.MULTILINE)
CLASS_SHARE = re.compile(r'(\w+) ([\d.]+)%')


@pytest.fixture(scope='module')
def untrained_enet(tmp_path_factory) -> Path:
    """ENet with random weights at a small input size: the demo's mechanics, quickly."""
    model = build_model('enet', num_classes=CAMVID11.num_classes).eval()
    checkpoint = Checkpoint.from_model(model, 'enet', CAMVID11, input_size=(96, 160),
                                       meta={'purpose': 'tests'})
    return save_checkpoint(checkpoint, tmp_path_factory.mktemp('demo') / 'enet_untrained.pt')


def _check_live_lines(stdout: str) -> None:
    lines = list(LIVE_LINE.finditer(stdout))
    assert lines, stdout
    assert max(float(line['fps']) for line in lines) > 0
    shares = CLASS_SHARE.findall(lines[-1]['classes'])
    assert len(shares) == 3 and all(name in CAMVID11.names for name, _ in shares), lines[-1][0]
    rounding = 0.05 * len(shares) + 1e-6  # each share is printed rounded to 0.1 %
    assert 0 < sum(float(share) for _, share in shares) <= 100 + rounding


@pytest.mark.slow
def test_demo_runs_for_the_given_seconds_and_saves_the_overlay(tmp_path, untrained_enet):
    result = subprocess.run([*DEMO, '--seconds', '8', '--weights', str(untrained_enet), '--device', 'cpu',
                             '--out', str(tmp_path)], capture_output=True, text=True, timeout=240)
    out = tmp_path / 'demo_overlay.png'
    assert result.returncode == 0, result.stdout + result.stderr
    _check_live_lines(result.stdout)
    assert f'the last one is saved as {out}' in result.stdout
    overlay = cv2.imread(str(out))
    assert overlay is not None and overlay.shape == (360, 640, 3)  # the camera's size


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigint_stops_both_nodes_and_still_saves_the_overlay(tmp_path, untrained_enet):
    out = tmp_path / 'demo_overlay.png'
    demo = subprocess.Popen([*DEMO, '--seconds', '120', '--weights', str(untrained_enet), '--device', 'cpu',
                             '--size', '320x192', '--out', str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        nodes = []
        stdout = ''
        deadline = time.monotonic() + 180
        while len(LIVE_LINE.findall(stdout)) < 2 and time.monotonic() < deadline and demo.poll() is None:
            stdout += demo.stdout.readline()
            if len(nodes) < 2:
                nodes = psutil.Process(demo.pid).children()
        assert [len(nodes), demo.poll()] == [2, None], stdout
        demo.send_signal(signal.SIGINT)  # to the demo only: it must pass it on to the nodes
        rest, stderr = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, stdout + rest + stderr
    _check_live_lines(stdout)
    assert not any(node.is_running() and node.status() != psutil.STATUS_ZOMBIE for node in nodes)
    overlay = cv2.imread(str(out))
    assert overlay is not None and overlay.shape == (192, 320, 3)
