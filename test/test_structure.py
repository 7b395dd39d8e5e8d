"""The package's layout holds its rules: no import cycles, command-line modules at the edge, files a
reader can hold, and a core that imports without ROS 2."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'seg_ros'
MAX_LINES = 600
ROS_MODULES = ('rclpy', 'rcl_interfaces', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'nav_msgs',
               'lifecycle_msgs', 'builtin_interfaces', 'ament_index_python')


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob('*.py'))}


def imported_modules(path: Path) -> set[str]:
    """seg_ros modules that ``path`` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f'{node.module}.{alias.name}'
                found.add(child if child in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES}


GRAPH = {name: imported_modules(path) - {name} for name, path in MODULES.items()}


def command_modules() -> set[str]:
    """Modules behind the console scripts of setup.py, and every ``cli`` module."""
    tree = ast.parse((REPO / 'setup.py').read_text())
    targets = {node.value.split(':')[0] for node in ast.walk(tree)
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and ':' in node.value
               and node.value.split(':')[0] in MODULES}
    return targets | {name for name in MODULES if name.endswith('.cli')}


def test_the_module_graph_has_no_cycle():
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 'open'
        for child in sorted(GRAPH[name]):
            if state.get(child) == 'open':
                cycle = [*trail[trail.index(child):], child] if child in trail else [name, child]
                pytest.fail('import cycle: ' + ' -> '.join(cycle))
            if child not in state:
                visit(child, [*trail, child])
        state[name] = 'done'

    for name in MODULES:
        if name not in state:
            visit(name, [name])


def test_no_library_module_imports_a_command_line_module():
    commands = command_modules()
    assert {'seg_ros.training.cli', 'seg_ros.bench.cli', 'seg_ros.bag.cli', 'seg_ros.inference.cli',
            'seg_ros.ros.entry_points', 'seg_ros.ros.demo'} <= commands
    offenders = {name: sorted(GRAPH[name] & commands) for name in MODULES
                 if name not in commands and not name.endswith('__main__') and GRAPH[name] & commands}
    assert not offenders, f'library modules importing command-line modules: {offenders}'


def test_every_file_is_short_enough_to_read():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f'files over {MAX_LINES} lines: {long}'


def test_only_the_ros_package_imports_ros_at_module_level():
    offenders = []
    for name, path in MODULES.items():
        if name.startswith('seg_ros.ros'):
            continue
        for node in ast.parse(path.read_text()).body:  # module level only: sections may import lazily
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f'{name}: {n}' for n in names if n.split('.')[0] in ROS_MODULES]
    assert not offenders


@pytest.mark.slow
def test_the_core_imports_where_ros_is_not_installed():
    """Every module outside seg_ros.ros imports with the ROS 2 packages made unimportable."""
    core = sorted(name for name in MODULES if not name.startswith('seg_ros.ros') and not name.endswith('__main__'))
    code = f'''
import importlib, importlib.abc, sys
class NoRos(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {ROS_MODULES!r}:
            raise ModuleNotFoundError(f'No module named {{name!r}} (ROS hidden by the test)')
sys.meta_path.insert(0, NoRos())
for name in {core!r}:
    importlib.import_module(name)
print('imported', len({core!r}))
'''
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f'imported {len(core)}' in result.stdout
