"""launch/depth.launch.py, config/structflow.yaml and config/structflow.rviz agree with the node.

The `launch` and `launch_ros` packages are NOT installable on this machine (no ROS 2 install;
PyPI's `launch` is an unrelated project). The launch file is written for a real ROS 2 install;
here a small FAKE of the part of their API it uses is injected into sys.modules. The fake only
records what generate_launch_description() builds, so this test checks the structure (package,
executable, arguments, remappings, files) and not launch's runtime behaviour. Paths are
resolved against the source tree, which is what setup.py installs into share/structflow (the
data_files are checked too).
"""
import fnmatch
import importlib
import os
import py_compile
import runpy
import sys
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
                      'rviz'}


# ----------------------------------------------------------------------------------------------
# The fake launch API (records constructor arguments; nothing runs)
# ----------------------------------------------------------------------------------------------
class Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __repr__(self):
        return f'{type(self).__name__}{self.args}{self.kwargs}'


FAKE_CLASSES = {
    'launch': ['LaunchDescription'],
    'launch.actions': ['DeclareLaunchArgument', 'GroupAction', 'IncludeLaunchDescription',
                       'OpaqueFunction', 'SetEnvironmentVariable'],
    'launch.conditions': ['IfCondition', 'UnlessCondition'],
    'launch.substitutions': ['LaunchConfiguration', 'PathJoinSubstitution', 'TextSubstitution',
                             'PythonExpression', 'EnvironmentVariable'],
    'launch_ros.actions': ['Node', 'PushRosNamespace'],
    'launch_ros.substitutions': ['FindPackageShare'],
}


@pytest.fixture
def fake_launch(monkeypatch):
    modules = {}
    for module_name, class_names in FAKE_CLASSES.items():
        module = types.ModuleType(module_name)
        module.__doc__ = 'FAKE for tests: launch/launch_ros are not installable here.'
        for class_name in class_names:
            setattr(module, class_name, type(class_name, (Recorded,), {}))
        modules[module_name] = module
        monkeypatch.setitem(sys.modules, module_name, module)
    monkeypatch.setitem(sys.modules, 'launch_ros', types.ModuleType('launch_ros'))
    return modules


def arg(obj, position, keyword):
    return obj.kwargs.get(keyword, obj.args[position] if len(obj.args) > position else None)


def resolve(value, config):
    """Evaluate fake substitutions; FindPackageShare('structflow') = the source tree."""
    name = type(value).__name__
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return ''.join(resolve(item, config) for item in value)
    if name == 'LaunchConfiguration':
        return resolve(config[arg(value, 0, 'variable_name')], config)
    if name == 'PathJoinSubstitution':
        return os.path.join(*(resolve(part, config) for part in arg(value, 0, 'substitutions')))
    if name == 'FindPackageShare':
        assert arg(value, 0, 'package') == 'structflow'
        return str(REPO_ROOT)
    raise AssertionError(f'the test cannot resolve {value!r}')


def walk(value):
    """Every object reachable through fake constructor arguments, lists, tuples and dicts."""
    yield value
    if isinstance(value, Recorded):
        children = list(value.args) + list(value.kwargs.values())
    elif isinstance(value, (list, tuple)):
        children = list(value)
    elif isinstance(value, dict):
        children = list(value.keys()) + list(value.values())
    else:
        children = []
    for child in children:
        yield from walk(child)


