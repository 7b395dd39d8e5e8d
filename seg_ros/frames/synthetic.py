"""A moving synthetic road scene with exact CamVid-11 labels, for demos and tests without a camera.

In the spirit of the ``burger`` mode of ROS 2 ``image_tools/cam2image``: a camera drives down a
street between sidewalks and building rows, past trees, poles with signs and fences, behind a lead
car, while oncoming and parked cars, a pedestrian and a cyclist move along. Everything is drawn
in a simple pinhole projection, far to near, and every shape is filled into the image and the
label map by the same OpenCV call, so the labels are exact. Image colours are plausible scene
colours (not the palette) with window bands, paving joints and grain.

Only numpy and OpenCV are needed; a 640x360 frame takes a few milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from seg_ros.labels import CAMVID11

__all__ = ['CAMERA_HEIGHT', 'SyntheticRoadScene']

_Point3 = tuple[float, float, float]

_CLASS = {name: index for index, name in enumerate(CAMVID11.names)}

# Camera and motion (metres, seconds). The camera drives in the right lane at X = 0; +X is right.
CAMERA_HEIGHT = 1.4  # metres above the ground, level, looking along the road
_SPEED = 8.0
_NEAR, _FAR, _HORIZON_FAR = 1.0, 300.0, 5000.0
_SUBPIXEL_BITS = 4  # OpenCV fixed-point vertices: smooth motion without anti-aliasing
_SUBPIXEL = 1 << _SUBPIXEL_BITS

# Street cross-section: X ranges of the surfaces and X positions of the things along them.
_ROAD = (-5.4, 1.8)
_LEFT_SIDEWALK, _RIGHT_SIDEWALK = (-9.0, -5.4), (1.8, 5.4)
_LANE_DIVIDER, _LINE_WIDTH = -1.8, 0.15
_POLES_X, _TREES_X, _FENCE_X = (-5.8, 2.2), (-7.6, 3.8), 5.2

# Periodic things along the street: spacing and length in metres.
_LOT, _DASH_SPACING, _DASH, _JOINT_SPACING = 14.0, 9.0, 3.0, 2.0
_POLE_SPACING, _TREE_SPACING, _FENCE_SPACING, _FENCE = 20.0, 15.0, 20.0, 12.0
_PARKED_SPACING, _STOREY, _SLAT = 37.0, 3.2, 0.6
_DETAIL_RANGE = 120.0  # trees, parked cars, window bands and paving joints stop here
_VARIANTS = 64  # per-lot attributes repeat after this many lots

_SKY_TOP, _SKY_HORIZON = (110, 150, 205), (205, 215, 225)
_ASPHALT, _MARKING, _PAVING = (88, 88, 92), (232, 232, 222), (158, 150, 140)
_BARK, _POLE, _FENCE_WOOD = (92, 68, 44), (112, 114, 118), (138, 108, 78)
_FACADES = ((150, 86, 64), (196, 180, 150), (128, 128, 132), (170, 150, 120), (110, 96, 90), (210, 200, 185))
_FOLIAGE = ((54, 104, 40), (72, 122, 46), (40, 86, 44), (90, 130, 60))
_CAR_PAINT = ((170, 30, 30), (30, 60, 140), (200, 200, 205), (40, 40, 44), (120, 124, 128), (210, 170, 40))
_CLOTHES = ((40, 50, 90), (150, 40, 50), (60, 60, 60), (200, 180, 150), (40, 110, 70))
_SIGNS = ((200, 30, 30), (30, 70, 170), (240, 240, 240))
_DARK, _GLASS, _SKIN = (30, 30, 32), (60, 72, 84), (214, 170, 140)


class _Canvas:
    """An image and its label map, filled by the same calls so that the labels are exact."""

    def __init__(self, image: np.ndarray, label: np.ndarray) -> None:
        self.image, self.label = image, label

    def polygon(self, points: np.ndarray | None, class_name: str, colour: tuple[int, int, int]) -> None:
        if points is not None:
            cv2.fillConvexPoly(self.image, points, colour, cv2.LINE_8, _SUBPIXEL_BITS)
            cv2.fillConvexPoly(self.label, points, _CLASS[class_name], cv2.LINE_8, _SUBPIXEL_BITS)

    def circle(self, centre: tuple[int, int], radius: float, class_name: str, colour: tuple[int, int, int],
               thickness: int = -1) -> None:
        scaled = max(1, round(radius * _SUBPIXEL))
        cv2.circle(self.image, centre, scaled, colour, thickness, cv2.LINE_8, _SUBPIXEL_BITS)
        cv2.circle(self.label, centre, scaled, _CLASS[class_name], thickness, cv2.LINE_8, _SUBPIXEL_BITS)

    def shade(self, points: np.ndarray | None, colour: tuple[int, int, int]) -> None:
        """Texture detail inside an already labelled shape: the image only."""
        if points is not None:
            cv2.fillConvexPoly(self.image, points, colour, cv2.LINE_8, _SUBPIXEL_BITS)


class SyntheticRoadScene:
    """Frames of a camera driving down a street: ``frame(t) -> (rgb, label)``.

    ``frame`` is a pure function of ``(width, height, seed, t)``: the same arguments give the
    same pixels. The label map holds CamVid-11 indices (``seg_ros.labels.CAMVID11``) for every
    pixel; every class is in view at any time.
    """

    def __init__(self, width: int = 640, height: int = 360, seed: int = 0) -> None:
        if width < 32 or height < 32:
            raise ValueError(f'SyntheticRoadScene: size {width}x{height} is too small; needs at least 32x32')
        self.width, self.height, self.seed = int(width), int(height), int(seed)
        self._focal = 0.9 * width
        self._centre_x, self._horizon = width / 2, 0.45 * height
        rng = np.random.default_rng(seed)
        self._lot_heights = rng.uniform(6.0, 24.0, (2, _VARIANTS)).tolist()
        self._lot_colours = rng.integers(0, len(_FACADES), (2, _VARIANTS)).tolist()
        self._variant = rng.integers(0, 1 << 16, _VARIANTS).tolist()
        self._sky = self._sky_gradient()
        # Grain added and subtracted at a per-frame offset: sensor-like noise that is not static.
        self._grain = rng.integers(0, 7, (2, height + 32, width + 32, 3), dtype=np.uint8)

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels of the scene's pinhole camera (no distortion), which sits
        ``CAMERA_HEIGHT`` m above the ground, level (its horizon is the row ``cy``)."""
        return self._focal, self._focal, self._centre_x, self._horizon

    def frame(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The scene at time ``t`` seconds: (H x W x 3 uint8 RGB image, H x W uint8 CamVid-11 labels)."""
        travelled = _SPEED * float(t)
        canvas = _Canvas(self._sky.copy(), np.full((self.height, self.width), _CLASS['sky'], np.uint8))
        self._draw_ground(canvas, travelled)
        self._draw_facades(canvas, travelled)
        self._draw_fences(canvas, travelled)
        for _, draw, args in sorted(self._street_objects(float(t), travelled), key=lambda item: -item[0]):
            draw(canvas, *args)
        return self._add_grain(canvas.image, float(t)), canvas.label

    # --- projection (plain Python: for a handful of corners numpy's call overhead dominates) -------

    def _project(self, corners: list[_Point3]) -> np.ndarray | None:
        """Fixed-point pixel vertices of a convex polygon given as (X, Y, Z ahead) corners.

        The polygon is clipped to the near plane first; None when nothing of it is in front.
        """
        if min(z for _, _, z in corners) <= _NEAR:
            corners = _clip_to_near(corners)
            if len(corners) < 3:
                return None
        return np.array([self._point(*corner) for corner in corners], np.int32)

    def _point(self, x: float, y: float, z: float) -> tuple[int, int]:
        """Fixed-point pixel position of a point in front of the camera (``z > _NEAR``)."""
        scale = self._focal / z
        u, v = self._centre_x + x * scale, self._horizon + (CAMERA_HEIGHT - y) * scale
        return round(u * _SUBPIXEL), round(v * _SUBPIXEL)

    def _ground(self, x0: float, x1: float, z0: float, z1: float) -> np.ndarray | None:
        return self._project([(x0, 0, z0), (x1, 0, z0), (x1, 0, z1), (x0, 0, z1)])

    def _wall(self, x: float, y0: float, y1: float, z0: float, z1: float) -> np.ndarray | None:
        """A vertical rectangle along the street (constant X)."""
        return self._project([(x, y0, z0), (x, y1, z0), (x, y1, z1), (x, y0, z1)])

    def _front(self, x0: float, x1: float, y0: float, y1: float, z: float) -> np.ndarray | None:
        """A vertical rectangle facing the camera (constant Z)."""
        return self._project([(x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)])

    def _metres_to_pixels(self, metres: float, z: float) -> float:
        return self._focal * metres / z

    def _pixels_to_metres(self, pixels: float, z: float) -> float:
        return pixels * z / self._focal

    # --- layers ----------------------------------------------------------------------------------

    def _draw_ground(self, canvas: _Canvas, travelled: float) -> None:
        canvas.polygon(self._ground(*_ROAD, 0.0, _HORIZON_FAR), 'road', _ASPHALT)
        for sidewalk in (_LEFT_SIDEWALK, _RIGHT_SIDEWALK):
            canvas.polygon(self._ground(*sidewalk, 0.0, _HORIZON_FAR), 'sidewalk', _PAVING)
            for z in _ahead(travelled, _JOINT_SPACING, 0.0, _DETAIL_RANGE / 2):
                canvas.shade(self._ground(*sidewalk, z, z + 0.06), (128, 122, 114))
        # Lane markings are labelled road, as in CamVid.
        for edge in (_ROAD[0], _ROAD[1] - _LINE_WIDTH):
            canvas.polygon(self._ground(edge, edge + _LINE_WIDTH, 0.0, _FAR), 'road', _MARKING)
        divider = (_LANE_DIVIDER, _LANE_DIVIDER + _LINE_WIDTH)
        for z in _ahead(travelled, _DASH_SPACING, -_DASH, _FAR):
            canvas.polygon(self._ground(*divider, z, z + _DASH), 'road', _MARKING)

    def _draw_facades(self, canvas: _Canvas, travelled: float) -> None:
        for side, x in enumerate((_LEFT_SIDEWALK[0], _RIGHT_SIDEWALK[1])):
            canvas.polygon(self._wall(x, 0.0, 14.0, _FAR, _HORIZON_FAR), 'building', (150, 150, 155))
            for z in reversed(_ahead(travelled, _LOT, -_LOT, _FAR)):
                lot = round((z + travelled) / _LOT) % _VARIANTS
                height, colour = self._lot_heights[side][lot], _FACADES[self._lot_colours[side][lot]]
                canvas.polygon(self._wall(x, 0.0, height, z, z + _LOT), 'building', colour)
                if z < _DETAIL_RANGE / 2:
                    for floor in range(int((height - 2.7) / _STOREY) + 1):
                        sill = 1.2 + floor * _STOREY
                        canvas.shade(self._wall(x, sill, sill + 1.4, z + 1.0, z + _LOT - 1.0), _GLASS)

    def _draw_fences(self, canvas: _Canvas, travelled: float) -> None:
        for z in reversed(_ahead(travelled, _FENCE_SPACING, -_FENCE, _FAR)):
            canvas.polygon(self._wall(_FENCE_X, 0.0, 1.2, z, z + _FENCE), 'fence', _FENCE_WOOD)
            if z < _DETAIL_RANGE / 4:
                for slat in range(int(_FENCE / _SLAT)):
                    slat_z = z + 0.3 + slat * _SLAT
                    canvas.shade(self._wall(_FENCE_X, 0.05, 1.15, slat_z, slat_z + 0.12), (104, 80, 58))

    def _street_objects(self, t: float, travelled: float) -> list[tuple[float, Callable[..., None], tuple]]:
        """(distance, draw method, its arguments) of everything that stands in the street."""
        objects = []
        for z in _ahead(travelled, _POLE_SPACING, _NEAR, _FAR):
            index = round((z + travelled) / _POLE_SPACING)
            for side, x in enumerate(_POLES_X):
                objects.append((z, self._draw_pole, (x, z, (index + side) % 2 == 0, index)))
        for z in _ahead(travelled, _TREE_SPACING, _NEAR, _DETAIL_RANGE):
            index = round((z + travelled) / _TREE_SPACING)
            for x in _TREES_X:
                objects.append((z, self._draw_tree, (x, z, index)))
        for z in _ahead(travelled, _PARKED_SPACING, -4.5, _DETAIL_RANGE):
            objects.append((z, self._draw_car, (-4.6, z, round((z + travelled) / _PARKED_SPACING), False)))
        # The lead car, an oncoming car, a pedestrian and a cyclist move with their own speeds.
        lead = 18.0 + 4.0 * math.sin(0.3 * t)
        oncoming = 140.0 - (t * (_SPEED + 12.0)) % 150.0
        walker = 11.0 + 3.0 * math.sin(0.2 * t + 1.0)
        cyclist = 9.0 + 2.0 * math.sin(0.15 * t + 2.0)
        objects += [
            (lead, self._draw_car, (0.0, lead, 1, False)),
            (oncoming, self._draw_car, (-2.8, oncoming, 2, True)),
            (walker, self._draw_pedestrian, (3.1, walker, t)),
            (cyclist, self._draw_cyclist, (1.2, cyclist, t)),
        ]
        return objects

    # --- things ----------------------------------------------------------------------------------

    def _draw_pole(self, canvas: _Canvas, x: float, z: float, with_sign: bool, index: int) -> None:
        half = max(0.08, self._pixels_to_metres(0.6, z))  # at least ~1 px wide
        canvas.polygon(self._front(x - half, x + half, 0.0, 5.5, z), 'pole', _POLE)
        if with_sign:
            colour = _SIGNS[self._variant[index % _VARIANTS] % len(_SIGNS)]
            if index % 4 < 2:
                canvas.circle(self._point(x, 3.0, z), self._metres_to_pixels(0.35, z), 'sign_symbol', colour)
            else:
                canvas.polygon(self._front(x - 0.4, x + 0.4, 2.5, 3.3, z), 'sign_symbol', colour)

    def _draw_tree(self, canvas: _Canvas, x: float, z: float, index: int) -> None:
        variant = self._variant[index % _VARIANTS]
        lift = (variant % 5) * 0.2  # crowns at slightly different heights
        canvas.polygon(self._front(x - 0.15, x + 0.15, 0.0, 3.2 + lift, z), 'tree', _BARK)
        for dx, dy, radius in ((0.0, 4.4, 1.8), (-0.9, 3.8, 1.3), (0.9, 3.9, 1.4)):
            colour = _FOLIAGE[(variant + int(dx * 2)) % len(_FOLIAGE)]
            centre = self._point(x + dx, dy + lift, z)
            canvas.circle(centre, self._metres_to_pixels(radius, z), 'tree', colour)

    def _draw_car(self, canvas: _Canvas, x: float, z: float, index: int, oncoming: bool) -> None:
        """A car whose rear (or, oncoming, front) is ``z`` ahead, with the side that faces the camera."""
        paint = _CAR_PAINT[self._variant[index % _VARIANTS] % len(_CAR_PAINT)]
        half, length = 0.9, 4.3
        if abs(x) > half:
            side = x - half if x > 0 else x + half
            shadow = tuple(int(c * 0.75) for c in paint)
            canvas.polygon(self._wall(side, 0.25, 1.0, z, z + length), 'car', shadow)
            canvas.shade(self._wall(side, 1.0, 1.4, z + 1.0, z + 3.2), _GLASS)
        for wheel_x in (x - half + 0.25, x + half - 0.25):
            canvas.polygon(self._front(wheel_x - 0.2, wheel_x + 0.2, 0.0, 0.45, z), 'car', _DARK)
        canvas.polygon(self._front(x - half, x + half, 0.25, 1.0, z), 'car', paint)
        cabin = [(x - 0.8, 1.0, z + 0.6), (x + 0.8, 1.0, z + 0.6),
                 (x + 0.65, 1.45, z + 0.9), (x - 0.65, 1.45, z + 0.9)]
        canvas.polygon(self._project(cabin), 'car', paint)
        window = [(x - 0.7, 1.05, z + 0.6), (x + 0.7, 1.05, z + 0.6),
                  (x + 0.6, 1.4, z + 0.9), (x - 0.6, 1.4, z + 0.9)]
        canvas.shade(self._project(window), _GLASS)
        lights = (235, 230, 200) if oncoming else (230, 60, 40)
        for light_x in (x - half + 0.1, x + half - 0.35):
            canvas.shade(self._front(light_x, light_x + 0.25, 0.7, 0.85, z), lights)

    def _draw_pedestrian(self, canvas: _Canvas, x: float, z: float, t: float) -> None:
        swing = 0.25 * math.sin(5.0 * t)
        jacket, trousers = _CLOTHES[self.seed % len(_CLOTHES)], _CLOTHES[(self.seed + 2) % len(_CLOTHES)]
        for step in (swing, -swing):
            leg = [(x - 0.1, 0.9, z), (x + 0.1, 0.9, z), (x + 0.1 + step, 0.0, z), (x - 0.1 + step, 0.0, z)]
            canvas.polygon(self._project(leg), 'pedestrian', trousers)
        canvas.polygon(self._front(x - 0.22, x + 0.22, 0.85, 1.5, z), 'pedestrian', jacket)
        canvas.circle(self._point(x, 1.65, z), self._metres_to_pixels(0.12, z), 'pedestrian', _SKIN)

    def _draw_cyclist(self, canvas: _Canvas, x: float, z: float, t: float) -> None:
        """Rider and bicycle, both labelled 'bicyclist' as in CamVid; the wheels are drawn as rings."""
        rim = max(1, round(self._metres_to_pixels(0.05, z)))
        for dz in (-0.5, 0.5):
            wheel = self._point(x, 0.33, z + dz)
            canvas.circle(wheel, self._metres_to_pixels(0.33, z + dz), 'bicyclist', _DARK, thickness=rim)
        canvas.polygon(self._wall(x, 0.4, 0.55, z - 0.5, z + 0.5), 'bicyclist', (30, 60, 120))
        pedal = 0.15 * math.sin(4.0 * t)
        for side, lift in ((-0.12, pedal), (0.12, -pedal)):
            leg = self._front(x + side - 0.06, x + side + 0.06, 0.35 + 0.15 + lift, 0.9, z)
            canvas.polygon(leg, 'bicyclist', (40, 40, 60))
        torso = [(x - 0.2, 0.85, z - 0.2), (x + 0.2, 0.85, z - 0.2),
                 (x + 0.2, 1.45, z + 0.1), (x - 0.2, 1.45, z + 0.1)]
        canvas.polygon(self._project(torso), 'bicyclist', (200, 90, 30))
        canvas.circle(self._point(x, 1.6, z + 0.15), self._metres_to_pixels(0.12, z), 'bicyclist', _SKIN)

    # --- image only --------------------------------------------------------------------------------

    def _sky_gradient(self) -> np.ndarray:
        rows = np.clip(np.arange(self.height) / self._horizon, 0.0, 1.0)[:, None]
        gradient = (1 - rows) * np.array(_SKY_TOP) + rows * np.array(_SKY_HORIZON)
        return np.repeat(gradient[:, None, :], self.width, axis=1).astype(np.uint8)

    def _add_grain(self, image: np.ndarray, t: float) -> np.ndarray:
        offset = int(t * 1000.0) * 7919 % 1024
        dy, dx = offset % 32, offset // 32
        window = (slice(dy, dy + self.height), slice(dx, dx + self.width))
        cv2.add(image, self._grain[0][window], dst=image)
        cv2.subtract(image, self._grain[1][window], dst=image)
        return image


def _clip_to_near(corners: list[_Point3]) -> list[_Point3]:
    """The part of a convex polygon beyond the near plane (one step of Sutherland-Hodgman)."""
    kept = []
    for a, b in zip(corners, corners[1:] + corners[:1], strict=True):
        if a[2] > _NEAR:
            kept.append(a)
        if (a[2] > _NEAR) != (b[2] > _NEAR):
            s = (_NEAR - a[2]) / (b[2] - a[2])
            kept.append(tuple(p + (q - p) * s for p, q in zip(a, b, strict=True)))
    return kept


def _ahead(travelled: float, spacing: float, start: float, stop: float) -> list[float]:
    """Distances ahead of the camera, in ``[start, stop)``, of things placed every ``spacing`` metres."""
    first = math.ceil((travelled + start) / spacing) * spacing - travelled
    return [first + i * spacing for i in range(max(0, math.ceil((stop - first) / spacing)))]
