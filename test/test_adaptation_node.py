"""On-robot adaptation in the node, over real DDS between processes: adapt:=true trains on the
frames it receives, `~/adaptation/enable|save|reset` work, /diagnostics shows the state, and a
node without adaptation says so. The node runs as its own process (as `ros2 run` starts it)
with a tiny checkpoint that has the flow branch; frames come from the synthetic driving world
(a moving camera) at 10 Hz stamps.
"""
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import SetBool, Trigger

from structflow_ros.core.checkpoint import read_checkpoint, save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.ros.image_publisher import make_image_msg

from dds_helpers import FRAME_ID, node_diagnostics, wait_until
from test_depth_node import START_TIMEOUT_S, NodeProcess, write_params, dds  # noqa: F401

pytestmark = pytest.mark.ros

NAMESPACE, IMAGE_TOPIC = '/adapt_cam', '/adapt_cam/image'
OFF_NAMESPACE, OFF_IMAGE_TOPIC = '/plain_cam', '/plain_cam/image'


def tiny_flow_checkpoint(path):
    torch.manual_seed(3)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=True, pose_branch=False))
    save_checkpoint(path, model)
    return path


def start(dds, name, namespace, image_topic, **params):  # noqa: F811 - dds is the fixture
    params_file = write_params(dds.tmp / f'{name}.yaml', weights=str(params.pop('weights')),
                               threads=1, diagnostics_period=0.2, backend='eager', **params)
    process = NodeProcess(['--ros-args', '--params-file', params_file,
                           '-r', f'__ns:={namespace}', '-r', f'image:={image_topic}'],
                          dds.env, dds.tmp / f'{name}.log')
    wait_until(lambda: dds.client.node.count_subscribers(image_topic) >= 1,
               START_TIMEOUT_S, f'{name} to subscribe {image_topic}', process)
    return process


def call(client, service_type, name, request, process):
    service = client.node.create_client(service_type, name)
    try:
        wait_until(service.service_is_ready, 20, f'service {name}', process)
        return client.wait_future(service.call_async(request), 60, f'{name} response')
    finally:
        client.node.destroy_client(service)


@pytest.fixture(scope='module')
def adapting(dds):  # noqa: F811
    dds.client.subscribe('/diagnostics', DiagnosticArray)
    state_dir = dds.tmp / 'adaptation_state'
    process = start(dds, 'adapting', NAMESPACE, IMAGE_TOPIC,
                    weights=tiny_flow_checkpoint(dds.tmp / 'tiny_flow.pt'), adapt=True,
                    adapt_state_dir=str(state_dir), adapt_steps_per_candidate=2,
                    adapt_duty_cycle=1.0, adapt_threads=1)
    frames = [f.rgb for f in render_sequence('day', 40, 64, 96, seed=21)]
    publisher = dds.client.camera_publisher(IMAGE_TOPIC, Image)
    clock = {'index': 0}

    def publish_frames(count):
        """The drive at 10 Hz stamps (a moving camera: every pair has flow)."""
        for _ in range(count):
            index = clock['index']
            clock['index'] += 1
            header = Header(frame_id=FRAME_ID)
            header.stamp.sec, header.stamp.nanosec = 100 + index // 10, (index % 10) * 10 ** 8
            publisher.publish(make_image_msg(frames[index % len(frames)], 'rgb8', header))
            time.sleep(0.1)
    try:
        yield SimpleNamespace(process=process, client=dds.client, publish=publish_frames,
                              state_dir=state_dir)
    finally:
        code = process.stop()
        assert code == 0, f'adapting node exited with {code}:\n{process.output()[-3000:]}'


def diagnostics(node):
    return node_diagnostics(node.client, NAMESPACE) or {}


