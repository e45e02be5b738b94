"""In-process tests of the depth node's building blocks: conversions, units, hand-over, swap.

Fast (no DDS between processes): messages are built and read back in this process, the node is
created in-process on its own rclpy context for the parameter, swap and thread-leak checks.
"""
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import torch

import rclpy
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.context import Context
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from structflow_ros.core.checkpoint import CheckpointError, save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.data.image_codec import encode_compressed, encode_image
from structflow_ros.online import camera as camera_math
from structflow_ros.online.frame_slot import LatestFrames
from structflow_ros.online.pipeline import OutputSettings
from structflow_ros.online.server import ServedModel, read_serving_checkpoint
from structflow_ros.online.units import (DepthScaler, GroundFitConfig, ScaleUnavailable,
                                         fit_ground_plane)
from structflow_ros.online.weight_store import VersionedWeightStore
from structflow_ros.ros import conversions
from structflow_ros.ros import diagnostics as diagnostics_module
from structflow_ros.ros.diagnostics import RateMeter, ServingStats
from structflow_ros.ros.image_publisher import pinhole_camera_info
from structflow_ros.ros.params import PARAMETERS, validate

TINY = dict(height=64, width=96)


def make_tiny_checkpoint(path, seed=0, **config):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**TINY, 'flow_branch': False, 'pose_branch': False,
                                       **config}))
    save_checkpoint(path, model, half=True)
    return path


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp('weights') / 'tiny.pt')


def random_rgb(height=6, width=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def raw_msg(rgb, encoding):
    step, data = encode_image(rgb, encoding)
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding=encoding, step=step)
    msg.data = data
    return msg


# ----------------------------------------------------------------------------------------------
# Input decoding and bad input classification
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_colour_encodings_decode_to_the_same_rgb(encoding):
    rgb = random_rgb()
    np.testing.assert_array_equal(conversions.image_msg_to_rgb(raw_msg(rgb, encoding), 10**6),
                                  rgb)


@pytest.mark.parametrize('encoding', ['mono8', 'mono16'])
def test_mono_encodings_decode_to_grey_rgb(encoding):
    rgb = random_rgb()
    out = conversions.image_msg_to_rgb(raw_msg(rgb, encoding), 10**6)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], grey)
    np.testing.assert_array_equal(out[..., 2], grey)


def test_compressed_png_is_lossless_and_jpeg_close():
    rgb = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (16, 1, 3))
    png = CompressedImage(format='png')
    png.data = encode_compressed(rgb, 'png')
    np.testing.assert_array_equal(conversions.image_msg_to_rgb(png, 10**6), rgb)
    jpeg = CompressedImage(format='jpeg')
    jpeg.data = encode_compressed(rgb, 'jpeg')
    assert np.abs(conversions.image_msg_to_rgb(jpeg, 10**6).astype(int) - rgb).max() < 12


def bad_inputs():
    """(kind, message, words the reason must contain) for every kind of bad frame."""
    good = raw_msg(random_rgb(), 'rgb8')
    unsupported = raw_msg(random_rgb(), 'rgb8')
    unsupported.encoding = 'yuv422'
    mismatch = raw_msg(random_rgb(), 'rgb8')
    mismatch.step = good.step - 3
    empty = Image(height=6, width=8, encoding='rgb8', step=24)
    zero = Image(height=0, width=0, encoding='rgb8', step=0)
    huge = Image(height=100000, width=100000, encoding='rgb8', step=300000)
    huge.data = bytes(16)
    corrupt = CompressedImage(format='jpeg')
    corrupt.data = encode_compressed(random_rgb(32, 32), 'jpeg')[:100]  # truncated
    garbage = CompressedImage(format='jpeg')
    garbage.data = b'not an image at all'
    empty_compressed = CompressedImage(format='jpeg')
    return [('unsupported_encoding', unsupported, ['yuv422', 'supported']),
            ('size_mismatch', mismatch, ['step']),
            ('empty', empty, ['empty']),
            ('zero_size', zero, ['zero-size']),
            ('too_large', huge, ['max_image_pixels']),
            ('corrupt', corrupt, ['corrupt', 'truncated']),
            ('corrupt', garbage, ['corrupt']),
            ('empty', empty_compressed, ['empty'])]


@pytest.mark.parametrize('kind,msg,words', bad_inputs(),
                         ids=[f'{k}-{i}' for i, (k, _, _) in enumerate(bad_inputs())])
def test_bad_input_is_refused_with_its_kind_and_reason(kind, msg, words):
    with pytest.raises(conversions.BadImageError) as caught:
        conversions.image_msg_to_rgb(msg, 10**6)
    assert caught.value.kind == kind
    for word in words:
        assert word in str(caught.value)


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def test_depth_image_round_trip_keeps_header_and_values():
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5
    header = Header(frame_id='cam')
    header.stamp.sec, header.stamp.nanosec = 12, 34
    msg = conversions.depth_to_image_msg(depth, header)
    assert (msg.encoding, msg.width, msg.height, msg.step) == ('32FC1', 4, 3, 16)
    assert msg.header.frame_id == 'cam' and msg.header.stamp.sec == 12
    np.testing.assert_array_equal(conversions.image_msg_to_array(msg), depth)


