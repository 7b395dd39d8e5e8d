"""segment_node's ground grid and scan over real DDS.

The node runs in-process with the deterministic channel network (a red pixel is class 'red', and so
on; red is drivable, green an obstacle, blue has no role), a probe publishes camera frames with their
``CameraInfo``: a red road with a green box on it, ray-cast by ``test_ground.render`` from a known
camera pose. The grid and scan that come back must put the box where it stands.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nav_msgs.msg import OccupancyGrid
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, LaserScan

from seg_ros.ground import CameraModel, CameraPose
from seg_ros.ros.node import SegmentNode

from .support import CHANNEL_NET, channel_checkpoint
from .support.ground import CAR, ROAD, render
from .support.ros import Ros, stamped, started_nodes, values, wait_for

HEIGHT, WIDTH, FOCAL = 240, 320, 250.0
POSE = '0 0 1.5 0 0.1 0'  # 1.5 m up, pitched down 0.1 rad
BOX = (8.0, 1.0, 3.0, 0.8)  # x of its near face, y of its centre, depth, half width (m)
GROUND = {'grid_resolution': 0.25, 'grid_extent': [-5.0, 20.0, -10.0, 10.0]}
ROLES = 'rgb3: {drivable: [red], obstacle: [green]}\n'


@pytest.fixture(scope='module')
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('ground')
    (folder / 'roles.yaml').write_text(ROLES)
    # The camera's own size as the network input: no resampling, so the mask is the image's classes.
    return {'weights': channel_checkpoint(folder / 'channel.pt', input_size=(HEIGHT, WIDTH)),
            'roles': folder / 'roles.yaml'}


@pytest.fixture
def start_node(ros: Ros, files: dict[str, Path]):
    with started_nodes(ros, SegmentNode, model=CHANNEL_NET, weights=str(files['weights']),
                       ground_classes=str(files['roles']), diagnostics_period=0.1, **GROUND) as start:
        yield lambda topics, **parameters: start(image_topics=topics, **parameters)


def camera() -> CameraModel:
    return CameraModel(WIDTH, HEIGHT, (FOCAL, 0, WIDTH / 2, 0, FOCAL, HEIGHT / 2, 0, 0, 1))


def scene_image(pose: str, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """The ray-cast scene in the network's colours: road red, box green, the rest (sky) blue."""
    mask = render(camera(), CameraPose(*map(float, pose.split())), boxes)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[..., 2] = 255
    image[mask == ROAD] = (255, 0, 0)
    image[mask == CAR] = (0, 255, 0)
    return image


def camera_info(header: Any, k: list[float] | None = None) -> CameraInfo:
    k = k if k is not None else [FOCAL, 0.0, WIDTH / 2, 0.0, FOCAL, HEIGHT / 2, 0.0, 0.0, 1.0]
    return CameraInfo(header=header, width=WIDTH, height=HEIGHT, distortion_model='plumb_bob', d=[0.0] * 5, k=k)


class Camera:
    """A probe-side camera: image and CameraInfo publishers with the same stamps."""

    def __init__(self, ros: Ros, namespace: str) -> None:
        self.probe = ros.probe
        self.topic = f'{namespace}/image_raw'
        self.images = self.probe.create_publisher(Image, self.topic, 10)
        self.infos = self.probe.create_publisher(CameraInfo, f'{namespace}/camera_info', 10)

    def frame(self, image: np.ndarray, k: list[float] | None = None, with_info: bool = True) -> Image:
        msg = self.probe.frame(image)
        if with_info:
            self.infos.publish(camera_info(msg.header, k))
        return msg


