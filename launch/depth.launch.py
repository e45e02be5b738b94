"""Launch structflow's depth node for one camera, optionally with RViz.

    ros2 launch structflow depth.launch.py camera:=/camera/image_raw \
        camera_info:=/camera/camera_info namespace:=cam0 rviz:=true

Several cameras: one launch per camera with its own `namespace`. The node's outputs are
`<namespace>/depth`, `depth/colored`, `depth/camera_info` and `depth/points`.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


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
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Start RViz with the depth image and point cloud'),
        DeclareLaunchArgument('rviz_config',
                              default_value=PathJoinSubstitution(
                                  [share, 'config', 'structflow.rviz']),
                              description='RViz configuration file'),
        DeclareLaunchArgument('fixed_frame', default_value='camera_optical_frame',
                              description="RViz fixed frame: the camera images' frame_id"),
    ]
    depth_node = Node(
        package='structflow',
        executable='depth_node',
        name='depth_node',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'),
                    {'device': LaunchConfiguration('device'),
                     'backend': LaunchConfiguration('backend')}],
        remappings=[('image', LaunchConfiguration('camera')),
                    ('camera_info', LaunchConfiguration('camera_info'))],
        output='screen',
        emulate_tty=True,
    )
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
    return LaunchDescription(arguments + [depth_node, rviz])