def test_colorize_maps_near_to_the_warm_end_and_invalid_to_black():
    depth = np.array([[1.0, 2.0, 3.0, np.nan, 0.0, 10.0, np.inf, -np.inf]], dtype=np.float32)
    limits = conversions.colormap_limits(depth, 'fixed', (1.0, 3.0))
    assert limits == (1.0, 3.0)
    bgr = conversions.colorize_depth(depth, limits, 'turbo')
    assert bgr.shape == (1, 8, 3) and bgr.dtype == np.uint8
    turbo = cv2.applyColorMap(np.array([[255, 0]], np.uint8), cv2.COLORMAP_TURBO)
    np.testing.assert_array_equal(bgr[0, 0], turbo[0, 0])  # nearest = top of the map
    np.testing.assert_array_equal(bgr[0, 2], turbo[0, 1])  # farthest = bottom
    np.testing.assert_array_equal(bgr[0, 5], turbo[0, 1])  # beyond the range: clipped
    assert not bgr[0, 3].any() and not bgr[0, 4].any()  # NaN and 0: black
    np.testing.assert_array_equal(bgr[0, 6], turbo[0, 1])  # +Inf, no return: far (REP-117)
    assert not bgr[0, 7].any()  # -Inf, too close to measure: black
    assert bgr[0, 0, 2] > bgr[0, 0, 0]  # near is red-ish (B, G, R)
    percentile = conversions.colormap_limits(
        np.linspace(1, 100, 40000, dtype=np.float32).reshape(200, 200), 'percentile',
        percentiles=(10, 90))
    assert 5 < percentile[0] < 15 and 85 < percentile[1] < 95
    with pytest.raises(ValueError, match='fixed'):
        conversions.colormap_limits(depth, 'bogus')


