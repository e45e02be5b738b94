"""The two-view geometry teacher (data/teacher.py), its cache and finetuning on its labels.

Scenes are rendered by the synthetic world (exact depth and poses) or built analytically: a
textured image warped by the flow of a known camera motion over a known depth, so that the
teacher's own DIS flow, motion fit and triangulation all run on real pixels.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from structflow_ros.data import teacher as T


def rendered(domain='day', frames=3, seed=5, size=(192, 384)):
    from structflow_ros.data.synthetic import render_sequence
    return list(render_sequence(domain, frames, *size, seed=seed))


def texture(height, width, seed=0):
    """Random texture with detail at several scales (DIS needs gradients everywhere)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width), np.float32)
    for cell, weight in ((2, 0.4), (6, 0.35), (20, 0.25)):
        noise = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
        big = cv2.resize(noise, (width + 2 * cell, height + 2 * cell),
                         interpolation=cv2.INTER_CUBIC)
        image += weight * big[cell:cell + height, cell:cell + width]
    grey = np.clip(image * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def motion_flow(depth, K, R, t):
    """Exact flow (H, W, 2) of the motion X1 = R X0 + t for a depth map (H, W)."""
    height, width = depth.shape
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([grid_x, grid_y, np.ones_like(grid_x)], -1) @ np.linalg.inv(K).T
    moved = (rays * depth[..., None]) @ R.T + t
    pixels = moved @ K.T
    return np.stack([pixels[..., 0] / pixels[..., 2] - grid_x,
                     pixels[..., 1] / pixels[..., 2] - grid_y], -1).astype(np.float32)


def warp_by_flow(image, flow):
    """The second view: image1(p + f(p)) = image0(p), by pulling with -f (smooth flows)."""
    height, width = flow.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                                 np.arange(height, dtype=np.float32))
    return cv2.remap(image, grid_x - flow[..., 0], grid_y - flow[..., 1], cv2.INTER_CUBIC,
                     borderMode=cv2.BORDER_REFLECT)


def scaled_abs_rel(label, depth, mask=None):
    keep = label.valid & np.isfinite(depth) & (depth > 0)
    if mask is not None:
        keep &= mask
    scale = np.median(depth[keep]) / np.median(label.depth[keep])
    return float(np.mean(np.abs(label.depth[keep] * scale - depth[keep]) / depth[keep]))


def test_rendered_drive_depth_is_recovered_up_to_scale():
    frames = rendered()
    label = T.label_frame([f.rgb for f in frames], 1, frames[1].K)
    assert not label.stats.get('abstained'), label.stats
    truth = np.where(frames[1].depth_valid, frames[1].depth, np.nan)
    # One median per frame and no other fit: the teacher's target on the synthetic drives
    # (kept-pixel AbsRel <= 0.10 at >= 5 % density; docs/real_depth_teacher.md).
    assert label.stats['density'] >= 0.05
    assert scaled_abs_rel(label, truth) < 0.12
    assert np.median(label.depth[label.valid]) == pytest.approx(1.0, rel=0.05)
    assert ((label.confidence > 0) == label.valid).all()
    assert label.confidence.max() <= 1.0


def analytic_scene(height=160, width=320, focal=200.0, seed=1):
    K = T.intrinsics_from_focal(focal, height, width)
    rows = np.linspace(0, 1, height)[:, None]
    depth = 6.0 + 20.0 * (1 - rows) ** 2 + 2.0 * np.sin(np.linspace(0, 6, width))[None]
    return K, depth * np.ones((height, width)), texture(height, width, seed)


def test_an_independently_moving_object_is_masked():
    K, depth, image0 = analytic_scene()
    R = cv2.Rodrigues(np.array([0.0, 0.01, 0.0]))[0]
    flows = [motion_flow(depth, K, R, np.array([0.0, 0.0, d])) for d in (-0.6, 0.6)]
    # A crossing object: a block that moves down-left across the epipolar lines.
    obj = np.zeros(depth.shape, bool)
    obj[50:110, 200:270] = True
    views = []
    for flow, sign in zip(flows, (-1, 1)):
        flow = flow.copy()
        flow[obj] += np.array([-5.0, 4.0], np.float32) * sign
        views.append(warp_by_flow(image0, cv2.GaussianBlur(flow, (0, 0), 1.5)))
    label = T.label_frame([views[0], image0, views[1]], 1, K)
    assert not label.stats.get('abstained'), label.stats
    inner = np.zeros_like(obj)
    inner[58:102, 208:262] = True
    static = ~obj
    assert label.valid[static].mean() > 0.2
    assert label.valid[inner].mean() < 0.02
    assert scaled_abs_rel(label, depth, static) < 0.1


