"""depth_node across processes over real DDS: publisher -> node process -> subscriber.

The node runs as its own process, started the way `ros2 run` does
(`python -m structflow_ros.ros.depth_node --ros-args ...`), with a tiny checkpoint made here.
This test process publishes camera frames and subscribes to the outputs from a separate rclpy
context (one test also publishes from a third process, structflow_ros.ros.image_publisher).
One node process is shared by the module's tests to keep the runtime modest; every wait is on
a condition (a matched topic, a message with the expected stamp), with a timeout and a message.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger

from structflow_ros.core.checkpoint import save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.ros import conversions
from structflow_ros.ros.image_publisher import (make_image_msg, pinhole_camera_info,
                                                synthetic_frame)

from dds_helpers import FRAME_ID, Client, LoggedProcess, node_diagnostics, wait_until

pytestmark = pytest.mark.ros

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE_TOPIC, INFO_TOPIC, NAMESPACE = '/test_cam/image', '/test_cam/camera_info', '/cam0'
COMPRESSED_TOPIC, COMPRESSED_NAMESPACE = '/test_cam1/image', '/cam1'
IN_HEIGHT, IN_WIDTH = 60, 80
OUT_HEIGHT, OUT_WIDTH, DECIMATION = 48, 64, 3  # set in the YAML below, not the defaults
START_TIMEOUT_S = 60.0  # import torch + rclpy + discovery on 2 busy cores
FRAME_TIMEOUT_S = 20.0
OUTPUTS = {'depth': Image, 'depth/relative': Image, 'depth/colored': Image,
           'depth/camera_info': CameraInfo, 'depth/points': PointCloud2}
METRIC_OUTPUTS = ['depth', 'depth/colored', 'depth/camera_info', 'depth/points']
DEPTH_SCALE = 2.0  # node_a: metres per model unit (depth_mode scale)


def make_tiny_checkpoint(path, seed):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=False, pose_branch=False))
    save_checkpoint(path, model, half=True)
    return path


class NodeProcess(LoggedProcess):
    """`python -m <module> ...` with its output in a file; stop() = SIGINT, then kill."""

    def __init__(self, args, env, log_path, module='structflow_ros.ros.depth_node'):
        super().__init__(log_path)
        self.popen = subprocess.Popen([sys.executable, '-m', module, *map(str, args)],
                                      stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def stop(self, timeout=20.0):
        """SIGINT, wait, kill if needed; returns the exit code."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGINT)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(10)
        finally:
            self._log.close()
        return self.popen.returncode


def counts(text):
    """'corrupt=1, empty=2' -> {'corrupt': 1, 'empty': 2}."""
    return {} if text in ('', 'none') else {
        key: int(value) for key, value in (item.split('=') for item in text.split(', '))}


def request(client, publisher, make_msg, topics, namespace=NAMESPACE, info_publisher=None,
            process=None, timeout=FRAME_TIMEOUT_S):
    """Publish one frame (re-sent every 0.3 s: best effort may lose the very first one) until
    every output topic has a message with its stamp; returns {topic: msg}."""
    header = client.new_header()
    msg = make_msg(header)
    stamp = (header.stamp.sec, header.stamp.nanosec)
    found = {}

    def all_arrived():
        for topic in topics:
            if topic not in found:
                hit = client.find(f'{namespace}/{topic}', stamp)
                if hit is not None:
                    found[topic] = hit
        if len(found) == len(topics):
            return True
        now = time.monotonic()
        if now - state['last'] > 0.3:
            state['last'] = now
            if info_publisher is not None:
                info = pinhole_camera_info(IN_HEIGHT, IN_WIDTH, FRAME_ID)
                info.header = header
                info_publisher.publish(info)
            publisher.publish(msg)
        return False
    state = {'last': -1.0}
    wait_until(all_arrived, timeout, f'outputs {topics} for the frame stamped {stamp} '
               f'(got {sorted(found)})', process)
    return found