def camera_info(width=80, height=60, fx=50.0, fy=52.0, cx=39.0, cy=29.0):
    info = CameraInfo(width=width, height=height, distortion_model='plumb_bob')
    info.d = [0.0] * 5
    info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [fx, 0.0, cx, -5.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def test_camera_info_rescaled_to_the_depth_size():
    header = Header(frame_id='cam')
    camera, note = camera_math.rescale_camera(camera_info(), 80, 60, 40, 30)
    out = conversions.camera_info_msg(camera, header)
    assert note == '' and (out.width, out.height) == (40, 30) and out.header.frame_id == 'cam'
    k = np.array(out.k).reshape(3, 3)
    # Half size: focal lengths halve, the principal point follows the pixel-centre rule.
    np.testing.assert_allclose(k, [[25.0, 0, (39 + 0.5) * 0.5 - 0.5],
                                   [0, 26.0, (29 + 0.5) * 0.5 - 0.5], [0, 0, 1]])
    p = np.array(out.p).reshape(3, 4)
    np.testing.assert_allclose(p[:, :3], k)
    assert p[0, 3] == pytest.approx(-2.5)  # Tx = -fx * baseline scales with fx
    assert list(out.d) == [0.0] * 5 and list(out.r) == list(camera_info().r)


def test_camera_info_with_binning_and_roi():
    info = camera_info(width=160, height=120, fx=100.0, fy=100.0, cx=79.5, cy=59.5)
    info.binning_x = info.binning_y = 2
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 20, 10, 80, 60
    # The image is the 80x60 ROI binned 2x: 40x30; the depth is published at 40x30.
    out, note = camera_math.rescale_camera(info, 40, 30, 40, 30)
    assert note == ''
    k = np.array(out.k).reshape(3, 3)
    assert k[0, 0] == pytest.approx(50.0) and k[1, 1] == pytest.approx(50.0)
    assert k[0, 2] == pytest.approx((79.5 - 20 + 0.5) / 2 - 0.5)
    assert k[1, 2] == pytest.approx((59.5 - 10 + 0.5) / 2 - 0.5)
    assert (out.binning_x, out.roi.width) == (0, 0)


def test_camera_info_that_does_not_match_the_image_is_scaled_and_reported():
    out, note = camera_math.rescale_camera(camera_info(), 160, 120, 160, 120)
    assert 'differs' in note
    assert np.array(out.k)[0] == pytest.approx(100.0)


def test_rays_undo_the_distortion():
    info = camera_info(width=40, height=30)
    info.d = [-0.2, 0.05, 0.001, -0.002, 0.0]
    rays = camera_math.RayCache().rays(info)
    assert rays.shape == (30, 40, 3) and camera_math.RayCache().note == ''
    k = np.array(info.k).reshape(3, 3)
    projected, _ = cv2.projectPoints(rays.reshape(-1, 3).astype(np.float64), np.zeros(3),
                                     np.zeros(3), k, np.array(info.d))
    u, v = np.meshgrid(np.arange(40), np.arange(30))
    np.testing.assert_allclose(projected.reshape(30, 40, 2), np.stack([u, v], -1), atol=0.05)
    no_intrinsics = camera_info()
    no_intrinsics.k = [0.0] * 9
    cache = camera_math.RayCache()
    assert cache.rays(no_intrinsics) is None and 'intrinsics' in cache.note


def test_pointcloud_fields_decimation_geometry_and_colour():
    info = camera_info(width=10, height=7, fx=8.0, fy=9.0, cx=4.5, cy=3.0)
    rays = camera_math.RayCache().rays(info)
    depth = np.full((7, 10), 2.0, np.float32)
    depth[0, 0] = np.nan
    rgb = np.zeros((14, 20, 3), np.uint8)  # input image at twice the depth size
    rgb[..., 0] = np.arange(20)[None, :]
    rgb[..., 1] = np.arange(14)[:, None]
    rgb[..., 2] = 200
    msg = conversions.depth_to_pointcloud(depth, rays, rgb, 3, Header(frame_id='cam'))
    assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb']
    assert (msg.height, msg.width, msg.point_step) == (3, 4, 16)  # ceil(7/3) x ceil(10/3)
    assert msg.header.frame_id == 'cam' and msg.is_dense is False
    cloud = conversions.pointcloud_to_array(msg)
    rows, cols = np.arange(0, 7, 3), np.arange(0, 10, 3)
    assert np.isnan(cloud['z'][0, 0])
    z = cloud['z'][1:, 1:]
    np.testing.assert_allclose(z, 2.0)
    u, v = np.meshgrid(cols[1:], rows[1:])  # (2, 3) pixel coordinates of those points
    np.testing.assert_allclose(cloud['x'][1:, 1:], 2.0 * (u - 4.5) / 8.0, rtol=1e-6)
    np.testing.assert_allclose(cloud['y'][1:, 1:], 2.0 * (v - 3.0) / 9.0, rtol=1e-6)
    colour = conversions.unpack_rgb(cloud['rgb'])
    np.testing.assert_array_equal(colour[..., 0], np.broadcast_to(cols * 2 + 1, (3, 4)))
    np.testing.assert_array_equal(colour[..., 1], np.broadcast_to(rows[:, None] * 2 + 1, (3, 4)))
    assert (colour[..., 2] == 200).all()


# ----------------------------------------------------------------------------------------------
# Depth units
# ----------------------------------------------------------------------------------------------
def ground_scene(height=60, width=80, camera_height=2.5, focal=50.0, noise=0.0, seed=0):
    """Depth of a flat floor `camera_height` below a level camera, a wall above the horizon."""
    cy, cx = (height - 1) / 2, (width - 1) / 2
    v = np.arange(height, dtype=np.float64)[:, None].repeat(width, 1)
    with np.errstate(divide='ignore'):
        depth = np.where(v > cy + 1, camera_height * focal / (v - cy), 12.0)
    rng = np.random.default_rng(seed)
    depth *= 1 + noise * rng.standard_normal(depth.shape)
    depth[-3:, :10] = 0.7  # a box on the floor: outliers for the fit
    info = camera_info(width, height, focal, focal, cx, cy)
    return depth.astype(np.float32), camera_math.RayCache().rays(info)


def test_relative_mode_makes_the_median_one():
    rng = np.random.default_rng(1)
    depth = rng.uniform(3, 9, (200, 300)).astype(np.float32)
    depth[0, 0], depth[2, 2], depth[4, 4] = np.nan, 0.0, np.inf
    scaler = DepthScaler('relative')
    out = scaler.apply(depth)
    sample = out[::2, ::2]
    valid = sample[np.isfinite(sample) & (sample > 0)]
    assert np.sort(valid)[valid.size // 2] == pytest.approx(1.0, abs=1e-6)  # exactly, sampled
    assert np.nanmedian(out[np.isfinite(out) & (out > 0)]) == pytest.approx(1.0, abs=0.01)
    assert scaler.last_scale == pytest.approx(1.0 / 6.0, rel=0.01)
    with pytest.raises(ScaleUnavailable, match='no finite positive'):
        scaler.apply(np.full((4, 4), np.nan, np.float32))


def test_scale_mode_multiplies():
    depth = np.full((4, 4), 2.0, np.float32)
    np.testing.assert_allclose(DepthScaler('scale', depth_scale=0.25).apply(depth), 0.5)


def test_camera_height_mode_recovers_metres_from_the_ground_plane():
    model_depth, rays = ground_scene(camera_height=2.5, noise=0.01)
    scaler = DepthScaler('camera_height', camera_height=1.5)
    out = scaler.apply(model_depth, rays)
    assert scaler.last_scale == pytest.approx(1.5 / 2.5, rel=0.02)
    np.testing.assert_allclose(out, model_depth * scaler.last_scale)


def test_tilted_camera_ground_fit():
    # Pitch the camera down by 10 deg: rotate the floor points, the plane distance is unchanged.
    model_depth, rays = ground_scene(camera_height=2.0)
    points = (rays * model_depth[..., None])[40:].reshape(-1, 3)
    angle = np.deg2rad(10)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)],
                         [0, np.sin(angle), np.cos(angle)]])
    normal, distance, ratio = fit_ground_plane(points @ rotation.T, GroundFitConfig())
    assert distance == pytest.approx(2.0, rel=0.01) and ratio > 0.8
    assert normal[1] < -0.9


