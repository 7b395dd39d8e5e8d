"""Flood: five times segment_node's capacity for a minute, over real DDS, with the node in its own process.

The node runs an (untrained) ENet with its vehicle defaults: a best-effort camera subscription
that keeps the newest frame. Its capacity is the rate at which it answers while frames arrive
faster than that: measured before the flood, then tracked every 5 s during it, the input following
at five times the rate answered. Checked: latency stays bounded, every frame the node received is
answered or dropped and counted, resident memory stays flat, and the node keeps answering
parameter changes and publishing diagnostics throughout.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import Image

from seg_ros.checkpoint import Checkpoint, save_checkpoint
from seg_ros.labels import CAMVID11
from seg_ros.models import build_model

from ..support.ros import Ros, wait_for
from .harness import Answers, NodeProcess, camera_frames, publish_paced, settled_counters

TOPIC = '/flood/image_raw'
CAMERA = (120, 160)  # height, width of the published frames
NETWORK_INPUT = (48, 64)
OVERLOAD = 5.0
SATURATION_HZ = 250.0  # input rate of the capacity measurement: beyond what the node serves
CHUNK_SECONDS = 5.0
FLOOD_SECONDS = 60.0
WARMUP_SECONDS = 10.0
PARAMETER_EVERY = 2.0  # seconds between two parameter changes
DIAGNOSTICS_PERIOD = 1.0
MAX_LATENCY_P99_MS = 1000.0
MAX_RSS_GROWTH = 0.05


def untrained_enet(path: Path) -> Path:
    model = build_model('enet', CAMVID11.num_classes).eval()
    return save_checkpoint(Checkpoint.from_model(model, 'enet', CAMVID11, input_size=NETWORK_INPUT), path)


def saturated_rate(publisher: Publisher, answers: Answers, images: list[np.ndarray], rate: float,
                   seconds: float) -> float:
    """Answers per second while frames arrive faster than the node serves them: its capacity."""
    start = time.monotonic()
    answered = len(answers.frames)
    publish_paced(publisher, images, rate, duration=seconds)
    return (len(answers.frames) - answered) / (time.monotonic() - start)


@pytest.mark.reliability
def test_five_times_capacity_for_a_minute(ros: Ros, tmp_path: Path, figures) -> None:
    parameters = {'model': 'enet', 'weights': str(untrained_enet(tmp_path / 'enet.pt')), 'image_topics': [TOPIC],
                  'device': 'cpu', 'diagnostics_period': DIAGNOSTICS_PERIOD}
    probe = ros.probe
    answers = Answers(probe, '/flood/segmentation/mask')
    diagnostics_at: list[float] = []

    def diagnostics_callback(msg: DiagnosticArray) -> None:
        if any(status.hardware_id == TOPIC for status in msg.status):
            diagnostics_at.append(time.monotonic())

    probe.create_subscription(DiagnosticArray, '/diagnostics', diagnostics_callback, 10)
    camera_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)  # what camera drivers use
    publisher = probe.create_publisher(Image, TOPIC, camera_qos)
    client = AsyncParameterClient(probe, 'segment_node')
    images = camera_frames(*CAMERA)
    with NodeProcess(parameters, tmp_path) as node:
        wait_for(lambda: publisher.get_subscription_count() and probe.count_publishers(
            '/flood/segmentation/mask'), what='the node and the probe matched')
        assert client.wait_for_services(timeout_sec=30)
        saturated_rate(publisher, answers, images, SATURATION_HZ, 3.0)  # warm-up
        capacity = saturated_rate(publisher, answers, images, SATURATION_HZ, 5.0)
        before = settled_counters(ros, TOPIC)

        round_trips_ms: list[float] = []
        rejected: list[str] = []
        next_change = [time.monotonic() + PARAMETER_EVERY]

        def parameter_set(future: Future, asked: float) -> None:
            round_trips_ms.append((time.monotonic() - asked) * 1e3)
            result = future.result().results[0]
            if not result.successful:
                rejected.append(result.reason)

        def change_parameter(index: int) -> None:
            """Every PARAMETER_EVERY s (called from the publishing loop): set overlay_alpha, time the answer."""
            if time.monotonic() < next_change[0]:
                return
            next_change[0] += PARAMETER_EVERY
            future = client.set_parameters([Parameter('overlay_alpha', value=0.25 + 0.5 * (index % 2))])
            future.add_done_callback(partial(parameter_set, asked=time.monotonic()))

        # The input follows the node: every CHUNK_SECONDS it is set to OVERLOAD x the rate the node
        # served over the last chunk, so that other jobs on the machine slowing the node (or the
        # capacity measurement) do not turn the flood into a trickle.
        rates: list[float] = []
        scheduled, sent = 0.0, 0
        rate = OVERLOAD * capacity
        flood_start = time.monotonic()
        while (left := FLOOD_SECONDS - (time.monotonic() - flood_start)) > 0.1:
            chunk_start, answered_before = time.monotonic(), len(answers.frames)
            rates.append(round(rate, 1))
            sent = publish_paced(publisher, images, rate, first=sent, duration=min(CHUNK_SECONDS, left),
                                 every=change_parameter)
            elapsed = time.monotonic() - chunk_start
            scheduled += rate * elapsed
            rate = OVERLOAD * max((len(answers.frames) - answered_before) / elapsed, 1.0)
        flood_end = time.monotonic()
        final = settled_counters(ros, TOPIC)
        exit_code = node.stop()

    received = final['received'] - before['received']
    answered = final['published'] - before['published']
    dropped = final['dropped'] - before['dropped']
    latencies = answers.latencies_since(flood_start + 1.0)
    rss_at = {round(second): node.samples_between(flood_start + second - 1, flood_start + second + 1)
              for second in (WARMUP_SECONDS, 30, FLOOD_SECONDS)}
    rss_mib = {second: round(float(np.median([s.rss for s in samples])) / 2**20, 1)
               for second, samples in rss_at.items()}
    growth = rss_mib[round(FLOOD_SECONDS)] / rss_mib[round(WARMUP_SECONDS)] - 1
    flood_diagnostics = [t for t in diagnostics_at if flood_start <= t <= flood_end]
    gaps = np.diff([flood_start, *flood_diagnostics, flood_end])
    figures(capacity_before_hz=round(capacity, 1), input_rates_hz=rates,
            input_rate_hz=round(sent / (flood_end - flood_start), 1),
            seconds=round(flood_end - flood_start, 1), frames_sent=sent, node_received=received,
            not_delivered_by_dds=sent - received, dropped_counted=dropped, answered=answered,
            answered_rate_hz=round(answered / (flood_end - flood_start), 1),
            input_over_answered=round(sent / answered, 1),
            latency_p50_ms=round(float(np.percentile(latencies, 50)), 1),
            latency_p99_ms=round(float(np.percentile(latencies, 99)), 1),
            latency_max_ms=round(float(latencies.max()), 1), rss_mib_at_seconds=rss_mib,
            rss_growth_pct=round(100 * growth, 2), parameter_changes=len(round_trips_ms),
            parameter_round_trip_p50_ms=round(float(np.median(round_trips_ms)), 1),
            parameter_round_trip_max_ms=round(max(round_trips_ms), 1),
            diagnostics_messages=len(flood_diagnostics), diagnostics_max_gap_s=round(float(gaps.max()), 2))

    assert exit_code == 0 and not any('Traceback' in line for line in node.log), ''.join(node.log[-40:])
    assert sent > 0.8 * scheduled, 'the publisher could not flood'
    assert sent > 0.8 * OVERLOAD * answered, f'no flood: {sent} frames sent, {answered} answered'
    assert received == answered + dropped and final['bad'] == final['failed'] == 0
    assert answered > 0.2 * capacity * FLOOD_SECONDS, 'the node stopped answering under the flood'
    assert float(np.percentile(latencies, 99)) < MAX_LATENCY_P99_MS
    assert growth < MAX_RSS_GROWTH, f'resident memory grew {100 * growth:.1f} % during the flood'
    expected_changes = int(FLOOD_SECONDS / PARAMETER_EVERY) - 1
    assert len(round_trips_ms) >= expected_changes and not rejected, (round_trips_ms, rejected)
    assert max(round_trips_ms) < 2000
    assert len(flood_diagnostics) >= 0.8 * FLOOD_SECONDS / DIAGNOSTICS_PERIOD
    assert gaps.max() < 3 * DIAGNOSTICS_PERIOD
