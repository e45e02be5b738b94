"""The synthetic world: exact, self-consistent ground truth, domains, determinism, CLI output."""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from structflow_ros.cli import render as render_cli
from structflow_ros.data import bag_io
from structflow_ros.data.sources import Frame, VideoSource
from structflow_ros.data.synthetic import (
    DOMAINS, DomainConfig, Renderer, SyntheticDataset, SyntheticSource, get_domain,
    render_sequence)
from structflow_ros.data.synthetic.preview import depth_to_color, flow_to_color


def _frames(domain='day', num_frames=3, height=48, width=128, seed=0):
    return list(render_sequence(domain, num_frames, height, width, seed=seed))


def _static_flow(f0, f1):
    """Flow of a static scene from GT depth, K and poses: back-project t, project into t+1."""
    height, width = f0.depth.shape
    K = f0.K
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    x = (u - K[0, 2]) / K[0, 0] * f0.depth
    y = (v - K[1, 2]) / K[1, 1] * f0.depth
    points = np.stack([x, y, f0.depth, np.ones_like(x)], axis=-1)          # (H, W, 4)
    relative = np.linalg.inv(f1.pose_c2w) @ f0.pose_c2w
    cam1 = points @ relative.T
    u1 = K[0, 0] * cam1[..., 0] / cam1[..., 2] + K[0, 2]
    v1 = K[1, 1] * cam1[..., 1] / cam1[..., 2] + K[1, 2]
    return np.stack([u1 - u, v1 - v], axis=-1)


def _warp_back(image_next, flow):
    height, width = flow.shape[:2]
    u, v = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(image_next, u + flow[..., 0], v + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


@pytest.fixture(scope='module')
def day_frames():
    return _frames('day', 4, 48, 128, seed=0)


def test_frame_fields_shapes_and_conventions(day_frames):
    f = day_frames[0]
    assert f.rgb.shape == (48, 128, 3) and f.rgb.dtype == np.uint8
    assert f.depth.shape == (48, 128) and f.depth.dtype == np.float32
    assert f.flow.shape == (48, 128, 2) and f.flow.dtype == np.float32
    assert f.depth_valid.dtype == bool and f.flow_valid.dtype == bool
    assert np.array_equal(f.occlusion, ~f.flow_valid)
    assert f.K.shape == (3, 3) and f.pose_c2w.shape == (4, 4)
    R = f.pose_c2w[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(R), 1.0)
    # Sky is the far plane and invalid; the sky is at the top and the road at the bottom.
    far = get_domain('day').far_m
    assert np.all(f.depth[~f.depth_valid] == far)
    assert np.all(f.depth[f.depth_valid] < far) and np.all(f.depth[f.depth_valid] > 0)
    assert (~f.depth_valid[:5]).mean() > (~f.depth_valid[-5:]).mean()
    assert f.depth_valid[-1].all()
    # OpenCV axes: camera y points down in the world (z up), camera z forward and level-ish.
    assert R[2, 1] < -0.95 and abs(R[2, 2]) < 0.1
    # Frames are 1 / fps apart and the camera drives forward along its optical axis.
    f1 = day_frames[1]
    assert f1.stamp_ns - f.stamp_ns == 100_000_000
    step = np.linalg.inv(f.pose_c2w) @ f1.pose_c2w
    assert step[2, 3] > 0.2 and abs(step[0, 3]) < 0.2 * step[2, 3]


def test_static_pixels_reproject_with_depth_k_and_poses(day_frames):
    for f0, f1 in zip(day_frames[:-1], day_frames[1:]):
        static = f0.depth_valid & ~f0.moving & f0.flow_valid
        assert static.mean() > 0.4
        error = np.linalg.norm(_static_flow(f0, f1) - f0.flow, axis=-1)
        assert error[static].max() < 0.05


def test_moving_cars_have_their_own_motion():
    deviations, checked = [], 0
    for seed in (0, 2):
        frames = _frames('day', 3, 48, 128, seed=seed)
        for f0, f1 in zip(frames[:-1], frames[1:]):
            moving = f0.moving & f0.flow_valid
            assert moving.sum() > 20, 'every drive starts with moving cars in view'
            error = np.linalg.norm(_static_flow(f0, f1) - f0.flow, axis=-1)
            deviations.append(np.median(error[moving]))
            assert error[moving].max() > 0.5
            checked += 1
    # The ego-motion flow explains static pixels to < 0.05 px but not the moving cars.
    assert checked == 4 and min(deviations) > 0.1


def test_warping_next_frame_with_gt_flow_reproduces_frame():
    frames = _frames('day', 3, 96, 320, seed=1)
    for f0, f1 in zip(frames[:-1], frames[1:]):
        valid = f0.flow_valid
        warped = _warp_back(f1.rgb, f0.flow).astype(np.float64)
        warped_error = np.abs(warped - f0.rgb).mean(axis=-1)[valid].mean()
        unwarped_error = np.abs(f1.rgb.astype(np.float64) - f0.rgb).mean(axis=-1)[valid].mean()
        assert unwarped_error > 3.0, 'consecutive frames must differ for the test to mean much'
        assert warped_error < 0.3 * unwarped_error


def test_occlusion_marks_pixels_that_leave_the_view(day_frames):
    f = day_frames[0]
    height, width = f.depth.shape
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    target_u, target_v = u + f.flow[..., 0], v + f.flow[..., 1]
    outside = (target_u < 0) | (target_u > width - 1) | (target_v < 0) | (target_v > height - 1)
    assert outside.any() and f.occlusion[outside].all()
    assert 0.01 < f.occlusion.mean() < 0.6


def test_same_seed_same_frames_different_seed_different():
    a = _frames('overcast', 2, 32, 96, seed=5)
    b = _frames('overcast', 2, 32, 96, seed=5)
    c = _frames('overcast', 2, 32, 96, seed=6)
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.rgb, fb.rgb)
        assert np.array_equal(fa.depth, fb.depth)
        assert np.array_equal(fa.flow, fb.flow)
        assert np.array_equal(fa.pose_c2w, fb.pose_c2w)
    assert np.abs(a[0].rgb.astype(int) - c[0].rgb).mean() > 5


