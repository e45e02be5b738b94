"""launch/depth.launch.py, config/structflow.yaml and config/structflow.rviz agree with the node.

The launch description is loaded with the real `launch`/`launch_ros` (a ROS 2 install, or the
wheels of ../shared/wheels that `make venv` installs; skipped, naming the folder, without them).
What the launch file does when run (`ros2 launch` with each argument, two cameras, bad input)
is tested through the real tools in test_ros2_tools.py; here: its declarations and the files it
names. Paths are checked against what setup.py installs into share/structflow.
"""
import fnmatch
import importlib
import importlib.util
import os
import runpy
import sys
import time
import types
from pathlib import Path

import pytest
import setuptools
import yaml

import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter

from structflow_ros.ros.params import PARAMETERS

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO_ROOT / 'launch' / 'depth.launch.py'
PARAMS_FILE = REPO_ROOT / 'config' / 'structflow.yaml'
RVIZ_FILE = REPO_ROOT / 'config' / 'structflow.rviz'
REQUIRED_ARGUMENTS = {'camera', 'camera_info', 'namespace', 'params_file', 'device', 'backend',
                      'adapt', 'rviz', 'depth_mode', 'lifecycle'}


STANDINS = REPO_ROOT / 'test' / 'ros_standins'


@pytest.fixture(scope='module')
def description():
    """The real LaunchDescription and its declarations, defaults performed in a LaunchContext."""
    if importlib.util.find_spec('launch') is None or \
            importlib.util.find_spec('launch_ros') is None:
        pytest.skip('launch/launch_ros are not installed: no ROS 2 install and no wheels in '
                    f'{REPO_ROOT.parent / "shared" / "wheels"} (make venv installs them)')
    standin = importlib.util.find_spec('composition_interfaces') is None
    if standin:
        sys.path.insert(0, str(STANDINS))  # see test/ros_standins/README.md
    try:
        return _load_description()
    finally:
        if standin:
            sys.path.remove(str(STANDINS))
            for name in [m for m in sys.modules if m.startswith('composition_interfaces')]:
                del sys.modules[name]


def _load_description():
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch.launch_description_sources import get_launch_description_from_python_launch_file
    from launch.utilities import perform_substitutions
    from launch_ros.actions import Node
    built = get_launch_description_from_python_launch_file(str(LAUNCH_FILE))
    context = LaunchContext()
    declared = {e.name: e for e in built.entities if isinstance(e, DeclareLaunchArgument)}
    from launch.substitutions import TextSubstitution
    # Plain-text defaults only: the share/ paths need the package installed (test_ros2_tools).
    defaults = {name: perform_substitutions(context, e.default_value)
                for name, e in declared.items() if e.default_value is not None
                and all(isinstance(part, TextSubstitution) for part in e.default_value)}
    nodes = {e.node_executable if isinstance(e.node_executable, str) else
             perform_substitutions(context, e.node_executable): e
             for e in built.entities if isinstance(e, Node)}
    return types.SimpleNamespace(entities=built.entities, declared=declared, nodes=nodes,
                                 defaults=defaults)


@pytest.fixture(scope='module')
def setup_kwargs():
    """What setup.py passes to setuptools.setup (run in the source tree, setup() replaced)."""
    captured = {}
    original, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        os.chdir(REPO_ROOT)
        runpy.run_path(str(REPO_ROOT / 'setup.py'))
    finally:
        setuptools.setup = original
        os.chdir(cwd)
    return captured


def installed(setup_kwargs, path):
    """share/structflow/... destination of a source file, from setup.py's data_files."""
    relative = str(path.relative_to(REPO_ROOT))
    for destination, sources in setup_kwargs['data_files']:
        if relative in sources:
            return f'{destination}/{path.name}'
    return None


@pytest.fixture(scope='module')
def declared_parameters(tmp_path_factory):
    """Parameters the node really declares, started in-process with the shipped YAML."""
    import torch

    from structflow_ros.core.checkpoint import save_checkpoint
    from structflow_ros.core.config import ModelConfig
    from structflow_ros.core.networks import build_model
    from structflow_ros.ros.depth_node import DepthNode
    weights = tmp_path_factory.mktemp('launch') / 'tiny.pt'
    torch.manual_seed(0)
    save_checkpoint(weights, build_model(ModelConfig(height=64, width=96, flow_branch=False,
                                                     pose_branch=False)), half=True)
    context = Context()
    rclpy.init(args=['depth_node', '--ros-args', '--params-file', str(PARAMS_FILE)],
               context=context)
    try:
        node = DepthNode(context=context,
                         parameter_overrides=[Parameter('weights', value=str(weights)),
                                              Parameter('backend', value='eager')])
        try:
            values = {name: param.value for name, param in node._parameters.items()}
            topics = types.SimpleNamespace(
                subscriptions={s.topic_name for s in node.subscriptions},
                publishers={p.topic_name for p in node.publishers})
        finally:
            node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    return values, topics


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------
def test_launch_starts_the_installed_depth_node(setup_kwargs):
    scripts = setup_kwargs['entry_points']['console_scripts']
    assert 'depth_node = structflow_ros.ros.entry:depth_node' in scripts
    module = importlib.import_module('structflow_ros.ros.entry')
    assert callable(module.depth_node)
    assert setup_kwargs['name'] == 'structflow'
    assert installed(setup_kwargs, LAUNCH_FILE) == 'share/structflow/launch/depth.launch.py'