def test_camera_height_mode_without_ground_or_intrinsics():
    scaler = DepthScaler('camera_height', camera_height=1.0)
    with pytest.raises(ScaleUnavailable, match='camera_info'):
        scaler.apply(np.ones((10, 10), np.float32), None)
    _, rays = ground_scene()
    wall = np.full((60, 80), 5.0, np.float32)  # fronto-parallel wall: no horizontal plane
    with pytest.raises(ScaleUnavailable, match='no ground plane fitted yet'):
        scaler.apply(wall, rays)
    good, rays = ground_scene(camera_height=2.0)
    scaler.apply(good, rays)
    kept = scaler.last_scale
    np.testing.assert_allclose(scaler.apply(wall, rays), wall * kept)  # reuses the last scale
    assert 'plane' in scaler.last_fit_error


def test_scaler_refuses_unknown_mode():
    with pytest.raises(ValueError, match='relative, scale, camera_height'):
        DepthScaler('metric')


# ----------------------------------------------------------------------------------------------
# Hand-over between threads
# ----------------------------------------------------------------------------------------------
def test_frame_slots_keep_only_the_newest_per_camera_and_count_drops():
    frames = LatestFrames()
    assert frames.put('front', 1) is False and frames.put('front', 2) is True
    assert frames.put('rear', 'a') is False and frames.put('front', 3) is True
    assert frames.dropped == 2
    assert frames.get(0) == {'front': 3, 'rear': 'a'}  # together: one batch
    assert frames.get(0.01) == {}
    frames.put('rear', 'b')
    frames.discard('rear')
    assert frames.get(0.01) == {}
    got = []
    waiter = threading.Thread(target=lambda: got.append(frames.get(5.0)))
    waiter.start()
    time.sleep(0.05)
    frames.close()
    waiter.join(2.0)
    assert not waiter.is_alive() and got == [{}] and frames.put('front', 4) is False


