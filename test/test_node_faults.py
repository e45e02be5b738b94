"""Process faults with adaptation on, over real DDS (issue 28): SIGKILL and SIGTERM during a
save and during a reload, and several adapting nodes on one machine.

Each node is its own process (`python -m structflow_ros.ros.depth_node`, as `ros2 run` starts
it) with HOME pointed at a temporary directory, so the default
`adapt_state_dir: ~/.ros/structflow/adaptation/{node}` is exercised as shipped.
"""
import os
import signal
import time
from types import SimpleNamespace

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from structflow_ros.core.checkpoint import read_checkpoint
from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.ros.image_publisher import make_image_msg

from dds_helpers import node_diagnostics, wait_until
from test_adaptation_node import call, tiny_flow_checkpoint
from test_depth_node import START_TIMEOUT_S, NodeProcess, dds, write_params  # noqa: F401

pytestmark = [pytest.mark.ros, pytest.mark.slow]
FRAMES = None


def frames():
    global FRAMES
    if FRAMES is None:
        FRAMES = [f.rgb for f in render_sequence('day', 20, 64, 96, seed=8)]
    return FRAMES


class Camera:
    """A node process for namespace `name` and the frames that feed it (10 Hz stamps)."""

    def __init__(self, dds, home, name, **params):  # noqa: F811 - dds is the fixture
        self.dds, self.name, self.namespace = dds, name, f'/{name}'
        self.topic = f'{self.namespace}/image'
        self.params = dict(weights=str(dds.flow_weights), threads=1, diagnostics_period=0.2,
                           backend='eager', adapt=True, adapt_threads=1,
                           adapt_steps_per_candidate=2, **params)
        self.env = dict(dds.env, HOME=str(home))
        self.publisher = dds.client.camera_publisher(self.topic, Image)
        self.index = 0
        self.process = None

    def start(self, tag=''):
        client = self.dds.client
        with client._lock:  # a killed predecessor's /diagnostics must not answer for this one
            kept = [array for array in client.received['/diagnostics'] if not any(
                status.name.startswith(f'{self.namespace}/') for status in array.status)]
            client.received['/diagnostics'].clear()
            client.received['/diagnostics'].extend(kept)
        params_file = write_params(self.dds.tmp / f'{self.name}{tag}.yaml', **self.params)
        self.process = NodeProcess(['--ros-args', '--params-file', params_file,
                                    '-r', f'__ns:={self.namespace}',
                                    '-r', f'image:={self.topic}'],
                                   self.env, self.dds.tmp / f'{self.name}{tag}.log')
        wait_until(lambda: self.dds.client.node.count_subscribers(self.topic) >= 1,
                   START_TIMEOUT_S, f'{self.name} to subscribe {self.topic}', self.process)
        return self

    def publish(self, count=1):
        for _ in range(count):
            header = Header(frame_id=f'{self.name}_optical')
            header.stamp.sec, header.stamp.nanosec = 100 + self.index // 10, (
                self.index % 10) * 10 ** 8
            self.publisher.publish(make_image_msg(frames()[self.index % 20], 'rgb8', header))
            self.index += 1
            time.sleep(0.1)

    def diagnostics(self):
        return node_diagnostics(self.dds.client, self.namespace) or {}

    def wait_serving(self):
        def serving():
            self.publish(2)
            return int(self.diagnostics().get('frames_out', 0)) > 0
        wait_until(serving, 60, f'{self.name} to publish depth', self.process)

    def call(self, service):
        return call(self.dds.client, Trigger, f'{self.namespace}/depth_node/{service}',
                    Trigger.Request(), self.process)

    def call_async(self, service):
        client = self.dds.client.node.create_client(
            Trigger, f'{self.namespace}/depth_node/{service}')
        wait_until(client.service_is_ready, 20, f'service {service}', self.process)
        return client.call_async(Trigger.Request())


@pytest.fixture(scope='module')
def faults(dds):  # noqa: F811
    dds.client.subscribe('/diagnostics', DiagnosticArray)
    dds.flow_weights = tiny_flow_checkpoint(dds.tmp / 'faults_flow.pt')
    return SimpleNamespace(dds=dds, home=dds.tmp / 'home')


def state_of(home, name):
    return home / '.ros' / 'structflow' / 'adaptation' / name / 'depth_node' / 'adapted.pt'


