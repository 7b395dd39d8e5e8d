"""seg-bench ``node`` and ``overload``: segment_node as its own process over real DDS, cameras at a set
rate, latency from stamp to mask, drops, CPU and memory."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg_ros.bench.common import MIB, load_average, random_checkpoint, summarize_times
from seg_ros.inference.preparation import latencies_ms
from seg_ros.inference.segmenter import Segmenter
from seg_ros.vocabulary import format_size

__all__ = [
    'CALIBRATION_FRAMES',
    'MIN_NODE_FRAMES',
    'NODE_RESOLUTIONS',
    'SETTLED_AFTER_SECONDS',
    'bench_node',
    'bench_overload',
    'forward_probe',
    'measure_node',
    'node_process',
    'probe_forward',
]

NODE_RESOLUTIONS = ((360, 640), (720, 1280))
MIN_NODE_FRAMES = 5  # per camera and run: a slow configuration runs longer than --node-seconds
CALIBRATION_FRAMES = 15  # outputs (about) that measure the node's capacity before an overload run
SETTLED_AFTER_SECONDS = 5.0  # into an overload run (at most half of it): warm-up before memory is compared


@contextlib.contextmanager
def node_process(checkpoint: Path, network: str, topics: Sequence[str], *, device: str, precision: str,
                 size: tuple[int, int], env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """``segment_node`` in its own process, stopped with SIGINT (as ros2 run would) on exit."""
    parameters = {'model': network, 'weights': str(checkpoint), 'image_topics': f'[{",".join(topics)}]',
                  'device': device, 'precision': precision, 'input_height': size[0], 'input_width': size[1]}
    command = [sys.executable, '-c', 'import sys; from seg_ros.ros.node import main; sys.exit(main())',
               '--ros-args', *(arg for key, value in parameters.items() for arg in ('-p', f'{key}:={value}'))]
    with open(log_path, 'w') as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _Rig:
    """The cameras and the mask subscriber, in this process: publishes frames, records arrivals."""

    def __init__(self, context: Any, topics: Sequence[str], frames: Sequence[Sequence[np.ndarray]]) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from seg_ros.interface import output_prefix
        from seg_ros.ros.conversions import array_to_image
        from seg_ros.ros.qos import LATCHED

        self.node = node = rclpy.create_node('seg_bench_rig', context=context)
        camera_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        self.publishers = [node.create_publisher(Image, topic, camera_qos) for topic in topics]
        self.frames = [[array_to_image(frame, 'rgb8') for frame in camera] for camera in frames]
        self.lock = threading.Lock()
        self.arrivals: list[dict[int, int]] = [{} for _ in topics]  # stamp ns -> arrival ns
        self.ready = [False] * len(topics)
        self.diagnostics: dict[str, dict[str, str]] = {}  # latest values per hardware_id
        self.node_inference_ms: list[float] = []  # the node's own segment_batch p50 of each report
        for index, topic in enumerate(topics):
            prefix = output_prefix(topic, 'segmentation')
            node.create_subscription(Image, f'{prefix}/mask', self._on_mask(index), 10)
            node.create_subscription(String, f'{prefix}/class_info', self._on_ready(index), LATCHED)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)
        self.executor = MultiThreadedExecutor(num_threads=2, context=context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on_mask(self, index: int) -> Callable[[Any], None]:
        def callback(msg: Any) -> None:
            arrival = self.node.get_clock().now().nanoseconds
            stamp = msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec
            with self.lock:
                self.arrivals[index][stamp] = arrival
        return callback

    def _on_ready(self, index: int) -> Callable[[Any], None]:
        def callback(_msg: Any) -> None:
            self.ready[index] = True
        return callback

    def _on_diagnostics(self, msg: Any) -> None:
        with self.lock:
            for status in msg.status:
                values = {kv.key: kv.value for kv in status.values}
                self.diagnostics[status.hardware_id] = values
                if values.get('inference p50 (ms)', 'nan') != 'nan':
                    self.node_inference_ms.append(float(values['inference p50 (ms)']))

    def publish_for(self, rate_hz: float, seconds: float) -> list[list[int]]:
        """Every camera publishes its next frame (stamped now) at ``rate_hz`` for ``seconds``."""
        stamps: list[list[int]] = [[] for _ in self.publishers]
        period = 1.0 / rate_hz
        start = next_tick = time.perf_counter()
        count = 0
        while next_tick - start < seconds:
            for index, publisher in enumerate(self.publishers):
                msg = self.frames[index][count % len(self.frames[index])]
                now = self.node.get_clock().now()
                msg.header.stamp = now.to_msg()
                publisher.publish(msg)
                stamps[index].append(now.nanoseconds)
            count += 1
            next_tick += period
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        return stamps

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _wait(condition: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen,
          log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f'segment_node exited with {process.returncode} while waiting for {what}:\n'
                               + log_path.read_text()[-2000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f'timed out after {timeout:.0f} s waiting for {what}; node log:\n'
                               + log_path.read_text()[-2000:])
        time.sleep(0.05)


def measure_node(args: argparse.Namespace, checkpoint: Path, network: str, size: tuple[int, int], cameras: int,
             rate_hz: float, seconds: float, folder: Path, overload: float | None = None) -> dict[str, Any]:
    """One end-to-end run of segment_node; latencies, rates, drops, CPU (and, overloaded, memory).

    With ``overload``, the settling phase runs at ``rate_hz`` (meant to saturate the node) long
    enough to measure the node's capacity from the masks it delivers, and the measured run then
    publishes at ``overload`` times that capacity while the node's memory is sampled.
    """
    import psutil
    import rclpy

    from seg_ros.frames.synthetic import SyntheticRoadScene

    topics = [f'/seg_bench/cam{index}/image_raw' for index in range(cameras)]
    frames = [[SyntheticRoadScene(width=size[1], height=size[0], seed=index).frame(t)[0]
               for t in (0.0, 0.5, 1.0, 1.5)] for index in range(cameras)]
    log_path = folder / f'node_{network}_{cameras}x{format_size(size)}.log'
    context = rclpy.Context()
    rclpy.init(context=context)
    rig = _Rig(context, topics, frames)
    try:
        with node_process(checkpoint, network, topics, device=args.node_device, precision=args.node_precision,
                          size=size, env=_node_env(args), log_path=log_path) as process:
            _wait(lambda: all(rig.ready), args.node_start_timeout, 'the node to start', process, log_path)
            node_ps, own_ps = psutil.Process(process.pid), psutil.Process()
            settle = args.node_settle
            if overload:  # rate_hz is 3x the estimated capacity: about CALIBRATION_FRAMES outputs
                settle = max(settle, 3.0 * CALIBRATION_FRAMES / rate_hz)
            settled = rig.publish_for(rate_hz, settle)  # discovery, first frames, allocator
            dropped_before = _node_drops(rig, topics, process, log_path)
            capacity_hz = None
            if overload:
                with rig.lock:
                    delivered = sum(s in rig.arrivals[i] for i, camera in enumerate(settled) for s in camera)
                if not delivered:
                    raise RuntimeError(f'segment_node delivered no mask in {settle:.1f} s of frames at '
                                       f'{rate_hz:.2f} Hz; node log:\n' + log_path.read_text()[-2000:])
                capacity_hz = delivered / cameras / settle
                rate_hz = overload * capacity_hz
            memory: list[tuple[float, float]] = []
            # Ten samples at least, so that even a short run has a settled second half to judge.
            sampler = _MemorySampler(node_ps, memory, period=min(0.5, seconds / 10)) if overload else None
            with rig.lock:
                rig.node_inference_ms.clear()
            cpu_before = (node_ps.cpu_times(), own_ps.cpu_times(), time.perf_counter())
            stamps = rig.publish_for(rate_hz, seconds)
            cpu_after = (node_ps.cpu_times(), own_ps.cpu_times(), time.perf_counter())
            last = [camera[-1] for camera in stamps]
            with contextlib.suppress(RuntimeError):  # a frame dropped at the end never arrives
                _wait(lambda: all(s in rig.arrivals[i] for i, s in enumerate(last)),
                      max(2.0, 0.2 * seconds), 'the last masks', process, log_path)
            if sampler is not None:
                sampler.stop()
            node_dropped = _node_drops(rig, topics, process, log_path) - dropped_before
    finally:
        rig.close()
        rclpy.try_shutdown(context=context)
    wall = cpu_after[2] - cpu_before[2]
    latencies, received = [], 0
    with rig.lock:
        for camera, published in zip(rig.arrivals, stamps, strict=True):
            arrived = [camera[s] - s for s in published if s in camera]
            received += len(arrived)
            latencies += arrived
    published_total = sum(len(s) for s in stamps)
    times = np.asarray(latencies, np.float64) / 1e6
    row: dict[str, Any] = {
        'network': network, 'resolution': format_size(size), 'cameras': cameras, 'rate_hz': rate_hz,
        'seconds': seconds, 'published': published_total, 'received': received,
        'dropped': published_total - received, 'node_dropped': node_dropped,
        'output_rate_hz': received / cameras / wall,
        'node_cpu_cores': _cpu_seconds(cpu_before[0], cpu_after[0]) / wall,
        'rig_cpu_cores': _cpu_seconds(cpu_before[1], cpu_after[1]) / wall,
        # The node's own figure: segment_batch (conversion, pre/post-processing and forward).
        'node_segment_p50_ms': float(np.median(rig.node_inference_ms)) if rig.node_inference_ms else None,
        'load_average': load_average(),
        **({'latency_' + k: v for k, v in summarize_times(times).items()} if times.size else {}),
    }
    if overload:
        row.update(capacity_hz=capacity_hz, memory_mib=memory)
    return row


def _node_drops(rig: _Rig, topics: Sequence[str], process: subprocess.Popen, log_path: Path) -> int:
    """The node's own count of dropped frames, from a diagnostics message published after now."""
    with rig.lock:
        rig.diagnostics.clear()
    _wait(lambda: all(topic in rig.diagnostics for topic in topics), 10.0, 'fresh diagnostics', process,
          log_path)
    with rig.lock:
        return sum(int(rig.diagnostics[topic]['dropped frames']) for topic in topics)