def test_weight_store_versions_clones_and_threads():
    store = VersionedWeightStore()
    assert store.version == 0 and store.latest() == (0, None, {})
    source = {'w': torch.ones(3)}
    assert store.publish(source, {'path': 'a.pt'}) == 1
    source['w'].add_(1)  # the writer keeps training its own tensors
    version, state, meta = store.latest()
    assert version == 1 and torch.equal(state['w'], torch.ones(3))
    assert meta['store_version'] == 1 and meta['path'] == 'a.pt'
    versions = []
    threads = [threading.Thread(target=lambda: versions.extend(
        store.publish({'w': torch.zeros(1)}) for _ in range(20))) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert store.wait_for_newer(1, timeout=5.0)
    for thread in threads:
        thread.join()
    assert sorted(versions) == list(range(2, 82)) and store.version == 81
    assert store.wait_for_newer(81, timeout=0.01) is False
    with pytest.raises(ValueError, match='non-empty state dict'):
        store.publish({})


def test_serving_checkpoint_is_validated_strictly(tmp_path, tiny_weights):
    state, meta = read_serving_checkpoint(tiny_weights)
    assert meta['path'] == str(tiny_weights) and 'state_dict' not in meta
    served = ServedModel.from_state(state, meta, 3, 'cpu')
    assert served.predictor.input_size == (64, 96) and served.version == 3
    depth = served.predictor.predict(np.zeros((30, 40, 3), np.uint8))
    assert depth.shape == (30, 40) and np.isfinite(depth).all()
    # Encoder-only file (e.g. a flow-pretraining export): refused, naming what is missing.
    torch.manual_seed(0)
    encoder_only = tmp_path / 'encoder_only.pt'
    save_checkpoint(encoder_only, build_model(ModelConfig(**TINY)), modules=['structure_encoder'])
    with pytest.raises(CheckpointError, match='depth_decoder'):
        read_serving_checkpoint(encoder_only)
    truncated = tmp_path / 'truncated.pt'
    truncated.write_bytes(tiny_weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match='truncated'):
        read_serving_checkpoint(truncated)
    bad_state = dict(state)
    bad_state.pop(next(iter(bad_state)))
    with pytest.raises(CheckpointError, match='missing'):
        ServedModel.from_state(bad_state, meta, 4, 'cpu')


# ----------------------------------------------------------------------------------------------
# Statistics, parameters
# ----------------------------------------------------------------------------------------------
def test_stats_snapshot_and_rates():
    stats = ServingStats()
    for index in range(20):
        stats.record_input(now=index * 0.1)
        stats.record_output(2, inference_s=0.010 + index * 1e-4, queue_s=0.001,
                            work_s=0.012 + index * 1e-4, now=index * 0.1)
    stats.record_stale(3)
    stats.record_bad_input('corrupt', 'JPEG truncated')
    snap = stats.snapshot()
    assert snap['frames_in'] == 20 and snap['frames_out'] == 20
    assert snap['dropped_stale'] == 3 and snap['dropped_bad_input'] == 1
    assert snap['bad_input_by_kind'] == {'corrupt': 1} and snap['model_version'] == 2
    assert 10.0 < snap['inference_ms_p50'] < snap['inference_ms_p95'] < 12.0
    assert snap['overhead_ms_p50'] == pytest.approx(2.0, abs=1e-6)
    assert snap['processing_ms_p50'] == pytest.approx(snap['inference_ms_p50'] + 3.0, abs=0.1)
    meter = RateMeter(window_s=2.0)
    for index in range(30):
        meter.tick(index * 0.1)
    assert meter.rate(2.9) == pytest.approx(10.0) and meter.events(2.9) in (20, 21)  # ~2 s
    assert meter.rate(10.0) == 0.0 and meter.events(10.0) == 0


def test_parameter_validation_reasons():
    values = {spec.name: spec.default for spec in PARAMETERS}
    assert validate('depth_mode', 'metric', values).startswith("depth_mode 'metric'")
    assert 'cuda:N' in validate('device', 'gpu', values)
    assert validate('device', 'cuda:1', values) is None
    assert 'smaller than' in validate('colormap_min', 9.0, values)  # default max is 5
    assert validate('input_height', 16, values) is not None
    assert validate('input_height', 0, values) is None
    assert 'does not exist' in validate('weights', '/no/such/file.pt', values)
    assert validate('points_decimation', 0, values) is not None


# ----------------------------------------------------------------------------------------------
# The node in-process: parameters, hot swap, clean destroy
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def in_process_node(ros_env, tiny_weights):
    from structflow_ros.ros.depth_node import DepthNode
    context = Context()
    rclpy.init(context=context)
    # eager: these tests are about the node; backends have their own tests (test_backends.py),
    # and every in-process `auto` would build OpenVINO and ONNX Runtime models in this process.
    node = DepthNode(context=context, parameter_overrides=[
        Parameter('weights', value=str(tiny_weights)), Parameter('backend', value='eager')])
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def _statuses(array):
    return {status.name: status for status in array.status}


def test_diagnostics_by_the_convention_with_a_faithful_fallback(in_process_node, monkeypatch):
    """/diagnostics through diagnostic_updater (hardware_id, FrequencyStatus's levels and keys,
    latency levels); without diagnostic_updater the same statuses, levels and keys."""
    if diagnostics_module.diagnostic_updater is None:
        pytest.skip('diagnostic_updater is not installed (make venv installs it from '
                    '../shared/wheels; every ROS 2 install has it)')
    node = in_process_node
    node._camera_info._remember(pinhole_camera_info(48, 64, 'cam'))
    rgb = random_rgb(48, 64)
    for index in range(6):
        node.stats.record_input()
        node._process(Image(height=48, width=64, encoding='rgb8', step=64 * 3,
                            data=rgb.tobytes()), time.monotonic())
        time.sleep(0.05)

    def capture(diagnostics):
        sent = []
        target = diagnostics.updater.publisher if diagnostics.updater else diagnostics._publisher
        monkeypatch.setattr(target, 'publish', sent.append)
        diagnostics.publish()
        return _statuses(sent[-1])

    with_updater = capture(node.diagnostics)
    names = [f'/depth_node: {task}' for task in diagnostics_module.NodeDiagnostics.TASKS]
    assert list(with_updater) == names
    for status in with_updater.values():
        assert status.hardware_id.startswith('cpu ') and '(' in status.hardware_id, status
    depth = {kv.key: kv.value for kv in with_updater['/depth_node: depth'].values}
    assert depth['lifecycle_state'] == 'active' and depth['frames_out'] == '6'
    assert depth['diagnostics'] == 'diagnostic_updater'
    rate = with_updater['/depth_node: input rate']
    rate_values = {kv.key: kv.value for kv in rate.values}
    assert rate.level == DiagnosticStatus.OK and rate.message == 'Desired frequency met'
    assert float(rate_values['Actual frequency (Hz)']) > 1.0
    assert float(rate_values['Minimum acceptable frequency (Hz)']) == pytest.approx(0.9)
    assert with_updater['/depth_node: latency'].level == DiagnosticStatus.OK

    # The bounds are live parameters.
    assert all(r.successful for r in node.set_parameters([
        Parameter('diagnostics_min_rate', value=500.0),
        Parameter('diagnostics_latency_warn_ms', value=1.0)]))
    bounded = capture(node.diagnostics)
    assert bounded['/depth_node: input rate'].message == 'Frequency too low.'
    assert bounded['/depth_node: input rate'].level == DiagnosticStatus.WARN
    assert bounded['/depth_node: latency'].level == DiagnosticStatus.WARN
    node.set_parameters([Parameter('diagnostics_latency_error_ms', value=1.0)])
    assert capture(node.diagnostics)['/depth_node: latency'].level == DiagnosticStatus.ERROR

    # Without diagnostic_updater: the same statuses, levels, hardware_id and keys.
    monkeypatch.setattr(diagnostics_module, 'diagnostic_updater', None)
    fallback = diagnostics_module.NodeDiagnostics(
        node, 1.0, [('', node.diagnostics_snapshot, node._health, node.stats.rates)],
        node._bounds, node.diagnostics.hardware_id)
    own = capture(fallback)
    reference = capture(node.diagnostics)
    assert list(own) == list(reference) == names
    for name in names:
        assert own[name].level == reference[name].level, name
        assert own[name].hardware_id == reference[name].hardware_id, name
        keys = {kv.key for kv in own[name].values} - {'diagnostics'}
        assert keys == {kv.key for kv in reference[name].values} - {'diagnostics'}, name


def node_threads():
    return [t for t in threading.enumerate() if t.name.startswith('structflow-')]


def test_node_declares_every_parameter_with_a_descriptor(in_process_node):
    node = in_process_node
    for spec in PARAMETERS:
        descriptor = node.describe_parameter(spec.name)
        assert descriptor.description and descriptor.read_only == spec.read_only
        if spec.int_range:
            assert descriptor.integer_range[0].to_value == spec.int_range[1]
        if spec.float_range:
            assert descriptor.floating_point_range[0].from_value == spec.float_range[0]


def test_node_refuses_bad_parameters_and_keeps_the_old_value(in_process_node):
    node = in_process_node
    result = node.set_parameters([Parameter('depth_mode', value='metric')])[0]
    assert not result.successful and 'relative, scale, camera_height' in result.reason
    assert node.get_parameter('depth_mode').value == 'relative'
    result = node.set_parameters([Parameter('points_decimation', value=0)])[0]
    assert not result.successful and node.get_parameter('points_decimation').value == 2
    result = node.set_parameters([Parameter('device', value='cpu')])[0]
    assert not result.successful and 'read-only' in result.reason
    atomic = node.set_parameters_atomically([Parameter('colormap_min', value=7.0),
                                             Parameter('colormap_max', value=9.0)])
    assert atomic.successful  # checked together: 7 < 9 although 7 > the old max 5
    assert node.set_parameters([Parameter('depth_mode', value='scale')])[0].successful


def test_node_swaps_published_weights_between_frames(in_process_node, tmp_path):
    node = in_process_node
    old_served = node.server.served
    old_params = {k: v.clone() for k, v in old_served.predictor.model.state_dict().items()}
    torch.manual_seed(5)
    trained = build_model(ModelConfig(**TINY))  # full model, as the adaptation thread holds
    version = node.weight_store.publish(trained.state_dict(), {
        'model_config': trained.config, 'path': 'adaptation'})
    deadline = time.monotonic() + 10
    while node.server.served.version != version and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.server.served.version == version == 2
    assert node.server.served.predictor.model is not old_served.predictor.model
    for key, value in old_served.predictor.model.state_dict().items():
        assert torch.equal(value, old_params[key]), f'served module was mutated at {key}'
    assert node.diagnostics_snapshot()['serving_version'] == 2
    # A version that does not fit is not served; the node keeps the current one.
    node.weight_store.publish({'nonsense': torch.zeros(1)}, {'model_config': trained.config})
    deadline = time.monotonic() + 10
    while node.server.swap_error[0] != 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert node.server.swap_error[0] == 3 and node.server.served.version == 2
    # The converter survives a bad version: the next good one is served.
    version = node.weight_store.publish(trained.state_dict(), {'model_config': trained.config})
    assert node.server.wait_until_serving(version, 10.0) == (True, '')
    assert node.server.served.version == 4


def test_destroy_node_leaves_no_thread(ros_env, tiny_weights):
    from structflow_ros.ros.depth_node import DepthNode
    context = Context()
    rclpy.init(context=context)
    try:
        node = DepthNode(context=context, parameter_overrides=[
            Parameter('weights', value=str(tiny_weights)), Parameter('backend', value='eager')])
        assert sorted(t.name for t in node_threads()) == ['structflow-converter',
                                                          'structflow-inference']
        node.destroy_node()
        assert node_threads() == []
    finally:
        rclpy.try_shutdown(context=context)


def test_ros_free_modules_do_not_import_rclpy(ros_env):
    code = ('import sys; import structflow_ros.online, structflow_ros.online.server, '
            'structflow_ros.online.pair_buffer, structflow_ros.online.units, '
            'structflow_ros.online.frame_slot, structflow_ros.core.backends, '
            'structflow_ros.training.trainer, structflow_ros.training.evaluation, '
            'structflow_ros.training.datasets; '
            "bad = [m for m in sys.modules if m.startswith(('rclpy', 'sensor_msgs'))]; "
            'assert not bad, bad')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=60, env=ros_env)
    assert result.returncode == 0, result.stderr


