"""ament_python package ``seg_ros``: builds with colcon and installs with pip from the same tree."""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = 'seg_ros'
HERE = Path(__file__).parent

# Executables that ``ros2 run seg_ros <name>`` finds under lib/seg_ros (colcon puts console
# scripts there through setup.cfg; pip ignores that, so pip installs these small wrappers too).
NODE_EXECUTABLES = {
    'segment_node': 'seg_ros.ros.node:main',
    'sample_camera': 'seg_ros.ros.sample_camera:main',
    'train': 'seg_ros.training.cli:train_main',
    'eval': 'seg_ros.training.cli:eval_main',
}
CONSOLE_SCRIPTS = {
    **NODE_EXECUTABLES,
    'seg-train': 'seg_ros.training.cli:train_main',
    'seg-eval': 'seg_ros.training.cli:eval_main',
    'seg-study': 'seg_ros.training.studies:main',
    'seg-bag': 'seg_ros.bag.cli:main',
    'seg-bench': 'seg_ros.bench:main',
    'seg-export': 'seg_ros.export:main',
    'seg-demo': 'seg_ros.demo:main',
    'seg-models': 'seg_ros.models.cli:main',
}


def share_files(folder: str) -> list[tuple[str, list[str]]]:
    """(install dir, files) pairs that mirror ``folder`` under share/seg_ros."""
    entries = []
    for directory in sorted(p for p in [HERE / folder, *(HERE / folder).rglob('*')] if p.is_dir()):
        files = [str(f.relative_to(HERE)) for f in sorted(directory.iterdir()) if f.is_file()]
        if files:
            entries.append((f'share/{PACKAGE}/{directory.relative_to(HERE)}', files))
    return entries


def write_wrappers() -> list[str]:
    """Write lib/seg_ros wrapper scripts for pip installs; returns their paths."""
    out_dir = HERE / 'build' / 'lib_wrappers'
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, target in NODE_EXECUTABLES.items():
        module, func = target.split(':')
        path = out_dir / name
        path.write_text(
            '#!/usr/bin/env python3\n'
            'import sys\n'
            f'from {module} import {func}\n'
            f'sys.exit({func}())\n'
        )
        path.chmod(0o755)
        paths.append(str(path.relative_to(HERE)))
    return paths


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        *share_files('launch'),
        *share_files('config'),
        *share_files('models'),
        (f'lib/{PACKAGE}', write_wrappers()),
    ],
    # torch is deliberately absent: a bare requirement pulls the CUDA build; scripts/dev.sh
    # installs the CPU pin only where no torch is importable. rclpy comes from the ROS
    # distribution in a colcon workspace, or from the `ros` extra in a plain virtual environment.
    install_requires=[
        'setuptools',
        'numpy',
        'opencv-python-headless',
        'pyyaml',
        'rosbags>=0.10',
        'tqdm',
        'matplotlib',
    ],
    extras_require={
        'ros': ['ros-rclpy[fastrtps]', 'ros-sensor-msgs', 'ros-std-msgs', 'ros-diagnostic-msgs'],
        'onnx': ['onnx', 'onnxruntime'],
        'openvino': ['onnx', 'openvino'],
        'test': ['pytest', 'pytest-timeout', 'hypothesis', 'ruff', 'psutil'],
    },
    zip_safe=True,
    maintainer='seg_ros maintainers',
    maintainer_email='maintainers@seg-ros.dev',
    description='Lightweight road-scene semantic segmentation for ROS 2 (ENet, ERFNet, DSNet, SegFast).',
    license='Apache-2.0',
    entry_points={'console_scripts': [f'{k} = {v}' for k, v in CONSOLE_SCRIPTS.items()]},
)
