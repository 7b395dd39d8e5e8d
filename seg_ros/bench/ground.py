"""seg-bench ``ground``: one camera's ground grid and scan, the lookup built once, then the work per frame."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from seg_ros.bench.common import load_average, summarize_times, time_calls
from seg_ros.ground import (
    CameraModel,
    CameraPose,
    GroundGrid,
    build_lookup,
    class_role_table,
    default_class_roles_file,
    load_class_roles,
    project_mask,
    scan_ranges,
)
from seg_ros.labels import CAMVID11
from seg_ros.vocabulary import format_size

__all__ = ['GROUND_GRID', 'bench_ground']

GROUND_GRID = GroundGrid(0.1, -10.0, 40.0, -20.0, 20.0)  # segment_node's default grid


def bench_ground(args: argparse.Namespace) -> list[dict]:
    """Per resolution: one camera's lookup (undistorted and plumb_bob), then each frame's grid and scan."""
    rows = []
    for size in args.ground_resolutions:
        for step, (call, iterations) in _ground_steps(size, args.ground_iterations).items():
            times = time_calls(call, torch.device('cpu'), iterations=iterations)
            rows.append({'resolution': format_size(size), 'step': step, 'cells': GROUND_GRID.cells,
                         **summarize_times(times), 'load_average': load_average()})
    return rows


def _ground_steps(size: tuple[int, int], iterations: int) -> dict[str, tuple[Callable[[], Any], int]]:
    """The ground steps at a camera ``size`` on the synthetic scene's mask, each as (call, timed calls)."""
    from std_msgs.msg import Header

    from seg_ros.frames.synthetic import CAMERA_HEIGHT, SyntheticRoadScene
    from seg_ros.ros.ground_output import grid_message, scan_message

    grid = GROUND_GRID
    roles = class_role_table(CAMVID11, load_class_roles(default_class_roles_file(), CAMVID11))
    scene = SyntheticRoadScene(size[1], size[0])
    fx, fy, cx, cy = scene.intrinsics
    camera = CameraModel(size[1], size[0], (fx, 0, cx, 0, fy, cy, 0, 0, 1))
    distorted = CameraModel(size[1], size[0], camera.k, (-0.2, 0.05, 0.0, 0.0, 0.0))
    pose = CameraPose(0.0, 0.0, CAMERA_HEIGHT)
    lookup = build_lookup(camera, pose, grid, size)
    mask = scene.frame(0.0)[1]
    layer = project_mask(mask, lookup, roles, grid)
    header = Header(frame_id='base_link')
    return {
        'lookup, once per camera model (pinhole)': (partial(build_lookup, camera, pose, grid, size), 3),
        'lookup, once per camera model (plumb_bob)': (partial(build_lookup, distorted, pose, grid, size), 3),
        'per frame: mask -> grid and scan contacts': (partial(project_mask, mask, lookup, roles, grid), iterations),
        'per frame: scan ranges': (partial(scan_ranges, layer, grid), iterations),
        'per frame: OccupancyGrid + LaserScan messages':
            (lambda: (grid_message(layer, grid, header), scan_message(layer, grid, header)), iterations),
    }
