"""Inverse perspective mapping: class masks onto the ground plane, as an occupancy grid and a scan.

No ROS here (numpy and OpenCV); ``seg_ros.ros.ground_output`` adapts messages to it.

Frames follow REP-103 and REP-105. A camera's pose is given in a parent frame (such as
``base_link``: x forward, y left, z up) as the translation and roll, pitch, yaw (radians, applied
as ``Rz(yaw) Ry(pitch) Rx(roll)``) of the camera *body* (x forward, y left, z up, so a positive
pitch looks down); its pixels live in the camera's optical frame (z forward, x right, y down),
which is the body frame turned by the fixed rotation of REP-103.

Flat-ground assumption: every pixel is taken to look at the plane ``z = ground_z`` of the parent
frame. That is exact for what lies on the ground (road, sidewalk, terrain): those classes are
placed cell by cell. A thing that stands on the ground (a car, a pole, a pedestrian) is placed only
where it meets the ground: at the bottom pixel of each vertical run of obstacle pixels of an image
column, its ground contact; the ground it hides stays unknown. Where the real ground is not that
plane (slopes, bumps, the vehicle pitching under braking), points move along their viewing rays:
seen 20 m ahead from 1.4 m up, a 1 degree pitch error moves a point by 4 m (nearer) to 7 m
(farther). A thing whose lowest visible pixel is not on the ground (an overhanging load, a thing cut
off by the bottom of the image or standing behind another) is placed too far or at the image edge.

Per camera model, pose, grid and mask size, ``build_lookup`` computes once which mask pixel each
grid cell sees and where each pixel's lower edge meets the ground; ``project_mask`` then turns a
mask into a ``GroundLayer`` with a few vectorised gathers, ``fuse`` combines cameras (occupied wins
over free over unknown) and ``scan_ranges`` reads a ``sensor_msgs/LaserScan``-like scan from a layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import yaml

from seg_ros.labels import IGNORE_INDEX, LabelSet
from seg_ros.paths import share_dirs

__all__ = ['CLASS_ROLES', 'FREE', 'OCCUPANCY', 'OCCUPIED', 'UNKNOWN', 'CameraModel', 'CameraPose',
           'GroundError', 'GroundGrid', 'GroundLayer', 'GroundLookup', 'build_lookup', 'class_role_table',
           'default_class_roles_file', 'fuse', 'load_class_roles', 'project_mask', 'scan_ranges']

CLASS_ROLES = ('drivable', 'non_drivable', 'obstacle')
"""Roles a class can have; a class with none (sky, 'no prediction') leaves its cells unknown."""
_ROLE_CODE = {'drivable': 1, 'non_drivable': 2, 'obstacle': 3}  # 0: no role

UNKNOWN, FREE, OCCUPIED = 0, 1, 2
"""Cell codes of a ``GroundLayer``, ordered so that fusing cameras is an element-wise maximum."""
OCCUPANCY = np.array([-1, 0, 100], np.int8)
"""``nav_msgs/OccupancyGrid`` value of each cell code."""
_CELL_OF_ROLE = np.array([UNKNOWN, FREE, OCCUPIED, UNKNOWN], np.uint8)  # an obstacle hides the ground

DISTORTION_COEFFICIENTS = {'plumb_bob': (4, 5), 'rational_polynomial': (8,), 'equidistant': (4,)}
"""Distortion models (``sensor_msgs/CameraInfo.distortion_model``) and their coefficient counts."""

# optical (x right, y down, z forward) -> body (x forward, y left, z up), REP-103
_BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_MIN_HEIGHT = 1e-3  # metres above the ground plane a camera must be
_MIN_DOWNWARD = 1e-6  # z of a unit ray that still meets the ground (smaller: at the horizon)
_MAX_GRID_CELLS = 16_000_000
_SAMPLE_STEP = 8  # pixels between exact undistortions; the rest interpolated (error << 0.1 px)
_FOLD_TOLERANCE_PX = 2.0  # a cell projected onto a pixel that sees elsewhere: a fold of the distortion
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)


class GroundError(ValueError):
    """Input from which no correct ground projection can be made; the message says what and why."""


def _finite(name: str, values: Sequence[float]) -> None:
    bad = [value for value in values if not math.isfinite(value)]
    if bad:
        raise GroundError(f'{name} has a non-finite value ({bad[0]}): {list(values)}')


# -- camera model and pose --------------------------------------------------------------------------

@dataclass(frozen=True)
class CameraModel:
    """Intrinsics and distortion of a camera, as ``sensor_msgs/CameraInfo`` gives them.

    ``k`` is the row-major 3x3 camera matrix and ``d`` the distortion coefficients of
    ``distortion_model`` (OpenCV order), for the full ``width`` x ``height`` sensor; ``roi``
    (x offset, y offset, width, height; zero width = the whole sensor) is the part the images show.
    An image of any size showing that part is mapped onto it (binning, or masks at the network size).
    """

    width: int
    height: int
    k: tuple[float, ...]
    d: tuple[float, ...] = ()
    distortion_model: str = 'plumb_bob'
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)

    def check(self) -> None:
        """Raise ``GroundError`` unless this is a usable calibration."""
        if self.width <= 0 or self.height <= 0:
            raise GroundError(f'camera size {self.width}x{self.height} is empty (no CameraInfo, or an '
                              'uncalibrated one)')
        if len(self.k) != 9:
            raise GroundError(f'camera matrix K has {len(self.k)} values, needs 9')
        _finite('camera matrix K', self.k)
        _finite('distortion D', self.d)
        fx, skew, _, zero0, fy, _, zero1, zero2, one = self.k
        if fx <= 0 or fy <= 0:
            raise GroundError(f'camera matrix K has focal lengths fx={fx}, fy={fy}: not calibrated '
                              '(an all-zero K means the driver has no calibration)')
        if skew != 0 or zero0 != 0 or zero1 != 0 or zero2 != 0 or one != 1:
            raise GroundError(f'camera matrix K {list(self.k)} is not of the form [fx 0 cx; 0 fy cy; 0 0 1]')
        if any(self.d):
            counts = DISTORTION_COEFFICIENTS.get(self.distortion_model)
            if counts is None:
                raise GroundError(f'distortion model {self.distortion_model!r} is not supported; supported: '
                                  f'{", ".join(DISTORTION_COEFFICIENTS)}')
            if len(self.d) not in counts:
                raise GroundError(f'distortion model {self.distortion_model!r} takes '
                                  f'{" or ".join(map(str, counts))} coefficients, D has {len(self.d)}')
        x, y, width, height = self.region
        if x < 0 or y < 0 or width <= 0 or height <= 0 or x + width > self.width or y + height > self.height:
            raise GroundError(f'region of interest {self.roi} does not fit the {self.width}x{self.height} sensor')

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(x, y, width, height) of the sensor that the images show."""
        return self.roi if self.roi[2] and self.roi[3] else (0, 0, self.width, self.height)

    @property
    def distorted(self) -> bool:
        return any(self.d)

    def distort(self, normalized: np.ndarray) -> np.ndarray:
        """Sensor pixel coordinates (N, 2) of normalized image coordinates (N, 2) (x/z, y/z)."""
        fx, _, cx, _, fy, cy = self.k[:6]
        x, y = normalized[:, 0], normalized[:, 1]
        if self.distorted:
            x, y = self._distort(x, y)
        return np.stack([fx * x + cx, fy * y + cy], axis=1)

    def _distort(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.d
        r2 = x * x + y * y
        if self.distortion_model == 'equidistant':
            r = np.sqrt(r2)
            theta = np.arctan(r)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (d[0] + t2 * (d[1] + t2 * (d[2] + t2 * d[3]))))
            scale = np.divide(theta_d, r, out=np.ones_like(r), where=r > 0)
            return x * scale, y * scale
        k1, k2, p1, p2 = d[:4]
        k3, k4, k5, k6 = (*d[4:], 0.0, 0.0, 0.0, 0.0)[:4]
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)

    def undistort(self, pixels: np.ndarray) -> np.ndarray:
        """Normalized image coordinates (N, 2) of sensor pixel coordinates (N, 2)."""
        fx, _, cx, _, fy, cy = self.k[:6]
        if not self.distorted:
            return np.stack([(pixels[:, 0] - cx) / fx, (pixels[:, 1] - cy) / fy], axis=1)
        matrix = np.asarray(self.k, np.float64).reshape(3, 3)
        points = np.ascontiguousarray(pixels, np.float64).reshape(-1, 1, 2)
        coefficients = np.asarray(self.d, np.float64)
        if self.distortion_model == 'equidistant':
            result = cv2.fisheye.undistortPoints(points, matrix, coefficients, criteria=_UNDISTORT_CRITERIA)
        else:
            result = cv2.undistortPoints(points, matrix, coefficients, criteria=_UNDISTORT_CRITERIA)
        return result.reshape(-1, 2)


