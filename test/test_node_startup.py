"""segment_node start-up: every misconfiguration stops it with one clear message, and main() exits
with code 1 (no traceback); a good configuration runs until SIGINT and exits with 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import rclpy
import torch
from rclpy.context import Context
from rclpy.parameter import Parameter

from seg_ros.paths import default_checkpoint, share_dirs
from seg_ros.ros.node import SegmentNode, StartupError

from .support import CHANNEL_NET, channel_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def context():
    context = Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


@pytest.fixture(scope='module')
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('startup')
    foreign = folder / 'foreign.pt'
    torch.save({'conv.weight': torch.zeros(3, 3, 1, 1)}, foreign)  # a bare state dict
    channel = channel_checkpoint(folder / 'channel.pt')
    corrupt = folder / 'corrupt.pt'
    corrupt.write_bytes(channel.read_bytes()[:600])  # truncated
    return {'channel': channel, 'foreign': foreign, 'corrupt': corrupt, 'missing': folder / 'missing.pt'}


MISCONFIGURATIONS = {  # name: (parameters, words the message must hold); file names refer to `files`
    'missing checkpoint': ({'weights': 'missing', 'model': ''}, ['missing.pt', 'no such file']),
    'foreign file': ({'weights': 'foreign', 'model': ''}, ['foreign.pt', 'not a seg_ros checkpoint']),
    'corrupt file': ({'weights': 'corrupt', 'model': ''}, ['corrupt.pt', 'truncated or corrupt']),
    'unknown model': ({'model': 'nonet'}, ["unknown model 'nonet'", 'enet']),
    'no shipped checkpoint': ({'model': CHANNEL_NET}, [f'{CHANNEL_NET}_camvid.pt', 'shipped checkpoints']),
    'model differs from weights': ({'weights': 'channel', 'model': 'enet'}, [CHANNEL_NET, "model is 'enet'"]),
    'cuda device absent': ({'weights': 'channel', 'device': f'cuda:{torch.cuda.device_count()}'},
                           [f'cuda:{torch.cuda.device_count()}', 'CUDA']),
    'unknown precision': ({'weights': 'channel', 'precision': 'fp8'},
                          ['precision', 'fp8', 'auto, fp32, fp16, bf16']),
    'out of range': ({'weights': 'channel', 'overlay_alpha': 1.5}, ['overlay_alpha', 'out of range']),
    'wrong type': ({'weights': 'channel', 'qos_depth': 'deep'}, ['qos_depth', 'INTEGER']),
    'half an input size': ({'weights': 'channel', 'input_height': 32}, ['input_height', 'set both']),
    'two cameras, one namespace': ({'weights': 'channel', 'image_topics': ['/c/image_raw', '/c/image_rect']},
                                   ['/c/segmentation', 'own namespace']),
    'invalid topic': ({'weights': 'channel', 'image_topics': ['/bad topic/image_raw']},
                      ["'/bad topic/image_raw'", 'not a valid ROS name']),
}


@pytest.mark.parametrize('case', MISCONFIGURATIONS)
def test_misconfiguration_stops_the_node_with_a_clear_message(case: str, context: Context,
                                                              files: dict[str, Path]) -> None:
    parameters, words = MISCONFIGURATIONS[case]
    model = CHANNEL_NET if parameters.get('weights') == 'channel' else 'enet'
    overrides: dict[str, Any] = {'model': model, 'device': 'cpu', **parameters}
    if overrides.get('weights') in files:
        overrides['weights'] = str(files[overrides['weights']])
    with pytest.raises(StartupError) as error:
        SegmentNode(context=context,
                    parameter_overrides=[Parameter(name, value=value) for name, value in overrides.items()])
    message = str(error.value)
    assert all(word in message for word in words), message
    assert '\n' not in message


def test_default_checkpoint_lookup_names_what_is_shipped() -> None:
    assert REPO in share_dirs()  # running from the checkout
    with pytest.raises(FileNotFoundError, match=r'nonet_camvid\.pt .*shipped checkpoints: .*weights'):
        default_checkpoint('nonet')


def _run_main(*ros_args: str, setup: str = '') -> subprocess.Popen:
    code = f'import sys; {setup}from seg_ros.ros.node import main; sys.exit(main())'
    return subprocess.Popen([sys.executable, '-c', code, '--ros-args', *ros_args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_main_exits_1_with_one_error_line_and_no_traceback(files: dict[str, Path]) -> None:
    process = _run_main('--params-file', str(REPO / 'config' / 'segment.yaml'),
                        '-p', f'weights:={files["missing"]}')
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if '[ERROR]' in line]
    assert len(errors) == 1 and 'missing.pt: no such file' in errors[0], stderr
    assert 'Traceback' not in stderr


def test_main_runs_until_interrupted_and_exits_0(files: dict[str, Path]) -> None:
    process = _run_main('--params-file', str(REPO / 'config' / 'segment.yaml'),
                        '-p', f'weights:={files["channel"]}', '-p', f'model:={CHANNEL_NET}',
                        '-p', 'device:=cpu',
                        setup='sys.path.insert(0, "test"); import support; ')
    try:
        deadline = time.monotonic() + 60
        line = ''
        while 'segmenting' not in line and time.monotonic() < deadline and process.poll() is None:
            line = process.stderr.readline()
        assert 'segmenting /camera/image_raw with test_channel_argmax' in line, line
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert 'Traceback' not in stderr
