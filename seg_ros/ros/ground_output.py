"""The ground grid and scan of ``segment_node``: ``CameraInfo`` in, ``OccupancyGrid`` and ``LaserScan`` out.

A thin adapter around ``seg_ros.ground``. Per camera ``<ns>/<name>`` it subscribes to
``<ns>/camera_info`` and pairs each mask with the ``CameraInfo`` of the same stamp; with the camera's
pose (``camera_poses``) it keeps one ``GroundLookup`` per camera model, pose, grid and mask size, and
projects every mask through it. The cameras' latest layers (those within ``camera_timeout`` of the
newest) are fused into one grid in ``ground_frame`` and published, with the scan read from it, under
the cameras' common namespace: ``<ns>/<output_namespace>/grid`` and ``.../scan``. Nothing is
computed while neither has a subscriber.

Whatever prevents a correct grid from a camera (no or an uncalibrated ``CameraInfo``, no pose, a pose
whose horizon is below the image, non-finite numbers, class roles missing for the model's label
set) is logged as a warning, shown in that camera's diagnostics, and that camera contributes nothing
until it is fixed; segmentation goes on.
"""

from __future__ import annotations

import array
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from nav_msgs.msg import OccupancyGrid
from rclpy.node import Node
from rclpy.qos import QoSProfile
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, LaserScan
from std_msgs.msg import Header

from seg_ros.ground import (
    OCCUPANCY,
    CameraModel,
    CameraPose,
    GroundError,
    GroundGrid,
    GroundLayer,
    GroundLookup,
    build_lookup,
    class_role_table,
    default_class_roles_file,
    fuse,
    load_class_roles,
    project_mask,
    scan_ranges,
)
from seg_ros.interface import camera_info_topic
from seg_ros.labels import LabelSet

__all__ = ['GroundOutputs', 'camera_model', 'common_namespace', 'grid_message', 'parse_pose', 'scan_message']

CAMERA_INFO_BUFFER = 30  # CameraInfo messages kept per camera for pairing with masks by stamp
LOG_THROTTLE_SEC = 5.0
OK = 'ok'


def camera_model(info: CameraInfo, rectified: bool) -> CameraModel:
    """The calibration in ``info``; of the rectified image (``P``, no distortion) when ``rectified``."""
    roi = (info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height)
    if rectified:
        p = [float(value) for value in info.p]
        return CameraModel(info.width, info.height, (*p[0:3], *p[4:7], *p[8:11]), (), '', roi)
    return CameraModel(info.width, info.height, tuple(float(v) for v in info.k), tuple(float(v) for v in info.d),
                       info.distortion_model, roi)


def parse_pose(text: str) -> CameraPose:
    """``'x y z roll pitch yaw'`` (metres, radians) as a ``CameraPose``."""
    try:
        values = [float(item) for item in text.replace(',', ' ').split()]
    except ValueError:
        values = []
    if len(values) != 6:
        raise GroundError(f'camera pose {text!r} is not six numbers "x y z roll pitch yaw" (m, rad)')
    pose = CameraPose(*values)
    pose.check()
    return pose


def grid_message(layer: GroundLayer, grid: GroundGrid, header: Header) -> OccupancyGrid:
    msg = OccupancyGrid(header=header)
    msg.info.map_load_time = header.stamp
    msg.info.resolution = float(grid.resolution)
    msg.info.width, msg.info.height = grid.width, grid.height
    msg.info.origin.position.x, msg.info.origin.position.y = float(grid.min_x), float(grid.min_y)
    msg.info.origin.position.z = float(grid.ground_z)
    msg.data = array.array('b', OCCUPANCY[layer.codes].tobytes())  # an array.array is taken without a loop
    return msg


def scan_message(layer: GroundLayer, grid: GroundGrid, header: Header) -> LaserScan:
    ranges = scan_ranges(layer, grid)
    return LaserScan(header=header, angle_min=grid.angle_min,
                     angle_max=grid.angle_min + (grid.bins - 1) * grid.angle_increment,
                     angle_increment=grid.angle_increment, range_min=0.0, range_max=grid.range_max,
                     ranges=array.array('f', ranges.tobytes()))