def test_incompatible_qos_is_warned_once_per_topic(ros_env, tiny_weights):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from structflow_ros.ros.depth_node import DepthNode

    class RecordingLogger:
        def __init__(self):
            self.warnings = []

        def warning(self, text):
            self.warnings.append(text)

    context = Context()
    rclpy.init(context=context)
    node = DepthNode(context=context, parameter_overrides=[
        Parameter('weights', value=str(tiny_weights)), Parameter('backend', value='eager'),
        Parameter('qos_reliability', value='reliable')])
    logger = node._qos_warner._logger = RecordingLogger()
    peer = rclpy.create_node('peer', context=context)
    executor = SingleThreadedExecutor(context=context)
    try:
        # A best-effort camera cannot feed a reliable subscription; a transient-local
        # subscriber cannot be served by a volatile publisher. Two of each: still one warning.
        camera_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
        latched_qos = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        keep = [peer.create_publisher(Image, 'image', camera_qos) for _ in range(2)]
        keep += [peer.create_subscription(Image, 'depth/colored', lambda _: None, latched_qos)
                 for _ in range(2)]
        executor.add_node(node)
        executor.add_node(peer)
        deadline = time.monotonic() + 15
        while len(node._qos_warner.warned) < 2 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        for _ in range(10):  # let the duplicates' events arrive too
            executor.spin_once(timeout_sec=0.05)
        assert node._qos_warner.warned == {('sub', 'image'), ('pub', 'depth/colored')}
        assert len(logger.warnings) == 2
        sub_warning = next(w for w in logger.warnings if 'publisher on' in w)
        assert 'RELIABILITY' in sub_warning and 'qos_reliability:=best_effort' in sub_warning
        assert 'DURABILITY' in next(w for w in logger.warnings if 'subscriber of' in w)
        assert 'image' in node.diagnostics_snapshot()['incompatible_qos_topics']
    finally:
        executor.shutdown()
        peer.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