def test_longer_render_extends_the_same_drive():
    short = _frames('day', 2, 32, 96, seed=3)
    longer = list(Renderer('day', 600, 32, 96, seed=3).frames(0, 2))   # a 60 s drive
    for a, b in zip(short, longer):
        assert np.array_equal(a.rgb, b.rgb)
        assert np.array_equal(a.flow, b.flow)


def test_drive_turns_and_changes_speed():
    for seed in (0, 1, 2):
        world = Renderer('day', 300, 32, 96, seed=seed).world
        times = np.arange(0, 30.0, 0.1)
        poses = np.stack([world.camera_pose(t) for t in times])
        forward = poses[:, :3, 2]
        heading = np.unwrap(np.arctan2(forward[:, 1], forward[:, 0]))
        speed = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1) / 0.1
        assert np.ptp(heading) > math.radians(10), 'the road bends'
        assert speed.max() > 1.3 * speed.min() > 0, 'the ego car speeds up and slows down'
        pitch = np.arcsin(-forward[:, 2])
        assert 0 < np.ptp(pitch) < math.radians(6)


def test_every_domain_renders_and_looks_different():
    assert {'day', 'dusk', 'fog', 'overcast'} <= set(DOMAINS)
    assert all(isinstance(config, DomainConfig) for config in DOMAINS.values())
    means, contrast, focal = {}, {}, {}
    for name in DOMAINS:
        frame = _frames(name, 1, 48, 128, seed=0)[0]
        assert frame.domain == name
        means[name] = frame.rgb.reshape(-1, 3).mean(axis=0)
        grey = frame.rgb.mean(axis=-1)
        # Texture contrast on far-ish surfaces: standard deviation of pixels 25-60 m away.
        far = frame.depth_valid & (frame.depth > 25) & (frame.depth < 60)
        if DOMAINS[name].scene == 'street':     # a room has nothing 25 m away
            contrast[name] = grey[far].std()
        focal[name] = frame.K[0, 0]
    names = list(DOMAINS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if b == f'cluttered_{a}':
                # The same room and look, furnished otherwise: the geometry differs instead.
                assert not np.array_equal(_frames(a, 1, 48, 128, seed=0)[0].depth,
                                          _frames(b, 1, 48, 128, seed=0)[0].depth), (a, b)
                continue
            assert np.abs(means[a] - means[b]).max() > 5, (a, b)
    assert contrast['fog'] < 0.6 * contrast['day']
    assert means['night'].mean() < means['day'].mean() - 20
    assert len(set(np.round(list(focal.values()), 3))) >= 3, 'domains change the camera'
    heights = {name: config.camera_height_m for name, config in DOMAINS.items()}
    assert len(set(heights.values())) >= 3


def test_unknown_domain_names_the_valid_ones():
    with pytest.raises(ValueError, match='valid domains: day, dusk, fog, overcast'):
        next(render_sequence('moonbase', 1, 32, 96))
    with pytest.raises(ValueError, match='num_frames'):
        render_sequence('day', 0, 32, 96)


def test_synthetic_source_is_a_video_source():
    source = SyntheticSource('dusk', num_frames=4, height=32, width=96, seed=2, stride=2)
    assert isinstance(source, VideoSource) and len(source) == 2
    frames = list(source)
    assert [f.index for f in frames] == [0, 2]
    assert all(isinstance(f, Frame) and f.image.shape == (32, 96, 3) for f in frames)
    assert frames[1].stamp_ns - frames[0].stamp_ns == 200_000_000
    again = list(source)
    assert np.array_equal(again[1].image, frames[1].image)


def test_dataset_gives_depth_and_flow_samples():
    data = SyntheticDataset('fog', num_frames=3, height=32, width=96, seed=1)
    assert len(data.depth) == 3 and len(data.flow) == 2
    sample = data.depth[0]
    assert sample['rgb'].shape == (32, 96, 3) and sample['depth'].shape == (32, 96)
    assert sample['valid'].dtype == bool and sample['K'].shape == (3, 3)
    pair = data.flow[1]
    assert np.array_equal(pair['image1'], data.frames[1].rgb)
    assert np.array_equal(pair['image2'], data.frames[2].rgb)
    assert pair['flow'].shape == (32, 96, 2) and pair['valid'].shape == (32, 96)
    with pytest.raises(IndexError):
        data.flow[2]


def test_colour_codes():
    flow = np.zeros((4, 4, 2), np.float32)
    flow[0, 0] = (3.0, 0.0)
    flow[0, 1] = (-3.0, 0.0)
    color = flow_to_color(flow)
    assert tuple(color[1, 1]) == (255, 255, 255)          # zero flow is white
    assert not np.array_equal(color[0, 0], color[0, 1])    # direction changes the hue
    depth = np.array([[2.0, 50.0], [10.0, 400.0]])
    valid = np.array([[True, True], [True, False]])
    shown = depth_to_color(depth, valid).astype(int)
    assert shown[0, 0].sum() > shown[1, 0].sum() > shown[0, 1].sum()
    assert shown[1, 1].sum() == 0


def _run_cli(argv):
    return render_cli.main(render_cli.get_args_parser().parse_args(argv))


def test_cli_writes_folders_and_preview(tmp_path, capsys):
    out = tmp_path / 'synth'
    code = _run_cli(['--domain', 'day,fog', '--frames', '3', '--size', '64x32', '--seed', '4',
                     '--out', str(out), '--preview', '--no-progress'])
    assert code == 0
    printed = capsys.readouterr().out
    assert 'frames/s' in printed
    for name in ('day', 'fog'):
        root = out / name
        meta = json.loads((root / 'camera.json').read_text())
        assert meta['domain'] == name and meta['seed'] == 4 and meta['fps'] == 10.0
        assert (meta['width'], meta['height']) == (64, 32) and len(meta['frames']) == 3
        expected = list(render_sequence(name, 3, 32, 64, seed=4))
        assert np.allclose(meta['K'], expected[0].K)
        for record, frame in zip(meta['frames'], expected):
            assert np.allclose(record['pose_c2w'], frame.pose_c2w)
            assert record['stamp_ns'] == frame.stamp_ns
            rgb = cv2.imread(str(root / record['rgb']))[..., ::-1]
            assert np.array_equal(rgb, frame.rgb)
            depth = np.load(root / record['depth'])
            assert depth.dtype == np.float32 and np.array_equal(depth, frame.depth)
            flow = np.load(root / record['flow'])
            assert flow.shape == (32, 64, 2) and np.array_equal(flow, frame.flow)
            occlusion = cv2.imread(str(root / record['occlusion']), cv2.IMREAD_GRAYSCALE)
            assert np.array_equal(occlusion > 127, frame.occlusion)
        preview = out / f'preview_{name}.png'
        assert f'preview: {preview}' in printed
        sheet = cv2.imread(str(preview))
        assert sheet.shape[0] >= 3 * 32 and sheet.shape[1] >= 3 * 64
    assert not list(out.rglob('*.tmp'))
    # Existing output is kept unless --overwrite is given.
    assert _run_cli(['--domain', 'day', '--frames', '2', '--size', '64x32', '--out', str(out),
                     '--no-progress']) == 2
    assert 'already exists' in capsys.readouterr().err
    assert _run_cli(['--domain', 'day', '--frames', '2', '--size', '64x32', '--out', str(out),
                     '--no-progress', '--overwrite']) == 0
    assert len(list((out / 'day' / 'rgb').iterdir())) == 2


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_cli_writes_a_bag(tmp_path, storage):
    out = tmp_path / 'bags'
    assert _run_cli(['--domain', 'night', '--frames', '2', '--width', '48', '--height', '24',
                     '--format', 'bag', '--storage', storage, '--out', str(out),
                     '--no-progress']) == 0
    bag = out / 'night'
    topics = bag_io.list_topics(bag)
    assert topics == {'/camera/image_raw': 'sensor_msgs/msg/Image',
                      '/camera/camera_info': 'sensor_msgs/msg/CameraInfo',
                      '/camera/depth_gt': 'sensor_msgs/msg/Image'}
    expected = list(render_sequence('night', 2, 24, 48, seed=0))
    images = list(bag_io.read_messages(bag, '/camera/image_raw'))
    depths = list(bag_io.read_messages(bag, '/camera/depth_gt'))
    assert len(images) == len(depths) == 2
    for (_, _, image_msg), (_, _, depth_msg), frame in zip(images, depths, expected):
        assert image_msg.encoding == 'rgb8' and depth_msg.encoding == '32FC1'
        assert bag_io.header_stamp_ns(image_msg) == frame.stamp_ns
        assert bag_io.header_stamp_ns(depth_msg) == frame.stamp_ns
        rgb = np.asarray(image_msg.data).reshape(24, 48, 3)
        assert np.array_equal(rgb, frame.rgb)
        depth = bag_io.decode_depth_msg(depth_msg)
        assert np.array_equal(np.isnan(depth), ~frame.depth_valid)
        assert np.array_equal(depth[frame.depth_valid], frame.depth[frame.depth_valid])
    info = bag_io.read_camera_info(bag, '/camera/camera_info')
    assert np.allclose(info.K, expected[0].K) and (info.width, info.height) == (48, 24)
    meta = json.loads((bag / 'camera.json').read_text())
    assert meta['format'] == 'bag' and len(meta['frames']) == 2


def test_cli_rejects_unknown_domain_and_bad_size(tmp_path, capsys):
    assert _run_cli(['--domain', 'mars', '--out', str(tmp_path), '--no-progress']) == 2
    assert 'valid domains' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        render_cli.get_args_parser().parse_args(['--size', '320by96', '--out', str(tmp_path)])
    assert not list(Path(tmp_path).iterdir())
