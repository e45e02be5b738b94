"""Warping, back-projection, rigid flow and pose maths of structflow_ros.core.geometry."""
import math
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from structflow_ros.core.geometry import (NonFiniteError, backproject, flow_warp, pixel_grid,
                                          pose_vec_to_mat, project, reproject_warp, rigid_flow,
                                          scale_intrinsics)

REPO_ROOT = Path(__file__).resolve().parents[1]


def textured(batch=1, channels=3, height=24, width=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, height, width, generator=generator)


def intrinsics(batch=1, fx=40.0, fy=36.0, cx=15.5, cy=11.5):
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K.expand(batch, 3, 3).clone()


def test_zero_flow_returns_the_image():
    image = textured(batch=2)
    warped, valid = flow_warp(image, torch.zeros(2, 2, 24, 32))
    assert torch.allclose(warped, image, atol=1e-6)
    assert valid.shape == (2, 1, 24, 32) and bool(valid.all())


def test_integer_shift_warps_back_exactly_and_mask_marks_the_border():
    image = textured(height=20, width=30)
    du, dv = 3, -2
    flow = torch.zeros(1, 2, 20, 30)
    flow[:, 0], flow[:, 1] = du, dv
    warped, valid = flow_warp(image, flow)
    # out(y, x) = image(y + dv, x + du) where that lies inside the image.
    expected_valid = torch.zeros(20, 30, dtype=torch.bool)
    expected_valid[-dv:, :30 - du] = True
    assert torch.equal(valid[0, 0].bool(), expected_valid)
    assert torch.allclose(warped[0, :, -dv:, :30 - du], image[0, :, :20 + dv, du:], atol=1e-6)
    # Outside the valid region 'border' padding repeats the edge, so it differs from a shift.
    assert not torch.allclose(warped[0, :, :, -1], image[0, :, :, -1])


def test_subpixel_shift_of_a_ramp_is_exact():
    """Bilinear sampling is exact on a linear image: a 0.25 px shift adds 0.25 * slope."""
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 1, 8, 16).contiguous()
    flow = torch.zeros(1, 2, 8, 16)
    flow[:, 0] = 0.25
    warped, valid = flow_warp(ramp, flow)
    assert torch.allclose(warped[..., :-1], ramp[..., :-1] + 0.25, atol=1e-5)
    assert not bool(valid[..., -1].any()) and bool(valid[..., :-1].all())


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_flow_raises_before_sampling(bad):
    flow = torch.zeros(1, 2, 8, 8)
    flow[0, 1, 3, 4] = bad
    with pytest.raises(NonFiniteError, match='flow'):
        flow_warp(textured(height=8, width=8), flow)


def test_nan_flow_in_forward_backward_is_an_exception_not_a_dead_process():
    """grid_sample's CPU backward segfaults on a NaN grid; the guard must stop it first."""
    script = textwrap.dedent('''
        import torch
        from structflow_ros.core.geometry import NonFiniteError, flow_warp
        image = torch.rand(1, 3, 16, 16, requires_grad=True)
        flow = torch.zeros(1, 2, 16, 16, requires_grad=True)
        nan = torch.zeros(1, 2, 16, 16)
        nan[0, 0, 5, 5] = float('nan')
        try:
            warped, valid = flow_warp(image, flow + nan, padding_mode='border')
            (warped * valid).sum().backward()
        except NonFiniteError as error:
            print('caught NonFiniteError:', error)
        else:
            print('no exception')
    ''')
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert 'caught NonFiniteError' in result.stdout
    assert 'segfault' in result.stdout  # the message says why NaN is refused


def test_backproject_then_project_with_identity_pose_returns_the_pixel_grid():
    depth = 1.0 + 5.0 * textured(batch=2, channels=1)
    K = intrinsics(batch=2)
    points = backproject(depth, torch.linalg.inv(K))
    assert points.shape == (2, 3, 24 * 32)
    assert torch.allclose(points[:, 2], depth.reshape(2, -1))
    coords = project(points, K, torch.eye(4).expand(2, 4, 4), shape=(24, 32))
    assert torch.allclose(coords, pixel_grid(24, 32).expand(2, 2, 24, 32), atol=1e-4)


