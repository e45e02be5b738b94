"""Photometric, smoothness, occlusion, flow and depth losses of structflow_ros.core.losses."""
import pytest
import torch
import torch.nn.functional as F

from structflow_ros.core.geometry import NonFiniteError, pose_vec_to_mat, reproject_warp
from structflow_ros.core.losses import (DepthLossConfig, FlowLossConfig, census_error,
                                        edge_aware_smoothness, flow_loss,
                                        forward_backward_occlusion, log_depth_gradient_loss,
                                        min_reprojection_loss,
                                        photometric_error, photometric_loss,
                                        scale_invariant_loss, self_supervised_depth_loss)

H, W = 32, 48
SHIFT = (3, -2)  # (u, v) pixels of the true flow frame0 -> frame1


def smooth_texture(height, width, seed=0, cells=8):
    """Smooth random RGB texture in [0, 1] (bicubic upsampled noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, cells, cells, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode='bicubic',
                         align_corners=False).clamp(0, 1)


def shifted_pair(seed=0):
    """frame1(p + (u, v)) = frame0(p), cut from one larger texture (no warp involved)."""
    du, dv = SHIFT
    texture = smooth_texture(H + 16, W + 16, seed)
    frame0 = texture[:, :, 8:8 + H, 8:8 + W]
    frame1 = texture[:, :, 8 - dv:8 - dv + H, 8 - du:8 - du + W]
    return frame0, frame1


def constant_flows(u, v, scales=4):
    """Pyramid of constant flows, each in pixels of its own scale."""
    return [torch.stack((torch.full((1, H >> s, W >> s), u / 2 ** s),
                         torch.full((1, H >> s, W >> s), v / 2 ** s)), 1) for s in range(scales)]


def test_photometric_errors_are_zero_on_identical_images_and_grow_with_difference():
    image = smooth_texture(H, W)
    other = smooth_texture(H, W, seed=5)
    for error_fn in (photometric_error, census_error):
        same = error_fn(image, image)
        assert same.shape == (1, 1, H, W)
        assert float(same.abs().max()) < 1e-5
        assert float(error_fn(image, other).mean()) > 0.05


def test_census_is_robust_to_a_brightness_change_that_hurts_ssim_l1():
    image = smooth_texture(H, W)
    brighter = image * 0.8 + 0.2
    unrelated = smooth_texture(H, W, seed=5)

    def relative(error_fn):  # brightness change relative to a different image altogether
        return float(error_fn(image, brighter).mean() / error_fn(image, unrelated).mean())

    assert relative(census_error) < 0.5 * relative(photometric_error)


def test_photometric_loss_respects_the_mask_and_empty_mask_is_zero():
    image = smooth_texture(H, W)
    other = image.clone()
    other[..., :, :W // 2] = 0.0
    mask = torch.zeros(1, 1, H, W)
    mask[..., :, W // 2 + 2:] = 1.0
    loss, metrics = photometric_loss(image, other, mask)
    assert float(loss) < 1e-5 and metrics['photometric'] == pytest.approx(float(loss))
    empty, _ = photometric_loss(image, other, torch.zeros(1, 1, H, W))
    assert float(empty) == 0.0
    with pytest.raises(ValueError, match='ssim_l1'):
        photometric_loss(image, other, mask, kind='l2')


@pytest.mark.parametrize('kind', ['ssim_l1', 'census'])
def test_flow_loss_is_zero_for_identical_frames_with_zero_flow(kind):
    image = smooth_texture(H, W)
    loss, metrics = flow_loss(image, image, constant_flows(0, 0), None,
                              FlowLossConfig(photometric=kind))
    assert float(loss) < 1e-5
    assert metrics['flow_smoothness'] == 0.0 and metrics['flow_valid_fraction'] == 1.0


@pytest.mark.parametrize('kind', ['ssim_l1', 'census'])
def test_flow_loss_prefers_the_true_flow(kind):
    frame0, frame1 = shifted_pair()
    # Coarse scales at their own resolution (the training default) still rank flows right.
    own_resolution = FlowLossConfig(photometric=kind)
    own_true, _ = flow_loss(frame0, frame1, constant_flows(*SHIFT), None, own_resolution)
    own_off, _ = flow_loss(frame0, frame1, constant_flows(SHIFT[0] + 1.5, SHIFT[1]), None,
                           own_resolution)
    # (At 32x48 the coarsest scale is 4x6 pixels, so the margin is smaller than at full res.)
    assert float(own_off) > 1.5 * float(own_true)
    # Upsampled to full resolution, the true flow's loss is almost exactly zero.
    config = FlowLossConfig(photometric=kind, full_resolution_scales=True)
    true_loss, true_metrics = flow_loss(frame0, frame1, constant_flows(*SHIFT), None, config)
    zero_loss, _ = flow_loss(frame0, frame1, constant_flows(0, 0), None, config)
    off_loss, _ = flow_loss(frame0, frame1, constant_flows(SHIFT[0] + 1.5, SHIFT[1]), None,
                            config)
    half_off_loss, _ = flow_loss(frame0, frame1, constant_flows(SHIFT[0] + 0.5, SHIFT[1]), None,
                                 config)
    # Not exactly 0: SSIM/census windows next to the masked border see padded samples.
    assert float(true_loss) < 0.02
    assert float(zero_loss) > 5 * float(true_loss)
    assert float(off_loss) > 5 * float(true_loss)
    assert float(half_off_loss) > 2 * float(true_loss)
    # Pixels whose flow leaves frame1 are masked: 3 columns and 2 rows.
    assert true_metrics['flow_valid_fraction'] == pytest.approx((H - 2) * (W - 3) / (H * W))


def test_flow_loss_gradient_points_toward_the_true_flow():
    frame0, frame1 = shifted_pair()
    flows = [f.clone().requires_grad_(True) for f in constant_flows(SHIFT[0] - 0.5, SHIFT[1])]
    loss, _ = flow_loss(frame0, frame1, flows, None, FlowLossConfig(smooth_weight=0.0))
    loss.backward()
    assert float(flows[0].grad[:, 0].sum()) < 0  # increasing u lowers the loss


def test_forward_backward_occlusion():
    forward = torch.zeros(1, 2, H, W)
    forward[:, 0] = 2.0
    consistent_occ, _ = forward_backward_occlusion(forward, -forward)
    assert float(consistent_occ.sum()) == 0.0
    inconsistent_occ, backward_occ = forward_backward_occlusion(forward, forward)
    assert bool(inconsistent_occ.bool().all()) and bool(backward_occ.bool().all())
    # Occlusion only after the warm-up step, only with backward flows.
    frame0, frame1 = shifted_pair()
    config = FlowLossConfig(fb_occlusion=True, occlusion_start_step=10)
    bad_bw = constant_flows(*SHIFT)
    _, before = flow_loss(frame0, frame1, constant_flows(*SHIFT), bad_bw, config, step=9)
    _, after = flow_loss(frame0, frame1, constant_flows(*SHIFT), bad_bw, config, step=10)
    assert before['flow_occlusion_active'] == 0.0 and after['flow_occlusion_active'] == 1.0
    assert after['flow_occluded_fraction'] == 1.0


def test_edge_aware_smoothness_orders_and_edges():
    image = torch.zeros(1, 3, H, W)
    ramp = torch.linspace(0, 5, W).view(1, 1, 1, W).expand(1, 2, H, W)
    assert float(edge_aware_smoothness(torch.ones(1, 2, H, W), image)[0]) == 0.0
    assert float(edge_aware_smoothness(ramp, image, order=1)[0]) > 0.01
    assert float(edge_aware_smoothness(ramp, image, order=2)[0]) < 1e-5
    # A field step placed on an image edge costs less than the same step on flat image.
    step = torch.zeros(1, 1, H, W)
    step[..., W // 2:] = 1.0
    edge_image = step.expand(1, 3, H, W)
    on_edge, _ = edge_aware_smoothness(step, edge_image, edge_alpha=10.0)
    on_flat, metrics = edge_aware_smoothness(step, image, edge_alpha=10.0)
    assert float(on_edge) < 0.01 * float(on_flat) and metrics['smoothness'] > 0
    with pytest.raises(ValueError, match='order'):
        edge_aware_smoothness(step, image, order=3)


def test_min_reprojection_automask_ignores_static_pixels():
    target = smooth_texture(H, W)
    garbage = smooth_texture(H, W, seed=9)
    # Static scene: the unwarped source equals the target, the (bad) warp does not.
    masked, metrics = min_reprojection_loss(target, [garbage], [target], automask=True)
    assert float(masked) < 1e-4 and metrics['automask_fraction'] > 0.99
    unmasked, _ = min_reprojection_loss(target, [garbage], [target], automask=False)
    assert float(unmasked) > 0.05
    # Per-pixel minimum over sources: one good source is enough.
    best, _ = min_reprojection_loss(target, [garbage, target], [garbage, garbage])
    assert float(best) < 1e-4


def _disp_for_depth(depth, min_depth=0.1, max_depth=100.0):
    min_disp, max_disp = 1 / max_depth, 1 / min_depth
    return (1 / depth - min_disp) / (max_disp - min_disp)


def test_self_supervised_depth_loss_prefers_the_true_depth():
    source = smooth_texture(H, W, seed=2)
    K = torch.tensor([[[40.0, 0, (W - 1) / 2], [0, 40.0, (H - 1) / 2], [0, 0, 1]]])
    T = pose_vec_to_mat(torch.zeros(1, 3), torch.tensor([[0.3, 0.0, 0.0]]))
    true_depth = torch.full((1, 1, H, W), 4.0)
    target, _ = reproject_warp(source, true_depth, K, T)

    def loss_for(depth_value):
        disps = [_disp_for_depth(torch.full((1, 1, H >> s, W >> s), depth_value))
                 for s in range(4)]
        return self_supervised_depth_loss(target, [source], disps, K, [T], 0.1, 100.0,
                                          DepthLossConfig())

    true_loss, metrics = loss_for(4.0)
    wrong_loss, _ = loss_for(1.5)
    assert float(true_loss) < 0.5 * float(wrong_loss)
    assert set(metrics) >= {'depth_reprojection', 'depth_smoothness', 'depth_automask_fraction'}


def test_scale_invariant_loss_values_and_guards():
    generator = torch.Generator().manual_seed(0)
    gt = 1.0 + 10.0 * torch.rand(2, 1, H, W, generator=generator)
    valid = torch.ones_like(gt, dtype=torch.bool)
    perfect, metrics = scale_invariant_loss(gt.clone(), gt, valid)
    assert float(perfect) < 1e-3 and metrics['valid_pixels'] == 2 * H * W
    scaled, _ = scale_invariant_loss(2 * gt, gt, valid, lam=1.0)
    assert float(scaled) < 1e-3  # lam = 1: fully scale invariant
    noisy = gt * torch.exp(0.3 * torch.randn(gt.shape, generator=generator))
    assert float(scale_invariant_loss(noisy, gt, valid)[0]) > 0.2

    # Sparse ground truth: zeros and NaN where invalid must not leak in.
    sparse_gt = gt.clone()
    sparse_valid = torch.rand(gt.shape, generator=generator) < 0.05
    sparse_gt[~sparse_valid] = 0.0
    sparse_gt[0, 0, 0, 0] = float('nan')
    sparse_valid[0, 0, 0, 0] = True
    pred = gt.clone().requires_grad_(True)
    loss, metrics = scale_invariant_loss(pred, sparse_gt, sparse_valid)
    loss.backward()
    assert float(loss.detach()) < 1e-3 and bool(torch.isfinite(pred.grad).all())
    assert metrics['valid_pixels'] == int(sparse_valid.sum()) - 1

    # No valid pixel: 0, not NaN, and backward works.
    pred = gt.clone().requires_grad_(True)
    loss, metrics = scale_invariant_loss(pred, gt, torch.zeros_like(valid))
    loss.backward()
    assert float(loss.detach()) == 0.0 and metrics['valid_pixels'] == 0

    # Non-positive depth is clamped before the log; NaN depth is refused.
    zero_pred = torch.zeros_like(gt).requires_grad_(True)
    loss, _ = scale_invariant_loss(zero_pred - 1.0, gt, valid)
    loss.backward()
    assert bool(torch.isfinite(loss.detach())) and bool(torch.isfinite(zero_pred.grad).all())
    with pytest.raises(NonFiniteError, match='pred_depth'):
        scale_invariant_loss(torch.full_like(gt, float('nan')), gt, valid)


def test_log_depth_gradient_loss_sees_slopes_and_blurred_edges_not_scale():
    rows = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1).expand(2, 1, H, W)
    cols = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W).expand(2, 1, H, W)
    valid = torch.ones(2, 1, H, W, dtype=torch.bool)
    # A fronto-parallel wall: any constant prediction is perfect, a floor-to-ceiling slope not.
    wall = torch.full((2, 1, H, W), 2.0)
    assert float(log_depth_gradient_loss(3.7 * torch.ones_like(wall), wall, valid)) < 1e-6
    slope = 1.0 + rows / H  # top near, bottom twice as far
    assert float(log_depth_gradient_loss(slope, wall, valid)) > 1e-2
    # A box at 1 m before a wall at 4 m: a blurred edge costs more than the sharp one, scaled.
    box = torch.where((cols > 16) & (cols < 32), torch.tensor(1.0), torch.tensor(4.0))
    blurred = F.avg_pool2d(box, (1, 9), stride=1, padding=(0, 4), count_include_pad=False)
    assert float(log_depth_gradient_loss(5.0 * box, box, valid)) < 1e-6
    assert float(log_depth_gradient_loss(blurred, box, valid)) > 0.05
    # Pixels outside the mask never count, even where the prediction is wild there.
    sparse_valid = valid.clone()
    sparse_valid[..., :, W // 2:] = False
    wild = box.clone()
    wild[..., :, W // 2:] = 1e3 * torch.rand(2, 1, H, W - W // 2)
    assert float(log_depth_gradient_loss(wild, box, sparse_valid)) < 1e-6
    # No valid pixel: 0 in the graph; non-positive depth is clamped, gradients stay finite.
    pred = (box - 5.0).requires_grad_(True)
    loss = log_depth_gradient_loss(pred, box, torch.zeros_like(valid))
    loss.backward()
    assert float(loss.detach()) == 0.0
    loss = log_depth_gradient_loss(pred, box, valid)
    loss.backward()
    assert bool(torch.isfinite(loss.detach())) and bool(torch.isfinite(pred.grad).all())
    with pytest.raises(ValueError, match='same shape'):
        log_depth_gradient_loss(box[:, :, 1:], box, valid)
    with pytest.raises(ValueError, match='gradient_weight'):
        DepthLossConfig(gradient_weight=-1.0)
    with pytest.raises(ValueError, match='gradient_scales'):
        DepthLossConfig(gradient_scales=0)


def test_losses_reject_uint8_images_with_a_clear_message():
    image = (smooth_texture(H, W) * 255).to(torch.uint8)
    with pytest.raises(ValueError, match='uint8'):
        photometric_error(image, image)