# ----------------------------------------------------------------------------------------------
# Fixtures: one client and one node process for the module
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def dds(tmp_path_factory):
    """Environment for children (same domain as this process, local discovery) + a client."""
    tmp = tmp_path_factory.mktemp('depth_node')
    env = dict(os.environ)
    env['ROS_LOG_DIR'] = str(tmp / 'roslog')
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT)] + [
        p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env['PYTHONUNBUFFERED'] = '1'
    client = Client(int(env['ROS_DOMAIN_ID']))
    for namespace in (NAMESPACE, COMPRESSED_NAMESPACE):
        for topic, msg_type in OUTPUTS.items():
            client.subscribe(f'{namespace}/{topic}', msg_type)
    client.subscribe('/diagnostics', DiagnosticArray)
    try:
        yield SimpleNamespace(env=env, tmp=tmp, client=client,
                              weights=make_tiny_checkpoint(tmp / 'tiny.pt', seed=0))
    finally:
        client.close()


def write_params(path, **overrides):
    """config/structflow.yaml with `overrides`: the shipped file is what the node reads."""
    params = yaml.safe_load((REPO_ROOT / 'config' / 'structflow.yaml').read_text())
    params['/**']['ros__parameters'].update(overrides)
    path.write_text(yaml.safe_dump(params))
    return path


def start_node(dds, name, namespace, image_topic, **params):
    params_file = write_params(dds.tmp / f'{name}.yaml', weights=str(dds.weights), threads=1,
                               diagnostics_period=0.2, **params)
    process = NodeProcess(['--ros-args', '--params-file', params_file,
                           '-r', f'__ns:={namespace}', '-r', f'image:={image_topic}',
                           '-r', f'camera_info:={INFO_TOPIC}'],
                          dds.env, dds.tmp / f'{name}.log')
    node = dds.client.node
    wait_until(lambda: (node.count_subscribers(image_topic) >= 1
                        and node.count_publishers(f'{namespace}/depth') >= 1
                        and node.count_subscribers(f'{namespace}/depth/points') >= 1),
               START_TIMEOUT_S, f'node {name} to subscribe {image_topic} and publish '
               f'{namespace}/depth', process)
    return process


@pytest.fixture(scope='module')
def node_a(dds):
    # An exported runtime (OpenVINO, in requirements.txt): every test below, the hot swap of
    # ~/reload_weights included, then runs through the export path over real DDS.
    process = start_node(dds, 'node_a', NAMESPACE, IMAGE_TOPIC, output_height=OUT_HEIGHT,
                         output_width=OUT_WIDTH, points_decimation=DECIMATION,
                         max_image_pixels=1_000_000, backend='openvino', network_aspect='keep',
                         depth_mode='scale', depth_scale=DEPTH_SCALE)
    client = dds.client
    publishers = SimpleNamespace(image=client.camera_publisher(IMAGE_TOPIC, Image),
                                 info=client.camera_publisher(INFO_TOPIC, CameraInfo))
    try:
        yield SimpleNamespace(process=process, pub=publishers, client=client)
    finally:
        code = process.stop()
        assert code == 0, f'node_a exited with {code} on SIGINT:\n{process.output()[-3000:]}'


def raw_frame(encoding, index=0):
    rgb = synthetic_frame(IN_HEIGHT, IN_WIDTH, index)
    return rgb, (lambda header: make_image_msg(rgb, encoding, header))


# ----------------------------------------------------------------------------------------------
# Tests on the shared node (order matters only for the last one, which swaps weights)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'mono16'])
def test_depth_arrives_for_every_encoding_with_the_input_header(node_a, encoding):
    _, make = raw_frame(encoding)
    found = request(node_a.client, node_a.pub.image, make, ['depth'],
                    process=node_a.process)
    depth_msg = found['depth']
    assert depth_msg.header.frame_id == FRAME_ID and depth_msg.encoding == '32FC1'
    assert (depth_msg.height, depth_msg.width) == (OUT_HEIGHT, OUT_WIDTH)
    depth = conversions.image_msg_to_array(depth_msg)
    assert np.isfinite(depth).all() and (depth > 0).all()


def depth_image_proc_xyz(depth_msg, info):
    """depth_image_proc's point_cloud_xyz maths (depth_image_proc/conversions.hpp convertDepth,
    with image_geometry's PinholeCameraModel), reimplemented here since depth_image_proc has no
    Python binding and no wheel: 32FC1 is metres as it is (DepthTraits<float>::toMeters is the
    identity; 16UC1 would be millimetres); fx, fy, cx, cy come from the projection matrix P; a
    non-finite depth gives a NaN point (range_max 0, the default)."""
    assert depth_msg.encoding in ('32FC1', '16UC1')
    depth = conversions.image_msg_to_array(depth_msg).astype(np.float64)
    if depth_msg.encoding == '16UC1':
        depth = np.where(depth > 0, depth * 1e-3, np.nan)
    p = np.array(info.p).reshape(3, 4)
    fx, fy, cx, cy = p[0, 0], p[1, 1], p[0, 2], p[1, 2]
    v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]]
    valid = np.isfinite(depth)
    z = np.where(valid, depth, np.nan)
    return np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)  # (H, W, 3) metres


