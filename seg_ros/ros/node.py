"""``segment_node``: semantic segmentation of one or more camera topics.

Subscription callbacks only keep the latest frame of each camera. One worker thread takes the
latest frames, converts them, runs them through the network as one batch
(``Segmenter.segment_batch``) and publishes the results, so a slow network drops stale frames
(and counts them) instead of queueing them or blocking the executor.

Per camera topic ``<ns>/<name>`` (``<ns>/<name>/compressed`` for a ``CompressedImage``), under
``<ns>/<output_namespace>/`` (default ``segmentation``):

- ``mask`` (``sensor_msgs/Image`` mono8): class index per pixel, 255 = none; the input's header;
- ``color_mask``, ``overlay`` (rgb8) and ``confidence`` (mono8 0..255): computed only while
  someone subscribes to them;
- ``stats`` (``std_msgs/Float32MultiArray``): C x 3 rows of count, fraction, mean confidence;
- ``class_info`` (``std_msgs/String``, JSON, latched): the model and its class names and colours;

under the cameras' common namespace, ``grid`` (``nav_msgs/OccupancyGrid``) and ``scan``
(``sensor_msgs/LaserScan``) in ``ground_frame``, fused from every camera with a ``CameraInfo`` and a
pose, computed only while someone subscribes (``seg_ros.ros.ground_output``); and one
``/diagnostics`` status per camera plus one for the model. The default camera topic is relative
(``camera/image_raw``), so a namespace given to the node moves every topic but ``/diagnostics``.

The node goes through the phases of a managed node: ``_configure`` (network and publishers),
``_activate`` (subscriptions, diagnostics timer, worker), ``_deactivate`` and ``_cleanup``. This
plain node runs the first two at construction; ``lifecycle_node.ManagedSegmentNode`` runs each on
its lifecycle transition.
"""

from __future__ import annotations

import gc
import json
import re
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    InvalidTopicNameException,
)
from rclpy.expand_topic_name import expand_topic_name
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import qos_policy_name_from_kind
from rclpy.subscription import Subscription
from rclpy.time import Time
from rclpy.timer import Timer
from rclpy.validate_full_topic_name import validate_full_topic_name
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32MultiArray, Header, MultiArrayDimension, MultiArrayLayout, String

from seg_ros.checkpoint import CheckpointError, load_checkpoint
from seg_ros.inference.segmenter import SegmentationError, SegmentationResult, Segmenter
from seg_ros.interface import output_prefix, stats_dimensions, stats_table
from seg_ros.models import list_models
from seg_ros.paths import default_checkpoint
from seg_ros.ros.conversions import ConversionError, array_to_image, compressed_to_array, image_to_array
from seg_ros.ros.ground_output import GroundOutputs
from seg_ros.ros.parameters import NODE_NAME, PARAMETERS, descriptor, invalid_reason
from seg_ros.ros.qos import LATCHED, OUTPUT, SubscriptionEventCallbacks, input_qos
from seg_ros.ros.spinning import run_node
from seg_ros.vocabulary import format_size

__all__ = ['SegmentNode', 'StartupError', 'main', 'run']


LOG_THROTTLE_SEC = 5.0


LATENCY_WINDOW = 1000  # samples kept between two diagnostics reports


# Optional outputs and the parameter that switches each on.
OPTIONAL_OUTPUT_SWITCHES = {
    'color_mask': 'publish_color_mask',
    'overlay': 'publish_overlay',
    'confidence': 'publish_confidence',
}


OUTPUT_TYPES = {
    'mask': Image,
    'color_mask': Image,
    'overlay': Image,
    'confidence': Image,
    'stats': Float32MultiArray,
    'class_info': String,
}


class StartupError(RuntimeError):
    """The node cannot start; the message says what to fix."""


def stats_message(result: SegmentationResult) -> Float32MultiArray:
    """Per class (rows) the pixel count, fraction of the image and mean confidence (columns)."""
    table = stats_table(result)
    layout = MultiArrayLayout(dim=[MultiArrayDimension(label=label, size=size, stride=stride)
                                   for label, size, stride in stats_dimensions(table.shape[0])])
    return Float32MultiArray(layout=layout, data=table.ravel().tolist())


def class_info_message(segmenter: Segmenter) -> String:
    labels = segmenter.labels
    return String(data=json.dumps({
        'model': segmenter.checkpoint.model_name,
        'label_set': labels.name,
        'names': list(labels.names),
        'colors': [list(color) for color in labels.colors],
    }))