@pytest.mark.parametrize('translation', [(0.2, -0.1, 0.0), (0.1, 0.05, 0.5)])
def test_rigid_flow_on_a_fronto_parallel_plane_matches_the_analytic_value(translation):
    fx, fy, cx, cy, Z = 40.0, 36.0, 15.5, 11.5, 4.0
    tx, ty, tz = translation
    K = intrinsics(fx=fx, fy=fy, cx=cx, cy=cy)
    T = pose_vec_to_mat(torch.zeros(1, 3), torch.tensor([translation]))
    flow = rigid_flow(torch.full((1, 1, 24, 32), Z), K, T)
    grid = pixel_grid(24, 32)
    # X = Z K^-1 p moves to X + t: u' = ((u - cx) Z + fx tx) / (Z + tz) + cx (same for v).
    expected_u = ((grid[0] - cx) * Z + fx * tx) / (Z + tz) + cx - grid[0]
    expected_v = ((grid[1] - cy) * Z + fy * ty) / (Z + tz) + cy - grid[1]
    assert torch.allclose(flow[0, 0], expected_u, atol=1e-4)
    assert torch.allclose(flow[0, 1], expected_v, atol=1e-4)
    if tz == 0:  # pure lateral motion: constant flow f t / Z
        assert torch.allclose(flow[0, 0], torch.full((24, 32), fx * tx / Z), atol=1e-4)


def test_pose_vec_to_mat_inverse_and_rotation_properties():
    generator = torch.Generator().manual_seed(1)
    axis_angle = torch.randn(4, 3, generator=generator)
    axis_angle[0] = 0.0  # the identity must work too
    translation = torch.randn(4, 3, generator=generator)
    T = pose_vec_to_mat(axis_angle, translation)
    T_inv = pose_vec_to_mat(axis_angle, translation, invert=True)
    eye = torch.eye(4).expand(4, 4, 4)
    assert torch.allclose(T @ T_inv, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.inv(T), T_inv, atol=1e-5)
    R = T[:, :3, :3]
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(4, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(4), atol=1e-5)
    quarter_turn_z = pose_vec_to_mat(torch.tensor([[0.0, 0.0, math.pi / 2]]), torch.zeros(1, 3))
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(quarter_turn_z[0, :3, :3], expected, atol=1e-6)


def test_pose_gradient_is_finite_at_zero_rotation():
    axis_angle = torch.zeros(1, 3, requires_grad=True)
    pose_vec_to_mat(axis_angle, torch.zeros(1, 3)).sum().backward()
    assert bool(torch.isfinite(axis_angle.grad).all())


def test_reproject_warp_identity_pose_and_nan_depth():
    image = textured()
    depth = 2.0 + textured(channels=1, seed=3)
    warped, valid = reproject_warp(image, depth, intrinsics(), torch.eye(4)[None])
    assert torch.allclose(warped, image, atol=1e-4) and bool(valid.all())
    depth[0, 0, 2, 2] = float('nan')
    with pytest.raises(NonFiniteError, match='depth'):
        reproject_warp(image, depth, intrinsics(), torch.eye(4)[None])


def test_reproject_warp_masks_points_behind_the_source_camera():
    depth = torch.full((1, 1, 24, 32), 1.0)
    T = pose_vec_to_mat(torch.zeros(1, 3), torch.tensor([[0.0, 0.0, -2.0]]))  # plane behind
    warped, valid = reproject_warp(textured(), depth, intrinsics(), T)
    assert not bool(valid.any()) and bool(torch.isfinite(warped).all())


def test_scale_intrinsics():
    K = intrinsics()
    half = scale_intrinsics(K, 0.5, 0.25)
    assert torch.allclose(half[0], torch.tensor([[20.0, 0, 7.75], [0, 9.0, 2.875], [0, 0, 1]]))
    with pytest.raises(ValueError, match='positive'):
        scale_intrinsics(K, 0.0, 1.0)


def test_pixel_grid_is_shared_read_only_and_safe_across_threads_and_inference_mode():
    with torch.inference_mode():
        first = pixel_grid(7, 5)  # created inside inference mode ...
    weight = torch.ones(1, requires_grad=True)
    (first * weight).sum().backward()  # ... and autograd may still save it for backward
    assert weight.grad is not None
    results = []
    threads = [threading.Thread(target=lambda: results.append(pixel_grid(7, 5)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(r, first) for r in results)
    assert torch.equal(first[0, 0], torch.arange(5.0)) and torch.equal(first[1, :, 0],
                                                                       torch.arange(7.0))


def test_shape_errors_name_what_is_accepted():
    with pytest.raises(ValueError, match=r'\(B, 2, H, W\)'):
        flow_warp(textured(), torch.zeros(1, 3, 24, 32))
    with pytest.raises(ValueError, match='upsample'):
        flow_warp(textured(), torch.zeros(1, 2, 12, 16))
    with pytest.raises(ValueError, match='padding_mode'):
        flow_warp(textured(), torch.zeros(1, 2, 24, 32), padding_mode='wrap')
