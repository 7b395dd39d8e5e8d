"""The executables that ``ros2 run`` and ``ros2 launch`` start (``<prefix>/lib/seg_ros/<name>``), run
as a user runs them: with this environment's bin/ not on PATH. They use the interpreter of the
environment they were installed into, and SIGINT or SIGTERM at any moment ends them with exit code 0
and no traceback, also a second SIGINT while the first is being handled."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .support.processes import (
    PREFIX,
    QUICK_RUNS,
    Started,
    assert_clean,
    check_installed_copy_is_current,
    node_executables,
    user_environment,
)

NODE_DIR = PREFIX / 'lib' / 'seg_ros'
START_TIMEOUT = 90.0  # torch and rclpy load in seconds, slower on a busy 2-core machine
STOP_TIMEOUT = 20.0




@pytest.fixture(scope='module', autouse=True)
def installed() -> None:
    check_installed_copy_is_current()




def test_every_executable_is_run_here() -> None:
    assert set(node_executables()) == {*QUICK_RUNS, 'segment_lifecycle_node'}


@pytest.mark.parametrize('name', QUICK_RUNS)
def test_installed_executable_runs_with_the_environment_interpreter(name: str) -> None:
    executable = NODE_DIR / name
    assert os.access(executable, os.X_OK), f'{executable} is not executable'
    arguments, code, words = QUICK_RUNS[name]
    result = subprocess.run([str(executable), *arguments], env=user_environment(), capture_output=True,
                            text=True, timeout=START_TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == code and words in output, output
    assert 'Traceback' not in output, output


def test_delegate_finds_bin_of_its_own_prefix_through_symlinks(tmp_path: Path) -> None:
    """A pip install anywhere (venv, --user, a system prefix): lib/seg_ros/<name> execs <prefix>/bin/<name>."""
    prefix = tmp_path / 'prefix'
    (prefix / 'bin').mkdir(parents=True)
    (prefix / 'lib' / 'seg_ros').mkdir(parents=True)
    shutil.copy2(NODE_DIR / 'segment_node', prefix / 'lib' / 'seg_ros' / 'segment_node')
    target = prefix / 'bin' / 'segment_node'
    target.write_text('#!/bin/sh\necho "bin/segment_node $*"\n')
    target.chmod(0o755)
    (tmp_path / 'elsewhere').symlink_to(prefix / 'lib' / 'seg_ros' / 'segment_node')
    for executable in (prefix / 'lib' / 'seg_ros' / 'segment_node', tmp_path / 'elsewhere'):
        result = subprocess.run([str(executable), '--ros-args', '-p', 'a:=b c'], capture_output=True, text=True,
                                env={'PATH': '/usr/bin:/bin'}, check=True)
        assert result.stdout == 'bin/segment_node --ros-args -p a:=b c\n'


# (executable, when the signals come, signals): the moments a user stops a node.
STOPS = {
    'while loading': ('segment_node', 'start', (signal.SIGINT,)),
    'mid-inference': ('segment_node', 'segmenting', (signal.SIGINT,)),
    'twice mid-inference': ('segment_node', 'segmenting', (signal.SIGINT, signal.SIGINT)),
    'SIGTERM mid-inference': ('segment_node', 'segmenting', (signal.SIGTERM,)),
    'lifecycle, unconfigured': ('segment_lifecycle_node', 'ready', (signal.SIGINT, signal.SIGINT)),
}


@pytest.mark.slow
def test_stop_signals_at_any_moment_end_the_node_cleanly(tmp_path: Path) -> None:
    """Every case of STOPS at once, beside one camera at 30 Hz, so that the worker is always busy."""
    env = user_environment()
    namespace = f'/stops{os.getpid()}'
    camera = Started([str(NODE_DIR / 'sample_camera'), '--ros-args', '-r', f'__ns:={namespace}',
                      '-p', 'rate:=30.0'], tmp_path / 'camera.log', env)
    nodes = {case: Started([str(NODE_DIR / name), '--ros-args', '-r', f'__ns:={namespace}/n{index}',
                            '-p', f'image_topics:=[{namespace}/camera/image_raw]', '-p', 'device:=cpu'],
                           tmp_path / f'node{index}.log', env)
             for index, (case, (name, _, _)) in enumerate(STOPS.items())}
    try:
        time.sleep(0.5)
        ready = {'start': '', 'segmenting': 'segmenting', 'ready': ''}
        for case, (_, moment, signals) in STOPS.items():
            if ready[moment]:
                nodes[case].wait_for(ready[moment], START_TIMEOUT)
                if moment == 'segmenting':
                    time.sleep(1.0)  # frames in flight
            elif moment == 'ready':
                time.sleep(3.0)
            for signum in signals:
                nodes[case].signal(signum)
                time.sleep(0.05)
        for case, node in nodes.items():
            code = node.wait(STOP_TIMEOUT)
            output = node.output()
            assert code == 0, f'{case}: exit code {code}:\n{output[-3000:]}'
            assert_clean(output)
        camera.signal()
        assert camera.wait(STOP_TIMEOUT) == 0, camera.output()
        assert_clean(camera.output())
    finally:
        for process in (*nodes.values(), camera):
            if process.process.poll() is None:
                process.kill()
