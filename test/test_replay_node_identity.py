"""`structflow replay` writes what the node publishes, frame for frame (issue 27).

One bag (a synthetic drive with a distorted camera_info) goes two ways:
- through the node: its own process (`python -m structflow_ros.ros.depth_node`), frames and
  camera_info published over real DDS from this test, depth, depth/camera_info and
  depth/points received back;
- through `structflow replay` (the CLI, its output bag read back).
Both run the same online/ per-frame path (build_stack, FramePipeline: units, camera, points), on
one thread each with the eager backend, so the outputs must be identical: the depth to the bit,
the camera_info field for field, the points to the bit (NaN where the other has NaN).
"""
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from structflow_ros.data import bag_io
from structflow_ros.data.bag_io import BagWriter
from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.online.camera import CameraModel
from structflow_ros.ros import conversions
from structflow_ros.ros.image_publisher import make_image_msg

from dds_helpers import wait_until
from test_adaptation_node import start
from test_depth_node import dds, make_tiny_checkpoint  # noqa: F401

pytestmark = pytest.mark.ros
REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE, INFO = '/identity/image_raw', '/identity/camera_info'
HEIGHT, WIDTH, FRAMES, DECIMATION = 64, 96, 5, 2
DEPTH_SCALE = 2.5  # metres per model unit, in the replay and the node alike
D = [-0.12, 0.03, 0.001, -0.0015, 0.0]


def camera_k(frame):
    return np.asarray(frame.K, dtype=np.float64)


def test_replay_writes_exactly_what_the_node_publishes(dds, tmp_path):  # noqa: F811
    frames = list(render_sequence('day', FRAMES, HEIGHT, WIDTH, seed=77))
    bag = tmp_path / 'drive'
    with BagWriter(bag, storage='mcap') as writer:
        for frame in frames:
            writer.write_camera_info(INFO, frame.stamp_ns, camera_k(frame), WIDTH, HEIGHT,
                                     frame_id='cam_front', D=D)
            writer.write_image(IMAGE, frame.stamp_ns, frame.rgb, frame_id='cam_front')
    weights = make_tiny_checkpoint(tmp_path / 'tiny.pt', seed=11)

    # The replay: the CLI as a user runs it, its output bag read back.
    out = tmp_path / 'replay'
    done = subprocess.run(
        [sys.executable, '-m', 'structflow_ros.cli.main', 'replay', str(bag), '--weights',
         str(weights), '--backend', 'eager', '--threads', '1', '--device', 'cpu',
         '--points-decimation', str(DECIMATION), '--depth-mode', 'scale', '--depth-scale',
         str(DEPTH_SCALE), '--out', str(out), '--no-video', '--no-progress'],
        env=dds.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    replayed = {}
    for _, topic, msg in bag_io.read_messages(out / 'bag'):
        if topic.startswith('/structflow/depth'):
            replayed.setdefault(bag_io.header_stamp_ns(msg), {})[topic] = msg
    assert len(replayed) == FRAMES

    # The node: same weights, backend, threads, units and points_decimation (metres: the
    # points come with metric depth only).
    namespace = '/identity'
    client = dds.client
    for topic, kind in (('depth', Image), ('depth/camera_info', CameraInfo),
                        ('depth/points', PointCloud2)):
        client.subscribe(f'{namespace}/{topic}', kind)
    process = start(dds, 'identity_node', namespace, IMAGE, weights=weights,
                    points_decimation=DECIMATION, depth_mode='scale', depth_scale=DEPTH_SCALE)
    try:
        info_pub = client.camera_publisher(INFO, CameraInfo)
        image_pub = client.camera_publisher(IMAGE, Image)
        for frame in frames:
            stamp = divmod(frame.stamp_ns, 10 ** 9)
            header = Header(frame_id='cam_front')
            header.stamp.sec, header.stamp.nanosec = stamp
            image = make_image_msg(frame.rgb, 'rgb8', header)
            info = conversions.camera_info_msg(_camera(frame), header)
            last = {'sent': -1.0}

            def arrived():
                if all(client.find(f'{namespace}/{t}', stamp) is not None
                       for t in ('depth', 'depth/camera_info', 'depth/points')):
                    return True
                if time.monotonic() - last['sent'] > 0.3:
                    last['sent'] = time.monotonic()
                    info_pub.publish(info)
                    time.sleep(0.05)  # the info before its image, as a driver sends them
                    image_pub.publish(image)
                return False
            wait_until(arrived, 60, f'the node outputs for stamp {stamp}', process)

            ours = replayed[frame.stamp_ns]
            node_depth = conversions.image_msg_to_array(client.find(f'{namespace}/depth', stamp))
            replay_depth = bag_io.decode_depth_msg(ours['/structflow/depth'])
            np.testing.assert_array_equal(node_depth, replay_depth)
            node_info = client.find(f'{namespace}/depth/camera_info', stamp)
            replay_info = ours['/structflow/depth/camera_info']
            assert (node_info.width, node_info.height) == (replay_info.width, replay_info.height)
            assert node_info.distortion_model == replay_info.distortion_model
            for field in ('k', 'd', 'r', 'p'):
                np.testing.assert_array_equal(np.asarray(getattr(node_info, field)),
                                              np.asarray(getattr(replay_info, field)), field)
            node_cloud = conversions.pointcloud_to_array(
                client.find(f'{namespace}/depth/points', stamp))
            replay_msg = ours['/structflow/depth/points']
            replay_cloud = conversions.pointcloud_to_array(replay_msg)
            assert node_cloud.shape == replay_cloud.shape
            for name in ('x', 'y', 'z', 'rgb'):
                np.testing.assert_array_equal(node_cloud[name], replay_cloud[name], name)
            assert bool(replay_msg.is_dense) == bool(
                client.find(f'{namespace}/depth/points', stamp).is_dense)
    finally:
        assert process.stop() == 0, process.output()[-3000:]


def _camera(frame):
    """The bag's camera_info (BagWriter.write_camera_info: R = I, P = [K | 0]) as a model."""
    k = camera_k(frame)
    p = np.zeros((3, 4))
    p[:, :3] = k
    return CameraModel(width=WIDTH, height=HEIGHT, k=tuple(k.reshape(-1)), d=tuple(D),
                       distortion_model='plumb_bob', p=tuple(p.reshape(-1)))