def test_zero_parallax_pairs_give_no_labels():
    K, _, image = analytic_scene()
    # The same frame again: the camera stood still.
    still = T.label_frame([image, image, image], 1, K)
    assert still.stats['abstained'] == 'static' and not still.valid.any()
    # A pure rotation moves every pixel but gives no parallax: nothing can be triangulated.
    flows = []
    for angle in (-0.03, 0.03):
        H = K @ cv2.Rodrigues(np.array([0.0, angle, 0.0]))[0] @ np.linalg.inv(K)
        flows.append(cv2.warpPerspective(image, H, image.shape[1::-1],
                                         borderMode=cv2.BORDER_REFLECT))
    turned = T.label_frame([flows[0], image, flows[1]], 1, K)
    assert turned.stats.get('median_flow_px', 0) > 3  # it did move
    assert turned.valid.mean() < 0.002


def test_self_calibration_recovers_a_known_focal():
    height, width, focal = 160, 320, 230.0
    K = T.intrinsics_from_focal(focal, height, width)
    rng = np.random.default_rng(3)
    pairs = []
    for k in range(6):
        rows = np.linspace(0, 1, height)[:, None]
        depth = 4.0 + 12.0 * rng.random() + 10.0 * (1 - rows) + \
            3.0 * np.cos(np.linspace(0, 4 + k, width))[None]
        # A turning, swaying camera: the rotation's flow is what shows the focal.
        rotation = cv2.Rodrigues(rng.normal(0, 0.04, 3))[0]
        translation = np.array([rng.normal(0, 0.3), rng.normal(0, 0.1), 0.8])
        flow = motion_flow(depth * np.ones((height, width)), K, rotation, translation)
        flow += rng.normal(0, 0.1, flow.shape).astype(np.float32)
        pairs.append((0, 1, flow, None))
    found, details = T.self_calibrate(None, pairs=pairs, size=(height, width))
    assert not details['prior']
    assert found == pytest.approx(focal, rel=0.1)


def test_a_clip_that_never_turns_gets_the_prior_focal():
    height, width = 120, 240
    K = T.intrinsics_from_focal(180.0, height, width)
    depth = np.full((height, width), 10.0) + np.linspace(0, 8, width)[None]
    flow = motion_flow(depth, K, np.eye(3), np.array([0.0, 0.0, 1.0]))
    found, details = T.self_calibrate(None, pairs=[(0, 1, flow, None)] * 3,
                                      size=(height, width))
    assert details['prior'] and found == pytest.approx(T.PRIOR_FOCAL_WIDTHS * width)


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    frames = rendered(frames=5, size=(128, 256))
    labels, K, description = T.label_clip([f.rgb for f in frames], frames[0].K)
    out = tmp_path_factory.mktemp('teacher')
    spec = 'synthetic/day#stride=1'
    T.write_cache(out / T.cache_name(spec), spec, [f.rgb for f in frames], labels, K,
                  T.TeacherConfig(), description)
    return out, labels, frames


def test_cache_round_trips(cache_dir):
    out, labels, frames = cache_dir
    (path,) = T.cache_files([str(out)])
    clip = T.read_cache(path)
    assert clip.meta['spec'] == 'synthetic/day#stride=1' and clip.meta['intrinsics'] == \
        'calibrated'
    assert list(clip.index) == sorted(labels) and len(labels) == 3  # the two end frames abstain
    np.testing.assert_array_equal(clip.images[0], frames[0].rgb)
    first = labels[int(clip.index[0])][1]
    np.testing.assert_allclose(clip.depth[0].astype(np.float32), first.depth, rtol=1e-3)
    assert int(clip.partner[0]) == int(clip.index[0]) + 1
    np.testing.assert_allclose(clip.K, frames[0].K)


def test_a_corrupt_cache_is_refused_by_name(cache_dir, tmp_path):
    (path,) = T.cache_files([str(cache_dir[0])])
    broken = tmp_path / 'broken.teacher.npz'
    broken.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(T.TeacherCacheError, match='broken.teacher.npz'):
        T.read_cache(broken)
    other = tmp_path / 'other.teacher.npz'
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(str(arrays['meta']))
    arrays['meta'] = np.array(json.dumps(dict(meta, version=99)))
    np.savez(other, **arrays)
    with pytest.raises(T.TeacherCacheError, match='other.teacher.npz is version 99'):
        T.read_cache(other)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(T.TeacherCacheError, match='holds no'):
        T.cache_files([str(tmp_path / 'empty')])


def test_finetuning_on_teacher_labels_runs_at_tiny_sizes(cache_dir, tmp_path):
    from structflow_ros.cli import finetune
    from structflow_ros.core import read_checkpoint
    out = tmp_path / 'ft'
    argv = ['--scratch', '--teacher', str(cache_dir[0]), '--steps', '2', '--log-every', '1',
            '--height', '64', '--width', '96', '--batch-size', '2', '--device', 'cpu',
            '--no-progress', '--threads', '1', '--out', str(out)]
    assert finetune.main(finetune.get_args_parser().parse_args(argv)) == 0
    history = [json.loads(line) for line in (out / 'history.jsonl').read_text().splitlines()]
    assert all(h['loss_depth_teacher'] > 0 and h['depth_teacher_pixels'] > 0 for h in history)
    assert all(h['loss_flow'] > 0 for h in history)  # the teacher's pairs train flow too
    payload = read_checkpoint(out / 'last.pt')
    assert payload['train_config']['teacher_labelled_frames'] == 3
    assert 'synthetic/day#stride=1' in payload['trained_on']