def _topic_name_problem(error: Exception) -> str:
    """What rclpy says is wrong with a topic name, without its prefix and C source location."""
    text = str(error).splitlines()[0].removeprefix('Invalid topic name: ').rstrip(':')
    return re.sub(r', at \S+:\d+$', '', text.split(' is invalid: ', 1)[-1])


def _is_out_of_memory(error: RuntimeError) -> bool:
    # CUDA raises OutOfMemoryError; the CPU allocator a plain RuntimeError ("DefaultCPUAllocator:
    # can't allocate memory", "not enough memory" in older releases).
    message = str(error)
    return isinstance(error, torch.cuda.OutOfMemoryError) or any(
        words in message for words in ('out of memory', "can't allocate memory", 'not enough memory'))


@dataclass
class _Counters:
    received: int = 0
    published: int = 0
    dropped: int = 0  # replaced by a newer frame before the worker took it
    bad: int = 0  # could not be converted
    failed: int = 0  # the forward pass failed (non-finite output, out of memory)


@dataclass
class _Camera:
    """One input topic: its publishers, its latest unprocessed frame and its counters."""

    topic: str
    compressed: bool
    outputs: dict[str, Publisher]
    logger: Any  # the node's child logger, so that throttling is per camera
    pending: Image | CompressedImage | None = None
    counters: _Counters = field(default_factory=_Counters)
    reported: _Counters = field(default_factory=_Counters)  # counters at the last diagnostics report
    last_frame: float = field(default_factory=time.monotonic)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    incompatible_policy: str = ''
    subscription: Subscription | None = None  # only while active


@dataclass
class _Frame:
    """A converted frame on its way through the network."""

    camera: _Camera
    header: Header
    image: np.ndarray
    encoding: str
    outputs: frozenset[str]  # optional outputs this camera publishes