def _cpu_seconds(before: Any, after: Any) -> float:
    return (after.user - before.user) + (after.system - before.system)


class _MemorySampler:
    """Resident memory of a process every ``period`` seconds and once more when stopped, as
    (seconds, MiB)."""

    def __init__(self, process: Any, samples: list[tuple[float, float]], period: float) -> None:
        self.process, self.samples, self.period = process, samples, period
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def _sample(self) -> None:
        self.samples.append((round(time.perf_counter() - self._start, 2),
                             round(self.process.memory_info().rss / MIB, 1)))

    def stop(self) -> None:
        """Stops sampling; the last sample is taken now, so the run's end is always in the record."""
        self._stop.set()
        self._thread.join()
        self._sample()


def forward_probe(spec: str) -> None:
    """Entry of the process ``probe_forward`` starts: prints the forward times (ms) as JSON."""
    options = json.loads(spec)
    segmenter = Segmenter(options['checkpoint'], device=options['device'], precision=options['precision'])
    frames = torch.rand(options['batch'], 3, *segmenter.input_size, device=segmenter.device) * 255
    period = 1.0 / options['rate_hz'] if options['rate_hz'] else 0.0
    times: list[float] = []

    def work() -> None:  # in a thread of its own, as the node's worker
        for _ in range(options['iterations']):
            start = time.perf_counter()
            times.extend(latencies_ms(segmenter.forward, [frames], iterations=1, warmup=0).tolist())
            time.sleep(max(0.0, period - (time.perf_counter() - start)))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    print(json.dumps(times))


