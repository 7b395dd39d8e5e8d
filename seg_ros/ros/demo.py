"""``seg-demo``: the segmentation node on a camera stream over real DDS, watched live (README command 1).

Starts ``segment_node`` and ``sample_camera`` (the synthetic road scene, or ``--source``) as two
processes, as ``ros2 launch seg_ros segment.launch.py demo:=true`` does, plus a monitor node in this
process that subscribes to the results and prints a line about once a second::

    [   3 s]  14.6 fps  latency  48 ms  road 31.2%  building 24.0%  sky 17.5%

(frames per second of overlays arriving here, header stamp to arrival, the largest classes of the
latest frame). After ``--seconds`` of results, or on Ctrl-C, both processes get SIGINT and the
last overlay is saved as a PNG. Every process uses the package's Fast DDS profile
(config/fastdds.xml) unless FASTDDS_DEFAULT_PROFILES_FILE is set, and a private ROS_DOMAIN_ID
unless one is set.

    seg-demo
    seg-demo --model erfnet --device cuda --seconds 60
    seg-demo --weights my_enet.pt --source drive.mp4 --out out/drive_overlay.png
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Float32MultiArray, String

from seg_ros.frames.synthetic import CAMERA_HEIGHT
from seg_ros.paths import fastdds_profile
from seg_ros.ros.conversions import image_to_array
from seg_ros.ros.qos import LATCHED, input_qos
from seg_ros.ros.spinning import init
from seg_ros.ros.stopping import stop_requested
from seg_ros.vocabulary import PRECISION_CHOICES, size_argument

__all__ = ['DemoMonitor', 'main']

CAMERA_TOPIC = '/camera/image_raw'
RESULTS = '/camera/segmentation'  # where segment_node puts the results of CAMERA_TOPIC
STOP_TIMEOUT = 10.0  # seconds a process gets to exit after SIGINT, and again after SIGTERM
TOP_CLASSES = 3
OVERLAY_FILE = 'demo_overlay.png'
SYNTHETIC_CAMERA_POSE = f'0 0 {CAMERA_HEIGHT} 0 0 0'  # in base_link: x y z roll pitch yaw


class DemoMonitor(Node):
    """Subscribes to the overlay, stats and class names of one camera and summarises them."""

    def __init__(self) -> None:
        super().__init__('seg_demo_monitor')
        latest = input_qos('best_effort', 1)
        self.create_subscription(Image, f'{RESULTS}/overlay', self.overlay_callback, latest)
        self.create_subscription(Float32MultiArray, f'{RESULTS}/stats', self.stats_callback, latest)
        self.create_subscription(String, f'{RESULTS}/class_info', self.class_info_callback, LATCHED)
        self.last_overlay: Image | None = None
        self.overlays = 0
        self._class_names: list[str] = []
        self._fractions = np.zeros(0, np.float32)
        self._window_frames = 0
        self._window_latency_ms: list[float] = []
        self._window_start = time.monotonic()

    def overlay_callback(self, msg: Image) -> None:
        latency = self.get_clock().now() - Time.from_msg(msg.header.stamp)
        self._window_latency_ms.append(latency.nanoseconds / 1e6)
        self._window_frames += 1
        self.overlays += 1
        self.last_overlay = msg

    def stats_callback(self, msg: Float32MultiArray) -> None:
        self._fractions = np.asarray(msg.data, np.float32).reshape(-1, 3)[:, 1]

    def class_info_callback(self, msg: String) -> None:
        self._class_names = json.loads(msg.data)['names']

    def report(self) -> str:
        """Frame rate and latency since the last report, and the top classes of the latest stats."""
        now = time.monotonic()
        rate = self._window_frames / max(now - self._window_start, 1e-9)
        latency = f'{np.mean(self._window_latency_ms):4.0f} ms' if self._window_latency_ms else '   - ms'
        classes = '  '.join(f'{self._class_name(index)} {100 * self._fractions[index]:.1f}%'
                            for index in np.argsort(-self._fractions)[:TOP_CLASSES])
        self._window_frames, self._window_latency_ms, self._window_start = 0, [], now
        return f'{rate:5.1f} fps  latency {latency}  {classes}'

    def _class_name(self, index: int) -> str:
        return self._class_names[index] if index < len(self._class_names) else f'class {index}'


def _node_command(module: str, parameters: dict[str, object]) -> list[str]:
    """This interpreter running ``module``'s ``main`` with ``parameters``.

    Through the module rather than the console script, which a colcon install keeps in lib/seg_ros
    and a pip install beside the interpreter.
    """
    code = f'import sys; from {module} import main; sys.exit(main())'
    ros_args = [item for name, value in parameters.items() for item in ('-p', f'{name}:={value}')]
    return [sys.executable, '-c', code, '--ros-args', *ros_args]


def _segment_parameters(args: argparse.Namespace) -> dict[str, object]:
    parameters: dict[str, object] = {'image_topics': f'[{CAMERA_TOPIC}]'}
    if args.source == 'synthetic':  # its camera's pose, so that the ground grid can be watched in RViz too
        parameters['camera_poses'] = f"['{SYNTHETIC_CAMERA_POSE}']"
    if args.weights:
        parameters['weights'] = str(Path(args.weights).expanduser().resolve())
        parameters['model'] = args.model or "''"  # without --model the checkpoint names the network
    elif args.model:
        parameters['model'] = args.model
    parameters.update({name: getattr(args, name) for name in ('device', 'precision') if getattr(args, name)})
    return parameters


def _start(args: argparse.Namespace) -> dict[str, subprocess.Popen]:
    camera = {'topic': CAMERA_TOPIC, 'source': args.source, 'rate': float(args.rate),
              'width': args.size[1], 'height': args.size[0]}
    return {
        'segment_node': subprocess.Popen(_node_command('seg_ros.ros.node', _segment_parameters(args))),
        'sample_camera': subprocess.Popen(_node_command('seg_ros.ros.sample_camera', camera)),
    }


def _stop(processes: dict[str, subprocess.Popen]) -> bool:
    """SIGINT to every process still running, then SIGTERM and SIGKILL to those that do not exit.

    True when every process exited with code 0.
    """
    for stop in (lambda p: p.send_signal(signal.SIGINT), subprocess.Popen.terminate, subprocess.Popen.kill):
        running = [p for p in processes.values() if p.poll() is None]
        for process in running:
            stop(process)
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)
    failed = {name: p.returncode for name, p in processes.items() if p.returncode != 0}
    for name, code in failed.items():
        print(f'seg-demo: {name} exited with code {code}', file=sys.stderr, flush=True)
    return not failed


def _watch(executor: SingleThreadedExecutor, monitor: DemoMonitor, processes: dict[str, subprocess.Popen],
           args: argparse.Namespace) -> int:
    """Print a line a second for ``args.seconds`` from the first result or until a stop signal; 1 when
    a process fails to deliver."""
    started = time.monotonic()
    first_result = next_line = None
    while not stop_requested():
        executor.spin_once(timeout_sec=0.05)
        if any(process.poll() is not None for process in processes.values()):
            return 1  # _stop reports which one and how
        now = time.monotonic()
        if first_result is None:
            if monitor.overlays:
                first_result, next_line = now, now + 1.0
                monitor.report()  # starts the first window at the first result
            elif now - started > args.startup_timeout:
                print(f'seg-demo: no result on {RESULTS}/overlay after {args.startup_timeout:g} s',
                      file=sys.stderr, flush=True)
                return 1
            continue
        if now >= next_line:
            print(f'[{now - first_result:4.0f} s] {monitor.report()}', flush=True)
            next_line += 1.0
        if now - first_result >= args.seconds:
            return 0
    return 0 if monitor.overlays else 1


def _save_overlay(msg: Image, path: Path) -> None:
    rgb, _ = image_to_array(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {path}')


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='seg-demo', description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--seconds', type=float, default=20.0, help='how long to show results')
    parser.add_argument('--model', help="network of a shipped checkpoint (segment_node's default: enet)")
    parser.add_argument('--weights', help='checkpoint file to use instead of a shipped one')
    parser.add_argument('--device', help='auto, cpu, cuda or cuda:N (default: auto)')
    parser.add_argument('--precision', choices=PRECISION_CHOICES, help='default: auto')
    parser.add_argument('--source', default='synthetic',
                        help='synthetic, a video, an image folder, a rosbag2 or v4l2:/dev/videoN')
    parser.add_argument('--rate', type=float, default=15.0, help='camera frames per second')
    parser.add_argument('--size', type=size_argument, default=(360, 640), metavar='WxH',
                        help='camera frame size (default: 640x360)')
    parser.add_argument('--out', type=Path, default=Path('out'),
                        help=f'folder where the last overlay is saved as {OVERLAY_FILE}')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='seconds to wait for the first result (model loading)')
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.startup_timeout <= 0:
        parser.error('--seconds and --startup-timeout must be positive')
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; 0 when results arrived and the last overlay was saved."""
    args = parse_args(argv)
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(fastdds_profile()))
    os.environ.setdefault('ROS_DOMAIN_ID', str(100 + os.getpid() % 100))
    print(f'seg-demo: ROS_DOMAIN_ID={os.environ["ROS_DOMAIN_ID"]}, '
          f'FASTDDS_DEFAULT_PROFILES_FILE={os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]}; '
          f'camera {CAMERA_TOPIC}, results {RESULTS}/{{mask,color_mask,overlay,stats}}; '
          f'waiting for the model to load', flush=True)
    processes = _start(args)
    init([])  # a Ctrl-C from here on is a request seen by _watch, never an exception inside rclpy
    monitor = DemoMonitor()
    executor = SingleThreadedExecutor()
    executor.add_node(monitor)
    try:
        exit_code = _watch(executor, monitor, processes, args)
    finally:
        stopped_cleanly = _stop(processes)
        executor.shutdown()
        monitor.destroy_node()
        rclpy.try_shutdown()
    if monitor.last_overlay is None:
        print('seg-demo: no overlay arrived; nothing saved', file=sys.stderr)
        return 1
    path = args.out / OVERLAY_FILE
    _save_overlay(monitor.last_overlay, path)
    print(f'seg-demo: {monitor.overlays} overlays received; the last one is saved as {path.resolve()}')
    return exit_code if stopped_cleanly else 1


if __name__ == '__main__':
    sys.exit(main())