def test_colored_camera_info_and_points_agree_with_depth(node_a):
    rgb, make = raw_frame('bgr8', index=3)
    found = request(node_a.client, node_a.pub.image, make, METRIC_OUTPUTS,
                    info_publisher=node_a.pub.info, process=node_a.process)
    stamp = found['depth'].header.stamp
    for topic, msg in found.items():
        assert msg.header.stamp == stamp and msg.header.frame_id == FRAME_ID, topic
    depth = conversions.image_msg_to_array(found['depth'])

    colored = found['depth/colored']
    assert colored.encoding == 'bgr8' and (colored.height, colored.width) == depth.shape
    bgr = conversions.image_msg_to_array(colored)
    assert bgr.shape == (OUT_HEIGHT, OUT_WIDTH, 3) and len(np.unique(bgr.reshape(-1, 3), 0)) > 5

    info = found['depth/camera_info']
    source = pinhole_camera_info(IN_HEIGHT, IN_WIDTH, FRAME_ID)
    scale_x, scale_y = OUT_WIDTH / IN_WIDTH, OUT_HEIGHT / IN_HEIGHT
    k = np.array(info.k).reshape(3, 3)
    assert (info.width, info.height) == (OUT_WIDTH, OUT_HEIGHT)
    assert k[0, 0] == pytest.approx(source.k[0] * scale_x)
    assert k[1, 1] == pytest.approx(source.k[4] * scale_y)
    assert k[0, 2] == pytest.approx((source.k[2] + 0.5) * scale_x - 0.5)
    assert k[1, 2] == pytest.approx((source.k[5] + 0.5) * scale_y - 0.5)
    assert np.array(info.p).reshape(3, 4)[0, 0] == pytest.approx(source.p[0] * scale_x)

    points = found['depth/points']
    assert [f.name for f in points.fields] == ['x', 'y', 'z', 'rgb']
    rows, cols = np.arange(0, OUT_HEIGHT, DECIMATION), np.arange(0, OUT_WIDTH, DECIMATION)
    assert (points.height, points.width) == (len(rows), len(cols)) == (16, 22)
    cloud = conversions.pointcloud_to_array(points)
    assert np.isfinite(cloud['x']).all() and np.isfinite(cloud['z']).all()
    np.testing.assert_allclose(cloud['z'], depth[np.ix_(rows, cols)], rtol=1e-6)
    u, v = np.meshgrid(cols, rows)
    np.testing.assert_allclose(cloud['x'], cloud['z'] * (u - k[0, 2]) / k[0, 0], atol=1e-5)
    np.testing.assert_allclose(cloud['y'], cloud['z'] * (v - k[1, 2]) / k[1, 1], atol=1e-5)
    src_rows = ((rows + 0.5) * IN_HEIGHT / OUT_HEIGHT).astype(int)
    src_cols = ((cols + 0.5) * IN_WIDTH / OUT_WIDTH).astype(int)
    np.testing.assert_array_equal(conversions.unpack_rgb(cloud['rgb']),
                                  rgb[np.ix_(src_rows, src_cols)])  # bgr8 input, RGB points
    # REP-118: what depth_image_proc makes of `depth` + `depth/camera_info` is the node's own
    # cloud, in metres: depth_scale x the model's unit (depth_mode scale)
    xyz = depth_image_proc_xyz(found['depth'], info)[np.ix_(rows, cols)]
    for axis, name in enumerate('xyz'):
        np.testing.assert_allclose(cloud[name], xyz[..., axis], rtol=1e-5, atol=1e-5)


