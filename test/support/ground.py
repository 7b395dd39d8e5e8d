"""A small ray caster, written apart from seg_ros.ground: CamVid masks of a flat road with boxes on
it, seen by a camera at a known pose (every pixel centre's ray hits a box or the ground plane)."""

from __future__ import annotations

import math

import numpy as np

from seg_ros.ground import (
    CameraModel,
    CameraPose,
)
from seg_ros.labels import CAMVID11

SKY, ROAD, SIDEWALK, CAR = (CAMVID11.names.index(name) for name in ('sky', 'road', 'sidewalk', 'car'))


def render(camera: CameraModel, pose: CameraPose, boxes: list[tuple[float, float, float, float]],
           road_half_width: float = 100.0) -> np.ndarray:
    """CamVid mask: boxes (x_near, y_centre, depth, half_width; 2 m tall) standing on a road."""
    forward, left, up = camera_axes(pose)
    v, u = np.mgrid[0:camera.height, 0:camera.width].astype(np.float64)
    if any(camera.d):
        x, y = undistort_brown(u, v, camera)
    else:
        x, y = (u - camera.k[2]) / camera.k[0], (v - camera.k[5]) / camera.k[4]
    rays = forward + x[..., None] * -left + y[..., None] * -up  # optical x = right, y = down
    origin = np.array([pose.x, pose.y, pose.z])
    with np.errstate(divide='ignore', invalid='ignore'):
        t_ground = np.where(rays[..., 2] < 0, -origin[2] / rays[..., 2], np.inf)
        mask = np.where(np.isfinite(t_ground), ROAD, SKY).astype(np.uint8)
        ground_y = origin[1] + t_ground * rays[..., 1]
        mask[np.isfinite(t_ground) & (np.abs(ground_y) > road_half_width)] = SIDEWALK
        nearest = t_ground.copy()
        for x_near, y_centre, depth, half_width in boxes:  # slab test against the box
            low = np.array([x_near, y_centre - half_width, 0.0]) - origin
            high = np.array([x_near + depth, y_centre + half_width, 2.0]) - origin
            t1, t2 = low / rays, high / rays
            t_in = np.nanmax(np.minimum(t1, t2), axis=-1)
            t_out = np.nanmin(np.maximum(t1, t2), axis=-1)
            hit = (t_in <= t_out) & (t_out > 0) & (t_in < nearest)
            mask[hit] = CAR
            nearest = np.where(hit, t_in, nearest)
    return mask


def camera_axes(pose: CameraPose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward, left and up of the camera body in the parent frame: yaw about z, then pitch about the
    turned y, then roll about the turned x (intrinsic z-y-x, the same as fixed x-y-z roll-pitch-yaw)."""
    def turn(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:  # Rodrigues
        return (vector * math.cos(angle) + np.cross(axis, vector) * math.sin(angle)
                + axis * np.dot(axis, vector) * (1 - math.cos(angle)))

    forward, left, up = np.eye(3)
    forward, left = turn(forward, up, pose.yaw), turn(left, up, pose.yaw)
    forward, up = turn(forward, left, pose.pitch), turn(up, left, pose.pitch)
    left, up = turn(left, forward, pose.roll), turn(up, forward, pose.roll)
    return forward, left, up


def undistort_brown(u: np.ndarray, v: np.ndarray, camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """Normalized coordinates of distorted pixels (k1, k2, p1, p2, k3) by fixed-point iteration."""
    fx, _, cx, _, fy, cy = camera.k[:6]
    k1, k2, p1, p2, k3 = (*camera.d, 0, 0, 0, 0, 0)[:5]
    xd, yd = (u - cx) / fx, (v - cy) / fy
    x, y = xd.copy(), yd.copy()
    for _ in range(100):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        x = (xd - (2 * p1 * x * y + p2 * (r2 + 2 * x * x))) / radial
        y = (yd - (p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)) / radial
    return x, y