@dataclass(frozen=True)
class CameraPose:
    """Where a camera sits in the parent frame: metres and radians (see the module docstring)."""

    x: float
    y: float
    z: float
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0

    def check(self) -> None:
        _finite('camera pose (x y z roll pitch yaw)', self.values)

    @property
    def values(self) -> tuple[float, ...]:
        return self.x, self.y, self.z, self.roll, self.pitch, self.yaw

    def rotation(self) -> np.ndarray:
        """3x3 rotation taking optical-frame vectors into the parent frame."""
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        roll = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
        pitch = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
        yaw = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
        return yaw @ pitch @ roll @ _BODY_FROM_OPTICAL


# -- grid and scan -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroundGrid:
    """The occupancy grid (cells of ``resolution`` metres covering ``min_x..max_x`` x ``min_y..max_y``
    of the parent frame, on the plane ``z = ground_z``) and the scan read from it (bearings every
    ``angle_increment`` radians around the parent frame's origin, a full turn from -pi)."""

    resolution: float
    min_x: float
    max_x: float
    min_y: float
    max_y: float
    ground_z: float = 0.0
    angle_increment: float = math.radians(0.5)

    def check(self) -> None:
        _finite('grid settings', (self.resolution, self.min_x, self.max_x, self.min_y, self.max_y,
                                  self.ground_z, self.angle_increment))
        if self.resolution <= 0:
            raise GroundError(f'grid resolution {self.resolution} m must be positive')
        if self.min_x >= self.max_x or self.min_y >= self.max_y:
            raise GroundError(f'grid extent x {self.min_x}..{self.max_x}, y {self.min_y}..{self.max_y} is empty')
        if not (self.min_x < 0 < self.max_x and self.min_y < 0 < self.max_y):
            raise GroundError(f'grid extent x {self.min_x}..{self.max_x}, y {self.min_y}..{self.max_y} must '
                              'contain the origin of the parent frame, where the scan starts')
        if self.width * self.height > _MAX_GRID_CELLS:
            raise GroundError(f'grid of {self.width}x{self.height} cells is larger than {_MAX_GRID_CELLS}; '
                              'use a coarser resolution or a smaller extent')
        if not 0 < self.angle_increment <= math.pi / 4:
            raise GroundError(f'scan angle increment {self.angle_increment} rad must be in (0, pi/4]')

    @property
    def width(self) -> int:
        """Cells along x (the columns of the grid)."""
        return max(1, math.ceil((self.max_x - self.min_x) / self.resolution - 1e-9))

    @property
    def height(self) -> int:
        """Cells along y (the rows of the grid)."""
        return max(1, math.ceil((self.max_y - self.min_y) / self.resolution - 1e-9))

    @property
    def cells(self) -> int:
        return self.width * self.height

    def cell_index(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Row-major cell index (row = y) of points, -1 outside the grid."""
        column = np.floor((np.asarray(x) - self.min_x) / self.resolution)
        row = np.floor((np.asarray(y) - self.min_y) / self.resolution)
        inside = (column >= 0) & (column < self.width) & (row >= 0) & (row < self.height)
        return np.where(inside, row * self.width + column, -1).astype(np.int64)

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """x and y of every cell's centre, row-major."""
        xs = self.min_x + (np.arange(self.width) + 0.5) * self.resolution
        ys = self.min_y + (np.arange(self.height) + 0.5) * self.resolution
        grid_x, grid_y = np.meshgrid(xs, ys)
        return grid_x.ravel(), grid_y.ravel()

    @property
    def bins(self) -> int:
        return max(1, round(2 * math.pi / self.angle_increment))

    @property
    def angle_min(self) -> float:
        return -math.pi

    def bin_of(self, bearing: np.ndarray) -> np.ndarray:
        """Scan bin of bearings (radians): the bin whose angle is nearest."""
        return np.floor((bearing - self.angle_min) / self.angle_increment + 0.5).astype(np.int64) % self.bins

    @cached_property
    def edge_distances(self) -> np.ndarray:
        """Per scan bin, how far its bearing runs from the origin before it leaves the grid."""
        angles = self.angle_min + np.arange(self.bins) * self.angle_increment
        with np.errstate(divide='ignore'):
            cos, sin = np.cos(angles), np.sin(angles)
            along_x = np.where(cos > 1e-12, self.max_x / cos, np.where(cos < -1e-12, self.min_x / cos, np.inf))
            along_y = np.where(sin > 1e-12, self.max_y / sin, np.where(sin < -1e-12, self.min_y / sin, np.inf))
        return np.minimum(along_x, along_y)

    @cached_property
    def range_max(self) -> float:
        """The scan's ``range_max``: the farthest grid edge (a corner) from the origin."""
        return float(self.edge_distances.max())

    @cached_property
    def edge_cells(self) -> np.ndarray:
        """Per scan bin, the last cell its bearing crosses inside the grid."""
        angles = self.angle_min + np.arange(self.bins) * self.angle_increment
        inside = self.edge_distances - 0.5 * self.resolution
        return self.cell_index(inside * np.cos(angles), inside * np.sin(angles))


# -- lookup and projection ---------------------------------------------------------------------------

@dataclass(frozen=True)
class GroundLookup:
    """What a camera sees of the grid, precomputed for one camera model, pose, grid and mask size."""

    mask_shape: tuple[int, int]
    visible_cells: np.ndarray  # cells that a mask pixel sees ...
    visible_pixels: np.ndarray  # ... and that pixel (flat mask index)
    contact_cell: np.ndarray  # per mask pixel, the cell under its lower edge's midpoint, -1 off the grid
    contact_range: np.ndarray  # per mask pixel, that point's distance from the origin (inf off the grid)
    contact_bin: np.ndarray  # per mask pixel, the scan bin of that point's bearing


@dataclass(frozen=True)
class GroundLayer:
    """A projected mask (or several fused): cell codes (``UNKNOWN``, ``FREE``, ``OCCUPIED``; row-major)
    and per scan bin the nearest ground contact of an obstacle or non-drivable pixel (inf: none)."""

    codes: np.ndarray
    contacts: np.ndarray


def _mask_to_sensor(camera: CameraModel, mask_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per axis (x, y), offset and scale taking mask pixel coordinates to sensor pixel coordinates."""
    x, y, width, height = camera.region
    scale = np.array([width / mask_shape[1], height / mask_shape[0]])
    # Pixel centres are at integer coordinates: centre c of the mask covers c - 0.5 .. c + 0.5.
    offset = np.array([x, y]) + 0.5 * scale - 0.5
    return offset, scale


def _pixel_rays(camera: CameraModel, mask_shape: tuple[int, int], row_offset: float) -> np.ndarray:
    """Normalized image coordinates (H*W, 2) of every mask pixel's centre moved down ``row_offset``.

    With distortion, undistortion (iterative) runs on every ``_SAMPLE_STEP``-th pixel only and the
    rest is interpolated bilinearly: the map is smooth, and this cuts the start-up time 50-fold.
    """
    height, width = mask_shape
    offset, scale = _mask_to_sensor(camera, mask_shape)
    columns, rows = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64) + row_offset
    if not camera.distorted:
        grid_u, grid_v = np.meshgrid(offset[0] + columns * scale[0], offset[1] + rows * scale[1])
        return camera.undistort(np.stack([grid_u.ravel(), grid_v.ravel()], axis=1))
    sample_columns = np.unique(np.append(np.arange(0, width, _SAMPLE_STEP), width - 1)).astype(np.float64)
    sample_rows = np.unique(np.append(np.arange(0, height, _SAMPLE_STEP), height - 1)).astype(np.float64)
    grid_u, grid_v = np.meshgrid(offset[0] + sample_columns * scale[0],
                                 offset[1] + (sample_rows + row_offset) * scale[1])
    sampled = camera.undistort(np.stack([grid_u.ravel(), grid_v.ravel()], axis=1))
    sampled = sampled.reshape(len(sample_rows), len(sample_columns), 2)
    # Where each mask pixel falls between the samples, as fractional sample indices.
    at_x = np.interp(np.arange(width), sample_columns, np.arange(len(sample_columns)))
    at_y = np.interp(np.arange(height), sample_rows, np.arange(len(sample_rows)))
    map_x, map_y = np.meshgrid(at_x.astype(np.float32), at_y.astype(np.float32))
    interpolated = cv2.remap(sampled, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return interpolated.reshape(-1, 2)


def build_lookup(camera: CameraModel, pose: CameraPose, grid: GroundGrid,
                 mask_shape: tuple[int, int]) -> GroundLookup:
    """The per-pixel and per-cell lookup of one camera; ``GroundError`` when none can be made."""
    camera.check()
    pose.check()
    grid.check()
    if pose.z - grid.ground_z < _MIN_HEIGHT:
        raise GroundError(f'camera at z = {pose.z} m is not above the ground plane z = {grid.ground_z} m')
    height, width = mask_shape
    rotation = pose.rotation()
    centre = np.array([pose.x, pose.y, pose.z])

    # Pixels -> ground: where the lower edge of every pixel meets the ground (the ground contact of
    # an obstacle whose bottom pixel it is).
    normalized = _pixel_rays(camera, mask_shape, row_offset=0.5)
    rays = np.column_stack([normalized, np.ones(len(normalized))]) @ rotation.T
    downward = rays[:, 2] < -_MIN_DOWNWARD * np.linalg.norm(rays, axis=1)
    if not downward.any():
        raise GroundError(f'the horizon is below the image: no pixel sees the ground (roll {pose.roll:.3f}, '
                          f'pitch {pose.pitch:.3f}, yaw {pose.yaw:.3f} rad; a positive pitch looks down)')
    with np.errstate(divide='ignore', invalid='ignore'):
        distance = np.where(downward, (grid.ground_z - centre[2]) / rays[:, 2], np.nan)
    ground_x = centre[0] + distance * rays[:, 0]
    ground_y = centre[1] + distance * rays[:, 1]
    contact_cell = np.where(downward, grid.cell_index(np.nan_to_num(ground_x), np.nan_to_num(ground_y)), -1)
    on_grid = contact_cell >= 0
    if not on_grid.any():
        raise GroundError(f'no pixel sees the ground inside the grid (x {grid.min_x}..{grid.max_x}, '
                          f'y {grid.min_y}..{grid.max_y} m) from the pose {list(pose.values)}')
    contact_range = np.where(on_grid, np.hypot(ground_x, ground_y), np.inf).astype(np.float32)
    contact_bin = np.where(on_grid, grid.bin_of(np.arctan2(np.nan_to_num(ground_y), np.nan_to_num(ground_x))), 0)

    visible_cells, visible_pixels = _visible_cells(camera, grid, mask_shape, rotation, centre)
    return GroundLookup((height, width), visible_cells, visible_pixels, contact_cell.astype(np.int64),
                        contact_range, contact_bin.astype(np.int64))


def _visible_cells(camera: CameraModel, grid: GroundGrid, mask_shape: tuple[int, int], rotation: np.ndarray,
                   centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells whose centre a mask pixel sees, and that pixel (flat index)."""
    height, width = mask_shape
    xs, ys = grid.cell_centres()
    points = np.column_stack([xs, ys, np.full_like(xs, grid.ground_z)]) - centre
    optical = points @ rotation  # rotation.T applied to each row
    ahead = np.flatnonzero(optical[:, 2] > 1e-6)
    normalized = optical[ahead, :2] / optical[ahead, 2:]
    # Far off-axis points would only overflow the distortion polynomial; they cannot be in view.
    near_axis = np.flatnonzero(np.abs(normalized).max(axis=1) < 50)
    ahead, normalized = ahead[near_axis], normalized[near_axis]
    offset, scale = _mask_to_sensor(camera, mask_shape)
    mask_xy = (camera.distort(normalized) - offset) / scale
    column, row = np.floor(mask_xy[:, 0] + 0.5), np.floor(mask_xy[:, 1] + 0.5)
    inside = np.flatnonzero((column >= 0) & (column < width) & (row >= 0) & (row < height))
    cells = ahead[inside]
    pixels = (row[inside] * width + column[inside]).astype(np.int64)
    if camera.distorted:
        # A distortion polynomial folds back far outside the calibrated field of view, so a cell out
        # of view can land on a pixel; keep a cell only where that pixel's own ray points at it.
        centres = _pixel_rays(camera, mask_shape, row_offset=0.0)
        tolerance = _FOLD_TOLERANCE_PX * scale.max() / min(camera.k[0], camera.k[4])
        seen = np.abs(centres[pixels] - normalized[inside]).max(axis=1) <= tolerance
        cells, pixels = cells[seen], pixels[seen]
    return cells, pixels


def class_role_table(labels: LabelSet, roles: Mapping[str, Sequence[str]]) -> np.ndarray:
    """(256,) uint8: role code of each class index (0 for a class without a role and for 255)."""
    table = np.zeros(256, np.uint8)
    for role, names in roles.items():
        for name in names:
            table[labels.names.index(name)] = _ROLE_CODE[role]
    table[IGNORE_INDEX] = 0
    return table


def project_mask(mask: np.ndarray, lookup: GroundLookup, role_table: np.ndarray, grid: GroundGrid) -> GroundLayer:
    """One camera's mask on the grid: free where drivable ground is seen, occupied where non-drivable
    ground is seen or an obstacle meets the ground, unknown elsewhere; and the scan contacts."""
    if mask.shape != lookup.mask_shape:
        raise GroundError(f'mask of {mask.shape[1]}x{mask.shape[0]} does not match the lookup built for '
                          f'{lookup.mask_shape[1]}x{lookup.mask_shape[0]}')
    roles = cv2.LUT(np.ascontiguousarray(mask, np.uint8), role_table)
    codes = np.zeros(grid.cells, np.uint8)
    codes[lookup.visible_cells] = _CELL_OF_ROLE[roles.ravel()[lookup.visible_pixels]]
    # Ground contacts: the bottom pixel of each vertical run of obstacle or non-drivable pixels.
    blocking = roles >= _ROLE_CODE['non_drivable']
    bottoms = blocking.copy()
    bottoms[:-1] &= ~blocking[1:]
    pixels = np.flatnonzero(bottoms)
    cells = lookup.contact_cell[pixels]
    on_grid = cells >= 0
    pixels = pixels[on_grid]
    codes[cells[on_grid]] = OCCUPIED
    contacts = np.full(grid.bins, np.inf, np.float32)
    np.minimum.at(contacts, lookup.contact_bin[pixels], lookup.contact_range[pixels])
    return GroundLayer(codes, contacts)


def fuse(layers: Sequence[GroundLayer]) -> GroundLayer:
    """Several cameras' layers on one grid: occupied over free over unknown; the nearest contacts."""
    if not layers:
        raise GroundError('nothing to fuse: no camera has a ground layer')
    return GroundLayer(np.maximum.reduce([layer.codes for layer in layers]),
                       np.minimum.reduce([layer.contacts for layer in layers]))


def scan_ranges(layer: GroundLayer, grid: GroundGrid) -> np.ndarray:
    """Per scan bin (float32): the nearest ground contact; ``grid.range_max`` where the bearing is
    free ground up to the grid's edge; NaN where that is not known (not seen, or not ground)."""
    ranges = layer.contacts.astype(np.float32)
    none = ~np.isfinite(ranges)
    edge_cells = grid.edge_cells
    free_to_edge = (edge_cells >= 0) & (layer.codes[np.maximum(edge_cells, 0)] == FREE)
    ranges[none & free_to_edge] = grid.range_max
    ranges[none & ~free_to_edge] = np.nan
    return ranges


# -- class roles -------------------------------------------------------------------------------------

def default_class_roles_file() -> Path:
    """The shipped ``config/ground_classes.yaml`` (roles of CamVid's, Cityscapes' and ROAD11 classes)."""
    for directory in share_dirs():
        path = directory / 'config' / 'ground_classes.yaml'
        if path.is_file():
            return path
    raise GroundError('config/ground_classes.yaml not found in the share folders of seg_ros '
                      f'({", ".join(map(str, share_dirs())) or "none"})')


def load_class_roles(path: str | Path, labels: LabelSet) -> dict[str, tuple[str, ...]]:
    """The roles of ``labels``' classes in the YAML file ``path`` (label set name -> role -> classes)."""
    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise GroundError(f'class roles {path}: cannot read it ({error})') from None
    if not isinstance(content, dict):
        raise GroundError(f'class roles {path}: expected a mapping of label set names, got {type(content).__name__}')
    entry = content.get(labels.name)
    if entry is None:
        raise GroundError(f'class roles {path} have no entry for label set {labels.name!r} (entries: '
                          f'{", ".join(map(str, content)) or "none"}); add one naming its drivable, '
                          'non_drivable and obstacle classes')
    where = f'class roles {path}, label set {labels.name!r}'
    if not isinstance(entry, dict) or set(entry) - set(CLASS_ROLES):
        raise GroundError(f'{where}: expected a mapping with the keys {", ".join(CLASS_ROLES)}')
    roles: dict[str, tuple[str, ...]] = {}
    assigned: dict[str, str] = {}
    for role in CLASS_ROLES:
        names = entry.get(role) or []
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise GroundError(f'{where}: {role} must be a list of class names')
        for name in names:
            if name not in labels.names:
                raise GroundError(f'{where}: {role} names {name!r}, which is not a class of the set '
                                  f'({", ".join(labels.names)})')
            if name in assigned:
                raise GroundError(f'{where}: {name!r} is both {assigned[name]} and {role}')
            assigned[name] = role
        roles[role] = tuple(names)
    return roles