def test_parameters_from_yaml_and_remaps_take_effect(node_a):
    client = node_a.client
    node = client.node
    wait_until(lambda: ('depth_node', NAMESPACE) in node.get_node_names_and_namespaces(), 10.0,
               f'depth_node in {NAMESPACE} in the ROS graph', node_a.process)
    assert node.count_subscribers(IMAGE_TOPIC) >= 1  # image:=/test_cam/image
    assert node.count_subscribers(INFO_TOPIC) >= 1
    assert node.count_publishers(f'{NAMESPACE}/depth/colored') == 1
    assert node.count_publishers('/depth') == 0  # nothing outside the namespace
    params = AsyncParameterClient(node, f'{NAMESPACE}/depth_node')
    assert params.wait_for_services(timeout_sec=10.0), 'parameter services of the node'
    names = ['points_decimation', 'output_width', 'diagnostics_period', 'depth_mode', 'threads']
    response = client.wait_future(params.get_parameters(names), 10, 'get_parameters')
    values = dict(zip(names, map(parameter_value_to_python, response.values)))
    assert values == {'points_decimation': DECIMATION, 'output_width': OUT_WIDTH,
                      'diagnostics_period': 0.2, 'depth_mode': 'scale', 'threads': 1}
    # network_aspect:=keep: a portrait 60x120 camera runs at the network size of its own
    # aspect (128x64 for the 64x96 test model), not squashed to 64x96.
    portrait = synthetic_frame(120, 60, 0)
    request(client, node_a.pub.image, lambda header: make_image_msg(portrait, 'rgb8', header),
            ['depth'], process=node_a.process)

    def reports_portrait_size():
        diagnostics = node_diagnostics(client, NAMESPACE) or {}
        return diagnostics.get('network_input_hw') == '128x64'
    wait_until(reports_portrait_size, 10.0, '/diagnostics network_input_hw 128x64',
               node_a.process)
    assert node_diagnostics(client, NAMESPACE)['network_aspect'] == 'keep'