@pytest.fixture
def description(fake_launch):
    spec = importlib.util.spec_from_file_location('depth_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.generate_launch_description()
    assert type(built).__name__ == 'LaunchDescription'
    entities = list(arg(built, 0, 'initial_entities'))
    declared = {arg(e, 0, 'name'): e for e in entities
                if type(e).__name__ == 'DeclareLaunchArgument'}
    nodes = {arg(e, 0, 'executable') or e.kwargs['executable']: e for e in entities
             if type(e).__name__ == 'Node'}
    defaults = {name: arg(e, 1, 'default_value') for name, e in declared.items()}
    return types.SimpleNamespace(entities=entities, declared=declared, nodes=nodes,
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
                         parameter_overrides=[Parameter('weights', value=str(weights))])
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
def test_launch_file_compiles():
    py_compile.compile(str(LAUNCH_FILE), doraise=True)


def test_launch_starts_the_installed_depth_node(description, setup_kwargs):
    node = description.nodes['depth_node']
    assert node.kwargs['package'] == 'structflow' == setup_kwargs['name']
    scripts = setup_kwargs['entry_points']['console_scripts']
    assert 'depth_node = structflow_ros.ros.depth_node:main' in scripts
    module = importlib.import_module('structflow_ros.ros.depth_node')
    assert callable(module.main)
    assert installed(setup_kwargs, LAUNCH_FILE) == 'share/structflow/launch/depth.launch.py'


def test_every_argument_is_declared_described_and_used(description):
    assert REQUIRED_ARGUMENTS <= set(description.declared)
    for name, declaration in description.declared.items():
        assert arg(declaration, 2, 'description'), f'argument {name} has no description'
    used = {arg(obj, 0, 'variable_name') for entity in description.entities
            if type(entity).__name__ != 'DeclareLaunchArgument'
            for obj in walk(entity) if type(obj).__name__ == 'LaunchConfiguration'}
    assert used == set(description.declared), 'declared but unused / used but undeclared'


def test_node_parameters_remaps_and_namespace(description, declared_parameters):
    node = description.nodes['depth_node']
    config = dict(description.defaults)
    params_file, overrides = node.kwargs['parameters']
    assert Path(resolve(params_file, config)) == PARAMS_FILE
    assert {key: resolve(value, config) for key, value in overrides.items()} == {'device': 'auto',
                                                                          'backend': 'auto'}
    remaps = {source: resolve(target, config) for source, target in node.kwargs['remappings']}
    assert remaps == {'image': '/camera/image_raw', 'camera_info': '/camera/camera_info'}
    _, topics = declared_parameters
    assert topics.subscriptions == {'/' + name for name in remaps}  # the node's own names
    assert resolve(node.kwargs['namespace'], {**config, 'namespace': '/cam0'}) == '/cam0'


def test_params_file_and_rviz_config_are_installed(description, setup_kwargs):
    config = dict(description.defaults)
    assert Path(resolve(description.defaults['params_file'], config)).is_file()
    assert Path(resolve(description.defaults['rviz_config'], config)) == RVIZ_FILE
    assert installed(setup_kwargs, PARAMS_FILE) == 'share/structflow/config/structflow.yaml'
    assert installed(setup_kwargs, RVIZ_FILE) == 'share/structflow/config/structflow.rviz'


def test_rviz_shows_the_node_topics_in_the_camera_frame(description, declared_parameters):
    rviz = description.nodes['rviz2']
    config = dict(description.defaults)
    assert type(rviz.kwargs['condition']).__name__ == 'IfCondition'
    arguments = [resolve(a, config) for a in rviz.kwargs['arguments']]
    assert arguments[arguments.index('-d') + 1] == str(RVIZ_FILE)
    fixed_frame = arguments[arguments.index('-f') + 1]
    rviz_config = yaml.safe_load(RVIZ_FILE.read_text())
    manager = rviz_config['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == fixed_frame
    displays = {d['Class']: d for d in manager['Displays']}
    image = displays['rviz_default_plugins/Image']['Topic']['Value']
    cloud = displays['rviz_default_plugins/PointCloud2']['Topic']['Value']
    assert (image, cloud) == ('depth/colored', 'depth/points')
    assert displays['rviz_default_plugins/PointCloud2']['Color Transformer'] == 'RGB8'
    _, topics = declared_parameters
    assert {'/' + image, '/' + cloud} <= topics.publishers
    assert resolve(rviz.kwargs['namespace'], config) == resolve(
        description.nodes['depth_node'].kwargs['namespace'], config)


def test_yaml_and_node_declare_the_same_parameters(declared_parameters):
    params = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(params) == ['/**'], 'one /** section, so any node name and namespace match'
    from_yaml = params['/**']['ros__parameters']
    spec_defaults = {spec.name: spec.default for spec in PARAMETERS}
    assert from_yaml == spec_defaults  # same names, same defaults
    for name, value in from_yaml.items():
        assert type(value) is type(spec_defaults[name]), f'{name}: YAML type differs'
    values, _ = declared_parameters
    builtin = {'use_sim_time', 'start_type_description_service'}
    assert set(values) - builtin == set(from_yaml)
    assert {k: v for k, v in values.items() if k in from_yaml and k != 'weights'} == {
        k: v for k, v in from_yaml.items() if k != 'weights'}


def test_shipped_files_match_the_install_globs(setup_kwargs):
    sources = [s for _, files in setup_kwargs['data_files'] for s in files]
    for path in (LAUNCH_FILE, PARAMS_FILE, RVIZ_FILE):
        relative = str(path.relative_to(REPO_ROOT))
        assert relative in sources and any(fnmatch.fnmatch(relative, p) for p in (
            'launch/*.launch.py', 'config/*.yaml', 'config/*.rviz'))
