"""What a robot user types: `ros2 launch`, `ros2 run`, `ros2 node|topic|param|service`.

The real ROS 2 command-line tools run against structflow as a robot user has it: built by
`colcon build` in a workspace whose src/structflow is this repository, then
`source install/setup.bash`. The tools come from a ROS 2 install where there is one, else from
the wheels in ../shared/wheels (installed by `make venv`; they are not on PyPI). With neither,
these tests skip, naming the folder. Nothing is faked except `composition_interfaces` (no wheel;
test/ros_standins, only where the real package is missing: launch_ros imports it for composable
nodes, which structflow does not use).

A depth node started by launch or run serves the shipped weights from the install's share/.
This process is the camera and the viewer (rclpy, real DDS, localhost only).
"""
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import CameraInfo, Image

from structflow_ros.ros.image_publisher import make_image_msg, pinhole_camera_info

from dds_helpers import FRAME_ID, Client, LoggedProcess, node_diagnostics, wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_WHEELS = REPO_ROOT.parent / 'shared' / 'wheels'
STANDINS = REPO_ROOT / 'test' / 'ros_standins'
BIN_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')])
ROS2 = shutil.which('ros2', path=BIN_PATH)
COLCON = shutil.which('colcon', path=BIN_PATH)
START_TIMEOUT_S = 90.0  # the node imports torch and loads the shipped weights on 2 busy cores
HEIGHT, WIDTH = 96, 128
# No ros2 daemon left behind by the tests; a direct node needs a few seconds of discovery.
NO_DAEMON = '--no-daemon --spin-time 5'

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(ROS2 is None, reason=(
        f'no `ros2` command: neither a ROS 2 install nor the tool wheels of {SHARED_WHEELS} '
        '(make venv installs them when that folder exists)')),
    pytest.mark.skipif(COLCON is None, reason='colcon is not installed (requirements.txt)'),
]


