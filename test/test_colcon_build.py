"""seg_ros built by colcon in a temporary workspace, as README's workspace section builds it
(colcon-common-extensions and ros-ament-package from PyPI), plain and with --symlink-install; and
``ros2 launch`` run from that install after ``source install/setup.bash``."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from .support.processes import (
    BIN,
    PREFIX,
    QUICK_RUNS,
    REPO,
    Started,
    ensure_ros2_cli,
    node_executables,
    stop_launch,
    user_environment,
)
from .support.ros import Ros, wait_for

NOT_SOURCES = ('.venv', '.git', 'build', 'install', 'log', '__pycache__', '*.egg-info', 'runs', 'out',
               '.pytest_cache', '.ruff_cache', '.hypothesis')
START_TIMEOUT = 120.0

pytestmark = pytest.mark.slow


def _build(workspace: Path, *options: str) -> Path:
    """``colcon build OPTIONS`` of a copy of this checkout in ``<workspace>/src/seg_ros``; the install folder."""
    shutil.copytree(REPO, workspace / 'src' / 'seg_ros', ignore=shutil.ignore_patterns(*NOT_SOURCES))
    result = subprocess.run([str(BIN / 'colcon'), 'build', *options], cwd=workspace, env=user_environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return workspace / 'install'


@pytest.fixture(scope='module')
def plain_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp('colcon'))


@pytest.fixture(scope='module')
def symlink_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp('colcon_symlink'), '--symlink-install')


@pytest.fixture(params=['plain_install', 'symlink_install'])
def install(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_executables_launch_file_config_and_models_are_installed(install: Path) -> None:
    package = install / 'seg_ros'
    for name in node_executables():
        executable = package / 'lib' / 'seg_ros' / name
        assert os.access(executable, os.X_OK), executable
        interpreter = executable.read_text().splitlines()[0].removeprefix('#!')
        assert Path(interpreter).resolve() == Path(sys.executable).resolve(), (name, interpreter)
    share = package / 'share' / 'seg_ros'
    for folder in ('launch', 'config', 'models'):
        sources = sorted(path.relative_to(REPO) for path in (REPO / folder).rglob('*') if path.is_file())
        installed = sorted(path.relative_to(share) for path in (share / folder).rglob('*') if path.is_file())
        assert installed == sources, folder
        assert all(filecmp.cmp(REPO / path, share / path, shallow=False) for path in sources), folder
    assert (package / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'seg_ros').is_file()
    assert (share / 'package.xml').is_file()


@pytest.mark.parametrize('name', ['segment_node', 'sample_camera'])
def test_installed_executables_run(install: Path, name: str) -> None:
    arguments, code, words = QUICK_RUNS[name]
    result = subprocess.run([str(install / 'seg_ros' / 'lib' / 'seg_ros' / name), *arguments],
                            env=user_environment(), capture_output=True, text=True, timeout=START_TIMEOUT)
    output = result.stdout + result.stderr
    assert result.returncode == code and words in output and 'Traceback' not in output, output


def test_ros2_launch_from_the_colcon_install(plain_install: Path, tmp_path: Path) -> None:
    ensure_ros2_cli()
    install = plain_install
    command = f'source {install}/setup.bash && exec {BIN}/ros2 launch seg_ros segment.launch.py demo:=true'
    # The environment with the ROS 2 wheels is the underlay; the workspace goes on top of it.
    launched = Started(['bash', '-c', command], tmp_path / 'launch.log',
                       user_environment(AMENT_PREFIX_PATH=str(PREFIX)))
    ros = Ros()
    try:
        masks = ros.probe.listen('/camera/segmentation/mask', Image, qos_profile_sensor_data)
        wait_for(lambda: len(masks) >= 2, START_TIMEOUT, 'masks from the colcon install',
                 every=lambda: launched.process.poll() is None or pytest.fail(launched.output()))
        output = launched.output()
        assert f'from {install}/seg_ros/share/seg_ros/models/enet_camvid.pt' in output, output
        commands = [process.cmdline() for process in psutil.Process(launched.process.pid).children()]
        assert any(str(install / 'seg_ros' / 'lib' / 'seg_ros' / 'segment_node') in command
                   for command in commands), commands
        stop_launch(launched)
    finally:
        ros.close()
        if launched.process.poll() is None:
            launched.kill()
