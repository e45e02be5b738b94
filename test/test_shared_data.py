"""Loaders for ../shared/data (skipped, naming the folder, where it is absent)."""
import numpy as np
import pytest

from structflow_ros.data import shared_data as sd
from structflow_ros.data.sources import VideoSource


@pytest.mark.parametrize('name, size, fx', [('KITTI_sequence_1', (370, 1226), 707.0912),
                                            ('KITTI_sequence_2', (376, 1241), 718.856)])
def test_kitti_odometry_clips(shared_data, name, size, fx):
    clip = sd.load_kitti_odometry_clip(name, root=shared_data)
    assert isinstance(clip.frames, VideoSource)
    assert len(clip.frames) == len(clip.poses) == 51
    assert clip.image_size == size and clip.P0.shape == (3, 4)
    assert clip.K[0, 0] == pytest.approx(fx) and clip.K[1, 1] == pytest.approx(fx)
    assert 0 < clip.K[0, 2] < size[1] and 0 < clip.K[1, 2] < size[0]
    np.testing.assert_allclose(clip.poses[0], np.eye(4), atol=1e-6)
    rotations = clip.poses[:, :3, :3]
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), rotations.shape), atol=1e-4)
    steps = np.linalg.norm(np.diff(clip.poses[:, :3, 3], axis=0), axis=1)
    assert 0.8 < np.median(steps) < 1.5  # metres per frame at 10 Hz driving (SOURCE.txt)
    frames = list(clip.frames)
    assert len(frames) == 51 and frames[0].image.shape == size + (3,)
    assert frames[1].stamp_ns - frames[0].stamp_ns == 100_000_000


def test_rubberwhale_flow(shared_data):
    pair = sd.load_rubberwhale(root=shared_data)
    assert pair.frame0.shape == pair.frame1.shape == (388, 584, 3)
    assert pair.flow.shape == (388, 584, 2) and pair.flow.dtype == np.float32
    assert 0.97 < pair.valid.mean() < 0.99  # ~1.6 % unknown (SOURCE.txt)
    assert np.all(pair.flow[~pair.valid] == 0) and np.abs(pair.flow).max() < 20
    zero_flow_epe = np.linalg.norm(pair.flow[pair.valid], axis=1).mean()
    assert zero_flow_epe == pytest.approx(1.256, abs=0.002)  # design.md's reference number


def test_read_flo_marks_unknown_and_rejects_bad_files(tmp_path):
    flow = np.array([[[1.5, -2.0], [1e9, 0.0]], [[0.0, 3.0], [4.0, -1e10]]], np.float32)
    header = np.array([sd.FLO_TAG], '<f4').tobytes() + np.array([2, 2], '<i4').tobytes()
    (tmp_path / 'a.flo').write_bytes(header + flow.astype('<f4').tobytes())
    read, valid = sd.read_flo(tmp_path / 'a.flo')
    np.testing.assert_array_equal(valid, [[True, False], [True, False]])
    np.testing.assert_array_equal(read[valid], flow[valid])
    (tmp_path / 'short.flo').write_bytes(header + flow.tobytes()[:-4])
    with pytest.raises(sd.SharedDataError, match='truncated'):
        sd.read_flo(tmp_path / 'short.flo')
    (tmp_path / 'bad.flo').write_bytes(b'PNG!' + bytes(20))  # the real tag reads 'PIEH'
    with pytest.raises(sd.SharedDataError, match='not a .flo'):
        sd.read_flo(tmp_path / 'bad.flo')


@pytest.mark.parametrize('dataset, size, depth_range', [('kitti', (375, 1242), (1.0, 90.0)),
                                                         ('nyu', (480, 640), (0.3, 10.0))])
def test_kitti_and_nyu_depth_frames(shared_data, dataset, size, depth_range):
    frames = sd.load_depth_frames(dataset, root=shared_data)
    assert len(frames) == 3
    for frame in frames:
        assert frame.image.shape == size + (3,) and frame.depth.shape == size
        assert frame.depth.dtype == np.float32
        valid = frame.depth[frame.valid]
        assert depth_range[0] < valid.min() and valid.max() < depth_range[1]
        assert 0.1 < frame.valid.mean() < 0.9
        assert frame.K[0, 0] > 400 and 0 < frame.K[0, 2] < size[1] and 0 < frame.K[1, 2] < size[0]
    assert frames[0].max_depth == (80.0 if dataset == 'kitti' else 10.0)


def test_tum_pair(shared_data):
    frames = sd.load_tum_pair(root=shared_data)
    assert len(frames) == 2
    for frame in frames:
        assert frame.image.shape == (480, 640, 3) and frame.depth.shape == (480, 640)
        assert 1.0 < np.median(frame.depth[frame.valid]) < 2.0  # median 1.5 m (SOURCE.txt)
        assert frame.depth.max() < 15.0 and frame.K[0, 0] == pytest.approx(520.9)
    assert not np.array_equal(frames[0].image, frames[1].image)


def test_handheld_clips(shared_data):
    sizes = {'VGA': (480, 640), '720p': (720, 1280), '1080p': (1080, 1920)}
    for name, size in sizes.items():
        clip = sd.load_handheld_clip(name, root=shared_data)
        assert len(clip) == 5
        first = next(iter(clip))
        assert first.image.shape == size + (3,)
    assert len(sd.load_handheld_clip('720p', root=shared_data, include_wide_baseline=True)) == 6


@pytest.mark.parametrize('name', list(sd.STEREO_SCENES))
def test_middlebury_stereo(shared_data, name):
    pair = sd.load_middlebury_stereo(name, root=shared_data)
    assert pair.left.shape == pair.right.shape and pair.disparity.shape == pair.left.shape[:2]
    assert 0.75 < pair.valid.mean() <= 1.0
    assert 5 < pair.disparity.max() < 0.3 * pair.left.shape[1]


def test_middlebury_depth_frames_are_inverse_disparity_in_median_units(shared_data):
    from structflow_ros.data.real_depth_eval import MIDDLEBURY_CAP, load_middlebury
    frames = load_middlebury(shared_data)
    assert [f.name for f in frames] == list(sd.STEREO_SCENES)
    for frame in frames:
        pair = sd.load_middlebury_stereo(frame.name, root=shared_data)
        np.testing.assert_array_equal(frame.valid, pair.valid)
        assert np.median(frame.depth[frame.valid]) == pytest.approx(1.0, rel=1e-3)
        product = frame.depth[frame.valid] * pair.disparity[frame.valid]  # constant: depth ~ 1/d
        assert product.std() < 1e-4 * product.mean()
        # Objects well in front of the scene's middle, nothing beyond the cap.
        depth = frame.depth[frame.valid]
        assert depth.min() < 0.6 and 1.0 <= depth.max() < MIDDLEBURY_CAP


def test_missing_folders_are_named(tmp_path, monkeypatch):
    with pytest.raises(sd.SharedDataError, match=f'{tmp_path}/middlebury_flow_rubberwhale'):
        sd.load_rubberwhale(root=tmp_path)
    monkeypatch.setenv('STRUCTFLOW_SHARED_DATA', str(tmp_path / 'elsewhere'))
    assert sd.default_root() == tmp_path / 'elsewhere'
    with pytest.raises(sd.SharedDataError, match='elsewhere/tum_rgbd_pair is missing'):
        sd.load_tum_pair()
    with pytest.raises(ValueError, match='choose from KITTI_sequence_1'):
        sd.load_kitti_odometry_clip('KITTI_sequence_9', root=tmp_path)
