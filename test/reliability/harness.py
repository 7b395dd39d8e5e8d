"""Helpers of the long node runs: ``segment_node`` in its own process with its resource use sampled
over time, a camera publisher paced to a rate, and a record of the answers that come back."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from builtin_interfaces.msg import Time as TimeMsg
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from seg_ros.ros.conversions import array_to_image

from ..support.ros import Ros, values

REPO = Path(__file__).resolve().parents[2]
READY_LINE = 'segmenting '  # the node's info line once it subscribes


@dataclass(frozen=True)
class Sample:
    """Resource use of a process at one moment."""

    time: float  # time.monotonic()
    rss: int  # bytes
    threads: int
    fds: int


class NodeProcess:
    """``segment_node`` (``main()`` of this checkout) in its own process, sampled every ``period`` s.

    ``setup`` is Python run before ``main`` (``import test.support`` registers the test network).
    """

    def __init__(self, parameters: dict[str, Any], folder: Path, *, setup: str = 'import test.support; ',
                 period: float = 0.5, timeout: float = 120.0) -> None:
        params_file = folder / 'segment_node.yaml'
        params_file.write_text(yaml.safe_dump({'segment_node': {'ros__parameters': parameters}}))
        code = f'import sys; {setup}from seg_ros.ros.node import main; sys.exit(main())'
        self.process = subprocess.Popen(
            [sys.executable, '-c', code, '--ros-args', '--params-file', str(params_file)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        self.samples: list[Sample] = []
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._period = period
        threading.Thread(target=self._read_log, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError('segment_node did not start:\n' + ''.join(self.log[-40:]))
        self._usage = psutil.Process(self.process.pid)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            if READY_LINE in line:
                self._ready.set()

    def _sample(self) -> None:
        while not self._stopping.wait(self._period):
            try:
                with self._usage.oneshot():
                    sample = Sample(time.monotonic(), self._usage.memory_info().rss,
                                    self._usage.num_threads(), self._usage.num_fds())
            except psutil.NoSuchProcess:
                return
            self.samples.append(sample)

    def samples_between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.time <= end]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT, as ``ros2 run`` does on Ctrl-C; the exit status."""
        self._stopping.set()
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self._stopping.set()
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


COUNTERS = {'received': 'frames received', 'published': 'frames published', 'dropped': 'dropped frames',
            'bad': 'bad frames', 'failed': 'failed frames'}


def counters(ros: Ros, topic: str) -> dict[str, int]:
    """The node's frame counters for ``topic`` from its latest /diagnostics; empty before the first."""
    status = ros.probe.status(topic)
    if status is None:
        return {}
    fields = values(status)
    return {name: int(fields[key]) for name, key in COUNTERS.items()}


def settled_counters(ros: Ros, topic: str, quiet: float = 1.0, timeout: float = 30.0) -> dict[str, int]:
    """The node's counters once every frame it received is accounted for and none arrived for ``quiet`` s."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        current = counters(ros, topic)
        if current != last:
            last, since = current, time.monotonic()
        elif current and time.monotonic() - since >= quiet and current['received'] == sum(
                current[key] for key in ('published', 'dropped', 'bad', 'failed')):
            return current
        time.sleep(0.05)
    raise AssertionError(f'{topic}: the node did not account for its frames within {timeout} s: {last}')


def stamp_now() -> TimeMsg:
    now = time.time_ns()
    return TimeMsg(sec=now // 10**9, nanosec=now % 10**9)


def stamp_ns(stamp: TimeMsg) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


class Answers:
    """Masks coming back on ``topic``: the frame index (from ``frame_id``) and latency of each."""

    def __init__(self, probe: Node, topic: str) -> None:
        self.frames: list[int] = []
        self.latencies_ms: list[float] = []
        self.received_at: list[float] = []
        probe.create_subscription(Image, topic, self._callback,
                                  QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))

    def _callback(self, msg: Image) -> None:
        self.latencies_ms.append((time.time_ns() - stamp_ns(msg.header.stamp)) / 1e6)
        self.received_at.append(time.monotonic())
        self.frames.append(int(msg.header.frame_id))

    def latencies_since(self, start: float) -> np.ndarray:
        return np.asarray([latency for latency, at in zip(self.latencies_ms, self.received_at, strict=True)
                           if at >= start])


def camera_frames(height: int, width: int, count: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def frame_message(images: list[np.ndarray], index: int) -> Image:
    """Frame ``index`` (its number in ``frame_id``), stamped now."""
    msg = array_to_image(images[index % len(images)], 'rgb8')
    msg.header.frame_id = str(index)
    msg.header.stamp = stamp_now()
    return msg


def publish_paced(publisher: Publisher, images: list[np.ndarray], rate: float, *, first: int = 0,
                  count: int | None = None, duration: float | None = None,
                  every: Callable[[int], None] | None = None) -> int:
    """Publish frames ``first, first + 1, ...`` at ``rate`` Hz, ``count`` of them or for ``duration`` s.

    The schedule is absolute (a late frame does not shift the ones after it); ``every(index)``
    runs after each publish. Returns the index after the last frame published.
    """
    start = time.monotonic()
    index = first
    while (count is None or index - first < count) and (duration is None or time.monotonic() - start < duration):
        publisher.publish(frame_message(images, index))
        index += 1
        if every is not None:
            every(index)
        delay = start + (index - first) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return index