def probe_forward(args: argparse.Namespace, checkpoint: Path, batch: int,
                  rate_hz: float | None = None) -> dict[str, float]:
    """The bare forward of the Segmenter the node builds (same checkpoint and settings), timed in
    a process of its own started like the node's, from a worker thread, called at ``rate_hz``
    (None: back to back): its median and p99 in ms.

    Timed in this process instead, the same forward measured up to 1.5x slower on the shared CPU
    (a process that has done other work is not a fair stand-in for the node).
    """
    iterations, period = args.node_forward_iterations, 0.0
    if rate_hz:  # paced: about as long as a node run, a few calls at least
        period = 1.0 / rate_hz
        iterations = max(3, min(iterations, math.ceil(args.node_seconds * rate_hz)))
    spec = json.dumps({'checkpoint': str(checkpoint), 'device': args.node_device,
                       'precision': args.node_precision, 'batch': batch, 'rate_hz': rate_hz,
                       'iterations': iterations})
    command = [sys.executable, '-c', 'import sys; from seg_ros.bench.node import forward_probe; '
               'forward_probe(sys.argv[1])', spec]
    result = subprocess.run(command, capture_output=True, text=True, env=_node_env(args),
                            timeout=args.node_start_timeout + 3 * iterations * max(period, 1.0))
    if result.returncode != 0:
        raise RuntimeError(f'the forward probe failed ({result.returncode}):\n{result.stderr[-2000:]}')
    times = json.loads(result.stdout.strip().splitlines()[-1])
    return {'forward_p50_ms': float(np.median(times)), 'forward_p99_ms': float(np.percentile(times, 99))}


