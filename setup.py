"""ament_python package ``seg_ros``: builds with colcon and installs with pip from the same tree."""

from pathlib import Path

from setuptools import find_packages, setup

# After setuptools, which provides distutils where Python no longer does (3.12).
from distutils.command.install_data import install_data  # isort: skip

PACKAGE = 'seg_ros'
HERE = Path(__file__).parent

# Executables that ``ros2 run`` and ``ros2 launch`` start as <prefix>/lib/seg_ros/<name>: colcon puts
# the console scripts there (setup.cfg); a wheel can only put them in bin/, so a pip install gets
# lib/seg_ros/<name> scripts that exec those (``InstallData``).
NODE_EXECUTABLES = {
    'segment_node': 'seg_ros.ros.entry_points:segment_node',
    'segment_lifecycle_node': 'seg_ros.ros.entry_points:segment_lifecycle_node',
    'sample_camera': 'seg_ros.ros.entry_points:sample_camera',
    'train': 'seg_ros.training.cli:train_main',
    'eval': 'seg_ros.training.cli:eval_main',
}
CONSOLE_SCRIPTS = {
    **NODE_EXECUTABLES,
    'seg-train': 'seg_ros.training.cli:train_main',
    'seg-eval': 'seg_ros.training.cli:eval_main',
    'seg-study': 'seg_ros.training.studies:main',
    'seg-card': 'seg_ros.training.cli:card_main',
    'seg-bag': 'seg_ros.bag.cli:main',
    'seg-bench': 'seg_ros.bench.cli:main',
    'seg-export': 'seg_ros.inference.cli:main',
    'seg-demo': 'seg_ros.ros.demo:main',
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


def write_delegates() -> list[str]:
    """Write the lib/seg_ros/<name> scripts of a pip install; returns their paths.

    Each execs the console script of the same name in bin/ of the same prefix, whose first line the
    installer wrote with the interpreter of the environment it was installed into (a venv or not);
    ``#!/usr/bin/env python3`` would run whatever python3 is first on PATH.
    """
    out_dir = HERE / 'build' / 'lib_delegates'
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in NODE_EXECUTABLES:
        path = out_dir / name
        path.write_text(
            '#!/bin/sh\n'
            f'# {PACKAGE} {name}: run bin/{name}, installed with this environment\'s interpreter.\n'
            'prefix=$(dirname "$(dirname "$(dirname "$(readlink -f "$0")")")")\n'
            f'exec "$prefix/bin/{name}" "$@"\n'
        )
        path.chmod(0o755)
        paths.append(str(path.relative_to(HERE)))
    return paths


class InstallData(install_data):
    """Adds the lib/seg_ros delegates where the console scripts are installed elsewhere (pip: bin/)."""

    def run(self) -> None:
        installation = self.get_finalized_command('install')
        node_dir = Path(installation.install_data, 'lib', PACKAGE).resolve()
        if Path(installation.install_scripts).resolve() != node_dir:
            self.data_files.append((f'lib/{PACKAGE}', write_delegates()))
        super().run()


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
    ],
    cmdclass={'install_data': InstallData},
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
        'av',  # PyAV, with its own FFmpeg: seg-bag's H.264 videos
    ],
    extras_require={
        'ros': ['ros-rclpy[fastrtps]', 'ros-sensor-msgs', 'ros-std-msgs', 'ros-diagnostic-msgs', 'ros-nav-msgs',
                'ros-lifecycle-msgs'],
        'onnx': ['onnx', 'onnxruntime'],
        'cluster': ['distributed'],  # Dask: seg-bag --scheduler spreads bags over a cluster
        'openvino': ['onnx', 'openvino'],
        'test': ['pytest', 'pytest-timeout', 'hypothesis', 'ruff', 'psutil', 'mcap', 'colcon-common-extensions',
                 'ros-ament-package'],
    },
    zip_safe=True,
    maintainer='seg_ros maintainers',
    maintainer_email='maintainers@seg-ros.dev',
    description='Lightweight road-scene semantic segmentation for ROS 2 (ENet, ERFNet, DSNet, SegFast).',
    license='Apache-2.0',
    entry_points={'console_scripts': [f'{k} = {v}' for k, v in CONSOLE_SCRIPTS.items()]},
)