# ----------------------------------------------------------------------------------------------
# sensor_msgs_py and message_filters where installed, the hand-written fallback elsewhere
# ----------------------------------------------------------------------------------------------
def test_pointcloud_is_the_same_message_with_and_without_sensor_msgs_py():
    if conversions.point_cloud2 is None:
        pytest.skip('sensor_msgs_py is not installed (a ROS 2 install or ../shared/wheels)')
    rng = np.random.default_rng(3)
    depth = rng.uniform(0.5, 20.0, (12, 16)).astype(np.float32)
    depth[2, 2] = np.nan  # a decimated pixel: point (1, 1)
    info = pinhole_camera_info(12, 16, 'cam')
    rays = camera_math.RayCache().rays(info)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    header = Header(frame_id='cam')
    header.stamp.sec = 7
    made = conversions.depth_to_pointcloud(depth, rays, rgb, 2, header)
    fallback = conversions.depth_to_pointcloud(depth, rays, rgb, 2, header,
                                               use_sensor_msgs_py=False)
    for name in ('header', 'height', 'width', 'fields', 'is_bigendian', 'point_step',
                 'row_step', 'is_dense'):
        assert getattr(made, name) == getattr(fallback, name), name
    assert bytes(made.data) == bytes(fallback.data)
    assert (made.height, made.width, made.is_dense) == (6, 8, False)
    # Read back with the library: the organised layout is rows of `width` points.
    points = conversions.point_cloud2.read_points_numpy(made, field_names=('x', 'y', 'z'))
    ours = conversions.pointcloud_to_array(made)
    np.testing.assert_array_equal(points[:, 2].reshape(6, 8), ours['z'])
    assert np.isnan(ours['z'][1, 1]) and np.isfinite(ours['z'][0, 0])


def test_camera_info_pairing_with_and_without_message_filters(ros_env):
    from structflow_ros.ros import camera_info_source
    if camera_info_source.message_filters is None:
        pytest.skip('message_filters is not installed (a ROS 2 install or ../shared/wheels)')
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node('pairing_test', context=context)
    try:
        qos = 5
        cached = camera_info_source.CameraInfoSource(node, 'info_a', qos)
        latest = camera_info_source.CameraInfoSource(node, 'info_b', qos,
                                                     use_message_filters=False)
        assert 'message_filters' in cached.pairing and 'latest' in latest.pairing
        assert cached.for_stamp(Header().stamp) is None and not cached.received

        def info(sec):
            msg = pinhole_camera_info(10, 10, 'cam')
            msg.header.stamp.sec = sec
            msg.k[0] = 100.0 + sec  # tells them apart
            return msg
        for sec in (1, 2, 3):  # what the subscriptions' callbacks get from DDS
            cached._on_info(info(sec))
            latest._on_info(info(sec))

        def stamp(sec):
            header = Header()
            header.stamp.sec = sec
            return header.stamp
        # The driver's usual case (info published with its image): the same message both ways.
        assert cached.for_stamp(stamp(3)).k[0] == latest.for_stamp(stamp(3)).k[0] == 103.0
        # An older image finds the info of its own time only through the cache.
        assert cached.for_stamp(stamp(2)).k[0] == 102.0 and latest.for_stamp(stamp(2)).k[0] == 103
        # Older than everything cached: the newest, as without message_filters.
        assert cached.for_stamp(stamp(0)).k[0] == 103.0
        # A negative stamp (int32 allows it; rclpy's Time raises on it, and message_filters'
        # own subscriber let that end the node): kept as the latest info, never an exception.
        cached._on_info(info(-4))
        assert cached.for_stamp(stamp(-4)).k[0] == 96.0 and cached.for_stamp(stamp(3)).k[0] == 103
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_crafted_checkpoint_is_refused_by_reload_and_at_start_up(in_process_node, tiny_weights,
                                                                 tmp_path, ros_env):
    """Issue 12, defect 1: a file of plain values with a string format_version made
    ~/reload_weights raise outside its handler (the node exited); at start-up a traceback."""
    from std_srvs.srv import Trigger

    from structflow_ros.ros.depth_node import DepthNode, StartupError
    payload = torch.load(tiny_weights, weights_only=True)
    payload['format_version'] = '1'
    crafted = tmp_path / 'crafted.pt'
    torch.save(payload, crafted)
    node = in_process_node
    assert node.set_parameters([Parameter('weights', value=str(crafted))])[0].successful
    response = node._on_reload(Trigger.Request(), Trigger.Response())
    assert not response.success
    assert "'format_version' must be an integer" in response.message
    assert 'still serving version 1' in response.message
    assert node.server.served.version == 1 and node._thread.is_alive()
    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(StartupError, match="'format_version' must be an integer"):
            DepthNode(context=context, parameter_overrides=[
                Parameter('weights', value=str(crafted)), Parameter('backend', value='eager')])
    finally:
        rclpy.try_shutdown(context=context)