def _node_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.threads:
        env['OMP_NUM_THREADS'] = str(args.threads)
    return env


def bench_node(args: argparse.Namespace, folder: Path) -> list[dict]:
    """End-to-end runs at half the measured capacity (or ``--node-rate``)."""
    rows = []
    for network in args.node_networks:
        for cameras, size in args.node_configs:
            checkpoint = random_checkpoint(network, size, folder)
            rate = args.node_rate
            if rate is None:  # batches/s: one frame of every camera in a batch
                rate = min(30.0, 0.5 * 1000.0 / probe_forward(args, checkpoint, cameras)['forward_p50_ms'])
            seconds = max(args.node_seconds, MIN_NODE_FRAMES / rate)
            row = measure_node(args, checkpoint, network, size, cameras, rate, seconds, folder)
            row.update(probe_forward(args, checkpoint, cameras, rate), forward_batch=cameras)
            if 'latency_p50_ms' in row:
                row['e2e_over_forward'] = row['latency_p50_ms'] / row['forward_p50_ms']
                row['overhead_ms'] = row['latency_p50_ms'] - row['forward_p50_ms']
            rows.append(row)
            print(f'  node {network} {cameras} x {format_size(size)} at {rate:.2f} Hz: '
                  f'p50 {row.get("latency_p50_ms", float("nan")):.1f} ms', file=sys.stderr, flush=True)
    return rows


def bench_overload(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """One camera at twice the node's capacity (measured from its output while saturated), with
    the node's memory sampled."""
    network, size = args.node_networks[0], args.overload_resolution
    checkpoint = random_checkpoint(network, size, folder)
    forward = probe_forward(args, checkpoint, 1)
    saturating = 3.0 * 1000.0 / forward['forward_p50_ms']
    row = measure_node(args, checkpoint, network, size, 1, saturating, args.overload_seconds, folder, overload=2.0)
    row.update(forward)
    row['input_over_output_rate'] = row['rate_hz'] / row['output_rate_hz'] if row['output_rate_hz'] else None
    memory = np.asarray(row['memory_mib'], np.float64).reshape(-1, 2)
    settled = memory[memory[:, 0] >= min(SETTLED_AFTER_SECONDS, args.overload_seconds / 2)]
    if settled.shape[0] >= 2:
        row.update(rss_start_mib=float(memory[0, 1]), rss_settled_min_mib=float(settled[:, 1].min()),
                   rss_settled_max_mib=float(settled[:, 1].max()), rss_end_mib=float(memory[-1, 1]),
                   rss_settled_slope_mib_per_min=float(np.polyfit(settled[:, 0], settled[:, 1], 1)[0]) * 60.0)
    if 'latency_p50_ms' in row:
        row['p99_over_p50'] = row['latency_p99_ms'] / row['latency_p50_ms']
        row['latency_bounded'] = row['p99_over_p50'] <= 2.0
    return row