@dataclass
class _Camera:
    topic: str
    index: int
    logger: Any
    infos: deque[CameraInfo] = field(default_factory=lambda: deque(maxlen=CAMERA_INFO_BUFFER))
    lookup_key: tuple | None = None
    lookup: GroundLookup | None = None
    layer: GroundLayer | None = None
    layer_stamp_ns: int = 0
    state: str = 'no frame yet'


class GroundOutputs:
    """Grid and scan of a node's cameras; ``param(name)`` reads the node's current parameters."""

    def __init__(self, node: Node, image_topics: Sequence[str], publisher_topics: Sequence[str],
                 labels: LabelSet, param: Callable[[str], Any], info_qos: QoSProfile, output_qos: QoSProfile) -> None:
        self._node, self._param = node, param
        self._lock = threading.Lock()
        self._cameras = {topic: _Camera(topic, index, node.get_logger().get_child(f'ground{index}'))
                         for index, topic in enumerate(image_topics)}
        self._subscriptions = [
            node.create_subscription(CameraInfo, camera_info_topic(camera.topic),
                                     lambda msg, camera=camera: self.camera_info_callback(camera, msg), info_qos)
            for camera in self._cameras.values()]
        prefix = f'{common_namespace(publisher_topics)}{param("output_namespace").strip("/")}'
        self.grid_publisher = node.create_publisher(OccupancyGrid, f'{prefix}/grid', output_qos)
        self.scan_publisher = node.create_publisher(LaserScan, f'{prefix}/scan', output_qos)
        self._roles_problem = ''
        self._role_table = np.zeros(256, np.uint8)
        path = param('ground_classes')
        try:
            self._role_table = class_role_table(labels, load_class_roles(path or default_class_roles_file(), labels))
        except GroundError as error:
            self._roles_problem = str(error)
            node.get_logger().warning(f'no ground grid or scan: {error}')

    def destroy(self) -> None:
        """Remove the CameraInfo subscriptions and the grid and scan publishers from the node."""
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._node.destroy_publisher(self.grid_publisher)
        self._node.destroy_publisher(self.scan_publisher)
        self._subscriptions = []

    def camera_info_callback(self, camera: _Camera, msg: CameraInfo) -> None:
        with self._lock:
            camera.infos.append(msg)

    def wanted(self) -> bool:
        """True while someone subscribes to the grid or the scan."""
        return self.grid_publisher.get_subscription_count() + self.scan_publisher.get_subscription_count() > 0

    def state(self, topic: str) -> str:
        """'ok', or why the camera of ``topic`` contributes nothing (for diagnostics)."""
        if self._roles_problem:
            return self._roles_problem
        return self._cameras[topic].state if self.wanted() else 'not computed: no subscriber to grid or scan'


    def update(self, masks: Sequence[tuple[str, Header, np.ndarray]]) -> None:
        """Project each (image topic, image header, mask), fuse the cameras' layers and publish."""
        if self._roles_problem:
            return
        try:
            grid = self._grid()
        except GroundError as error:
            for camera in self._cameras.values():
                self._fail(camera, f'grid settings: {error}')
            return
        updated = []
        for topic, header, mask in masks:
            camera = self._cameras[topic]
            try:
                camera.layer = project_mask(mask, self._lookup(camera, header, mask.shape, grid),
                                            self._role_table, grid)
            except GroundError as error:
                self._fail(camera, str(error))
                continue
            camera.layer_stamp_ns = Time.from_msg(header.stamp).nanoseconds
            updated.append(header)
            if camera.state != OK:
                camera.logger.info(f'{topic}: ground grid ok')
                camera.state = OK
        self._publish(grid, updated)

    def _grid(self) -> GroundGrid:
        extent = list(self._param('grid_extent'))
        if len(extent) != 4:
            raise GroundError(f'grid_extent {extent} must be four numbers: min_x max_x min_y max_y (m)')
        grid = GroundGrid(self._param('grid_resolution'), *extent, ground_z=self._param('ground_z'),
                          angle_increment=self._param('scan_angle_increment'))
        grid.check()
        return grid

    def _lookup(self, camera: _Camera, header: Header, shape: tuple[int, int], grid: GroundGrid) -> GroundLookup:
        poses = self._param('camera_poses')
        if camera.index >= len(poses) or not poses[camera.index].strip():
            raise GroundError(f'no pose for camera {camera.index} ({camera.topic}) in camera_poses; give '
                              "'x y z roll pitch yaw' (m, rad) in ground_frame for each image topic")
        pose = parse_pose(poses[camera.index])
        model = camera_model(self._camera_info(camera, header), self._param('camera_rectified'))
        key = (model, pose, grid, shape)
        if key != camera.lookup_key:
            camera.lookup, camera.lookup_key = None, None  # a failed build leaves none behind
            camera.lookup = build_lookup(model, pose, grid, shape)
            camera.lookup_key = key
        return camera.lookup

    def _camera_info(self, camera: _Camera, header: Header) -> CameraInfo:
        """The CameraInfo with the image's stamp (within camera_info_tolerance)."""
        with self._lock:
            infos = list(camera.infos)
        topic = camera_info_topic(camera.topic)
        if not infos:
            raise GroundError(f'no CameraInfo received on {topic}')
        stamp = Time.from_msg(header.stamp).nanoseconds
        nearest = min(infos, key=lambda info: abs(Time.from_msg(info.header.stamp).nanoseconds - stamp))
        gap_s = abs(Time.from_msg(nearest.header.stamp).nanoseconds - stamp) / 1e9
        tolerance = self._param('camera_info_tolerance')
        if not gap_s <= tolerance:
            raise GroundError(f'no CameraInfo on {topic} with the image stamp {header.stamp.sec}.'
                              f'{header.stamp.nanosec:09d} (the nearest is {gap_s * 1e3:.1f} ms away; '
                              f'camera_info_tolerance is {tolerance} s)')
        return nearest

    def _fail(self, camera: _Camera, reason: str) -> None:
        camera.layer = None
        camera.state = reason
        camera.logger.warning(f'{camera.topic}: no ground grid from this camera: {reason}',
                              throttle_duration_sec=LOG_THROTTLE_SEC)

    def _publish(self, grid: GroundGrid, updated: Sequence[Header]) -> None:
        """The fused grid and scan, stamped with the newest frame of this batch, when one was projected."""
        if not updated:
            return
        newest = max(updated, key=lambda header: Time.from_msg(header.stamp).nanoseconds)
        newest_ns = Time.from_msg(newest.stamp).nanoseconds
        timeout_ns = int(self._param('camera_timeout') * 1e9)
        layer = fuse([camera.layer for camera in self._cameras.values()
                      if camera.layer is not None and newest_ns - camera.layer_stamp_ns <= timeout_ns])
        header = Header(stamp=newest.stamp, frame_id=self._param('ground_frame'))
        self.grid_publisher.publish(grid_message(layer, grid, header))
        self.scan_publisher.publish(scan_message(layer, grid, header))


def common_namespace(topics: Sequence[str]) -> str:
    """The longest namespace (ending in '/') that holds every camera's results namespace.

    ``topics`` are resolved output topics such as ``/front/segmentation/mask``: the cameras' namespaces
    are ``/front`` and so on; ``/front`` and ``/rear`` share ``/``.
    """
    namespaces = [topic.rsplit('/', 2)[0].strip('/').split('/') for topic in topics]
    common: list[str] = []
    for parts in zip(*namespaces, strict=False):
        if any(part != parts[0] for part in parts) or not parts[0]:
            break
        common.append(parts[0])
    return '/' + ''.join(f'{part}/' for part in common)

