"""seg_ros.ground against hand-computed geometry and a small ray caster written here, apart from it.

The ray caster renders CamVid masks of a flat road with a box standing on it, seen by a camera at a
known pose: every pixel centre's ray is built from the camera's axes (forward, left, up as vectors of
the parent frame) and hits the box or the ground plane. The projected grid and scan must put the
box's ground contact within one grid cell of where the box stands.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from seg_ros.ground import (
    FREE,
    OCCUPIED,
    UNKNOWN,
    CameraModel,
    CameraPose,
    GroundError,
    GroundGrid,
    GroundLayer,
    build_lookup,
    class_role_table,
    default_class_roles_file,
    fuse,
    load_class_roles,
    project_mask,
    scan_ranges,
)
from seg_ros.labels import CAMVID11, CITYSCAPES19, LabelSet

from .support.ground import render

WIDTH, HEIGHT, FOCAL = 1280, 720, 1000.0
GRID = GroundGrid(0.2, -20.0, 30.0, -15.0, 15.0, angle_increment=math.radians(0.25))


def pinhole(width: int = WIDTH, height: int = HEIGHT, focal: float = FOCAL, d: tuple = (),
            model: str = 'plumb_bob') -> CameraModel:
    return CameraModel(width, height, (focal, 0, width / 2, 0, focal, height / 2, 0, 0, 1), d, model)


@pytest.fixture(scope='module')
def roles() -> np.ndarray:
    return class_role_table(CAMVID11, load_class_roles(default_class_roles_file(), CAMVID11))


# -- the ray caster ---------------------------------------------------------------------------------







def check_box(layer: GroundLayer, grid: GroundGrid, x_near: float, y_centre: float) -> None:
    """The box's front face is occupied within a cell, the road before it free, the scan right."""
    codes = layer.codes.reshape(grid.height, grid.width)
    row = int((y_centre - grid.min_y) // grid.resolution)
    along = grid.min_x + (np.arange(grid.width) + 0.5) * grid.resolution
    direction = 1 if x_near > 0 else -1
    ahead = np.flatnonzero((codes[row] == OCCUPIED) & (along * direction > 0))
    first = along[ahead[np.argmin(np.abs(along[ahead]))]]
    assert abs(first - x_near) <= grid.resolution * 1.01, (first, x_near)
    before = [grid.cell_index(x_near - direction * k, y_centre) for k in (1.0, 2.0)]
    assert all(layer.codes[cell] == FREE for cell in before)
    behind = grid.cell_index(x_near + direction * 1.5, y_centre)  # under the box: hidden
    assert layer.codes[behind] == UNKNOWN
    bearing = math.atan2(y_centre, x_near)
    scan = scan_ranges(layer, grid)
    measured = scan[grid.bin_of(np.array([bearing]))[0]]
    assert abs(measured - math.hypot(x_near, y_centre)) <= grid.resolution, (measured, math.hypot(x_near, y_centre))


# -- hand-computed pinhole ------------------------------------------------------------------------------

def test_level_pinhole_matches_hand_computed_distances():
    pose = CameraPose(0.0, 0.0, 1.5)
    lookup = build_lookup(pinhole(), pose, GRID, (HEIGHT, WIDTH))
    # Row 459's lower edge is 99.5 px below the principal point: ground 1000 * 1.5 / 99.5 m ahead.
    pixel = 459 * WIDTH + 640
    assert lookup.contact_range[pixel] == pytest.approx(1500 / 99.5, rel=1e-5)
    assert lookup.contact_cell[pixel] == GRID.cell_index(1500 / 99.5, 0.0)
    assert lookup.contact_bin[pixel] == GRID.bin_of(np.array([0.0]))[0]
    # Column 1000 sees to the right (negative y): at that distance, (1000 - 640) / 1000 of it.
    pixel = 459 * WIDTH + 1000
    assert lookup.contact_range[pixel] == pytest.approx(1500 / 99.5 * math.hypot(1, 0.36), rel=1e-5)
    # The cell centred at (10.1, 0.1) is seen at u = 640 - 1000 * 0.1 / 10.1, v = 360 + 1500 / 10.1.
    cell = GRID.cell_index(10.1, 0.1)
    index = np.flatnonzero(lookup.visible_cells == cell)
    assert index.size == 1
    assert lookup.visible_pixels[index[0]] == round(360 + 1500 / 10.1) * WIDTH + round(640 - 100 / 10.1)
    # Rows above the horizon (the middle) meet no ground; nothing behind the camera is visible.
    assert lookup.contact_cell[359 * WIDTH + 640] == -1
    xs, _ = GRID.cell_centres()
    assert (xs[lookup.visible_cells] > 0).all()


@pytest.mark.parametrize('pose, box', [
    (CameraPose(0.0, 0.0, 1.5), (12.0, 2.0, 4.0, 0.9)),  # level
    (CameraPose(1.0, -0.3, 1.6, pitch=0.15), (9.0, -1.5, 4.0, 0.9)),  # pitched down, moved
    (CameraPose(0.5, 0.2, 1.4, roll=0.1, yaw=0.2), (8.0, 2.5, 4.0, 0.9)),  # rolled and turned left
], ids=['level', 'pitched', 'rolled'])
def test_box_on_the_road_is_found_within_one_cell(roles, pose, box):
    camera = pinhole()
    mask = render(camera, pose, [box])
    layer = project_mask(mask, build_lookup(camera, pose, GRID, mask.shape), roles, GRID)
    check_box(layer, GRID, box[0], box[1])


def test_distortion_is_undone(roles):
    camera = pinhole(d=(-0.25, 0.08, 0.001, -0.0005, 0.0))
    pose = CameraPose(0.0, 0.0, 1.5, pitch=0.05)
    box = (9.0, -4.5, 4.0, 0.9)  # far off-centre, where the distortion is strong (6 % at its pixels)
    mask = render(camera, pose, [box])
    layer = project_mask(mask, build_lookup(camera, pose, GRID, mask.shape), roles, GRID)
    check_box(layer, GRID, box[0], box[1])
    # Ignoring the distortion puts the box elsewhere: the check above is sensitive to it.
    plain = pinhole()
    wrong = project_mask(mask, build_lookup(plain, pose, GRID, mask.shape), roles, GRID)
    with pytest.raises(AssertionError):
        check_box(wrong, GRID, box[0], box[1])


@pytest.mark.parametrize('model, d', [('plumb_bob', (-0.3, 0.1, 0.002, -0.001, -0.02)),
                                      ('rational_polynomial', (0.5, -0.1, 0.001, 0.002, 0.01, 0.8, -0.05, 0.02)),
                                      ('equidistant', (0.1, -0.05, 0.01, -0.002))])
def test_distortion_models_agree_with_opencv(model, d):
    camera = pinhole(d=d, model=model)
    normalized = np.random.default_rng(0).uniform(-0.6, 0.6, (200, 2))
    matrix = np.asarray(camera.k, np.float64).reshape(3, 3)
    points = np.column_stack([normalized, np.ones(len(normalized))])
    if model == 'equidistant':
        expected, _ = cv2.fisheye.projectPoints(points[:, None, :], np.zeros(3), np.zeros(3), matrix, np.array(d))
    else:
        expected, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), matrix, np.array(d))
    pixels = camera.distort(normalized)
    np.testing.assert_allclose(pixels, expected.reshape(-1, 2), atol=1e-6)
    np.testing.assert_allclose(camera.undistort(pixels), normalized, atol=1e-7)


