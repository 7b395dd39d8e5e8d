"""Processes started as a user starts them (an installed executable, ``ros2 launch``), their output in a
file, stopped with signals; and the check that the installed seg_ros is the checkout's."""

from __future__ import annotations

import ast
import contextlib
import filecmp
import importlib.util
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROS2CLI = REPO.parent / 'shared' / 'ros2cli'  # the launch system and ros2 CLI as wheels (not on PyPI)
ROS2CLI_ABSENT = f'{ROS2CLI} is absent: it holds the ROS 2 launch system and ros2 CLI wheels these tests run'
PREFIX = Path(sys.prefix)  # the environment the suite runs in, where dev.sh installed seg_ros
BIN = Path(sysconfig.get_path('scripts'))
# launch escalates to SIGTERM 5 s after its SIGINT and to SIGKILL 5 s after that; ros2 launch itself once
# took over 30 s to exit with a compiling training oversubscribing the same two cores.
LAUNCH_STOP_TIMEOUT = 60.0
# What ends a process uncleanly: a Python traceback, a C++ abort, launch reporting a non-zero exit.
UNCLEAN = ('Traceback', 'terminate called', 'KeyboardInterrupt', 'process has died', 'Aborted', 'core dumped')


def user_environment(**variables: str) -> dict[str, str]:
    """This environment as a user's shell has it when the virtual environment is not activated:
    its bin/ off PATH (and no VIRTUAL_ENV), plus ``variables``."""
    env = {name: value for name, value in os.environ.items() if name != 'VIRTUAL_ENV'}
    env['PATH'] = os.pathsep.join(entry for entry in env.get('PATH', '').split(os.pathsep)
                                  if entry and Path(entry).resolve() != BIN.resolve())
    env['PYTHONUNBUFFERED'] = '1'
    env.update(variables)
    return env


def check_installed_copy_is_current() -> None:
    """Fail (with the fix) when the installed package differs from the checkout: the started
    executables run the installed copy, the tests import the checkout."""
    site = Path(sysconfig.get_path('purelib')) / 'seg_ros'
    share = PREFIX / 'share' / 'seg_ros'
    pairs = [(path, site / path.relative_to(REPO / 'seg_ros')) for path in (REPO / 'seg_ros').rglob('*.py')]
    pairs += [(path, share / path.relative_to(REPO)) for folder in ('launch', 'config')
              for path in (REPO / folder).rglob('*') if path.is_file()]
    stale = [str(source.relative_to(REPO)) for source, installed in pairs
             if not installed.is_file() or not filecmp.cmp(source, installed, shallow=False)]
    if stale:
        pytest.fail(f'seg_ros installed in {PREFIX} differs from the checkout ({", ".join(stale[:5])}); '
                    'run `bash scripts/dev.sh setup` (or the tests through `bash scripts/dev.sh test`)')


def ensure_ros2_cli() -> None:
    """The launch system and ros2 CLI in this environment: installed from ../shared/ros2cli when missing,
    the test skipped (with the reason) where ../shared is absent."""
    if not ROS2CLI.is_dir():
        pytest.skip(ROS2CLI_ABSENT)
    if importlib.util.find_spec('ros2launch') is None:
        subprocess.run(['bash', str(ROS2CLI / 'install.sh'), str(PREFIX)], check=True, capture_output=True)


class Started:
    """A process in its own process group, stdout and stderr together in ``log``."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        with log.open('wb') as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def output(self) -> str:
        return self.log.read_text(errors='replace')

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f'no {text!r} in the output (exit code {self.process.poll()}):\n'
                                     f'{self.output()[-3000:]}')
            time.sleep(0.1)

    def signal(self, signum: int = signal.SIGINT, group: bool = False) -> None:
        """``signum`` to the process, or to its whole group as a terminal's Ctrl-C sends it."""
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'still running {timeout} s after the signal:\n{self.output()[-3000:]}') from None

    def kill(self) -> None:
        """SIGKILL to the group: what a test leaves running must not outlive it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def assert_clean(output: str) -> None:
    found = [word for word in UNCLEAN if word in output]
    assert not found, f'{found} in the output:\n{output[-4000:]}'


def stop_launch(launched: Started, *, terminal: bool = False, timeout: float = LAUNCH_STOP_TIMEOUT) -> None:
    """SIGINT to ``ros2 launch`` as ``kill -INT`` sends it, or to its process group as a terminal's Ctrl-C
    does (every node then gets it directly and once more from launch); launch and every node it started
    end cleanly."""
    launched.signal(signal.SIGINT, group=terminal)
    code = launched.wait(timeout)
    output = launched.output()
    assert code == 0, f'ros2 launch exit code {code}:\n{output[-4000:]}'
    assert_clean(output)
    started, finished = output.count('process started with pid'), output.count('process has finished cleanly')
    assert started and finished == started, output[-4000:]


def node_executables() -> list[str]:
    module = ast.parse((REPO / 'setup.py').read_text())
    value = next(node.value for node in module.body if isinstance(node, ast.Assign)
                 and any(getattr(target, 'id', None) == 'NODE_EXECUTABLES' for target in node.targets))
    return list(ast.literal_eval(value))


# Arguments that end each executable at once, its exit code and words of its output: each is imported
# and run by the interpreter of this environment, which PATH could not provide. The lifecycle node
# waits for transitions whatever its arguments; it is run in the stop test below.
QUICK_RUNS = {
    'segment_node': (['--ros-args', '-p', 'model:=nonet'], 1, "unknown model 'nonet'"),
    'sample_camera': (['--ros-args', '-p', 'source:=/nonexistent.mp4'], 1, '/nonexistent.mp4'),
    'train': (['--help'], 0, 'usage'),
    'eval': (['--help'], 0, 'usage'),
}