def _bad_infos():
    def edited(**changes):
        info = pinhole_camera_info(48, 64, 'cam')
        for name, value in changes.items():
            if name in ('k', 'd', 'p'):
                values = list(getattr(info, name)) or [0.0] * 5
                index, number = value
                values[index] = number
                setattr(info, name, values)
            elif name == 'roi':
                info.roi.width = info.roi.height = 1
                info.binning_x = info.binning_y = value
            else:
                setattr(info, name, value)
        return info
    return {'fx NaN': edited(k=(0, float('nan'))), 'cx NaN': edited(k=(2, float('nan'))),
            'cy inf': edited(k=(5, float('inf'))), 'fx inf': edited(k=(0, float('inf'))),
            'D NaN': edited(d=(0, float('nan'))), 'binning 1000': edited(binning_x=1000),
            'ROI 1x1 binning 2': edited(roi=2), 'fx negative': edited(k=(0, -50.0))}


def test_bad_camera_info_is_named_and_a_good_one_passes():
    """Issue 12, defects 2 and 4."""
    assert camera_math.camera_info_problem(pinhole_camera_info(48, 64, 'cam')) is None
    uncalibrated = pinhole_camera_info(48, 64, 'cam')
    uncalibrated.k = [0.0] * 9
    assert camera_math.camera_info_problem(uncalibrated) is None  # depth still serves
    for name, info in _bad_infos().items():
        problem = camera_math.camera_info_problem(info)
        assert problem and 'camera_info' in problem, name


def test_a_bad_camera_info_costs_only_the_outputs_that_need_it(in_process_node):
    """One bad camera_info used to stop all depth (ZeroDivisionError every frame) or to publish
    NaN points marked dense; now depth keeps coming and points wait for a good camera_info."""
    node = in_process_node
    assert node.set_parameters([Parameter('output_height', value=48),
                                Parameter('output_width', value=64)])[0].successful
    rgb = random_rgb(48, 64)
    image = Image(height=48, width=64, encoding='rgb8', step=64 * 3, data=rgb.tobytes())
    for name, info in _bad_infos().items():
        node._camera_info._remember(info)
        before = node.stats.snapshot()['frames_out']
        node._process(image, time.monotonic())
        assert node.stats.snapshot()['frames_out'] == before + 1, name
        result = node.pipeline.process(rgb, 0, info, OutputSettings(48, 64, depth_mode='scale'))
        assert result.camera.info is None and result.camera.rays is None, name
        assert result.depth is not None, name
    metric = OutputSettings(48, 64, depth_mode='scale')  # points (so rays) come with metres
    result = node.pipeline.process(rgb, 0, pinhole_camera_info(48, 64, 'cam'), metric)
    assert result.camera.info is not None and np.isfinite(result.camera.rays).all()
    relative = node.pipeline.process(rgb, 0, pinhole_camera_info(48, 64, 'cam'),
                                     OutputSettings(48, 64))
    assert relative.topic == 'depth/relative' and relative.camera.rays is None


class _RecordingLogger:
    """Stands in for the node's rclpy logger only to count what it would print."""

    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)

    info = error = warning


def test_camera_info_mismatch_warnings_are_bounded_when_the_size_changes_every_frame(
        in_process_node, monkeypatch):
    """Issue 12 defect 6: the mismatch warning was once per text, so an image size changing
    every frame logged every frame and the set of warned texts grew without bound."""
    node = in_process_node
    logger = _RecordingLogger()
    monkeypatch.setattr(node, 'get_logger', lambda: logger)
    node._camera_info._remember(pinhole_camera_info(48, 64, 'cam'))
    for index in range(40):
        height, width = 40 + index, 60 + 2 * index  # a new size, so a new mismatch text
        rgb = random_rgb(height, width)
        node._process(Image(height=height, width=width, encoding='rgb8', step=width * 3,
                            data=rgb.tobytes()), time.monotonic())
    assert node.stats.snapshot()['frames_out'] == 40
    mismatch = [line for line in logger.lines if 'differs from the image' in line]
    assert len(mismatch) == 1, mismatch[:3]
    assert not hasattr(node, '_warned_once')  # no per-text memory left to grow


def test_camera_height_mode_names_the_real_reason_for_missing_intrinsics(in_process_node):
    """Issue 12 defect 7: K all zeros said 'none received yet' in camera_height mode."""
    node = in_process_node
    uncalibrated = pinhole_camera_info(48, 64, 'cam')
    uncalibrated.k = [0.0] * 9
    result = node.pipeline.process(random_rgb(48, 64), 0, uncalibrated,
                                   OutputSettings(depth_mode='camera_height'))
    assert result.depth is None and result.camera.rays is None
    assert 'none received' not in result.no_scale
    assert 'K[0] or K[4] <= 0' in result.no_scale