def test_mask_smaller_than_the_calibration_is_scaled(roles):
    """A mask at the network size (half here) is mapped onto the calibrated sensor."""
    pose = CameraPose(0.0, 0.0, 1.5)
    box = (12.0, 2.0, 4.0, 0.9)
    small = render(pinhole(WIDTH // 2, HEIGHT // 2, FOCAL / 2), pose, [box])
    layer = project_mask(small, build_lookup(pinhole(), pose, GRID, small.shape), roles, GRID)
    check_box(layer, GRID, box[0], box[1])


def test_two_cameras_fuse_into_one_grid(roles):
    front, rear = CameraPose(1.5, 0.0, 1.5), CameraPose(-0.5, 0.0, 1.5, yaw=math.pi)
    scene = [(12.0, 1.0, 4.0, 0.9), (-12.0, -1.0, 4.0, 0.9)]  # one ahead; one behind, its face at x = -8
    camera = pinhole()
    layers = [project_mask(render(camera, pose, scene), build_lookup(camera, pose, GRID, (HEIGHT, WIDTH)),
                           roles, GRID) for pose in (front, rear)]
    fused = fuse(layers)
    check_box(fused, GRID, 12.0, 1.0)
    check_box(fused, GRID, -8.0, -1.0)
    assert (fused.codes >= np.maximum(layers[0].codes, layers[1].codes)).all()


def test_fusion_rule_occupied_over_free_over_unknown():
    a = GroundLayer(np.array([UNKNOWN, FREE, OCCUPIED, FREE, UNKNOWN], np.uint8), np.array([5.0, np.inf], np.float32))
    b = GroundLayer(np.array([FREE, UNKNOWN, FREE, OCCUPIED, UNKNOWN], np.uint8), np.array([7.0, 3.0], np.float32))
    fused = fuse([a, b])
    assert fused.codes.tolist() == [FREE, FREE, OCCUPIED, OCCUPIED, UNKNOWN]
    assert fused.contacts.tolist() == [5.0, 3.0]
    with pytest.raises(GroundError, match='no camera'):
        fuse([])


def test_scan_reports_range_max_where_free_to_the_edge_and_nan_where_unseen(roles):
    pose = CameraPose(0.0, 0.0, 1.5)
    camera = pinhole()
    layer = project_mask(render(camera, pose, []), build_lookup(camera, pose, GRID, (HEIGHT, WIDTH)), roles, GRID)
    scan = scan_ranges(layer, GRID)
    ahead, behind = GRID.bin_of(np.array([0.0, math.pi]))
    assert scan[ahead] == pytest.approx(GRID.range_max)
    assert GRID.range_max == pytest.approx(math.hypot(30, 15), rel=1e-3)  # the bin nearest the corner
    assert np.isnan(scan[behind])
    # Sidewalk (non-drivable ground) beside a narrow road: occupied cells, and the curb in the scan.
    mask = render(camera, pose, [], road_half_width=3.0)
    layer = project_mask(mask, build_lookup(camera, pose, GRID, mask.shape), roles, GRID)
    assert layer.codes[GRID.cell_index(10.0, 4.0)] == OCCUPIED and layer.codes[GRID.cell_index(10.0, 2.0)] == FREE
    bearing = math.atan2(3.0, 10.0)
    curb = scan_ranges(layer, GRID)[GRID.bin_of(np.array([bearing]))[0]]
    assert curb == pytest.approx(math.hypot(10.0, 3.0), abs=GRID.resolution)


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('camera, pose, grid, message', [
    (CameraModel(0, 0, (0.0,) * 9), CameraPose(0, 0, 1.5), GRID, 'empty'),
    (CameraModel(640, 480, (0.0,) * 9), CameraPose(0, 0, 1.5), GRID, 'not calibrated'),
    (pinhole(), CameraPose(0, 0, float('nan')), GRID, 'non-finite'),
    (pinhole(), CameraPose(0, 0, 1.5, pitch=float('inf')), GRID, 'non-finite'),
    (pinhole(), CameraPose(0, 0, 1.5, pitch=-0.8), GRID, 'horizon is below the image'),
    (pinhole(), CameraPose(0, 0, -0.2), GRID, 'not above the ground'),
    (pinhole(), CameraPose(0, 0, 1.5), GroundGrid(float('nan'), -1, 1, -1, 1), 'non-finite'),
    (pinhole(), CameraPose(0, 0, 1.5), GroundGrid(0.1, 1, 10, -1, 1), 'must contain the origin'),
    (pinhole(), CameraPose(0, 0, 1.5), GroundGrid(0.0, -1, 1, -1, 1), 'must be positive'),
    (pinhole(), CameraPose(0, 0, 1.5), GroundGrid(0.001, -100, 100, -100, 100), 'larger than'),
    (pinhole(d=(0.1, 0.0)), CameraPose(0, 0, 1.5), GRID, 'takes 4 or 5 coefficients'),
    (pinhole(d=(0.1,) * 5, model='kannala'), CameraPose(0, 0, 1.5), GRID, 'not supported'),
    (pinhole(d=(float('nan'),) * 5), CameraPose(0, 0, 1.5), GRID, 'non-finite'),
    (pinhole(), CameraPose(-30, 0, 1.5, yaw=math.pi), GRID, 'no pixel sees the ground inside the grid'),
])
def test_bad_input_is_refused_with_the_reason(camera, pose, grid, message):
    with pytest.raises(GroundError, match=message):
        build_lookup(camera, pose, grid, (camera.height or 10, camera.width or 10))


def test_a_mask_of_another_size_than_the_lookup_is_refused(roles):
    lookup = build_lookup(pinhole(), CameraPose(0, 0, 1.5), GRID, (HEIGHT, WIDTH))
    with pytest.raises(GroundError, match='does not match'):
        project_mask(np.zeros((10, 10), np.uint8), lookup, roles, GRID)


# -- class roles -------------------------------------------------------------------------------------

@pytest.mark.parametrize('labels', [CAMVID11, CITYSCAPES19])
def test_shipped_class_roles_cover_every_class_but_the_sky(labels):
    roles = load_class_roles(default_class_roles_file(), labels)
    assigned = [name for names in roles.values() for name in names]
    assert sorted([*assigned, 'sky']) == sorted(labels.names)
    assert roles['drivable'] == ('road',)


@pytest.mark.parametrize('content, message', [
    ('camvid11: {drivable: [road], obstacle: [lorry]}', "'lorry', which is not a class"),
    ('camvid11: {drivable: [road], obstacle: [road]}', 'both drivable and obstacle'),
    ('camvid11: {drivable: road}', 'must be a list'),
    ('camvid11: {flying: [sky]}', 'expected a mapping with the keys'),
    ('cityscapes19: {drivable: [road]}', "no entry for label set 'camvid11'"),
    ('[1, 2]', 'expected a mapping of label set names'),
    ('camvid11: {drivable: [road', 'cannot read it'),
])
def test_bad_class_roles_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / 'roles.yaml'
    path.write_text(content)
    with pytest.raises(GroundError, match=message):
        load_class_roles(path, CAMVID11)


def test_role_table_maps_classes_and_leaves_no_prediction_unknown():
    labels = LabelSet('three', ('a', 'b', 'c'), ((0, 0, 0),) * 3)
    table = class_role_table(labels, {'drivable': ('a',), 'obstacle': ('c',)})
    assert table[:4].tolist() == [1, 0, 3, 0] and table[255] == 0