def test_adaptation_trains_on_live_frames_and_reports_it(adapting):
    def trained():
        adapting.publish(5)
        values = diagnostics(adapting)
        return int(values.get('adaptation_steps', 0)) >= 2
    wait_until(trained, 120, 'adaptation_steps >= 2 in /diagnostics', adapting.process)
    values = diagnostics(adapting)
    assert values['adaptation_enabled'] == 'True'
    assert int(values['adaptation_pairs_buffered']) > 0
    assert values['adaptation_gate_criterion'] == 'rigid_fit'
    assert 'adaptation on (state in' in adapting.process.output()


def test_enable_save_and_reset_services_over_dds(adapting):
    base = f'{NAMESPACE}/depth_node/adaptation'
    client = adapting.client
    response = call(client, SetBool, f'{base}/enable', SetBool.Request(data=False),
                    adapting.process)
    assert response.success and response.message == 'adaptation paused'
    wait_until(lambda: diagnostics(adapting).get('adaptation_enabled') == 'False', 10,
               'adaptation_enabled False in /diagnostics', adapting.process)
    steps = int(diagnostics(adapting)['adaptation_steps'])
    adapting.publish(10)
    assert int(diagnostics(adapting)['adaptation_steps']) <= steps + 1  # at most the one running

    response = call(client, Trigger, f'{base}/save', Trigger.Request(), adapting.process)
    assert response.success, response.message
    state_file = adapting.state_dir / 'adapted.pt'
    saved = read_checkpoint(state_file)
    version = int(diagnostics(adapting)['adaptation_published_version'])
    assert saved['version'] == version and f'saved version {version}' in response.message

    response = call(client, Trigger, f'{base}/reset', Trigger.Request(), adapting.process)
    assert response.success, response.message
    assert 'reset to the base weights' in response.message and not state_file.exists()
    wait_until(lambda: int(diagnostics(adapting).get('serving_version', 0)) > version, 10,
               'the reset version to serve', adapting.process)

    response = call(client, SetBool, f'{base}/enable', SetBool.Request(data=True),
                    adapting.process)
    assert response.success and response.message == 'adaptation resumed'
    before = int(diagnostics(adapting)['adaptation_steps'])

    def trains_again():
        adapting.publish(5)
        return int(diagnostics(adapting).get('adaptation_steps', 0)) > before
    wait_until(trains_again, 60, 'adaptation to train again after enable', adapting.process)


def test_a_node_without_adaptation_says_so(dds):  # noqa: F811
    from test_depth_node import make_tiny_checkpoint
    process = start(dds, 'plain', OFF_NAMESPACE, OFF_IMAGE_TOPIC,
                    weights=make_tiny_checkpoint(dds.tmp / 'tiny_plain.pt', seed=0))
    try:
        for service_type, name, request in (
                (SetBool, 'enable', SetBool.Request(data=True)),
                (Trigger, 'save', Trigger.Request()), (Trigger, 'reset', Trigger.Request())):
            response = call(dds.client, service_type,
                            f'{OFF_NAMESPACE}/depth_node/adaptation/{name}', request, process)
            assert not response.success
            assert response.message == 'adaptation is off (start the node with adapt:=true)'
        assert 'adaptation off (adapt:=true to enable)' in process.output()
    finally:
        assert process.stop() == 0


def test_adapt_with_weights_lacking_the_flow_branch_fails_in_one_line(dds):  # noqa: F811
    from test_depth_node import make_tiny_checkpoint
    weights = make_tiny_checkpoint(dds.tmp / 'tiny_noflow.pt', seed=0)
    params_file = write_params(dds.tmp / 'noflow.yaml', weights=str(weights), adapt=True,
                               adapt_state_dir=str(dds.tmp / 'noflow_state'))
    process = NodeProcess(['--ros-args', '--params-file', params_file], dds.env,
                          dds.tmp / 'noflow.log')
    deadline = time.monotonic() + START_TIMEOUT_S
    while process.popen.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    code = process.stop()
    assert code == 1
    assert 'adapt:=true needs weights with the flow branch' in process.output()
    assert 'Traceback' not in process.output()
    assert np.isfinite(code)
