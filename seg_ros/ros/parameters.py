"""segment_node's parameters, declared in one place: default (which fixes the type), description and
constraints of each, and the checks rclpy cannot make from a descriptor."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from seg_ros.inference.backends import BACKENDS
from seg_ros.ros.qos import RELIABILITY_CHOICES
from seg_ros.vocabulary import PRECISION_CHOICES

__all__ = ['NODE_NAME', 'PARAMETERS', 'ParameterSpec', 'descriptor', 'invalid_reason']

NODE_NAME = 'segment_node'


@dataclass(frozen=True)
class ParameterSpec:
    """A node parameter: default (which fixes its type), description and constraints."""

    default: bool | int | float | str | list[str] | list[float]
    description: str
    read_only: bool = False
    limits: tuple[float, float] | None = None  # inclusive range of a number
    choices: tuple[str, ...] = ()


# Every parameter of the node, in the order of config/segment.yaml (test_node checks both agree).
PARAMETERS: dict[str, ParameterSpec] = {
    'model': ParameterSpec(
        'enet', 'network whose shipped checkpoint models/<model>_camvid.pt is used; with weights set it must '
        "name the checkpoint's network or be empty", read_only=True),
    'weights': ParameterSpec('', 'checkpoint file used instead of the shipped one of model', read_only=True),
    'image_topics': ParameterSpec(
        ['camera/image_raw'], 'camera topics (relative names are in the node namespace); a name ending in '
        '/compressed is a sensor_msgs/CompressedImage', read_only=True),
    'device': ParameterSpec('auto', 'auto (CUDA when available), cpu, cuda or cuda:N', read_only=True),
    'precision': ParameterSpec(
        'auto', 'inference precision; auto: measured with backend at start-up (fp32, and bf16 where native)',
        read_only=True, choices=PRECISION_CHOICES),
    'backend': ParameterSpec(
        'auto', 'torch, onnxruntime (CPU, fp32), openvino (CPU, fp32/bf16) or auto (the fastest whose masks agree '
        'with fp32 PyTorch, measured at start-up and cached)', read_only=True, choices=BACKENDS),
    'compile': ParameterSpec(
        False, 'torch.compile the network for the input shapes it sees (minutes of start-up on a CPU)',
        read_only=True),
    'input_height': ParameterSpec(
        0, 'network input height; 0 (with input_width 0) = the checkpoint training resolution',
        read_only=True, limits=(0, 8192)),
    'input_width': ParameterSpec(
        0, 'network input width; 0 (with input_height 0) = the checkpoint training resolution',
        read_only=True, limits=(0, 8192)),
    'output_size': ParameterSpec(
        'input', 'input: results at each camera resolution; network: at the network input size',
        read_only=True, choices=('input', 'network')),
    'min_confidence': ParameterSpec(
        0.0, 'pixels whose top-class probability is below this are 255 (none) in the mask',
        limits=(0.0, 1.0)),
    'overlay_alpha': ParameterSpec(0.5, 'weight of the class colours in the overlay', limits=(0.0, 1.0)),
    'publish_color_mask': ParameterSpec(True, 'publish color_mask (computed only while it has subscribers)'),
    'publish_overlay': ParameterSpec(True, 'publish overlay (computed only while it has subscribers)'),
    'publish_confidence': ParameterSpec(False, 'publish confidence (computed only while it has subscribers)'),
    'publish_stats': ParameterSpec(True, 'publish per-class statistics on stats'),
    'qos_reliability': ParameterSpec(
        'best_effort', 'reliability of the camera subscriptions', read_only=True,
        choices=tuple(RELIABILITY_CHOICES)),
    'qos_depth': ParameterSpec(1, 'queue depth of the camera subscriptions', read_only=True, limits=(1, 100)),
    'output_namespace': ParameterSpec(
        'segmentation', 'results go to <camera namespace>/<output_namespace>/', read_only=True),
    'diagnostics_period': ParameterSpec(
        1.0, 'seconds between /diagnostics messages', read_only=True, limits=(0.05, 60.0)),
    'camera_timeout': ParameterSpec(
        2.0, 'seconds without frames after which a camera is reported WARN', limits=(0.05, 3600.0)),
    'max_image_pixels': ParameterSpec(
        3840 * 2160, 'frames claiming more pixels (width x height) are dropped before anything is allocated',
        limits=(1, 268435456)),
    # Ground grid and scan (seg_ros.ros.ground_output); bad values give a warning and no grid, not an error.
    'ground_frame': ParameterSpec(
        'base_link', 'frame of camera_poses, the grid and the scan (REP-105: base_link or base_footprint)'),
    'camera_poses': ParameterSpec(
        [''], "per image topic, 'x y z roll pitch yaw' (m, rad) of the camera body (x forward, z up) in "
              "ground_frame; '' or missing: no grid from that camera"),
    'camera_rectified': ParameterSpec(False, 'the images are rectified: project with CameraInfo P, no distortion'),
    'camera_info_tolerance': ParameterSpec(
        0.0, 'seconds a CameraInfo stamp may differ from its image stamp (0: identical stamps)', limits=(0.0, 1.0)),
    'ground_classes': ParameterSpec(
        '', 'YAML file of the drivable, non_drivable and obstacle classes per label set; '
            "'' = the shipped config/ground_classes.yaml", read_only=True),
    'ground_z': ParameterSpec(0.0, 'height of the ground plane in ground_frame (m)'),
    'grid_resolution': ParameterSpec(0.1, 'edge of a grid cell (m)'),
    'grid_extent': ParameterSpec(
        [-10.0, 40.0, -20.0, 20.0], 'min_x max_x min_y max_y of the grid in ground_frame (m), around its origin'),
    'scan_angle_increment': ParameterSpec(
        math.radians(0.5), 'angle between the bearings of the scan (rad); it covers a full turn'),
}


def descriptor(name: str, spec: ParameterSpec) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(name=name, description=spec.description, read_only=spec.read_only)
    if spec.choices:
        descriptor.additional_constraints = f'one of: {", ".join(spec.choices)}'
    if spec.limits is not None:
        low, high = spec.limits
        if isinstance(spec.default, float):
            descriptor.floating_point_range = [
                FloatingPointRange(from_value=float(low), to_value=float(high))]
        else:
            descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    return descriptor


def invalid_reason(parameter: Parameter) -> str | None:
    """Why a value is not acceptable beyond its type and range (which rclpy checks), or None."""
    spec = PARAMETERS.get(parameter.name)
    value = parameter.value
    if spec is not None and spec.choices and value not in spec.choices:
        return f'{parameter.name} {value!r} is not one of: {", ".join(spec.choices)}'
    if parameter.name == 'image_topics' and not value:
        return 'image_topics needs at least one camera topic'
    if parameter.name == 'output_namespace' and not value.strip('/'):
        return 'output_namespace must not be empty'
    return None
