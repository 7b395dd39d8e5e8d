"""A ROS 2 probe for node tests: its own context and executor thread, camera frames, waits."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CompressedImage, Image

from seg_ros.ros.conversions import array_to_image, image_to_array

HEIGHT, WIDTH = 48, 64
TIMEOUT = 10.0


def wait_for(condition: Callable[[], Any], timeout: float = TIMEOUT, what: str = 'condition',
              every: Callable[[], None] | None = None) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); ``every`` runs between polls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if every is not None:
            every()
        time.sleep(0.02)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def stamped(inbox: list, stamp: Any) -> Any:
    return next((msg for msg in reversed(inbox) if msg.header.stamp == stamp), None)


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {item.key: item.value for item in status.values}


def pixels(msg: Image) -> np.ndarray:
    return np.array(image_to_array(msg)[0])


class Ros:
    def __init__(self) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.probe = Probe(self.context)
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(ExternalShutdownException):
            self.executor.spin()

    def close(self) -> None:
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)
        self.executor.shutdown()


def add_node(ros: Ros, node_class: type[Node], **parameters: Any) -> Node:
    """A node of ``node_class`` in ``ros``'s context with these parameter overrides, spun by its executor."""
    node = node_class(context=ros.context, parameter_overrides=[
        Parameter(name, value=value) for name, value in parameters.items()])
    ros.executor.add_node(node)
    return node


def remove_node(ros: Ros, node: Node) -> None:
    ros.executor.remove_node(node)
    node.destroy_node()


@contextlib.contextmanager
def started_nodes(ros: Ros, node_class: type[Node], **defaults: Any) -> Iterator[Callable[..., Node]]:
    """``start(**parameters)`` adds a node (``defaults`` overridden by ``parameters``); all go at exit."""
    nodes: list[Node] = []

    def start(**parameters: Any) -> Node:
        nodes.append(add_node(ros, node_class, **{**defaults, **parameters}))
        return nodes[-1]

    try:
        yield start
    finally:
        for node in nodes:
            remove_node(ros, node)


def camera_image(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Random pixels with pure red, green and blue blocks whose classes are known (0, 1, 2)."""
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    for channel in range(3):
        image[:8, 8 * channel: 8 * channel + 8] = 0
        image[:8, 8 * channel: 8 * channel + 8, channel] = 255
    return image



class Probe(Node):
    """Publishes camera frames and records what comes back."""

    def __init__(self, context: Context) -> None:
        super().__init__('probe', context=context)
        self.diagnostics = self.listen('/diagnostics', DiagnosticArray)

    def listen(self, topic: str, msg_type: type, qos: QoSProfile | int = 10) -> list:
        inbox: list = []
        self.create_subscription(msg_type, topic, inbox.append, qos)
        return inbox

    def frame(self, image: np.ndarray, encoding: str = 'rgb8', frame_id: str = 'camera_optical_frame'
              ) -> Image:
        msg = array_to_image(image, encoding)
        self.stamp(msg, frame_id)
        return msg

    def stamp(self, msg: Image | CompressedImage, frame_id: str = 'camera_optical_frame') -> None:
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = frame_id

    def exchange(self, publisher: Any, msg: Any, inbox: list, timeout: float = TIMEOUT) -> Any:
        """Publish ``msg`` (again every 0.1 s) until ``inbox`` holds a message with its stamp."""
        last = 0.0

        def publish_now_and_then() -> None:
            nonlocal last
            if time.monotonic() - last > 0.1:
                publisher.publish(msg)
                last = time.monotonic()

        publish_now_and_then()
        return wait_for(lambda: stamped(inbox, msg.header.stamp), timeout,
                        f'an answer on {publisher.topic_name}', every=publish_now_and_then)

    def status(self, topic: str) -> DiagnosticStatus | None:
        """The latest /diagnostics status about ``topic`` (or the model, for 'model')."""
        for report in reversed(self.diagnostics):
            for status in report.status:
                if status.name.endswith(f': {topic}'):
                    return status
        return None

    def counter(self, topic: str, key: str) -> int:
        """A counter of the latest /diagnostics status about ``topic``; -1 before the first."""
        status = self.status(topic)
        return int(values(status)[key]) if status is not None else -1