def test_sparse_labels_downsample_in_log_depth():
    from structflow_ros.training.datasets import downsample_labels
    depth = np.zeros((4, 4), np.float32)
    depth[:2, :2] = [[1.0, 4.0], [1.0, 4.0]]
    depth[2:, 2:] = 5.0
    depth[2, 0] = 3.0  # one labelled pixel of four: too little to label the output pixel
    out, valid = downsample_labels(depth, depth > 0, (2, 2))
    assert valid.tolist() == [[True, False], [False, True]]
    assert out[0, 0] == pytest.approx(2.0)  # geometric mean of 1, 4, 1, 4
    assert out[1, 1] == pytest.approx(5.0)


def test_teacher_command_labels_an_image_folder_and_names_a_bad_source(tmp_path, capsys):
    from structflow_ros.cli import teacher as command
    frames = rendered(frames=4, size=(128, 256), seed=8)
    folder = tmp_path / 'drive'
    folder.mkdir()
    for index, frame in enumerate(frames):
        cv2.imwrite(str(folder / f'{index:04d}.png'), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR))
    out = tmp_path / 'cache'
    focal = float(frames[0].K[0, 0])
    argv = [str(folder), str(tmp_path / 'missing.mp4'), '--out', str(out), '--focal',
            str(focal), '--sheet', '--no-progress']
    assert command.main(command.get_args_parser().parse_args(argv)) == 1  # one source failed
    captured = capsys.readouterr()
    assert 'missing.mp4' in captured.err
    line = json.loads(captured.out.splitlines()[0])
    assert line['labelled'] == 2 and line['intrinsics'] == 'given (--focal)'
    assert line['focal_px'] == pytest.approx(focal, abs=0.1)
    clip = T.read_cache(line['cache'])
    np.testing.assert_array_equal(clip.images[1], frames[1].rgb)
    assert Path(line['cache']).with_suffix('').with_suffix('.png').stat().st_size > 1000
    # Cached clips are skipped on the next run (the stage resumes)...
    assert command.main(command.get_args_parser().parse_args(argv[:1] + argv[2:])) == 0
    assert 'cached in' in capsys.readouterr().out
    # ...unless they were labelled with other settings.
    assert command.main(command.get_args_parser().parse_args(
        argv[:1] + argv[2:] + ['--min-parallax-px', '4'])) == 0
    assert 'relabelling' in capsys.readouterr().out
    assert T.read_cache(line['cache']).meta['config']['min_parallax_px'] == 4.0


def test_a_still_uncalibrated_clip_gets_the_prior_and_no_labels():
    _, _, image = analytic_scene()
    labels, K, description = T.label_clip([image] * 4, None)
    assert labels == {} and description['abstained'] == {'static': 2, 'clip_end': 2}
    assert description['self_calibration']['prior']
    assert K[0, 0] == pytest.approx(T.PRIOR_FOCAL_WIDTHS * image.shape[1])


def test_finetune_refuses_synthetic_data_without_its_depth_loss(cache_dir, tmp_path, capsys):
    from structflow_ros.cli import finetune
    argv = ['--scratch', '--teacher', str(cache_dir[0]), '--data', 'synthetic:day:4:1',
            '--steps', '1', '--out', str(tmp_path / 'x'), '--device', 'cpu', '--no-progress']
    assert finetune.main(finetune.get_args_parser().parse_args(argv)) == 2
    assert 'add --supervised and/or --self-supervised' in capsys.readouterr().err


def test_a_clip_computes_each_pairs_flow_once_with_the_same_labels():
    frames = [f.rgb for f in rendered(frames=4, size=(96, 192), seed=9)]
    K = T.intrinsics_from_focal(110.0, 96, 192)
    calls = []
    original = T.dis_flow_both_ways

    def counted(*args):
        calls.append(1)
        return original(*args)

    shared = T.PairFlows(frames)
    try:
        T.dis_flow_both_ways = counted
        labels = [T.label_frame(frames, i, K, flows=shared) for i in (1, 2)]
    finally:
        T.dis_flow_both_ways = original
    assert len(calls) == 3  # pairs (0, 1), (1, 2), (2, 3): (1, 2) serves both frames
    for i, label in zip((1, 2), labels):
        alone = T.label_frame(frames, i, K)  # its own flows, both pairs computed afresh
        np.testing.assert_array_equal(label.depth, alone.depth)
        assert label.stats == alone.stats
