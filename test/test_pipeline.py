"""The ROS-free per-frame path (online/pipeline.py, online/stack.py): one build for every caller,
and per frame swap, predict, camera, units, pairs, in that order (issue 27)."""
import time

import numpy as np
import pytest
import torch

from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.online.adapter import AdapterConfig
from structflow_ros.online.camera import CameraModel, RayCache, depth_camera
from structflow_ros.online.pipeline import (FrameJob, FramePipeline, OutputSettings,
                                            bounded_output_size, frame_warnings,
                                            process_frames)
from structflow_ros.online.stack import StackSettings, build_stack
from structflow_ros.online.units import mark_invalid, sample_median

HEIGHT, WIDTH = 48, 64


def tiny(flow_branch=False, seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=flow_branch,
                                    pose_branch=False))
    return model.state_dict(), {'model_config': model.config, 'path': 'tiny'}


def pinhole(width=WIDTH, height=HEIGHT, focal=50.0):
    k = (focal, 0.0, (width - 1) / 2, 0.0, focal, (height - 1) / 2, 0.0, 0.0, 1.0)
    return CameraModel(width=width, height=height, k=k, d=(0.0,) * 5,
                       distortion_model='plumb_bob', p=k[:3] + (0.0,) + k[3:6] + (0.0,)
                       + k[6:] + (0.0,))


def frame(seed=0):
    return (np.random.default_rng(seed).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)


@pytest.fixture
def stack():
    built = build_stack(*tiny(), StackSettings(backend='eager', threads=1))
    yield built
    built.close()


def test_units_camera_and_points_come_out_of_one_call(stack):
    rgb = frame()
    result = stack.pipeline.process(rgb, 1, pinhole(), OutputSettings(
        output_height=24, output_width=32), 'cam')
    # relative: the published depth is the model's, divided by its sampled median
    assert result.depth.shape == result.model_depth.shape == (24, 32)
    assert sample_median(result.depth) == pytest.approx(1.0)
    np.testing.assert_allclose(result.depth * sample_median(result.model_depth),
                               result.model_depth, rtol=1e-5)
    # unitless depth goes to depth/relative and makes no points (REP-118: depth is metres)
    assert result.topic == 'depth/relative' and result.camera.rays is None
    # the camera of that depth: the same rescale the node publishes, and in a metric mode the
    # rays of its points
    reference = depth_camera(pinhole(), WIDTH, HEIGHT, 32, 24, RayCache(), True)
    assert result.camera.info == reference.info and result.camera.info.width == 32
    metric = stack.pipeline.process(rgb, 1, pinhole(), OutputSettings(
        output_height=24, output_width=32, depth_mode='scale', depth_scale=2.0), 'cam')
    assert metric.topic == 'depth' and metric.camera.info == reference.info
    np.testing.assert_array_equal(metric.camera.rays, reference.rays)
    # scale mode multiplies; camera_height without a camera publishes nothing, saying why
    scaled = stack.pipeline.process(rgb, 2, None, OutputSettings(depth_mode='scale',
                                                                 depth_scale=3.0))
    np.testing.assert_allclose(scaled.depth, 3.0 * scaled.model_depth, rtol=1e-6)
    assert scaled.topic == 'depth' and scaled.invalid == (0, 0)
    height = stack.pipeline.process(rgb, 3, None, OutputSettings(depth_mode='camera_height'),
                                    no_camera='none received on /cam/camera_info yet')
    assert height.depth is None and 'none received on /cam/camera_info yet' in height.no_scale
    warned = dict((kind, text) for kind, text, _ in frame_warnings(
        height, OutputSettings(depth_mode='camera_height'), '/cam/camera_info'))
    assert 'no depth in camera_height mode' in warned['no_camera_info']


def test_a_new_version_swaps_in_before_the_frame_it_serves(stack):
    state, meta = tiny(seed=4)
    version = stack.store.publish(state, meta)
    versions = [stack.pipeline.process(frame(), 1).version]
    deadline = time.monotonic() + 60
    while versions[-1] != version and time.monotonic() < deadline:
        time.sleep(0.02)  # the converter builds the new version aside
        versions.append(stack.pipeline.process(frame(), 1).version)
    # Every frame is one version's; the new one serves from the frame after its conversion.
    assert versions[0] == 1 and versions[-1] == version and set(versions) == {1, version}