def grid_cell(grid: OccupancyGrid, x: float, y: float) -> int:
    column = int((x - grid.info.origin.position.x) // grid.info.resolution)
    row = int((y - grid.info.origin.position.y) // grid.info.resolution)
    return int(np.asarray(grid.data, np.int8)[row * grid.info.width + column])


def scan_range(scan: LaserScan, bearing: float) -> float:
    index = round((bearing - scan.angle_min) / scan.angle_increment) % len(scan.ranges)
    return float(scan.ranges[index])


def ground_state(probe: Any, topic: str) -> str:
    """The 'ground grid' value of the latest diagnostics of ``topic`` ('' before the first)."""
    status = probe.status(topic)
    return values(status)['ground grid'] if status is not None else ''


def exchange_grid(probe: Any, cam: Camera, image: np.ndarray, grids: list, **frame: Any) -> OccupancyGrid:
    """Publish the frame with its CameraInfo (again every 0.2 s) until a grid with its stamp arrives."""
    msg = cam.frame(image, **frame)

    def publish() -> None:
        cam.infos.publish(camera_info(msg.header, frame.get('k')))
        cam.images.publish(msg)

    return wait_for(lambda: stamped(grids, msg.header.stamp), what='a grid', every=publish)


def test_grid_and_scan_put_the_box_where_it_stands(ros: Ros, start_node) -> None:
    start_node(['/g1/image_raw'], camera_poses=[POSE])
    probe = ros.probe
    grids = probe.listen('/g1/segmentation/grid', OccupancyGrid)
    scans = probe.listen('/g1/segmentation/scan', LaserScan)
    masks = probe.listen('/g1/segmentation/mask', Image)
    cam = Camera(ros, '/g1')
    grid = exchange_grid(probe, cam, scene_image(POSE, [BOX]), grids)
    scan = wait_for(lambda: stamped(scans, grid.header.stamp), what='the scan')
    assert stamped(masks, grid.header.stamp) is not None  # the mask of the same frame
    # Layout: base_link, the configured resolution and extent, on the ground plane.
    assert grid.header.frame_id == scan.header.frame_id == 'base_link'
    assert (grid.info.resolution, grid.info.width, grid.info.height) == (0.25, 100, 80)
    origin = grid.info.origin
    assert (origin.position.x, origin.position.y, origin.position.z, origin.orientation.w) == (-5.0, -10.0, 0.0, 1.0)
    assert set(np.unique(np.asarray(grid.data, np.int8)).tolist()) == {-1, 0, 100}
    # The box's near face within a cell; the road before it free; under it and behind the camera unknown.
    x_near, y_centre = BOX[:2]
    assert 100 in (grid_cell(grid, x_near + 0.1, y_centre), grid_cell(grid, x_near - 0.15, y_centre))
    assert grid_cell(grid, x_near - 1.0, y_centre) == 0 and grid_cell(grid, 5.0, -2.0) == 0
    assert grid_cell(grid, x_near + 1.5, y_centre) == -1 and grid_cell(grid, -3.0, 0.0) == -1
    # The scan: the box at its bearing, the free road to the edge straight ahead, nothing seen behind.
    assert len(scan.ranges) == 720 and scan.angle_min == pytest.approx(-math.pi)
    assert scan_range(scan, math.atan2(y_centre, x_near)) == pytest.approx(math.hypot(x_near, y_centre), abs=0.25)
    assert scan_range(scan, -0.15) == pytest.approx(scan.range_max)
    assert math.isnan(scan_range(scan, math.pi))


def test_bad_camera_info_and_pose_give_a_warning_and_no_grid_until_fixed(ros: Ros, start_node) -> None:
    node = start_node(['/g2/image_raw'], camera_poses=[POSE])
    probe = ros.probe
    grids = probe.listen('/g2/segmentation/grid', OccupancyGrid)
    masks = probe.listen('/g2/segmentation/mask', Image)
    cam = Camera(ros, '/g2')
    image = scene_image(POSE, [BOX])

    def refused(reason: str, **frame: Any) -> None:
        msg = cam.frame(image, **frame)
        probe.exchange(cam.images, msg, masks)  # segmentation goes on
        wait_for(lambda: reason in ground_state(probe, '/g2/image_raw'), what=reason)
        assert stamped(grids, msg.header.stamp) is None

    refused('no CameraInfo received on /g2/camera_info', with_info=False)
    refused('not calibrated', k=[0.0] * 9)
    assert node.set_parameters([Parameter('camera_poses', value=['0 0 nan 0 0 0'])])[0].successful
    refused('non-finite')
    assert node.set_parameters([Parameter('camera_poses', value=['0 0 1.5 0 -1.2 0'])])[0].successful
    refused('horizon is below the image')
    assert node.set_parameters([Parameter('camera_poses', value=[POSE])])[0].successful
    exchange_grid(probe, cam, image, grids)
    wait_for(lambda: ground_state(probe, '/g2/image_raw') == 'ok', what='ok in diagnostics')


def test_two_cameras_fuse_into_one_grid_under_their_common_namespace(ros: Ros, start_node) -> None:
    rear_pose = '-1 0 1.5 0 0.1 3.141592653589793'
    start_node(['/g3/front/image_raw', '/g3/rear/image_raw'], camera_poses=[POSE, rear_pose],
               grid_extent=[-15.0, 15.0, -10.0, 10.0], camera_timeout=60.0)
    probe = ros.probe
    grids = probe.listen('/g3/segmentation/grid', OccupancyGrid)
    front, rear = Camera(ros, '/g3/front'), Camera(ros, '/g3/rear')
    behind = (-12.0, -1.0, 3.0, 0.8)  # its face towards the rear camera at x = -9
    exchange_grid(probe, rear, scene_image(rear_pose, [behind]), grids)
    grid = exchange_grid(probe, front, scene_image(POSE, [BOX]), grids)  # the rear layer is still fresh
    assert 100 in (grid_cell(grid, BOX[0] + 0.1, BOX[1]), grid_cell(grid, BOX[0] - 0.15, BOX[1]))
    assert 100 in (grid_cell(grid, -9.0 - 0.1, -1.0), grid_cell(grid, -9.0 + 0.15, -1.0))
    assert grid_cell(grid, 5.0, 0.0) == 0 and grid_cell(grid, -6.0, 0.0) == 0


def test_nothing_is_computed_without_a_subscriber(ros: Ros, start_node) -> None:
    node = start_node(['/g4/image_raw'], camera_poses=[POSE])
    probe = ros.probe
    masks = probe.listen('/g4/segmentation/mask', Image)
    cam = Camera(ros, '/g4')
    probe.exchange(cam.images, cam.frame(scene_image(POSE, [BOX])), masks)
    assert not node.ground.wanted()
    wait_for(lambda: ground_state(probe, '/g4/image_raw').startswith('not computed'),
             what='the ground state in diagnostics')


def test_a_label_set_without_class_roles_gives_a_warning_not_an_error(ros: Ros, start_node) -> None:
    start_node(['/g5/image_raw'], camera_poses=[POSE], ground_classes='')  # the shipped file: no 'rgb3'
    probe = ros.probe
    probe.listen('/g5/segmentation/grid', OccupancyGrid)
    masks = probe.listen('/g5/segmentation/mask', Image)
    cam = Camera(ros, '/g5')
    probe.exchange(cam.images, cam.frame(scene_image(POSE, [BOX])), masks)
    wait_for(lambda: "no entry for label set 'rgb3'" in ground_state(probe, '/g5/image_raw'), what='the reason')


def test_sample_camera_publishes_the_synthetic_scene_camera_info(ros: Ros) -> None:
    from seg_ros.frames.synthetic import SyntheticRoadScene
    from seg_ros.ros.sample_camera import SampleCamera

    probe = ros.probe
    images = probe.listen('/g6/image_raw', Image)
    infos = probe.listen('/g6/camera_info', CameraInfo)
    camera_node = SampleCamera(context=ros.context, parameter_overrides=[
        Parameter('topic', value='/g6/image_raw'), Parameter('width', value=320), Parameter('height', value=180),
        Parameter('rate', value=20.0), Parameter('qos_reliability', value='reliable')])
    executor = SingleThreadedExecutor(context=ros.context)  # spun here: destroyed between its callbacks
    executor.add_node(camera_node)
    try:
        image = wait_for(lambda: next((msg for msg in images if stamped(infos, msg.header.stamp)), None),
                         what='an image and its CameraInfo', every=lambda: executor.spin_once(timeout_sec=0.05))
    finally:
        executor.shutdown()
        camera_node.destroy_node()
    info = stamped(infos, image.header.stamp)
    fx, fy, cx, cy = SyntheticRoadScene(320, 180).intrinsics
    assert (info.width, info.height, info.header.frame_id) == (320, 180, image.header.frame_id)
    assert list(info.k) == [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0] and not any(info.d)
