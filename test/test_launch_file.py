"""launch/segment.launch.py, checked without ROS 2's launch packages (they are not on PyPI).

The file is parsed, not imported: its arguments, the executables and config files it names, and
its ``image_topics`` parsing (run on its own) are checked against setup.py, config/ and README.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'segment.launch.py'
DOCUMENTED_ARGUMENTS = {'model', 'weights', 'image_topics', 'device', 'precision', 'params_file', 'namespace',
                        'lifecycle', 'demo', 'fastdds_profile'}


@pytest.fixture(scope='module')
def tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), str(LAUNCH_FILE))


def _assigned(tree: ast.Module, name: str) -> ast.expr:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == name for t in node.targets):
            return node.value
    raise AssertionError(f'{LAUNCH_FILE.name} assigns no {name}')


def _function(tree: ast.Module, name: str) -> ast.FunctionDef:
    return next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == name)


def _calls(tree: ast.AST, function: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == function]


def _declared_arguments(tree: ast.Module) -> set[str]:
    return {key.value for key in _assigned(tree, 'ARGUMENTS').keys}


def _readme_launch_arguments() -> set[str]:
    """Every ``name:=`` on the README lines that run segment.launch.py."""
    readme = REPO / 'README.md'
    lines = readme.read_text().splitlines() if readme.is_file() else []
    return {name for line in lines if 'segment.launch.py' in line for name in re.findall(r'(\w+):=', line)}


def test_declares_every_documented_argument(tree):
    declared = _declared_arguments(tree)
    assert declared == DOCUMENTED_ARGUMENTS
    assert _readme_launch_arguments() <= declared
    assert _calls(tree, 'DeclareLaunchArgument')
    # No declared argument is ignored: each is read by name or passed on as a node override.
    read = {call.args[0].value for call in _calls(tree, 'LaunchConfiguration')
            if isinstance(call.args[0], ast.Constant)}
    overrides = set(ast.literal_eval(_assigned(tree, 'NODE_OVERRIDES'))) | {'image_topics'}
    assert declared <= read | overrides


def test_names_installed_executables(tree):
    setup = ast.parse((REPO / 'setup.py').read_text())
    installed = set(ast.literal_eval(_assigned(setup, 'NODE_EXECUTABLES')))
    calls = _calls(tree, 'Node') + _calls(tree, 'LifecycleNode')
    executables = {keyword.value.value for call in calls for keyword in call.keywords if keyword.arg == 'executable'}
    assert executables == {'segment_node', 'segment_lifecycle_node', 'sample_camera'}
    assert executables <= installed


def test_refers_to_config_files_that_exist(tree):
    paths = []
    for call in _calls(tree, 'PathJoinSubstitution'):
        parts = call.args[0].elts
        assert getattr(parts[0].func, 'id', None) == 'FindPackageShare'
        paths.append(Path(*(part.value for part in parts[1:])))
    assert sorted(map(str, paths)) == ['config/fastdds.xml', 'config/segment.yaml']
    assert all((REPO / path).is_file() for path in paths)


def test_overrides_name_node_parameters(tree):
    config = yaml.safe_load((REPO / 'config' / 'segment.yaml').read_text())
    parameters = config['/**']['ros__parameters']
    overrides = set(ast.literal_eval(_assigned(tree, 'NODE_OVERRIDES'))) | {'image_topics'}
    assert overrides <= set(parameters)
    assert isinstance(parameters['image_topics'], list)


def test_sets_the_fastdds_profile_for_started_processes(tree):
    (call,) = _calls(tree, 'SetEnvironmentVariable')
    assert call.args[0].value == 'FASTDDS_DEFAULT_PROFILES_FILE'
    assert call.args[1].args[0].value == 'fastdds_profile'


@pytest.fixture(scope='module')
def topic_list(tree):
    """The launch file's ``topic_list`` function, compiled on its own."""
    function = _function(tree, 'topic_list')
    namespace = {'yaml': yaml}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(LAUNCH_FILE), 'exec'), namespace)
    return namespace['topic_list']


@pytest.mark.parametrize(('text', 'expected'), [
    ("['/a/image_raw','/b/image_raw']", ['/a/image_raw', '/b/image_raw']),
    ("['/a/image_raw', '/b/image_raw/compressed']", ['/a/image_raw', '/b/image_raw/compressed']),
    ('[/a/image_raw, /b/image_raw]', ['/a/image_raw', '/b/image_raw']),
    ('/a/image_raw', ['/a/image_raw']),
    ('camera/image_raw', ['camera/image_raw']),
])
def test_image_topics_become_a_string_array(topic_list, text, expected):
    assert topic_list(text) == expected


@pytest.mark.parametrize('text', ['[]', '5', "['/a/image_raw', 3]", "['']", "['/a/image_raw'"])
def test_bad_image_topics_are_refused_with_the_argument_named(topic_list, text):
    with pytest.raises(ValueError, match='image_topics'):
        topic_list(text)


def test_image_topics_override_is_the_parsed_list(tree):
    assert _calls(_function(tree, '_nodes'), 'topic_list')
