"""Outputs are bounded and their memory comes back (issue 28, defect 3).

`ros2 param set /depth_node output_width 8192` and `output_height 8192` used to take the node
from 475 MB to 5.55 GB, and after setting both back to 0 it stayed at 1.79 GB. Now:
- an output larger than max_output_pixels is refused when set, and an output that follows a
  larger input is scaled down to fit;
- after the largest allowed output is undone, RSS returns to its baseline. Most of what stayed
  was Fast DDS's history buffers (rmw_fastrtps preallocates and only grows them); the node's
  profile config/fastdds.xml releases them.
The node runs in a child process (a clean RSS) with subscribers to depth, depth/colored and
depth/points in that process, over real Fast DDS; frames go straight to its per-frame path.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros
REPO_ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, sys, time
import numpy as np
from structflow_ros.ros.dds_profile import use_node_profile
note = use_node_profile() if sys.argv[2] == 'profile' else 'no profile'
import rclpy, torch
from rclpy.context import Context
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header
from structflow_ros.core.checkpoint import save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.ros.depth_node import DepthNode
from structflow_ros.ros.image_publisher import make_image_msg, pinhole_camera_info

def rss_mb():
    with open('/proc/self/status') as handle:
        return next(int(l.split()[1]) / 1024 for l in handle if l.startswith('VmRSS'))

torch.manual_seed(0)
weights = sys.argv[1]
save_checkpoint(weights, build_model(ModelConfig(height=64, width=96, flow_branch=False,
                                                 pose_branch=False)), half=True)
context = Context()
rclpy.init(context=context)
node = DepthNode(context=context, parameter_overrides=[
    Parameter('weights', value=weights), Parameter('backend', value='eager'),
    Parameter('threads', value=1), Parameter('depth_mode', value='scale')])  # points: metres
sink = rclpy.create_node('sink', context=context)
received = {}
for topic, kind in (('depth', Image), ('depth/colored', Image), ('depth/points', PointCloud2)):
    sink.create_subscription(kind, '/' + topic, lambda m, t=topic: received.update(
        {t: (m.width, m.height)}), 1)
deadline = time.monotonic() + 20
while node.outputs.publishers['depth/points'].get_subscription_count() < 1 and time.monotonic() < deadline:
    time.sleep(0.05)
node._camera_info._remember(pinhole_camera_info(480, 640, 'cam'))
rgb = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
published = []
real_publish = node.outputs.publishers['depth'].publish
node.outputs.publishers['depth'].publish = lambda msg: (
    published.append((msg.width, msg.height)), real_publish(msg))

def frames(count):
    for index in range(count):
        header = Header(frame_id='cam')
        header.stamp.sec = index + 1
        node._process(make_image_msg(rgb, 'rgb8', header), time.monotonic())

def set_size(width, height):
    return [r.successful for r in node.set_parameters([
        Parameter('output_width', value=width), Parameter('output_height', value=height)])]

frames(10)
out = {'note': note, 'baseline_mb': rss_mb()}
refused = node.set_parameters_atomically([Parameter('output_width', value=8192),
                                          Parameter('output_height', value=8192)])
out['refused_8192'] = (not refused.successful, refused.reason)
assert set_size(4096, 4096) == [True, True]
frames(3)
out['largest_mb'] = rss_mb()
out['largest_size'] = published[-1]
assert set_size(0, 0) == [True, True]
frames(20)
out['undone_mb'] = rss_mb()
# A width that follows the parameter and a height that follows a 480-row input: 8192x6144 =
# 50M pixels, scaled down, aspect kept, to max_output_pixels.
node.set_parameters([Parameter('max_output_pixels', value=2_000_000)])
set_size(8192, 0)
frames(1)
out['clamped_size'] = published[-1]
out['points'] = node.outputs.publishers['depth/points'].get_subscription_count()
node.destroy_node()
rclpy.try_shutdown(context=context)
print('RESULT ' + json.dumps(out))
'''


def run(tmp_path, ros_env, mode):
    result = subprocess.run([sys.executable, '-c', SCRIPT, str(tmp_path / f'{mode}.pt'), mode],
                            env=ros_env, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith('RESULT ')]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(lines[-1][len('RESULT '):])


def test_output_size_is_bounded_and_its_memory_returns_after_undo(tmp_path, ros_env):
    out = run(tmp_path, ros_env, 'profile')
    print(f"RSS: baseline {out['baseline_mb']:.0f} MB, 4096x4096 output "
          f"{out['largest_mb']:.0f} MB, undone {out['undone_mb']:.0f} MB ({out['note']})")
    refused, reason = out['refused_8192']
    assert refused and 'more than max_output_pixels 16777216' in reason
    assert out['largest_size'] == [4096, 4096]
    assert out['largest_mb'] > out['baseline_mb'] + 150  # the large output really was made
    assert out['undone_mb'] < out['baseline_mb'] + 64, out
    width, height = out['clamped_size']
    assert width * height <= 2_000_000 and abs(width / height - 8192 / 480) < 0.05
    assert 'config/fastdds.xml' in out['note'] or 'fastdds.xml' in out['note']


@pytest.mark.slow
def test_without_the_node_profile_fast_dds_keeps_the_largest_buffers(tmp_path, ros_env):
    """The measurement behind config/fastdds.xml: without it, memory stays up after undo."""
    for name in ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE',
                 'RMW_FASTRTPS_USE_QOS_FROM_XML'):
        ros_env.pop(name, None)
    if os.environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
        pytest.skip('measures Fast DDS')
    out = run(tmp_path, ros_env, 'none')
    print(f"RSS without the profile: baseline {out['baseline_mb']:.0f} MB, 4096x4096 output "
          f"{out['largest_mb']:.0f} MB, undone {out['undone_mb']:.0f} MB")
    assert out['undone_mb'] > out['baseline_mb'] + 150
