"""Launch ``segment_node`` (and, with ``demo:=true``, ``sample_camera`` feeding it).

    ros2 launch seg_ros segment.launch.py demo:=true
    ros2 launch seg_ros segment.launch.py image_topics:=/front/image_raw model:=erfnet
    ros2 launch seg_ros segment.launch.py image_topics:="['/front/image_raw', '/rear/image_raw']"
    ros2 launch seg_ros segment.launch.py weights:=/path/to/my.pt device:=cuda precision:=fp16
    ros2 launch seg_ros segment.launch.py namespace:=robot1 lifecycle:=true

Arguments left empty keep the value in ``params_file`` (config/segment.yaml: enet, camera/image_raw,
auto, fp32). Topic names without a leading / are in ``namespace``, and so are the nodes.
``lifecycle:=true`` starts the managed ``segment_lifecycle_node`` (unconfigured until a lifecycle
manager or ``ros2 lifecycle set`` configures and activates it) instead of ``segment_node``.
Every process started here gets FASTDDS_DEFAULT_PROFILES_FILE=``fastdds_profile``, the
shared-memory profile that camera-sized images need between processes.
"""

from __future__ import annotations

import yaml
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'seg_ros'

# Arguments passed on to segment_node only when given (empty: the params_file value).
NODE_OVERRIDES = ('model', 'weights', 'device', 'precision')

ARGUMENTS = {
    'model': ('', 'network whose shipped checkpoint is used (enet, erfnet, dsnet, segfast); '
                  'empty: the params_file value'),
    'weights': ('', 'checkpoint file to use instead of the shipped one of model'),
    'image_topics': ('', "camera topic, or a YAML list of them: \"['/a/image_raw', '/b/image_raw']\"; "
                         'relative names are in namespace; a topic ending in /compressed is a '
                         'CompressedImage; empty: the params_file value'),
    'device': ('', 'auto, cpu, cuda or cuda:N; empty: the params_file value'),
    'precision': ('', 'auto, fp32, fp16 or bf16; empty: the params_file value'),
    'params_file': (PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'segment.yaml']),
                    'segment_node parameters (YAML)'),
    'namespace': ('', 'namespace of the started nodes and of their relative topics'),
    'lifecycle': ('false', 'true: start segment_lifecycle_node, a managed node that waits unconfigured for '
                           'configure and activate (ros2 lifecycle set, or a lifecycle manager)'),
    'demo': ('false', 'true: also start sample_camera publishing the synthetic road scene '
                      'on the first image topic'),
    'fastdds_profile': (PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'fastdds.xml']),
                        'Fast DDS XML profile for every started process (FASTDDS_DEFAULT_PROFILES_FILE)'),
}

DEFAULT_IMAGE_TOPIC = 'camera/image_raw'
# Where the synthetic scene's camera sits in base_link (x y z roll pitch yaw): 1.4 m up, level. With
# demo:=true segment_node gets it as the first camera's pose, so the demo also shows the ground grid.
SAMPLE_CAMERA_POSE = '0 0 1.4 0 0 0'


def topic_list(text: str) -> list[str]:
    """``image_topics`` as a list: one topic name, or a YAML list of names."""
    usage = (f'image_topics {text!r}: give a topic or a list of topics, '
             'e.g. "[\'/front/image_raw\', \'/rear/image_raw\']"')
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f'{usage} ({error})') from error
    topics = value if isinstance(value, list) else [value]
    if not topics or not all(isinstance(topic, str) and topic for topic in topics):
        raise ValueError(usage)
    return topics


def _nodes(context: LaunchContext) -> list[Node]:
    """The nodes, with the launch arguments that were given turned into parameter overrides."""
    given = {name: LaunchConfiguration(name).perform(context) for name in (*NODE_OVERRIDES, 'image_topics')}
    overrides: dict[str, str | list[str]] = {name: given[name] for name in NODE_OVERRIDES if given[name]}
    if given['weights'] and not given['model']:
        overrides['model'] = ''  # weights alone: the checkpoint names the network, not the params file
    topics = topic_list(given['image_topics']) if given['image_topics'] else None
    if topics is not None:
        overrides['image_topics'] = topics
    if LaunchConfiguration('demo').perform(context).lower() in ('true', '1', 'yes'):
        overrides['camera_poses'] = [SAMPLE_CAMERA_POSE]
    parameters = [LaunchConfiguration('params_file'), *([overrides] if overrides else [])]
    namespace = LaunchConfiguration('namespace')
    segment = {'package': PACKAGE, 'name': 'segment_node', 'namespace': namespace, 'parameters': parameters,
               'output': 'screen', 'emulate_tty': True}
    managed = IfCondition(LaunchConfiguration('lifecycle')).evaluate(context)
    return [
        LifecycleNode(executable='segment_lifecycle_node', **segment) if managed
        else Node(executable='segment_node', **segment),
        Node(package=PACKAGE, executable='sample_camera', name='sample_camera', namespace=namespace,
             parameters=[{'topic': topics[0] if topics else DEFAULT_IMAGE_TOPIC}],
             condition=IfCondition(LaunchConfiguration('demo')), output='screen', emulate_tty=True),
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=description)
          for name, (default, description) in ARGUMENTS.items()),
        SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', LaunchConfiguration('fastdds_profile')),
        OpaqueFunction(function=_nodes),
    ])
