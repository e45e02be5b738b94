"""Header stamps a camera can send, and simulated time (issue 28): stamps 0, going backwards,
far in the future, identical, negative, and use_sim_time with and without /clock.

The node is its own process over real DDS (adaptation on, so the pair buffer sees every stamp),
with camera_info published beside the frames (so its time-based pairing sees them too). Every
frame gets depth stamped exactly as its input, no frame fails, and /diagnostics keep coming
even when simulated time never starts (no /clock).
"""
import time

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.ros.image_publisher import make_image_msg, pinhole_camera_info

from dds_helpers import FRAME_ID, node_diagnostics, wait_until
from test_adaptation_node import start, tiny_flow_checkpoint
from test_depth_node import dds  # noqa: F401

pytestmark = pytest.mark.ros

# (sec, nanosec): zero, a normal start, backwards, far future (2038), identical to the one
# before, negative (int32 allows it; rclpy's Time refuses it), then normal again.
STAMPS = [(0, 0), (100, 0), (100, 100_000_000), (50, 0), (2**31 - 1, 999_999_999),
          (2**31 - 1, 999_999_999), (-5, 0), (101, 0), (101, 100_000_000)]


def stamp_msg(sec, nanosec):
    return Time(sec=sec, nanosec=nanosec)


@pytest.mark.parametrize('sim_time', ['no_clock', 'clock'])
def test_every_stamp_gets_its_depth_and_sim_time_without_clock_keeps_diagnostics(
        dds, sim_time):  # noqa: F811 - dds is the fixture
    namespace = f'/stamps_{sim_time}'
    image_topic, info_topic = f'{namespace}/image', f'{namespace}/camera_info'
    client = dds.client
    client.subscribe(f'{namespace}/depth/relative', Image)
    client.subscribe('/diagnostics', DiagnosticArray)
    process = start(dds, f'stamps_{sim_time}', namespace, image_topic,
                    weights=tiny_flow_checkpoint(dds.tmp / 'stamps_flow.pt'), adapt=True,
                    adapt_state_dir=str(dds.tmp / f'stamps_state_{sim_time}'),
                    adapt_threads=1, use_sim_time=True)
    try:
        images = client.camera_publisher(image_topic, Image)
        infos = client.camera_publisher(info_topic, CameraInfo)
        clock_pub = client.node.create_publisher(Clock, '/clock', 10)
        frames = [f.rgb for f in render_sequence('day', len(STAMPS), 64, 96, seed=4)]
        # With use_sim_time and no /clock, ROS time stays 0: the diagnostics timer must not
        # depend on it.
        wait_until(lambda: node_diagnostics(client, namespace) is not None, 30,
                   f'/diagnostics from {namespace} with use_sim_time and no /clock', process)
        for index, (sec, nanosec) in enumerate(STAMPS):
            if sim_time == 'clock':
                clock_pub.publish(Clock(clock=stamp_msg(1000 + index, 0)))
            header = Header(frame_id=FRAME_ID, stamp=stamp_msg(sec, nanosec))
            info = pinhole_camera_info(64, 96, FRAME_ID)
            info.header = header
            msg = make_image_msg(frames[index], 'rgb8', header)
            before = client.total(f'{namespace}/depth/relative')
            last = {'sent': -1.0}

            def arrived():
                hit = client.find(f'{namespace}/depth/relative', (sec, nanosec))
                if hit is not None and client.total(f'{namespace}/depth/relative') > before:
                    return True
                if time.monotonic() - last['sent'] > 0.3:
                    last['sent'] = time.monotonic()
                    infos.publish(info)
                    images.publish(msg)
                return False
            wait_until(arrived, 30, f'depth stamped {sec}.{nanosec:09d}', process)
            depth = client.find(f'{namespace}/depth/relative', (sec, nanosec))
            values = np.frombuffer(depth.data, np.float32)
            assert np.isfinite(values).all() and (values > 0).all()
        values = node_diagnostics(client, namespace)
        assert values['processing_errors'] == '0', values.get('last_error')
        assert values['dropped_bad_input'] == '0', values.get('last_bad_input')
        assert process.poll() is None
    finally:
        code = process.stop()
    assert code == 0, process.output()[-3000:]