def test_bad_parameter_is_refused_and_live_ones_apply(node_a):
    client = node_a.client
    params = AsyncParameterClient(client.node, f'{NAMESPACE}/depth_node')
    assert params.wait_for_services(timeout_sec=10.0)

    def set_one(name, value):
        future = params.set_parameters([Parameter(name, value=value)])
        return client.wait_future(future, 10, f'set {name}').results[0]

    def get_one(name):
        future = params.get_parameters([name])
        return parameter_value_to_python(client.wait_future(future, 10, f'get {name}').values[0])

    result = set_one('depth_mode', 'metric')
    assert not result.successful and 'relative, scale, camera_height' in result.reason
    assert get_one('depth_mode') == 'scale'
    result = set_one('qos_reliability', 'reliable')
    assert not result.successful and 'read-only' in result.reason
    result = set_one('depth_scale', -1.0)
    assert not result.successful
    # A live change applies to the next frame: depth scales with depth_scale.
    depths = []
    for scale in (2.0, 4.0):
        assert set_one('depth_scale', scale).successful
        assert get_one('depth_scale') == scale
        _, make = raw_frame('rgb8', index=5)
        found = request(client, node_a.pub.image, make, ['depth'], process=node_a.process)
        depths.append(conversions.image_msg_to_array(found['depth']))
    np.testing.assert_allclose(depths[1], 2.0 * depths[0], rtol=1e-5)
    # relative: unitless, median 1.0, on depth/relative; nothing on depth (REP-118: metres)
    # and no points for that frame
    assert set_one('depth_mode', 'relative').successful
    try:
        _, make = raw_frame('rgb8', index=6)
        found = request(client, node_a.pub.image, make, ['depth/relative', 'depth/colored'],
                        info_publisher=node_a.pub.info, process=node_a.process)
        relative = conversions.image_msg_to_array(found['depth/relative'])
        assert relative.dtype == np.float32 and np.median(relative) == pytest.approx(1.0, abs=0.01)
        stamp = found['depth/relative'].header.stamp
        time.sleep(0.5)  # the frame's other outputs were published before depth/colored
        for topic in ('depth', 'depth/points'):
            assert client.find(f'{NAMESPACE}/{topic}', (stamp.sec, stamp.nanosec)) is None, topic
    finally:
        assert set_one('depth_mode', 'scale').successful
        assert set_one('depth_scale', DEPTH_SCALE).successful


def test_bad_inputs_are_dropped_counted_and_survived(node_a):
    client, process = node_a.client, node_a.process
    rgb = synthetic_frame(IN_HEIGHT, IN_WIDTH, 0)

    def bad(kind, header):
        msg = make_image_msg(rgb, 'rgb8', header)
        if kind == 'unsupported_encoding':
            msg.encoding = 'yuv422'
        elif kind == 'size_mismatch':
            msg.step -= 7
        elif kind == 'empty':
            msg.data = b''
        elif kind == 'zero_size':
            msg.height = msg.width = msg.step = 0
            msg.data = b''
        elif kind == 'too_large':  # a corrupt header: max_image_pixels is 1e6 in this node
            msg.height, msg.width, msg.step = 2000, 1000, 3000
        return msg
    log_words = {'unsupported_encoding': "'yuv422'", 'size_mismatch': 'expected step * height',
                 'empty': 'empty image data', 'zero_size': 'zero-size image',
                 'too_large': 'max_image_pixels=1000000'}
    for kind in log_words:
        header = client.new_header()
        msg = bad(kind, header)
        last = [-1.0]

        def counted():
            diagnostics = node_diagnostics(client, NAMESPACE)
            if diagnostics and counts(diagnostics['bad_input_by_kind']).get(kind):
                return True
            if time.monotonic() - last[0] > 0.5:
                last[0] = time.monotonic()
                node_a.pub.image.publish(msg)
            return False
        wait_until(counted, FRAME_TIMEOUT_S, f'a {kind} frame counted in /diagnostics', process)
    wait_until(lambda: all(word in process.output() for word in log_words.values()), 5.0,
               f'a warning naming each problem ({list(log_words.values())}) in the node log',
               process)
    diagnostics = node_diagnostics(client, NAMESPACE)
    assert int(diagnostics['dropped_bad_input']) >= len(log_words)
    assert set(counts(diagnostics['bad_input_by_kind'])) >= set(log_words)
    _, make = raw_frame('rgb8', index=7)
    request(client, node_a.pub.image, make, ['depth'], process=process)  # still serving
    assert process.poll() is None


def test_stale_frames_are_dropped_and_counted(node_a):
    client = node_a.client
    before = int(node_diagnostics(client, NAMESPACE)['dropped_stale'])
    rgb = synthetic_frame(IN_HEIGHT, IN_WIDTH, 1)
    for _ in range(40):  # a burst far faster than the model (~20-40 ms per frame)
        node_a.pub.image.publish(make_image_msg(rgb, 'rgb8', client.new_header()))
    wait_until(lambda: int(node_diagnostics(client, NAMESPACE)['dropped_stale']) > before,
               10.0, 'stale frames counted in /diagnostics after a burst', node_a.process)
    diagnostics = node_diagnostics(client, NAMESPACE)
    assert float(diagnostics['inference_ms_p95']) >= float(diagnostics['inference_ms_p50']) > 0


