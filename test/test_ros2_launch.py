"""``ros2 launch seg_ros segment.launch.py`` as a user runs it: the real launch system and ``ros2`` CLI
(wheels from ../shared/ros2cli, installed here by the test set-up), started as a subprocess from the
pip-installed environment with its bin/ NOT on PATH (only AMENT_PREFIX_PATH names it), and talked to
over DDS from this process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String

from seg_ros.ros.qos import LATCHED

from .support.processes import (
    BIN,
    LAUNCH_STOP_TIMEOUT,
    PREFIX,
    ROS2CLI,
    ROS2CLI_ABSENT,
    Started,
    assert_clean,
    check_installed_copy_is_current,
    ensure_ros2_cli,
    stop_launch,
    user_environment,
)
from .support.ros import Ros, pixels, wait_for

START_TIMEOUT = 120.0  # several nodes loading torch at once on a busy 2-core machine
QUIET_SEC = 1.0

pytestmark = [pytest.mark.skipif(not ROS2CLI.is_dir(), reason=ROS2CLI_ABSENT), pytest.mark.slow]


@pytest.fixture(scope='module', autouse=True)
def ros2_cli() -> None:
    """The launch system and ros2 CLI in this environment, and seg_ros current in it."""
    ensure_ros2_cli()
    check_installed_copy_is_current()


def _environment(**variables: str) -> dict[str, str]:
    return user_environment(AMENT_PREFIX_PATH=str(PREFIX), **variables)


@pytest.fixture
def launch(tmp_path: Path):
    """Starts ``ros2 launch seg_ros segment.launch.py ARGUMENTS``; whatever a test leaves running is killed."""
    started: list[Started] = []

    def start(*arguments: str) -> Started:
        command = [str(BIN / 'ros2'), 'launch', 'seg_ros', 'segment.launch.py', *arguments]
        started.append(Started(command, tmp_path / f'launch{len(started)}.log', _environment()))
        return started[-1]

    yield start
    for process in started:
        if process.process.poll() is None:
            process.kill()


def ros2(*arguments: str, attempts: int = 3) -> str:
    """A ``ros2`` CLI command (no daemon, so that nothing outlives the test); its output.

    Two failures of the CLI process itself, not of the node, are retried as a user would rerun the
    command: without a daemon each call discovers the graph afresh and, on a loaded machine, may give
    up before the node's announcement arrives ("Node not found"); and the CLI has once died of
    SIGSEGV before printing anything (CI, Kilted wheels, Fast DDS), its Python stack then shown by
    faulthandler. The caller still asserts the command's effect on the node.
    """
    for _ in range(attempts):
        result = subprocess.run([str(BIN / 'ros2'), *arguments], env=_environment(PYTHONFAULTHANDLER='1'),
                                capture_output=True, text=True, timeout=60)
        if result.returncode < 0:
            print(f'ros2 {" ".join(arguments)} died of signal {-result.returncode}:\n{result.stderr}')
        elif 'Node not found' not in result.stderr:
            break
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _frames_after(inbox: list, count: int, start: int = 0) -> list[Image]:
    return inbox[start:] if len(inbox) - start >= count else []


def _quiet(inbox: list) -> None:
    before = len(inbox)
    time.sleep(QUIET_SEC)
    assert len(inbox) == before, 'published while not active'


def _topics(ros: Ros, node: str, namespace: str) -> set[str]:
    probe = ros.probe
    return {name for query in (probe.get_publisher_names_and_types_by_node,
                               probe.get_subscriber_names_and_types_by_node)
            for name, _ in query(node, namespace)}


def test_two_namespaced_launches_side_by_side(ros: Ros, launch, tmp_path: Path) -> None:
    """Masks flow; namespace:= moves every topic; a user's '/**' params file applies under a namespace
    (the shipped one too, beside it); ros2 param set takes effect on the running node."""
    user_params = tmp_path / 'my_params.yaml'
    user_params.write_text(yaml.safe_dump({'/**': {'ros__parameters': {'model': 'segfast',
                                                                        'output_namespace': 'seg'}}}))
    robot1 = launch('demo:=true', 'namespace:=robot1', f'params_file:={user_params}')
    robot2 = launch('demo:=true', 'namespace:=robot2')  # the shipped params file
    inboxes = {ns: ros.probe.listen(f'/{ns}/camera/{out}/mask', Image, qos_profile_sensor_data)
               for ns, out in (('robot1', 'seg'), ('robot2', 'segmentation'))}
    class_info = {ns: ros.probe.listen(f'/{ns}/camera/{out}/class_info', String, LATCHED)
                  for ns, out in (('robot1', 'seg'), ('robot2', 'segmentation'))}
    for ns, inbox in inboxes.items():
        wait_for(lambda inbox=inbox: _frames_after(inbox, 2), START_TIMEOUT, f'masks of {ns}')
    wait_for(lambda: all(class_info.values()), 10, 'class_info of both')
    assert json.loads(class_info['robot1'][-1].data)['model'] == 'segfast'  # the user's file applied
    assert json.loads(class_info['robot2'][-1].data)['model'] == 'enet'

    shared = {'/diagnostics', '/rosout', '/parameter_events'}
    for ns in ('robot1', 'robot2'):
        for node in ('segment_node', 'sample_camera'):
            topics = _topics(ros, node, f'/{ns}')
            assert topics and all(t.startswith(f'/{ns}/') for t in topics - shared), (ns, node, topics)
    assert ros.probe.count_publishers('/camera/image_raw') == ros.probe.count_publishers(
        '/camera/segmentation/mask') == 0  # nothing left at the default names
    mask = inboxes['robot2'][-1]
    assert (mask.height, mask.width, mask.encoding) == (360, 640, 'mono8')
    assert (pixels(mask) == 255).mean() == 0  # min_confidence 0: every pixel has a class

    assert 'successful' in ros2('param', 'set', '--no-daemon', '/robot2/segment_node', 'min_confidence', '1.0')
    start = len(inboxes['robot2'])
    later = wait_for(lambda: _frames_after(inboxes['robot2'], 2, start), 30, 'masks after ros2 param set')
    assert (pixels(later[-1]) == 255).mean() > 0.9  # almost no pixel is certain to 1.0
    stop_launch(robot1, terminal=True)
    stop_launch(robot2)


def _call(ros: Ros, client: Any, request: Any) -> Any:
    assert client.wait_for_service(timeout_sec=START_TIMEOUT), f'no {client.srv_name}'
    future = client.call_async(request)
    return wait_for(lambda: future.done() and future.result(), 30, f'answer of {client.srv_name}')


def test_lifecycle_transitions_under_launch(ros: Ros, launch) -> None:
    launched = launch('lifecycle:=true', 'demo:=true', 'namespace:=managed')
    probe = ros.probe
    mask_topic, camera_topic = '/managed/camera/segmentation/mask', '/managed/camera/image_raw'
    masks = probe.listen(mask_topic, Image, qos_profile_sensor_data)
    get_state = probe.create_client(GetState, '/managed/segment_node/get_state')
    change_state = probe.create_client(ChangeState, '/managed/segment_node/change_state')

    def state() -> int:
        return _call(ros, get_state, GetState.Request()).current_state.id

    def transition(transition_id: int) -> None:
        assert _call(ros, change_state, ChangeState.Request(transition=Transition(id=transition_id))).success

    def publishers(count: int) -> Callable[[], bool]:
        return lambda: probe.count_publishers(mask_topic) == count

    assert state() == State.PRIMARY_STATE_UNCONFIGURED and probe.count_publishers(mask_topic) == 0
    assert 'Transitioning successful' in ros2('lifecycle', 'set', '--no-daemon', '--spin-time', '5',
                                              '/managed/segment_node',
                                              'configure')
    assert state() == State.PRIMARY_STATE_INACTIVE
    wait_for(publishers(1), 10, 'mask publisher after configure')
    assert probe.count_subscribers(camera_topic) == 0
    _quiet(masks)

    transition(Transition.TRANSITION_ACTIVATE)
    wait_for(lambda: _frames_after(masks, 2), 60, 'masks once active')
    transition(Transition.TRANSITION_DEACTIVATE)
    wait_for(lambda: probe.count_subscribers(camera_topic) == 0, 10, 'no camera subscription when inactive')
    _quiet(masks)
    transition(Transition.TRANSITION_CLEANUP)
    wait_for(publishers(0), 10, 'no mask publisher after cleanup')
    transition(Transition.TRANSITION_CONFIGURE)
    transition(Transition.TRANSITION_ACTIVATE)
    start = len(masks)
    wait_for(lambda: _frames_after(masks, 2, start), 60, 'masks after configuring again')
    transition(Transition.TRANSITION_ACTIVE_SHUTDOWN)
    assert state() == State.PRIMARY_STATE_FINALIZED
    wait_for(publishers(0), 10, 'no mask publisher after shutdown')
    stop_launch(launched)


# Ten stops of ros2 launch: (arguments, when, how). 'loading': SIGINT while the nodes still import
# and load; 'segmenting': once masks flow, the worker busy with the next frame.
STOPS = [
    ((), 'loading', 'kill'),
    ((), 'loading', 'terminal'),
    ((), 'segmenting', 'kill'),
    ((), 'segmenting', 'terminal'),
    ((), 'segmenting', 'twice'),
    (('lifecycle:=true',), 'loading', 'terminal'),
    (('lifecycle:=true',), 'started', 'kill'),
    ((), 'segmenting', 'terminal'),
    ((), 'segmenting', 'kill'),
    ((), 'loading', 'twice'),
]
BATCH = 5  # launches at once: three processes each on two cores


@pytest.mark.reliability  # a minute on two cores; every test above ends with a clean stop too
@pytest.mark.parametrize('batch', [0, 1])
def test_ten_sigint_stops_are_clean(launch, batch: int) -> None:
    runs = STOPS[batch * BATCH:(batch + 1) * BATCH]
    launched = [launch('demo:=true', f'namespace:=stop{batch}_{index}', *arguments)
                for index, (arguments, _, _) in enumerate(runs)]
    for process, (_, moment, how) in zip(launched, runs, strict=True):
        if moment == 'loading':
            process.wait_for('sample_camera-2]: process started', START_TIMEOUT)
            time.sleep(0.3)
        elif moment == 'segmenting':
            process.wait_for('segmenting', START_TIMEOUT)
            time.sleep(0.5)
        else:
            process.wait_for('publishing synthetic', START_TIMEOUT)
        if how == 'twice':  # launch passes the first on and ignores the second
            process.signal(signal.SIGINT)
            time.sleep(0.2)
        process.signal(signal.SIGINT, group=how == 'terminal')
    for process in launched:
        stop_code = process.wait(LAUNCH_STOP_TIMEOUT)
        output = process.output()
        assert stop_code == 0, output[-4000:]
        assert_clean(output)
        assert output.count('process has finished cleanly') == output.count('process started with pid'), output
