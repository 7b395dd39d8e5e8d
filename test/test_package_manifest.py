"""package.xml agrees with setup.py and README, and names only dependencies rosdep can resolve.

``rosdep install --from-paths src`` fails for the whole workspace on one key it does not know, so an
invented key (``python3-torch`` was one) breaks README's workspace instructions. rosdep itself is not
on this machine: the keys below were looked up in rosdistro's ``rosdep/{base,python}.yaml``.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROS_PACKAGES = {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'nav_msgs', 'lifecycle_msgs', 'launch',
                'launch_ros'}
ROSDEP_KEYS = {  # PyPI distribution -> rosdistro key
    'numpy': 'python3-numpy',
    'opencv-python-headless': 'python3-opencv',
    'pyyaml': 'python3-yaml',
    'tqdm': 'python3-tqdm',
    'matplotlib': 'python3-matplotlib',
    'pytest': 'python3-pytest',
}


@pytest.fixture(scope='module')
def manifest() -> ET.Element:
    return ET.parse(REPO / 'package.xml').getroot()


def _dependencies(manifest: ET.Element, tag: str) -> set[str]:
    return {element.text.strip() for element in manifest.iter(tag)}


def _setup_keyword(name: str) -> object:
    """A literal keyword of setup.py's ``setup()`` call, or the module constant it names."""
    module = ast.parse((REPO / 'setup.py').read_text())
    call = next(node for node in ast.walk(module)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup')
    value = next(keyword.value for keyword in call.keywords if keyword.arg == name)
    if isinstance(value, ast.Name):
        value = next(node.value for node in module.body if isinstance(node, ast.Assign)
                     and any(getattr(target, 'id', None) == value.id for target in node.targets))
    return ast.literal_eval(value)


def _readme_pip_packages() -> set[str]:
    """What README's workspace section installs with pip."""
    section = (REPO / 'README.md').read_text().split('## Running it in a ROS 2 workspace', 1)[1]
    line = re.search(r'^pip install ([^#\n]+)', section, re.MULTILINE)
    assert line, 'README: no pip install line in the workspace section'
    return set(line[1].split())


def test_names_version_and_build_type_match_setup(manifest):
    assert manifest.get('format') == '3'
    assert manifest.findtext('name') == _setup_keyword('name') == 'seg_ros'
    assert manifest.findtext('version') == _setup_keyword('version')
    assert manifest.findtext('export/build_type') == 'ament_python'


def test_every_dependency_is_a_ros_package_or_a_known_rosdep_key(manifest):
    depends = _dependencies(manifest, 'exec_depend') | _dependencies(manifest, 'test_depend')
    unknown = depends - ROS_PACKAGES - set(ROSDEP_KEYS.values())
    assert not unknown, f'package.xml: no rosdep key {sorted(unknown)}; install it with pip and say so in README'


def test_every_runtime_requirement_is_installed_by_rosdep_or_by_the_readme(manifest):
    exec_depends = _dependencies(manifest, 'exec_depend')
    requirements = {re.split(r'[<>=\[]', requirement)[0].lower() for requirement in _setup_keyword('install_requires')}
    by_pip = _readme_pip_packages()
    missing = {name for name in requirements - {'setuptools'}
               if ROSDEP_KEYS.get(name) not in exec_depends and name not in by_pip}
    assert not missing, f'neither package.xml nor README installs {sorted(missing)} in a ROS 2 workspace'
    assert 'torch' in by_pip  # deliberately not in install_requires: the build must match the GPU