class SegmentNode(Node):
    """Segments every camera in ``image_topics``; see the module docstring for the topics."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.fatal_error: BaseException | None = None
        self.segmenter: Segmenter | None = None
        self._lock = threading.Lock()
        self._frames_ready = threading.Condition(self._lock)
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._cameras: list[_Camera] = []
        self.ground: GroundOutputs | None = None
        self._diagnostics: Publisher | None = None
        self._diagnostics_timer: Timer | None = None
        self._checkpoint_path: Path | None = None
        self._inference_ms: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._batch_sizes: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._last_report = time.monotonic()
        try:
            self._declare_parameters()
            self._bring_up()
        except BaseException:  # a StartupError, or SIGINT during start-up: leave nothing running
            self.destroy_node()
            raise

    def _bring_up(self) -> None:
        """A plain node configures and activates itself at once (a managed one on request)."""
        self._configure()
        self._activate()

    # -- phases --------------------------------------------------------------------------------

    def _configure(self) -> None:
        """Load the network and create the publishers; StartupError says what to fix."""
        self.segmenter = self._create_segmenter()
        self._create_publishers()

    def _activate(self) -> None:
        """Subscribe to the cameras and start segmenting."""
        subscription_qos = input_qos(self._param('qos_reliability'), self._param('qos_depth'))
        for camera in self._cameras:
            camera.subscription = self._subscribe(camera, subscription_qos)
        self._diagnostics_timer = self.create_timer(self._param('diagnostics_period'),
                                                    self.diagnostics_callback)
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name='segment_worker', daemon=True)
        self._worker.start()
        topics = ', '.join(self._full_topic_name(camera.topic) for camera in self._cameras)
        self.get_logger().info(f'segmenting {topics} with {self.segmenter.describe()} from {self._checkpoint_path}')

    def _deactivate(self) -> None:
        """Stop segmenting: the frame in the network is finished, later ones are neither received nor counted."""
        self._stop_worker()
        for camera in self._cameras:
            if camera.subscription is not None:
                self.destroy_subscription(camera.subscription)
                camera.subscription = None
            camera.pending = None
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None

    def _cleanup(self) -> None:
        """Destroy the publishers and free the network and its device memory."""
        for camera in self._cameras:
            for publisher in camera.outputs.values():
                self.destroy_publisher(publisher)
        self._cameras = []
        if self.ground is not None:
            self.ground.destroy()
            self.ground = None
        if self._diagnostics is not None:
            self.destroy_publisher(self._diagnostics)
            self._diagnostics = None
        if self.segmenter is not None:
            on_cuda = self.segmenter.device.type == 'cuda'
            self.segmenter = None
            gc.collect()  # the network may sit in reference cycles (hooks, compiled graphs)
            if on_cuda:
                torch.cuda.empty_cache()

    def _stop_worker(self) -> None:
        with self._frames_ready:
            self._stopping = True
            self._frames_ready.notify_all()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()
        self._worker = None

    # -- start-up --------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        # The callback is added first so that start-up values (overrides) are checked as well.
        self.add_on_set_parameters_callback(self.parameters_callback)
        try:
            self.declare_parameters('', [(name, spec.default, descriptor(name, spec))
                                         for name, spec in PARAMETERS.items()])
        except (InvalidParameterValueException, InvalidParameterTypeException) as error:
            raise StartupError(str(error)) from None

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _full_topic_name(self, topic: str) -> str:
        """``topic`` expanded in this node's namespace (before remapping); ValueError for an invalid name."""
        return expand_topic_name(topic, self.get_name(), self.get_namespace())

    def _create_segmenter(self) -> Segmenter:
        model, weights = self._param('model'), self._param('weights')
        if model and model not in list_models():
            raise StartupError(f'unknown model {model!r}; available: {", ".join(list_models())}')
        if not model and not weights:
            raise StartupError('set model (a network with a shipped checkpoint) or weights '
                               '(a checkpoint file)')
        try:
            path = Path(weights).expanduser() if weights else default_checkpoint(model)
            checkpoint = load_checkpoint(path)
        except (CheckpointError, FileNotFoundError) as error:
            raise StartupError(str(error)) from None
        if model and checkpoint.model_name != model:
            raise StartupError(
                f'weights {path} hold a {checkpoint.model_name!r} network but model is {model!r}; '
                f'set model to {checkpoint.model_name!r} (or empty), or choose other weights')
        height, width = self._param('input_height'), self._param('input_width')
        if (height == 0) != (width == 0):
            raise StartupError(f'input_height {height} and input_width {width}: set both, or both to 0 '
                               'for the checkpoint training resolution')
        self._checkpoint_path = path
        try:
            return Segmenter(checkpoint, device=self._param('device'), precision=self._param('precision'),
                             input_size=(height, width) if height else None,
                             output_size=self._param('output_size'),
                             min_confidence=self._param('min_confidence'), backend=self._param('backend'),
                             compile=self._param('compile'))
        except ValueError as error:
            raise StartupError(str(error)) from None

    def _create_publishers(self) -> None:
        """The output publishers of every camera and the diagnostics publisher."""
        class_info = class_info_message(self.segmenter)
        prefixes: dict[str, str] = {}
        for index, topic in enumerate(self._param('image_topics')):
            prefix = output_prefix(topic, self._param('output_namespace'))
            if prefix in prefixes:
                raise StartupError(f'image_topics {prefixes[prefix]!r} and {topic!r} would both publish '
                                   f'under {prefix}/; give each camera its own namespace')
            prefixes[prefix] = topic
            try:
                # Checked now although subscribed only on activation: a bad name is a configuration error.
                validate_full_topic_name(self._full_topic_name(topic))
                camera = self._create_camera(topic, prefix, index)
            except (InvalidTopicNameException, ValueError) as error:
                raise StartupError(f'camera topic {topic!r} (results under {prefix!r}/) is not a valid '
                                   f'ROS name: {_topic_name_problem(error)}') from None
            camera.outputs['class_info'].publish(class_info)
            self._cameras.append(camera)
        self.ground = GroundOutputs(
            self, [camera.topic for camera in self._cameras],
            [camera.outputs['mask'].topic_name for camera in self._cameras], self.segmenter.labels,
            self._param, input_qos(self._param('qos_reliability'), 10), OUTPUT)
        self._diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)

    def _create_camera(self, topic: str, prefix: str, index: int) -> _Camera:
        outputs = {name: self.create_publisher(msg_type, f'{prefix}/{name}',
                                               LATCHED if name == 'class_info' else OUTPUT)
                   for name, msg_type in OUTPUT_TYPES.items()}
        compressed = topic.endswith('/compressed')
        return _Camera(topic, compressed, outputs, self.get_logger().get_child(f'camera{index}'))

    def _subscribe(self, camera: _Camera, subscription_qos: Any) -> Subscription:
        events = SubscriptionEventCallbacks(incompatible_qos=partial(self.incompatible_qos_callback, camera))
        return self.create_subscription(CompressedImage if camera.compressed else Image, camera.topic,
                                        partial(self.image_callback, camera), subscription_qos,
                                        event_callbacks=events)

    # -- callbacks (executor thread) ------------------------------------------------------------

    def parameters_callback(self, parameters: list[Parameter]) -> SetParametersResult:
        """Reject values rclpy's type, range and read-only checks let through."""
        for parameter in parameters:
            reason = invalid_reason(parameter)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def image_callback(self, camera: _Camera, msg: Image | CompressedImage) -> None:
        """Keep only the latest frame; the worker converts and segments it."""
        with self._frames_ready:
            if camera.pending is not None:
                camera.counters.dropped += 1
            camera.pending = msg
            camera.counters.received += 1
            camera.last_frame = time.monotonic()
            self._frames_ready.notify()

    def incompatible_qos_callback(self, camera: _Camera, event: Any) -> None:
        policy = qos_policy_name_from_kind(event.last_policy_kind)
        camera.incompatible_policy = policy
        self.get_logger().warning(
            f'{camera.topic}: a publisher offers QoS incompatible with this subscription ({policy}; '
            f'qos_reliability is {self._param("qos_reliability")!r}), its frames are not received')

    def diagnostics_callback(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._last_report, 1e-6)
        self._last_report = now
        report = DiagnosticArray()
        report.header.stamp = self.get_clock().now().to_msg()
        with self._lock:
            report.status = [self._camera_status(camera, now, elapsed) for camera in self._cameras]
            report.status.append(self._model_status())
        self._diagnostics.publish(report)

    # -- worker thread ---------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while (batch := self._take_frames()) is not None:
                self._segment_and_publish(batch)
        except Exception as error:  # a bug rather than a bad frame: stop instead of going silent
            if not self.context.ok():
                return  # shutting down: publishers are gone
            self.fatal_error = error
            self.get_logger().fatal(f'segmentation worker stopped: {error!r}\n{traceback.format_exc()}')
            rclpy.try_shutdown(context=self.context)

    def _take_frames(self) -> list[tuple[_Camera, Image | CompressedImage]] | None:
        """Wait for frames; the latest one of every camera that has one, or None when stopping."""
        with self._frames_ready:
            self._frames_ready.wait_for(
                lambda: self._stopping or any(camera.pending is not None for camera in self._cameras))
            if self._stopping:
                return None
            batch = [(camera, camera.pending) for camera in self._cameras if camera.pending is not None]
            for camera, _ in batch:
                camera.pending = None
        return batch

    def _convert(self, camera: _Camera, msg: Image | CompressedImage) -> _Frame | None:
        to_array = compressed_to_array if camera.compressed else image_to_array
        try:
            image, encoding = to_array(msg, max_pixels=self._param('max_image_pixels'))
        except ConversionError as error:
            with self._lock:
                camera.counters.bad += 1
            camera.logger.warning(f'{camera.topic}: dropped a bad frame: {error}',
                                  throttle_duration_sec=LOG_THROTTLE_SEC)
            return None
        outputs = frozenset(output for output, switch in OPTIONAL_OUTPUT_SWITCHES.items()
                            if self._param(switch) and camera.outputs[output].get_subscription_count() > 0)
        return _Frame(camera, msg.header, image, encoding, outputs)

    def _segment_and_publish(self, batch: list[tuple[_Camera, Image | CompressedImage]]) -> None:
        converted = (self._convert(camera, msg) for camera, msg in batch)
        frames = [frame for frame in converted if frame is not None]
        if not frames:
            return
        self.segmenter.min_confidence = self._param('min_confidence')
        start = time.perf_counter()
        try:
            results = self.segmenter.segment_batch(
                [frame.image for frame in frames], [frame.encoding for frame in frames],
                outputs=frozenset().union(*(frame.outputs for frame in frames)),
                overlay_alpha=self._param('overlay_alpha'))
        except SegmentationError as error:
            self._skip(frames, str(error))
            return
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            torch.cuda.empty_cache()
            self._skip(frames, f'out of memory in the forward pass ({str(error).splitlines()[0]})')
            return
        with self._lock:
            self._inference_ms.append((time.perf_counter() - start) * 1e3)
            self._batch_sizes.append(len(frames))
        for frame, result in zip(frames, results, strict=True):
            self._publish(frame, result)
        if self.ground.wanted():
            self.ground.update([(frame.camera.topic, frame.header, result.mask)
                                for frame, result in zip(frames, results, strict=True)])

    def _skip(self, frames: list[_Frame], reason: str) -> None:
        with self._lock:
            for frame in frames:
                frame.camera.counters.failed += 1
        topics = ', '.join(frame.camera.topic for frame in frames)
        self.get_logger().warning(f'skipped frame(s) of {topics}: {reason}',
                                  throttle_duration_sec=LOG_THROTTLE_SEC)

    def _publish(self, frame: _Frame, result: SegmentationResult) -> None:
        outputs, header = frame.camera.outputs, frame.header
        outputs['mask'].publish(array_to_image(result.mask, 'mono8', header))
        for name in frame.outputs:
            array = getattr(result, name)
            outputs[name].publish(array_to_image(array, 'mono8' if array.ndim == 2 else 'rgb8', header))
        if self._param('publish_stats'):
            outputs['stats'].publish(stats_message(result))
        stamp = Time.from_msg(header.stamp)
        latency_ms = (self.get_clock().now() - stamp).nanoseconds / 1e6 if stamp.nanoseconds else None
        with self._lock:
            frame.camera.counters.published += 1
            if latency_ms is not None:
                frame.camera.latencies_ms.append(latency_ms)

    # -- diagnostics (called with the lock held) -----------------------------------------------

    def _camera_status(self, camera: _Camera, now: float, elapsed: float) -> DiagnosticStatus:
        counters, previous = camera.counters, camera.reported
        camera.reported = replace(counters)
        latencies = np.asarray(camera.latencies_ms, np.float64)
        camera.latencies_ms.clear()
        silent = now - camera.last_frame
        problems = []
        if silent > self._param('camera_timeout'):
            problems.append(f'no frames for {silent:.1f} s')
            if camera.incompatible_policy:
                problems.append(f'a publisher offers incompatible QoS ({camera.incompatible_policy})')
        if counters.bad > previous.bad:
            problems.append(f'{counters.bad - previous.bad} bad frame(s)')
        if counters.failed > previous.failed:
            problems.append(f'{counters.failed - previous.failed} frame(s) failed in the network')
        if problems:
            level, message = DiagnosticStatus.WARN, '; '.join(problems)
        else:
            level, message = DiagnosticStatus.OK, 'ok' if counters.received else 'waiting for the first frame'
        p50, p99 = np.percentile(latencies, [50, 99]) if latencies.size else (float('nan'), float('nan'))
        values = {
            'topic': camera.topic,
            'input rate (Hz)': f'{(counters.received - previous.received) / elapsed:.2f}',
            'output rate (Hz)': f'{(counters.published - previous.published) / elapsed:.2f}',
            'latency p50 (ms)': f'{p50:.1f}',
            'latency p99 (ms)': f'{p99:.1f}',
            'frames received': str(counters.received),
            'frames published': str(counters.published),
            'dropped frames': str(counters.dropped),
            'bad frames': str(counters.bad),
            'failed frames': str(counters.failed),
            'incompatible QoS': camera.incompatible_policy or 'none',
            'ground grid': self.ground.state(camera.topic),
        }
        return DiagnosticStatus(level=level, name=f'{self.get_fully_qualified_name()}: {camera.topic}', message=message,
                                hardware_id=camera.topic,
                                values=[KeyValue(key=key, value=value) for key, value in values.items()])

    def _model_status(self) -> DiagnosticStatus:
        segmenter = self.segmenter
        inference = np.asarray(self._inference_ms, np.float64)
        batch_sizes = np.asarray(self._batch_sizes, np.float64)
        self._inference_ms.clear()
        self._batch_sizes.clear()
        values = {
            'model': segmenter.checkpoint.model_name,
            'checkpoint': str(self._checkpoint_path),
            'labels': f'{segmenter.labels.name} ({segmenter.num_classes} classes)',
            'device': str(segmenter.device),
            'precision': segmenter.precision,
            'backend': segmenter.backend,
            'backend choice': segmenter.choice.summary(),
            'input size': format_size(segmenter.input_size),
            'output size': segmenter.output_size,
            'inference p50 (ms)': f'{np.median(inference):.1f}' if inference.size else 'nan',
            'mean batch size': f'{batch_sizes.mean():.2f}' if batch_sizes.size else 'nan',
        }
        return DiagnosticStatus(level=DiagnosticStatus.OK, name=f'{self.get_fully_qualified_name()}: model',
                                message=segmenter.describe(), hardware_id=str(segmenter.device),
                                values=[KeyValue(key=key, value=value) for key, value in values.items()])

    # -- shutdown ----------------------------------------------------------------------------------

    def destroy_node(self) -> None:
        """Stop the worker (after the frame in the network) before the node's entities go."""
        self._stop_worker()
        super().destroy_node()


def run(node_class: type[SegmentNode], args: list[str] | None = None) -> int:
    """Run a segment node until SIGINT or SIGTERM (exit code 0); 1 when it cannot start or its worker fails."""
    return run_node(node_class, args, name=NODE_NAME, startup_errors=(StartupError,),
                    exit_code=lambda node: 1 if node.fatal_error is not None else 0)


def main(args: list[str] | None = None) -> int:
    """``segment_node``: configured and active from the start."""
    return run(SegmentNode, args)