def test_kills_during_save_and_reload_leave_a_readable_state_and_a_clean_restart(faults):
    """SIGKILL and SIGTERM, each during a save and during a reload: every time the state file
    is complete (or absent), the restarted node takes its directory back (no stale lock, no
    temp file), resumes the state, and SIGTERM exits 0 after answering or abandoning the call."""
    rng = np.random.default_rng(0)
    camera = Camera(faults.dds, faults.home, 'killed')
    path = state_of(faults.home, 'killed')
    try:
        camera.start('_0')
        camera.wait_serving()
        reply = camera.call('adaptation/save')
        assert reply.success and str(path) in reply.message, reply.message
        saved_version = read_checkpoint(path)['version']
        for round_index, (service, signum) in enumerate([
                ('adaptation/save', signal.SIGKILL), ('adaptation/save', signal.SIGTERM),
                ('reload_weights', signal.SIGKILL), ('reload_weights', signal.SIGTERM)]):
            future = camera.call_async(service)
            time.sleep(rng.uniform(0.0, 0.05))
            camera.process.popen.send_signal(signum)
            code = camera.process.popen.wait(30)
            assert code == (0 if signum == signal.SIGTERM else -signal.SIGKILL), (
                service, signum, code, camera.process.output()[-2000:])
            del future
            payload = read_checkpoint(path)  # complete, whatever the instant
            assert payload['extra']['camera']['frame_id'] == 'killed_optical'
            assert not [p for p in path.parent.iterdir() if p.name.endswith('.tmp')] or (
                signum == signal.SIGKILL)  # a SIGKILLed save may leave its temp: cleaned below
            camera.start(f'_{round_index + 1}')
            camera.wait_serving()
            values = camera.diagnostics()
            assert values.get('adaptation_refused', '') == '', values['adaptation_refused']

            def resumed():
                camera.publish(1)
                return 'resumed adapted version' in camera.diagnostics().get(
                    'adaptation_resumed', '')
            wait_until(resumed, 30, 'the state to be resumed', camera.process)
            assert not [p for p in path.parent.iterdir() if p.name.endswith('.tmp')]
            saved_version = payload['version']
        assert camera.process.stop() == 0
        assert saved_version >= 1
    finally:
        # A failed assert must not leave a node behind: it would answer a later run's calls
        # on the same names (seen: a stray /killed node from a failed run answered a save).
        if camera.process is not None and camera.process.poll() is None:
            camera.process.popen.kill()
            camera.process.popen.wait(30)


def test_two_cameras_adapt_side_by_side_and_a_third_on_the_same_directory_is_refused(faults):
    """Issue 28 defect 2: /front and /rear with the shipped default adapt_state_dir used one
    file; /rear resumed and then deleted /front's state. Now each has its own directory, and a
    node pointed at another's directory serves without adapting and says who holds it."""
    front = Camera(faults.dds, faults.home, 'front')
    rear = Camera(faults.dds, faults.home, 'rear')
    front.start()
    rear.start()
    intruder = None
    try:
        for camera in (front, rear):
            camera.wait_serving()
            reply = camera.call('adaptation/save')
            assert reply.success and str(state_of(faults.home, camera.name)) in reply.message
        assert read_checkpoint(state_of(faults.home, 'front'))['extra']['camera'][
            'frame_id'] == 'front_optical'
        assert read_checkpoint(state_of(faults.home, 'rear'))['extra']['camera'][
            'frame_id'] == 'rear_optical'
        assert rear.call('adaptation/reset').success
        assert state_of(faults.home, 'front').is_file()  # the rear's reset left it alone
        intruder = Camera(faults.dds, faults.home, 'intruder',
                          adapt_state_dir=str(state_of(faults.home, 'front').parent)).start()
        intruder.wait_serving()
        values = intruder.diagnostics()
        assert f'pid {front.process.popen.pid}' in values['adaptation_refused']
        assert values['adaptation_enabled'] == 'False'
        reply = intruder.call('adaptation/save')
        assert not reply.success and 'in use by another process' in reply.message
        assert front.process.poll() is None and rear.process.poll() is None
    finally:
        codes = {camera.name: (camera.process.stop(), camera.process.output()[-2000:])
                 for camera in (intruder, rear, front)
                 if camera is not None and camera.process is not None}
    assert all(code == 0 for code, _ in codes.values()), codes
    assert os.path.isdir(state_of(faults.home, 'rear').parent)