# ----------------------------------------------------------------------------------------------
# The workspace, as the README's robot section builds it
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def ws(tmp_path_factory):
    """~/ros2_ws with src/structflow = this repository, built with `colcon build`."""
    root = tmp_path_factory.mktemp('ros2_ws')
    (root / 'src').mkdir()
    (root / 'src' / 'structflow').symlink_to(REPO_ROOT)
    env = base_env(root)
    done = subprocess.run([COLCON, 'build', '--packages-select', 'structflow',
                           '--event-handlers', 'console_cohesion-'], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (root / 'install' / 'setup.bash').is_file()
    yield root
    # `ros2 topic hz` has no --no-daemon: stop the daemon it started for this domain.
    subprocess.run(shell(root, 'ros2 daemon stop'), cwd=root, env=base_env(root),
                   capture_output=True, timeout=60)


def base_env(root):
    env = dict(os.environ)
    env.update(PATH=BIN_PATH, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_LOG_DIR=str(root / 'roslog'), PYTHONUNBUFFERED='1')
    env.pop('PYTHONPATH', None)  # what the install's setup.bash sets is what counts
    if 'VIRTUAL_ENV' not in env and (Path(sys.executable).parent / 'activate').exists():
        env['VIRTUAL_ENV'] = str(Path(sys.executable).parents[1])
    # The underlay: a ROS 2 install sets AMENT_PREFIX_PATH itself; the wheels live in the venv.
    env.setdefault('AMENT_PREFIX_PATH', env.get('VIRTUAL_ENV', sys.prefix))
    if not has_real_composition_interfaces():
        env['PYTHONPATH'] = str(STANDINS)
    return env


def has_real_composition_interfaces():
    spec = importlib.util.find_spec('composition_interfaces')
    return spec is not None and STANDINS not in Path(spec.origin).parents


def shell(ws, command):
    """`source install/setup.bash && <command>` in the workspace, as a user's terminal runs it."""
    return ['bash', '-c', f'source install/setup.bash && exec {command}']


class Started(LoggedProcess):
    """A long-running command (launch, run, topic hz) in the workspace's shell."""

    def __init__(self, ws, command, name):
        super().__init__(ws / f'{name}.log')
        self.command = command
        self.popen = subprocess.Popen(shell(ws, command), cwd=ws, env=base_env(ws),
                                      stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def wait_for_failure(self, expected_text):
        """It must end by itself (no hang), non-zero, with `expected_text` and no traceback."""
        try:
            self.popen.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.interrupt()
            pytest.fail(f'`{self.command}` did not end:\n{self.output()[-3000:]}')
        output = self.output()
        assert self.returncode != 0, output[-3000:]
        assert expected_text in output, output[-3000:]
        assert 'Traceback' not in output, output[-3000:]

    def interrupt(self, timeout=30.0):
        """Ctrl-C as a terminal sends it (SIGINT to the process group); the exit code."""
        try:
            if self.popen.poll() is None:
                os.killpg(self.popen.pid, signal.SIGINT)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                    self.popen.wait(10)
                    pytest.fail(f'did not stop within {timeout:.0f} s of SIGINT:\n'
                                f'{self.output()[-3000:]}')
        finally:
            self._log.close()
        return self.popen.returncode


def ros2(ws, arguments, timeout=60):
    done = subprocess.run(shell(ws, f'ros2 {arguments}'), cwd=ws, env=base_env(ws),
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


@pytest.fixture(scope='module')
def client():
    client = Client(int(os.environ['ROS_DOMAIN_ID']))
    client.subscribe('/diagnostics', DiagnosticArray)
    try:
        yield client
    finally:
        client.close()


def params_file(ws, name, **overrides):
    params = yaml.safe_load((REPO_ROOT / 'config' / 'structflow.yaml').read_text())
    params['/**']['ros__parameters'].update(threads=1, diagnostics_period=0.2, **overrides)
    path = ws / f'{name}.yaml'
    path.write_text(yaml.safe_dump(params))
    return path


def wait_for_node(client, full_name, process):
    def present():
        names = {f"{ns.rstrip('/')}/{name}" for name, ns in
                 client.node.get_node_names_and_namespaces()}
        return full_name in names
    wait_until(present, START_TIMEOUT_S, f'node {full_name} in the ROS graph', process)


def frame_message(client, index):
    rng = np.random.default_rng(index)
    rgb = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    header = client.new_header()
    return make_image_msg(rgb, 'rgb8', header), header


def depth_for_frame(client, image_topic, depth_topic, process, index=0, timeout=30.0):
    """Publish one frame (again every 0.3 s: best effort) until its depth arrives on
    `depth_topic`; returns the header stamp."""
    publisher = client.camera_publisher(image_topic, Image)
    msg, header = frame_message(client, index)
    stamp = (header.stamp.sec, header.stamp.nanosec)
    last = [0.0]

    def arrived():
        if client.find(depth_topic, stamp) is not None:
            return True
        if time.monotonic() - last[0] > 0.3:
            last[0] = time.monotonic()
            publisher.publish(msg)
        return False
    wait_until(arrived, timeout, f'depth on {depth_topic} for a frame on {image_topic}', process)
    client.node.destroy_publisher(publisher)
    return stamp


# ----------------------------------------------------------------------------------------------
# ros2 launch
# ----------------------------------------------------------------------------------------------
def test_two_launches_side_by_side_with_every_argument_then_ctrl_c(ws, client):
    """Two cameras = two launches in two namespaces: each node serves only its camera; the
    launch arguments and the params_file reach the node; Ctrl-C stops a launch cleanly."""
    launches = {}
    for side in ('front', 'rear'):
        client.subscribe(f'/{side}/depth/relative', Image)
        client.subscribe(f'/{side}/depth/camera_info', CameraInfo)
        yaml_path = params_file(ws, f'{side}_params', colormap='jet')
        launches[side] = Started(ws, (
            f'ros2 launch structflow depth.launch.py namespace:={side} '
            f'camera:=/{side}_cam/image_raw camera_info:=/{side}_cam/camera_info '
            f'params_file:={yaml_path} device:=cpu backend:=eager rviz:=false'),
            f'launch_{side}')
    try:
        for side, launch in launches.items():
            wait_for_node(client, f'/{side}/depth_node', launch)
        info_publisher = client.camera_publisher('/front_cam/camera_info', CameraInfo)
        info = pinhole_camera_info(HEIGHT, WIDTH, FRAME_ID)
        for _ in range(3):
            info_publisher.publish(info)
        stamp = depth_for_frame(client, '/front_cam/image_raw', '/front/depth/relative',
                                launches['front'], index=1)
        time.sleep(1.0)  # anything that would cross over has had time to arrive
        assert client.find('/rear/depth/relative', stamp) is None, 'rear served the front camera'
        stamp = depth_for_frame(client, '/rear_cam/image_raw', '/rear/depth/relative',
                                launches['rear'], index=2)
        assert client.find('/front/depth/relative', stamp) is None, 'front served the rear camera'

        code, out = ros2(ws, f'param get {NO_DAEMON} /front/depth_node backend')
        assert code == 0 and 'String value is: eager' in out, out  # launch argument
        code, out = ros2(ws, f'param get {NO_DAEMON} /front/depth_node device')
        assert 'String value is: cpu' in out, out
        code, out = ros2(ws, f'param get {NO_DAEMON} /rear/depth_node colormap')
        assert 'String value is: jet' in out, out  # params_file

        assert launches['front'].interrupt() == 0, launches['front'].output()[-3000:]
        output = launches['front'].output()
        assert 'process has finished cleanly' in output and 'Traceback' not in output, output
        wait_until(lambda: '/front/depth_node' not in {
            f"{ns.rstrip('/')}/{n}" for n, ns in client.node.get_node_names_and_namespaces()},
            20, 'the front node to leave the graph')
        depth_for_frame(client, '/rear_cam/image_raw', '/rear/depth/relative', launches['rear'],
                        index=3)
    finally:
        for launch in launches.values():
            launch.interrupt()


@pytest.mark.parametrize('arguments, reason', [
    ('device:=cuda', "device 'cuda' asked for, but CUDA is not available"),
    ('params_file:=/no/such/structflow.yaml', '/no/such/structflow.yaml'),
    ('params_file:={bad_yaml}', 'bad.yaml'),
    ('bogus_argument:=1', "'bogus_argument'"),
])
def test_bad_launch_input_ends_the_launch_with_the_reason(ws, arguments, reason):
    bad_yaml = ws / 'bad.yaml'
    bad_yaml.write_text('/**:\n  ros__parameters: [unclosed\n')
    arguments = arguments.format(bad_yaml=bad_yaml)
    launch = Started(ws, f'ros2 launch structflow depth.launch.py {arguments} rviz:=false',
                     'bad_launch')
    launch.wait_for_failure(reason)


def test_rviz_true_without_rviz2_fails_clearly_and_does_not_hang(ws):
    if shutil.which('rviz2', path=BIN_PATH):
        pytest.skip('rviz2 is installed: starting a GUI is not what this test does')
    launch = Started(ws, 'ros2 launch structflow depth.launch.py device:=cpu backend:=eager '
                         'rviz:=true', 'launch_rviz')
    launch.wait_for_failure('rviz2 is not installed')


@pytest.mark.slow
def test_ros2_lifecycle_set_walks_the_managed_node_through_its_states(ws, client):
    """lifecycle:=true: unconfigured -> configure (model loaded, nothing subscribed) ->
    activate (depth in metres) -> deactivate (no output, model kept) -> activate -> cleanup ->
    shutdown, each by the real `ros2 lifecycle` command over DDS."""
    name, camera = '/managed/depth_node', '/managed_cam/image'
    client.subscribe('/managed/depth', Image)
    launch = Started(ws, 'ros2 launch structflow depth.launch.py lifecycle:=true '
                         f'namespace:=managed camera:={camera} device:=cpu backend:=eager '
                         'depth_mode:=scale rviz:=false', 'launch_lifecycle')

    def lifecycle(verb, *words, expect):
        code, out = ros2(ws, f"lifecycle {verb} {NO_DAEMON} {name} {' '.join(words)}",
                         timeout=120)
        assert code == 0 and expect in out, f'ros2 lifecycle {verb} {words}: {out}'

    def lifecycle_state():
        values = node_diagnostics(client, '/managed') or {}
        return values.get('lifecycle_state')

    try:
        wait_for_node(client, name, launch)
        lifecycle('get', expect='unconfigured [1]')
        assert client.node.count_subscribers(camera) == 0
        lifecycle('set', 'configure', expect='Transitioning successful')
        lifecycle('get', expect='inactive [2]')
        wait_until(lambda: lifecycle_state() == 'inactive', 10, '/diagnostics: inactive', launch)
        assert client.node.count_subscribers(camera) == 0  # the model is loaded, no input yet
        version = node_diagnostics(client, '/managed')['serving_version']

        lifecycle('set', 'activate', expect='Transitioning successful')
        depth_for_frame(client, camera, '/managed/depth', launch, index=1, timeout=60)

        lifecycle('set', 'deactivate', expect='Transitioning successful')
        lifecycle('get', expect='inactive [2]')
        wait_until(lambda: client.node.count_subscribers(camera) == 0, 10,
                   'the image subscription gone on deactivate', launch)
        publisher = client.camera_publisher(camera, Image)
        msg, header = frame_message(client, 2)
        for _ in range(5):
            publisher.publish(msg)
            time.sleep(0.2)
        assert client.find('/managed/depth', (header.stamp.sec, header.stamp.nanosec)) is None
        client.node.destroy_publisher(publisher)
        wait_until(lambda: lifecycle_state() == 'inactive', 10, '/diagnostics: inactive', launch)
        assert node_diagnostics(client, '/managed')['serving_version'] == version  # model kept

        lifecycle('set', 'activate', expect='Transitioning successful')
        depth_for_frame(client, camera, '/managed/depth', launch, index=3, timeout=60)
        lifecycle('set', 'deactivate', expect='Transitioning successful')
        lifecycle('set', 'cleanup', expect='Transitioning successful')
        lifecycle('get', expect='unconfigured [1]')
        code, out = ros2(ws, f'service call {name}/reload_weights std_srvs/srv/Trigger',
                         timeout=90)
        assert 'success=False' in out and 'not configured' in out, out  # answered all the same
        lifecycle('set', 'shutdown', expect='Transitioning successful')
        lifecycle('get', expect='finalized [4]')
        assert launch.interrupt() == 0, launch.output()[-3000:]
        assert 'Traceback' not in launch.output(), launch.output()[-3000:]
    finally:
        launch.interrupt()


# ----------------------------------------------------------------------------------------------
# ros2 run and the CLI verbs
# ----------------------------------------------------------------------------------------------
def test_ros2_run_and_param_service_topic_verbs(ws, client):
    client.subscribe('/runner/depth/relative', Image)
    share_yaml = ws / 'install' / 'structflow' / 'share' / 'structflow' / 'config' / \
        'structflow.yaml'
    node = Started(ws, f'ros2 run structflow depth_node --ros-args --params-file {share_yaml} '
                       '-r __ns:=/runner -r image:=/runner_cam/image -p device:=cpu '
                       '-p backend:=eager -p threads:=1 -p diagnostics_period:=0.2', 'run')
    stop_camera = threading.Event()
    try:
        wait_for_node(client, '/runner/depth_node', node)
        code, out = ros2(ws, f'node list {NO_DAEMON}')
        assert '/runner/depth_node' in out, out

        code, out = ros2(ws, f'param describe {NO_DAEMON} /runner/depth_node backend')
        assert 'How the network runs' in out and 'Read only: true' in out, out
        code, out = ros2(ws, f'param set {NO_DAEMON} /runner/depth_node depth_mode bogus')
        assert "depth_mode 'bogus' is not one of relative, scale, camera_height" in out, out
        code, out = ros2(ws, f'param get {NO_DAEMON} /runner/depth_node depth_mode')
        assert 'String value is: relative' in out, out
        code, out = ros2(ws, f'param set {NO_DAEMON} /runner/depth_node colormap_max 9.0')
        assert 'Set parameter successful' in out, out

        code, out = ros2(ws, 'service call /runner/depth_node/reload_weights '
                             'std_srvs/srv/Trigger', timeout=90)
        assert code == 0 and 'success=True' in out and 'version 2' in out, out

        depth_for_frame(client, '/runner_cam/image', '/runner/depth/relative', node)

        def camera():  # 10 Hz while `ros2 topic hz` listens
            publisher = client.camera_publisher('/runner_cam/image', Image)
            index = 100
            while not stop_camera.wait(0.1):
                publisher.publish(frame_message(client, index)[0])
                index += 1
        threading.Thread(target=camera, daemon=True).start()
        hz = Started(ws, 'ros2 topic hz /runner/depth/relative --window 20', 'topic_hz')
        deadline = time.monotonic() + 40
        while 'average rate' not in hz.output() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)
        hz.interrupt()
        rates = [float(r) for r in re.findall(r'average rate: ([0-9.]+)', hz.output())]
        assert rates and 5.0 < rates[-1] < 15.0, hz.output()[-2000:]

        code, out = ros2(ws, f'topic echo --once {NO_DAEMON} /diagnostics', timeout=30)
        assert code == 0 and 'runner/depth_node' in out and 'backend' in out, out[-2000:]
        stop_camera.set()
        assert node.interrupt() == 0, node.output()[-3000:]
        assert 'Traceback' not in node.output()
    finally:
        stop_camera.set()
        node.interrupt()


def test_readme_robot_section_as_written(ws, client):
    """The `ros2` lines of the README's robot section, run as written in the workspace."""
    readme = (REPO_ROOT / 'README.md').read_text()
    section = readme.split('## On a robot', 1)[1].split('```', 2)[1]
    commands = [line.strip() for line in section.splitlines() if line.startswith('ros2 ')]
    assert len(commands) == 2 and commands[0].startswith('ros2 launch') \
        and commands[1].startswith('ros2 run'), commands
    launch = Started(ws, commands[0], 'readme_launch')
    try:
        if shutil.which('rviz2', path=BIN_PATH):
            wait_for_node(client, '/depth_node', launch)
        else:  # rviz:=true without rviz2: a clear failure, not a hang
            launch.wait_for_failure('rviz2 is not installed')
    finally:
        launch.interrupt()
    client.subscribe('/depth/relative', Image)
    run = Started(ws, commands[1] + ' -p device:=cpu -p backend:=eager', 'readme_run')
    try:
        wait_for_node(client, '/depth_node', run)
        depth_for_frame(client, '/camera/image_raw', '/depth/relative', run)
        assert run.interrupt() == 0, run.output()[-3000:]
    finally:
        run.interrupt()