def test_frames_from_a_separate_publisher_process(node_a, dds):
    publisher = NodeProcess(['--encoding', 'bgr8', '--rate', '10', '--height', IN_HEIGHT,
                             '--width', IN_WIDTH, '--frame-id', 'from_publisher_process',
                             '--ros-args', '-r', f'image:={IMAGE_TOPIC}',
                             '-r', f'camera_info:={INFO_TOPIC}'],
                            dds.env, dds.tmp / 'publisher.log',
                            module='structflow_ros.ros.image_publisher')
    try:
        wait_until(lambda: node_a.client.find(f'{NAMESPACE}/depth/points',
                                              frame_id='from_publisher_process') is not None,
                   START_TIMEOUT_S, 'depth/points computed from the publisher process frames',
                   publisher)
    finally:
        assert publisher.stop() == 0, publisher.output()


def test_compressed_input_side_by_side_and_clean_restart(node_a, dds):
    client = dds.client
    publisher = client.camera_publisher(COMPRESSED_TOPIC, CompressedImage)
    rgb = synthetic_frame(IN_HEIGHT, IN_WIDTH, 2)

    def compressed(fmt, data=None):
        def make(header):
            msg = make_image_msg(rgb, fmt, header)
            if data is not None:
                msg.data = data
            return msg
        return make

    for run in range(2):  # start, use, stop with SIGINT; then the same again
        process = start_node(dds, f'node_b{run}', COMPRESSED_NAMESPACE, COMPRESSED_TOPIC,
                             input_compressed=True)
        try:
            # Two nodes side by side, each in its own namespace.
            wait_until(lambda: {('depth_node', NAMESPACE), ('depth_node', COMPRESSED_NAMESPACE)}
                       <= set(client.node.get_node_names_and_namespaces()), 10.0,
                       'both depth nodes in the ROS graph', process)
            for fmt in (('jpeg', 'png') if run == 0 else ('jpeg',)):
                found = request(client, publisher, compressed(fmt), ['depth/relative'],
                                namespace=COMPRESSED_NAMESPACE, process=process)
                depth = found['depth/relative']  # node_b: the default depth_mode, relative
                assert depth.header.frame_id == FRAME_ID
                assert (depth.height, depth.width) == (IN_HEIGHT, IN_WIDTH)
            if run == 0:
                truncated = make_image_msg(rgb, 'jpeg', client.new_header()).data[:200]
                publish_until_counted(client, publisher, compressed('jpeg', truncated),
                                      'corrupt', process)
                # The log line may reach the node's log file after /diagnostics counted it.
                wait_until(lambda: 'no end-of-image marker' in process.output(), 10.0,
                           'the corrupt-frame log line', process)
                # Cut, then closed with an end marker: libjpeg would fill the rest grey.
                whole = bytes(make_image_msg(rgb, 'jpeg', client.new_header()).data)
                closed = whole[:len(whole) // 2] + b'\xff\xd9'
                # (the log line for a second corrupt frame is throttled; /diagnostics has it)
                publish_until_counted(client, publisher, compressed('jpeg', closed), 'corrupt',
                                      process, seen='premature end of data segment')
                diagnostics = node_diagnostics(client, COMPRESSED_NAMESPACE)
                assert counts(diagnostics['bad_input_by_kind'])['corrupt'] >= 2, diagnostics
                request(client, publisher, compressed('jpeg'), ['depth/relative'],
                        namespace=COMPRESSED_NAMESPACE, process=process)
        finally:
            code = process.stop()
        output = process.output()
        assert code == 0, f'exit code {code} after SIGINT:\n{output[-3000:]}'
        assert 'Traceback' not in output, output[-3000:]


def publish_until_counted(client, publisher, make, kind, process, at_least=1, seen=None):
    """Publish (again every 0.5 s) until /diagnostics counts `at_least` frames of `kind`, or,
    with `seen`, until its last_bad_input holds that text: a count alone can be reached by a
    resent earlier frame, before this one was ever published."""
    msg = make(client.new_header())
    last = [-1.0]

    def counted():
        diagnostics = node_diagnostics(client, COMPRESSED_NAMESPACE)
        if diagnostics and (seen in diagnostics['last_bad_input'] if seen else
                            counts(diagnostics['bad_input_by_kind']).get(kind, 0) >= at_least):
            return True
        if time.monotonic() - last[0] > 0.5:
            last[0] = time.monotonic()
            publisher.publish(msg)
        return False
    wait_until(counted, FRAME_TIMEOUT_S, f'{at_least} {kind} frame(s) counted in /diagnostics',
               process)


def test_missing_or_broken_weights_exit_non_zero_naming_the_path(dds):
    broken = dds.tmp / 'broken.pt'
    broken.write_bytes(dds.weights.read_bytes()[:4096])
    cases = {'missing': dds.tmp / 'no_such_dir' / 'weights.pt', 'broken': broken}
    processes = {name: NodeProcess(['--ros-args', '-p', f'weights:={path}'], dds.env,
                                   dds.tmp / f'{name}.log') for name, path in cases.items()}
    for name, process in processes.items():
        try:
            process.popen.wait(START_TIMEOUT_S)
        finally:
            process.stop()
        output = process.output()
        assert process.returncode not in (0, None), f'{name}: exit code {process.returncode}'
        assert str(cases[name]) in output, output
        assert 'Traceback' not in output, output


def test_reload_weights_swaps_versions_and_refuses_broken_files(node_a, dds):
    client = node_a.client
    params = AsyncParameterClient(client.node, f'{NAMESPACE}/depth_node')
    reload_client = client.node.create_client(Trigger, f'{NAMESPACE}/depth_node/reload_weights')
    assert params.wait_for_services(timeout_sec=10.0)
    assert reload_client.wait_for_service(timeout_sec=10.0), '~/reload_weights service'
    _, make = raw_frame('rgb8', index=9)

    def depth_of_frame():
        found = request(client, node_a.pub.image, make, ['depth'], process=node_a.process)
        return conversions.image_msg_to_array(found['depth'])

    def diagnostics_show(version):
        wait_until(lambda: (node_diagnostics(client, NAMESPACE)['model_version'] == version
                            and node_diagnostics(client, NAMESPACE)['serving_version'] == version),
                   5, f'model_version {version} in /diagnostics', node_a.process)

    def reload(path):
        future = params.set_parameters([Parameter('weights', value=str(path))])
        assert client.wait_future(future, 10, 'set weights').results[0].successful
        return client.wait_future(reload_client.call_async(Trigger.Request()), 30,
                                  '~/reload_weights response')

    before = depth_of_frame()
    diagnostics_show('1')
    assert node_diagnostics(client, NAMESPACE)['backend'] == 'openvino'
    response = reload(make_tiny_checkpoint(dds.tmp / 'tiny_v2.pt', seed=1))
    assert response.success, response.message
    assert 'version 2' in response.message
    after = depth_of_frame()
    diagnostics_show('2')
    assert node_diagnostics(client, NAMESPACE)['backend'] == 'openvino'  # converted, swapped
    assert np.abs(after - before).max() > 1e-6, 'depth did not change with the new weights'

    broken = dds.tmp / 'truncated.pt'
    broken.write_bytes((dds.tmp / 'tiny_v2.pt').read_bytes()[:10000])
    response = reload(broken)
    assert not response.success
    assert str(broken) in response.message and 'still serving version 2' in response.message
    again = depth_of_frame()
    np.testing.assert_array_equal(again, after)  # the old (version 2) model still serves
    diagnostics_show('2')
