"""Launch structflow's depth node for one camera, optionally with RViz.

    ros2 launch structflow depth.launch.py camera:=/camera/image_raw \
        camera_info:=/camera/camera_info namespace:=cam0 rviz:=true

Several cameras: one launch per camera with its own `namespace`, or one node for all of them
(`cameras:="[front, rear]"`: one model in one process; topics front/image -> front/depth, ...
under `namespace`). The node's outputs are
`<namespace>/depth` (metres: depth_mode:=scale or camera_height) or `depth/relative` (unitless,
the default depth_mode), `depth/colored`, `depth/camera_info` and `depth/points` (metres only).

lifecycle:=true starts a managed node (unconfigured): bring it up with
`ros2 lifecycle set /<namespace>/depth_node configure`, then `activate` (or a lifecycle
manager).
"""
import os
import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


class LaunchInputError(RuntimeError):
    """Bad launch input; launch prints the message and `ros2 launch` exits non-zero."""


def _command_line_arguments():
    """`name:=value` names given to `ros2 launch ... depth.launch.py` for this very file (an
    including launch file passes its own arguments, which are not checked here)."""
    argv = sys.argv
    here = os.path.basename(__file__)
    for index, token in enumerate(argv):
        if os.path.basename(token) == here:
            return [item.split(':=', 1)[0] for item in argv[index + 1:] if ':=' in item]
    return []


def _check_arguments(context, declared):
    unknown = sorted(set(_command_line_arguments()) - set(declared))
    if unknown:
        raise LaunchInputError(f"unknown launch argument(s) {', '.join(map(repr, unknown))}; "
                               f"depth.launch.py takes: {', '.join(sorted(declared))}")
    params_file = LaunchConfiguration('params_file').perform(context)
    if not os.path.isfile(params_file):
        raise LaunchInputError(f'params_file {params_file} does not exist or is not a file')
    try:
        import yaml
        with open(params_file) as handle:
            parsed = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        reason = str(error).replace('\n', ' ')
        raise LaunchInputError(f'params_file {params_file} is not valid YAML: {reason}') from None
    if not isinstance(parsed, dict):
        raise LaunchInputError(f'params_file {params_file} holds no parameters (expected '
                               "'/**: ros__parameters: {...}' as in config/structflow.yaml)")
    if LaunchConfiguration('rviz').perform(context).lower() in ('true', '1', 'yes'):
        from ament_index_python.packages import (PackageNotFoundError,
                                                 get_package_share_directory)
        try:
            get_package_share_directory('rviz2')
        except PackageNotFoundError:
            raise LaunchInputError('rviz:=true but rviz2 is not installed (install '
                                   'ros-<distro>-rviz2, or launch with rviz:=false)') from None
    return []


def _node_exited(event, context):
    """The depth node ended: end the launch too, failing when the node failed (its one-line
    reason is already in the log above)."""
    del context
    if event.returncode not in (0, None):
        raise LaunchInputError(f'depth_node exited with code {event.returncode}; its reason '
                               'is the FATAL line above')
    return [EmitEvent(event=Shutdown(reason='depth_node exited'))]


def generate_launch_description():
    share = FindPackageShare('structflow')
    arguments = [
        DeclareLaunchArgument('camera', default_value='/camera/image_raw',
                              description='Image topic (sensor_msgs/Image, or CompressedImage '
                                          'with input_compressed: true in params_file)'),
        DeclareLaunchArgument('camera_info', default_value='/camera/camera_info',
                              description='CameraInfo topic of that camera'),
        DeclareLaunchArgument('namespace', default_value='',
                              description='Namespace of the node and its outputs (one per '
                                          'camera)'),
        DeclareLaunchArgument('params_file',
                              default_value=PathJoinSubstitution(
                                  [share, 'config', 'structflow.yaml']),
                              description='Parameters YAML of depth_node'),
        DeclareLaunchArgument('device', default_value='auto',
                              description='Torch device: auto, cpu, cuda or cuda:N (overrides '
                                          'params_file)'),
        DeclareLaunchArgument('backend', default_value='auto',
                              description='How the network runs: auto, eager, bf16, fp16, '
                                          'onnxruntime, openvino or tensorrt (overrides '
                                          'params_file)'),
        DeclareLaunchArgument('depth_mode', default_value='relative',
                              description='relative (unitless, on depth/relative), scale '
                                          '(metres = depth_scale x model) or camera_height '
                                          '(metres from the ground plane): metres go to depth '
                                          'and depth/points (overrides params_file)'),
        DeclareLaunchArgument('cameras', default_value="['']",
                              description="Cameras of this one node: [''] = one, on camera "
                                          'and camera_info; "[front, rear]" = one per '
                                          'sub-namespace (front/image -> front/depth, ...; '
                                          'remap those topics in your own launch file) '
                                          '(overrides params_file)'),
        DeclareLaunchArgument('lifecycle', default_value='false',
                              description='A managed (lifecycle) node: starts unconfigured; '
                                          'configure loads the model, activate serves'),
        DeclareLaunchArgument('adapt', default_value='false',
                              description='On-robot adaptation: keep training on the live '
                                          'camera and hot-swap gated versions (overrides '
                                          'params_file)'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start RViz with the depth image and point cloud'),
        DeclareLaunchArgument('rviz_config',
                              default_value=PathJoinSubstitution(
                                  [share, 'config', 'structflow.rviz']),
                              description='RViz configuration file'),
        DeclareLaunchArgument('fixed_frame', default_value='camera_optical_frame',
                              description="RViz fixed frame: the camera images' frame_id"),
    ]
    node_settings = dict(
        package='structflow',
        executable='depth_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'),
                    {'device': LaunchConfiguration('device'),
                     'backend': LaunchConfiguration('backend'),
                     'depth_mode': LaunchConfiguration('depth_mode'),
                     'cameras': LaunchConfiguration('cameras'),
                     'adapt': LaunchConfiguration('adapt')}],
        remappings=[('image', LaunchConfiguration('camera')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
        output='screen',
        emulate_tty=True,
    )
    # The managed node is the same executable with --lifecycle, started as a plain launch Node:
    # `ros2 lifecycle`, nav2's lifecycle manager and any other manager drive it through its
    # lifecycle services. (launch_ros' LifecycleNode action would add launch-side transition
    # events, at the price of a ROS context inside the launch process, whose Ctrl-C ends with
    # "Cannot shutdown a ROS adapter that is not running" and exit code 1.)
    lifecycle = LaunchConfiguration('lifecycle')
    depth_nodes = [
        Node(**node_settings, condition=UnlessCondition(lifecycle)),
        Node(**node_settings, arguments=['--lifecycle'], condition=IfCondition(lifecycle)),
    ]
    # RViz in the same namespace, so the relative topics of the config (depth/colored,
    # depth/points) resolve to this node's outputs.
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        namespace=LaunchConfiguration('namespace'),
        arguments=['-d', LaunchConfiguration('rviz_config'),
                   '-f', LaunchConfiguration('fixed_frame')],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='screen',
    )
    declared = [argument.name for argument in arguments]
    check = OpaqueFunction(function=_check_arguments, args=[declared])
    on_exit = [RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_node_exited))
               for node in depth_nodes]
    return LaunchDescription(arguments + [check] + on_exit + depth_nodes + [rviz])