def test_every_argument_is_declared_and_described(description):
    assert REQUIRED_ARGUMENTS <= set(description.declared)
    for name, declaration in description.declared.items():
        assert declaration.description and 'no description' not in declaration.description, name
    node = description.nodes['depth_node']
    assert node.node_package == 'structflow'
    assert set(description.nodes) == {'depth_node', 'rviz2'}
    # lifecycle:=true swaps the plain node for a managed one (the same executable with
    # --lifecycle); exactly one of the two runs whatever the argument says.
    from launch import LaunchContext
    from launch_ros.actions import Node
    depth_nodes = [e for e in description.entities if isinstance(e, Node)
                   and e.node_package == 'structflow']
    assert len(depth_nodes) == 2
    for value in ('true', 'false'):
        context = LaunchContext()
        context.launch_configurations['lifecycle'] = value
        running = [e for e in depth_nodes if e.condition.evaluate(context)]
        assert len(running) == 1, value
        arguments = list(running[0]._Node__arguments or [])  # launch_ros keeps them private
        assert arguments == (['--lifecycle'] if value == 'true' else []), value


def test_params_file_and_rviz_config_are_installed(setup_kwargs):
    assert PARAMS_FILE.is_file() and RVIZ_FILE.is_file()
    assert installed(setup_kwargs, PARAMS_FILE) == 'share/structflow/config/structflow.yaml'
    assert installed(setup_kwargs, RVIZ_FILE) == 'share/structflow/config/structflow.rviz'


def test_rviz_shows_the_node_topics_in_the_camera_frame(description, declared_parameters):
    rviz_config = yaml.safe_load(RVIZ_FILE.read_text())
    manager = rviz_config['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == description.defaults['fixed_frame']
    displays = {d['Class']: d for d in manager['Displays']}
    image = displays['rviz_default_plugins/Image']['Topic']['Value']
    cloud = displays['rviz_default_plugins/PointCloud2']['Topic']['Value']
    assert (image, cloud) == ('depth/colored', 'depth/points')  # relative: the node's namespace
    assert displays['rviz_default_plugins/PointCloud2']['Color Transformer'] == 'RGB8'
    _, topics = declared_parameters
    assert {'/' + image, '/' + cloud} <= topics.publishers
    assert topics.subscriptions == {'/image', '/camera_info'}  # what the launch file remaps


def test_yaml_and_node_declare_the_same_parameters(declared_parameters):
    params = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(params) == ['/**'], 'one /** section, so any node name and namespace match'
    from_yaml = params['/**']['ros__parameters']
    spec_defaults = {spec.name: spec.default for spec in PARAMETERS}
    assert from_yaml == spec_defaults  # same names, same defaults
    for name, value in from_yaml.items():
        assert type(value) is type(spec_defaults[name]), f'{name}: YAML type differs'
    values, _ = declared_parameters
    builtin = {'use_sim_time', 'start_type_description_service',  # rclpy's
               'diagnostic_updater.period', 'diagnostic_updater.use_fqn'}  # the Updater's
    assert set(values) - builtin == set(from_yaml)
    overridden = {'weights', 'backend'}  # set by the fixture, not by the YAML
    assert {k: v for k, v in values.items() if k in from_yaml and k not in overridden} == {
        k: v for k, v in from_yaml.items() if k not in overridden}


def test_shipped_files_match_the_install_globs(setup_kwargs):
    sources = [s for _, files in setup_kwargs['data_files'] for s in files]
    for path in (LAUNCH_FILE, PARAMS_FILE, RVIZ_FILE):
        relative = str(path.relative_to(REPO_ROOT))
        assert relative in sources and any(fnmatch.fnmatch(relative, p) for p in (
            'launch/*.launch.py', 'config/*.yaml', 'config/*.rviz'))


@pytest.mark.parametrize('delay_s', [0.5, 1.5, 8.0])
def test_ctrl_c_right_after_start_exits_quietly(delay_s, tmp_path):
    """Issue 12 defect 9: SIGINT while torch and rclpy import gave a traceback and exit -2.
    The installed entry point (what `ros2 run` calls) exits 0 without a traceback whenever the
    interrupt lands (during the imports, during start-up or while spinning)."""
    import signal
    import subprocess
    env = dict(os.environ, ROS_LOG_DIR=str(tmp_path / 'log'),
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    process = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from structflow_ros.ros.entry import depth_node; '
         "sys.exit(depth_node(['--ros-args', '-p', 'backend:=eager', '-p', 'threads:=1']))"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    time.sleep(delay_s)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    text = output.decode(errors='replace')
    assert process.returncode == 0, text[-2000:]
    assert 'Traceback' not in text, text[-2000:]
