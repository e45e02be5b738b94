"""Real-camera artefacts on rendered frames (data/camera_artefacts.py, --camera-artefacts)."""
import numpy as np
import pytest
import torch

from structflow_ros.data.camera_artefacts import CameraArtefacts, add_camera_artefacts

# Every artefact off: vignetting 0, no blur, no noise, gamma 1, JPEG at quality 100.
NOTHING = CameraArtefacts(prob=1.0, vignetting=(0, 0), blur_sigma=(0, 0), noise=(0, 0),
                          gamma=(1, 1), jpeg_quality=(100, 100))


def textured_frame(seed=0, height=64, width=96):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, size=(3, height // 16, width // 16)).astype(np.float32)
    # (3, h, w) -> (3, H, W): 16x16 blocks, JPEG's chroma macroblocks, so that JPEG at quality
    # 100 keeps them nearly exact
    return torch.from_numpy(np.kron(base, np.ones((16, 16), np.float32)))


def test_shape_range_and_repeatable():
    frames = [textured_frame(0), textured_frame(1)]
    config = CameraArtefacts(prob=1.0)
    first = add_camera_artefacts(frames, np.random.default_rng(3), config)
    again = add_camera_artefacts(frames, np.random.default_rng(3), config)
    for out, same, frame in zip(first, again, frames):
        assert out.shape == frame.shape and out.dtype == torch.float32
        assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
        assert torch.equal(out, same)
        assert float((out - frame).abs().mean()) > 0.005  # something was drawn


def test_nothing_drawn_keeps_the_frame():
    frame = textured_frame()
    out, = add_camera_artefacts([frame], np.random.default_rng(0), NOTHING)
    # What is left: uint8 rounding and JPEG's half-resolution chroma, even at quality 100.
    assert float((out - frame).abs().mean()) < 4 / 255


def test_one_camera_per_sample_noise_per_frame():
    frame = textured_frame()
    noiseless = CameraArtefacts(prob=1.0, noise=(0, 0))
    a, b = add_camera_artefacts([frame, frame.clone()], np.random.default_rng(5), noiseless)
    assert torch.equal(a, b)  # same optics, tone curve and JPEG quality on both frames
    noisy = CameraArtefacts(prob=1.0, noise=(0.02, 0.02))
    a, b = add_camera_artefacts([frame, frame.clone()], np.random.default_rng(5), noisy)
    assert 0.005 < float((a - b).abs().mean()) < 0.05  # the sensor draws its noise per frame


def test_vignetting_darkens_the_corners_only():
    grey = torch.full((3, 64, 96), 0.6)
    config = CameraArtefacts(prob=1.0, vignetting=(0.4, 0.4), blur_sigma=(0, 0), noise=(0, 0),
                             gamma=(1, 1), jpeg_quality=(100, 100))
    out, = add_camera_artefacts([grey], np.random.default_rng(0), config)
    centre, corner = float(out[:, 31:33, 47:49].mean()), float(out[:, :2, :2].mean())
    assert centre == pytest.approx(0.6, abs=0.01)
    assert corner == pytest.approx(0.6 * 0.6, abs=0.02)


def test_blur_removes_fine_texture():
    checker = torch.from_numpy(np.indices((64, 96)).sum(0) % 2).float().expand(3, 64, 96)
    config = CameraArtefacts(prob=1.0, vignetting=(0, 0), blur_sigma=(1.0, 1.0), noise=(0, 0),
                             gamma=(1, 1), jpeg_quality=(100, 100))
    out, = add_camera_artefacts([checker], np.random.default_rng(0), config)
    assert float(checker.std()) > 0.45 and float(out.std()) < 0.1


@pytest.mark.parametrize('field, value, message', [
    ('prob', 1.5, 'prob must be in'), ('noise', (0.03, 0.01), 'noise must be a range'),
    ('gamma', (0.0, 1.0), 'gamma must be positive'), ('jpeg_quality', (0, 90), 'within 1-100')])
def test_bad_ranges_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        CameraArtefacts(**{field: value})


def test_depth_pairs_get_artefacts_on_the_frames_only():
    from structflow_ros.data.synthetic import render_sequence
    from structflow_ros.training.datasets import DepthPairDataset
    sequence = list(render_sequence('room', 3, 64, 96, seed=4))
    clean = list(DepthPairDataset([sequence], seed=1, flip=False))
    drawn = list(DepthPairDataset([sequence], seed=1, flip=False,
                                  camera_artefacts=CameraArtefacts(prob=1.0)))
    never = list(DepthPairDataset([sequence], seed=1, flip=False,
                                  camera_artefacts=CameraArtefacts(prob=0.0)))
    assert len(clean) == len(drawn) == 2
    for plain, changed, unchanged in zip(clean, drawn, never):
        assert float((plain['frame0'] - changed['frame0']).abs().mean()) > 0.005
        assert torch.equal(plain['frame0'], unchanged['frame0'])
        assert torch.equal(plain['depth_gt'], changed['depth_gt'])
        assert torch.equal(plain['depth_valid'], changed['depth_valid'])
        assert torch.equal(plain['K'], changed['K'])
