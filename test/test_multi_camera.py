"""Several cameras in one node process (issue 30): `cameras: [front, rear]` serves each camera's
topics under its sub-namespace with one model, keeps each camera's outputs and counters apart,
and adapts per camera (its own state directory). One node process over real DDS; frames come
from the synthetic driving world.
"""
import time
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.ros.image_publisher import make_image_msg

from dds_helpers import FRAME_ID, wait_until
from test_adaptation_node import call, tiny_flow_checkpoint
from test_depth_node import START_TIMEOUT_S, NodeProcess, write_params, dds  # noqa: F401

pytestmark = pytest.mark.ros

NAMESPACE, CAMERAS = '/multi', ('front', 'rear')


def camera_statuses(client):
    """{status name: {key: value}} of the newest /diagnostics array of our node."""
    for array in reversed(client.messages('/diagnostics')):
        names = [status.name for status in array.status]
        if any(name.startswith(f'{NAMESPACE}/depth_node: ') for name in names):
            return {status.name: {kv.key: kv.value for kv in status.values}
                    for status in array.status}
    return {}


def test_two_cameras_one_process_outputs_apart_adaptation_per_camera(dds):  # noqa: F811
    client = dds.client
    client.subscribe('/diagnostics', DiagnosticArray)
    for camera in CAMERAS:
        client.subscribe(f'{NAMESPACE}/{camera}/depth/relative', Image)
    state_root = dds.tmp / 'multi_state'
    params_file = write_params(
        dds.tmp / 'multi.yaml', weights=str(tiny_flow_checkpoint(dds.tmp / 'multi_flow.pt')),
        threads=1, diagnostics_period=0.2, backend='eager', cameras=list(CAMERAS), adapt=True,
        adapt_state_dir=str(state_root / '{node}'), adapt_steps_per_candidate=2)
    process = NodeProcess(['--ros-args', '--params-file', params_file, '-r',
                           f'__ns:={NAMESPACE}'], dds.env, dds.tmp / 'multi.log')
    try:
        topics = {camera: f'{NAMESPACE}/{camera}/image' for camera in CAMERAS}
        wait_until(lambda: all(client.node.count_subscribers(t) >= 1 for t in topics.values()),
                   START_TIMEOUT_S, 'the node to subscribe both cameras', process)
        publishers = {camera: client.camera_publisher(topic, Image)
                      for camera, topic in topics.items()}
        frames = [f.rgb for f in render_sequence('day', 12, 64, 96, seed=5)]
        sent = {'index': 0}

        def send(cameras):
            """One frame stamp to each of `cameras` (again every 0.3 s until answered)."""
            index = sent['index']
            sent['index'] += 1
            header = Header(frame_id=FRAME_ID)
            header.stamp.sec, header.stamp.nanosec = 200 + index // 10, (index % 10) * 10 ** 8
            stamp = (header.stamp.sec, header.stamp.nanosec)
            last = [-1.0]

            def answered():
                if all(client.find(f'{NAMESPACE}/{c}/depth/relative', stamp) is not None
                       for c in cameras):
                    return True
                if time.monotonic() - last[0] > 0.3:
                    last[0] = time.monotonic()
                    for camera in cameras:
                        publishers[camera].publish(make_image_msg(
                            frames[index % len(frames)], 'rgb8', header))
                return False
            wait_until(answered, 60, f'depth for {cameras} at {stamp}', process)
            return stamp

        stamp = send(['front'])
        time.sleep(0.5)
        assert client.find(f'{NAMESPACE}/rear/depth/relative', stamp) is None  # apart
        stamp = send(['rear'])
        time.sleep(0.5)
        assert client.find(f'{NAMESPACE}/front/depth/relative', stamp) is None
        for _ in range(3):
            send(['front', 'rear'])  # together: one batch

        def both_reported():
            statuses = camera_statuses(client)
            return all(int(statuses.get(f'{NAMESPACE}/depth_node: {c} depth', {}).get(
                'frames_out', 0)) >= 4 for c in CAMERAS)
        wait_until(both_reported, 20, 'per-camera /diagnostics with 4 frames each', process)
        statuses = camera_statuses(client)
        assert {f'{NAMESPACE}/depth_node: {c} {task}' for c in CAMERAS for task in (
            'depth', 'input rate', 'output rate', 'latency')} == set(statuses)
        dirs = set()
        for camera in CAMERAS:
            values = statuses[f'{NAMESPACE}/depth_node: {camera} depth']
            assert values['cameras_in_process'] == '2'
            assert values['image_topic'] == f'{NAMESPACE}/{camera}/image'
            assert values['adaptation_enabled'] == 'True'
            dirs.add(values['adaptation_state_dir'])
        assert dirs == {str(state_root / 'multi' / 'depth_node' / c) for c in CAMERAS}
        assert all(Path(d).is_dir() for d in dirs)

        response = call(client, Trigger, f'{NAMESPACE}/depth_node/adaptation/save',
                        Trigger.Request(), process)
        assert response.success, response.message
        assert response.message.startswith('front: saved version ')
        assert '; rear: saved version ' in response.message
        for directory in dirs:
            assert (Path(directory) / 'adapted.pt').is_file(), directory
    finally:
        code = process.stop()
    assert code == 0, process.output()[-3000:]
    assert 'Traceback' not in process.output()