def test_output_size_is_bounded_with_the_aspect_kept():
    assert bounded_output_size(480, 640, OutputSettings()) == (480, 640, '')
    height, width, note = bounded_output_size(480, 640, OutputSettings(
        output_width=8192, max_output_pixels=2_000_000))
    assert height * width <= 2_000_000 and abs(width / height - 8192 / 480) < 0.05
    assert 'more than max_output_pixels 2000000' in note


def test_adaptation_sees_each_frame_after_its_prediction_and_learns_the_camera():
    built = build_stack(*tiny(flow_branch=True), StackSettings(
        backend='eager', threads=1, adapt=True, adapter_config=AdapterConfig(threads=0)))
    try:
        first = built.pipeline.process(frame(0), 0, pinhole(), frame_id='cam')
        second = built.pipeline.process(np.roll(frame(0), 3, axis=1), 100_000_000, pinhole(),
                                        frame_id='cam')
        # The pair buffer saw each frame after its prediction (the first has no pair yet).
        assert first.pair == 'first' and second.pair in ('paired', 'held_out', 'static')
        assert built.adapter.camera.frame_id == 'cam' and built.adapter.camera.K is not None
        assert built.adapter.camera_K is not None  # the calibrated loss may use K now
    finally:
        built.close()


def test_invalid_pixels_follow_rep117():
    """NaN where the model gave no depth, +Inf ("no return") where it saturated at its far
    limit; the rest untouched, whatever the unit."""
    model = np.array([[1.0, 50.0, 99.95, 100.0], [np.nan, 0.0, np.inf, 2.0]], np.float32)
    published = model * np.float32(0.5)
    nan, far = mark_invalid(published, model, far_limit=100.0)
    assert (nan, far) == (3, 2)  # NaN, 0 and +Inf from the model; 99.95 and 100 saturated
    np.testing.assert_array_equal(published[0, :2], [0.5, 25.0])
    assert np.isposinf(published[0, 2:]).all() and np.isnan(published[1, :3]).all()
    assert published[1, 3] == 1.0


def test_a_saturated_network_publishes_no_return(stack):
    """A model at its far end everywhere (a blank sky) publishes +Inf, not its far limit times
    depth_scale as if that were a distance."""
    served = stack.server.served
    far = served.predictor.max_depth
    original = served.predictor.predict_many
    served.predictor.predict_many = lambda rgbs, sizes: [np.full(size, far, np.float32)
                                                         for size in sizes]
    try:
        result = stack.pipeline.process(frame(), 5, pinhole(), OutputSettings(
            depth_mode='scale', depth_scale=0.1))
    finally:
        served.predictor.predict_many = original
    assert result.invalid == (0, HEIGHT * WIDTH) and np.isposinf(result.depth).all()
    assert np.isfinite(result.model_depth).all()  # the metrics keep the model's own values


def test_cameras_sharing_a_server_go_through_the_network_together(stack):
    """Several cameras on one server (one node, one model): one network call for the frames
    that arrived together, each frame with its own size, units and camera; the same depth as
    one at a time (to float rounding: a batch may pick other kernels)."""
    front, rear = stack.pipeline, FramePipeline(stack.server)
    rgb_front, rgb_rear = frame(0), frame(7)
    alone = [front.process(rgb_front, 1, pinhole(), OutputSettings(depth_mode='scale',
                                                                   depth_scale=2.0)),
             rear.process(rgb_rear, 1, None, OutputSettings(output_height=24,
                                                            output_width=32))]
    predictor = stack.server.served.predictor
    assert predictor.batches  # eager: the PyTorch runner takes batches
    calls = []
    runner, graph = predictor.runner, predictor.runner.graph
    runner.graph = lambda image: (calls.append(image.shape[0]), graph(image))[1]
    try:
        together = process_frames([
            FrameJob(front, rgb_front, 2, pinhole(), OutputSettings(depth_mode='scale',
                                                                    depth_scale=2.0)),
            FrameJob(rear, rgb_rear, 2, None, OutputSettings(output_height=24,
                                                             output_width=32))])
    finally:
        runner.graph = graph
    assert calls == [2]  # one batch of two
    for one, batched in zip(alone, together):
        assert batched.version == one.version and batched.topic == one.topic
        assert batched.depth.shape == one.depth.shape
        np.testing.assert_allclose(batched.depth, one.depth, rtol=1e-4)
    assert together[0].topic == 'depth' and together[1].topic == 'depth/relative'
    assert together[0].camera.rays is not None and together[1].camera is None
