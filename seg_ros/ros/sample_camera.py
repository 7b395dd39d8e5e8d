"""``sample_camera``: publishes camera frames from a video, an image folder, a rosbag2, a V4L2
camera or, by default, the moving synthetic road scene, so the segmentation node can be tried
without a camera.

Frames go out at ``rate`` Hz on ``topic`` as ``sensor_msgs/Image`` rgb8 (as JPEG
``sensor_msgs/CompressedImage`` when the topic ends in ``/compressed``), resized to
``width`` x ``height``, stamped with the node clock and ``frame_id``. A finite source starts
again at its end with ``loop``; without it the node exits after the last frame. The synthetic scene
also publishes its ``sensor_msgs/CameraInfo`` (an undistorted pinhole 1.4 m above the ground, level)
beside the images on ``<ns>/camera_info``, with each frame's header.

    ros2 run seg_ros sample_camera
    ros2 run seg_ros sample_camera --ros-args -p source:=drive.mp4 -p rate:=30.0
    ros2 run seg_ros sample_camera --ros-args -p source:=my_bag -p bag_topic:=/front/image_raw
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.node import Node
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from seg_ros.frames.sources import SourceError, open_source, play
from seg_ros.interface import camera_info_topic
from seg_ros.ros.conversions import array_to_compressed, array_to_image
from seg_ros.ros.qos import RELIABILITY_CHOICES, input_qos
from seg_ros.ros.spinning import run_node

__all__ = ['PARAMETERS', 'SampleCamera', 'main']

NODE_NAME = 'sample_camera'

PARAMETERS: dict[str, tuple[bool | int | float | str, str, tuple[float, float] | None]] = {
    'source': ('synthetic', 'synthetic, v4l2:/dev/videoN, a video file, an image folder, '
                            'or a rosbag2 (folder, .db3 or .mcap file)', None),
    'topic': ('camera/image_raw', 'where frames are published (relative names are in the node namespace); '
                                  'a name ending in /compressed publishes JPEG sensor_msgs/CompressedImage', None),
    'rate': (15.0, 'frames per second', (0.1, 1000.0)),
    'width': (640, 'width of the published frames (the source is resized to it)', (32, 8192)),
    'height': (360, 'height of the published frames (the source is resized to it)', (32, 8192)),
    'frame_id': ('camera_optical_frame', 'header.frame_id of the published frames', None),
    'loop': (True, 'start a finite source again at its end; false: the node exits after it', None),
    'bag_topic': ('', "image topic of a rosbag2 source; '' = the bag's only image topic", None),
    'qos_reliability': ('best_effort', f'reliability of the publisher: {" or ".join(RELIABILITY_CHOICES)}',
                        None),
}
"""Every parameter: (default, description, inclusive range). All are read-only: set at start."""


def _descriptor(description: str, limits: tuple[float, float] | None, default: object) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=description, read_only=True)
    if limits is not None and isinstance(default, float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=limits[0], to_value=limits[1])]
    elif limits is not None:
        descriptor.integer_range = [IntegerRange(from_value=int(limits[0]), to_value=int(limits[1]), step=1)]
    return descriptor


def camera_info(intrinsics: tuple[float, float, float, float], width: int, height: int) -> CameraInfo:
    """The CameraInfo of an undistorted pinhole camera (fx, fy, cx, cy), without a header."""
    fx, fy, cx, cy = (float(value) for value in intrinsics)
    return CameraInfo(width=width, height=height, distortion_model='plumb_bob', d=[0.0] * 5,
                      k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


class SampleCamera(Node):
    """Publishes the frames of one ``seg_ros.frames.sources`` source at a fixed rate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            self.declare_parameters('', [(name, default, _descriptor(description, limits, default))
                                         for name, (default, description, limits) in PARAMETERS.items()])
            value = {name: self.get_parameter(name).value for name in PARAMETERS}
            qos = input_qos(value['qos_reliability'], depth=1)
            width, height, rate = value['width'], value['height'], value['rate']
            self._source = open_source(value['source'], width=width, height=height, rate=rate,
                                       bag_topic=value['bag_topic'])
        except BaseException:  # bad parameters, a source that cannot be read, or SIGINT during start-up
            super().destroy_node()
            raise
        self._frames = play(self._source, width=width, height=height, loop=value['loop'])
        self._frame_id = value['frame_id']
        self._compressed = value['topic'].endswith('/compressed')
        message_type = CompressedImage if self._compressed else Image
        self._publisher = self.create_publisher(message_type, value['topic'], qos)
        self._camera_info = None
        if self._source.intrinsics is not None:
            self._camera_info = camera_info(self._source.intrinsics, width, height)
            self._camera_info_publisher = self.create_publisher(CameraInfo, camera_info_topic(value['topic']), qos)
        self.published = 0
        self.finished = Future()
        """Done when there is nothing more to publish; the result is the exit code."""
        self._timer = self.create_timer(1.0 / rate, self.timer_callback)
        self.get_logger().info(
            f'publishing {self._source} as {width}x{height} at {rate:g} Hz on {self._publisher.topic_name}')

    def timer_callback(self) -> None:
        try:
            frame = next(self._frames)
        except StopIteration:
            self.get_logger().info(f'{self._source} ended after {self.published} frames')
            self._finish(0)
            return
        except SourceError as error:
            self.get_logger().error(str(error))
            self._finish(1)
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self._frame_id)
        if self._compressed:
            msg = array_to_compressed(frame, 'jpeg', header=header)
        else:
            msg = array_to_image(frame, 'rgb8', header)
        self._publisher.publish(msg)
        if self._camera_info is not None:
            self._camera_info.header = header
            self._camera_info_publisher.publish(self._camera_info)
        self.published += 1

    def _finish(self, exit_code: int) -> None:
        self._timer.cancel()
        self.finished.set_result(exit_code)

    def destroy_node(self) -> None:
        self._frames.close()  # releases a camera device or an open bag
        super().destroy_node()


def main(args: list[str] | None = None) -> int:
    """Publish until the source ends or SIGINT; 1 when the source cannot be read."""
    return run_node(SampleCamera, args, name=NODE_NAME,
                    startup_errors=(ValueError, InvalidParameterValueException, InvalidParameterTypeException),
                    done=lambda node: node.finished.done,
                    exit_code=lambda node: node.finished.result() if node.finished.done() else 0)
