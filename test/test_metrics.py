"""Depth and flow metrics of structflow_ros.core.metrics on hand-made cases."""
import math

import numpy as np
import pytest
import torch

from structflow_ros.core.metrics import (aggregate_depth_metrics, constant_depth_floor,
                                         depth_metrics, flow_metrics, garg_crop_mask)


def depth_scene(height=40, width=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = np.linspace(2.0, 40.0, height)[:, None]  # a ground plane: depth grows with the row
    return rows * (1.0 + 0.2 * rng.random((height, width)))


def test_perfect_prediction():
    gt = depth_scene()
    metrics = depth_metrics(gt.copy(), gt)
    assert metrics['abs_rel'] == pytest.approx(0.0, abs=1e-12)
    assert metrics['rmse'] == pytest.approx(0.0, abs=1e-9)
    assert metrics['a1'] == metrics['a2'] == metrics['a3'] == 1.0
    assert metrics['scale_ratio'] == pytest.approx(1.0)
    assert metrics['valid_pixels'] == gt.size


def test_median_scaling_makes_a_scaled_prediction_perfect():
    gt = depth_scene()
    scaled = depth_metrics(2.0 * gt, gt)
    assert scaled['abs_rel'] == pytest.approx(0.0, abs=1e-12)
    assert scaled['scale_ratio'] == pytest.approx(0.5)
    unscaled = depth_metrics(2.0 * gt, gt, median_scaling=False, max_depth=200.0)
    assert unscaled['abs_rel'] == pytest.approx(1.0)  # |gt - 2 gt| / gt
    assert unscaled['a1'] == 0.0


def test_known_values_and_valid_masks():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 = missing lidar point
    pred = np.array([[1.1, 2.0], [5.0, 123.0]])
    metrics = depth_metrics(pred, gt, median_scaling=False)
    assert metrics['valid_pixels'] == 3
    assert metrics['abs_rel'] == pytest.approx((0.1 / 1 + 0 + 1 / 4) / 3)
    assert metrics['sq_rel'] == pytest.approx((0.01 / 1 + 0 + 1 / 4) / 3)
    assert metrics['rmse'] == pytest.approx(math.sqrt((0.01 + 0 + 1) / 3))
    assert metrics['a1'] == pytest.approx(2 / 3)  # 5/4 = 1.25 is not < 1.25
    valid = np.array([[True, False], [True, True]])
    assert depth_metrics(pred, gt, valid, median_scaling=False)['valid_pixels'] == 2
    # Torch input, leading singleton dims, and max_depth capping of the ground truth.
    torch_metrics = depth_metrics(torch.tensor(pred)[None, None], torch.tensor(gt)[None],
                                  median_scaling=False, max_depth=3.0)
    assert torch_metrics['valid_pixels'] == 2
    empty = depth_metrics(pred, np.zeros((2, 2)))
    assert empty['valid_pixels'] == 0 and math.isnan(empty['abs_rel'])
    with pytest.raises(ValueError, match='resize'):
        depth_metrics(np.ones((3, 3)), gt)


def test_ordinal_error_counts_wrongly_ordered_pairs_and_a_flat_prediction_is_chance():
    gt = depth_scene()
    assert depth_metrics(gt.copy(), gt)['ordinal_error'] == 0.0
    # Order is all it reads: any increasing function of the truth is perfect, its inverse is
    # wrong on every pair, one constant depth is a tie on every pair (exactly chance).
    assert depth_metrics(np.sqrt(gt), gt)['ordinal_error'] == 0.0
    assert depth_metrics(1.0 / gt, gt)['ordinal_error'] == 1.0
    assert constant_depth_floor(gt)['ordinal_error'] == 0.5
    # A wall at 4 m with a box at 2 m in front of it: one constant depth is closer in AbsRel
    # than a prediction that sees the box but slopes the wall from floor to ceiling (the
    # ground-plane prior), and only the ordinal error says which one saw the box.
    wall = np.full((40, 60), 4.0)
    wall[15:25, 25:35] = 2.0
    ordered = np.where(wall < 3.0, 1.0, np.linspace(2.5, 5.5, 40)[:, None] * np.ones((1, 60)))
    flat = constant_depth_floor(wall)
    right = depth_metrics(ordered, wall)
    assert flat['abs_rel'] < right['abs_rel']
    assert right['ordinal_error'] == 0.0 and flat['ordinal_error'] == 0.5
    # Same frame, same pairs: the number is repeatable; a flat truth orders nothing.
    noisy = gt * np.random.default_rng(1).uniform(0.8, 1.25, gt.shape)
    assert depth_metrics(noisy, gt)['ordinal_error'] == depth_metrics(noisy, gt)['ordinal_error']
    assert 0.0 < depth_metrics(noisy, gt)['ordinal_error'] < 0.2
    assert math.isnan(depth_metrics(np.ones((4, 4)), np.full((4, 4), 3.0))['ordinal_error'])
    assert aggregate_depth_metrics([depth_metrics(noisy, gt), constant_depth_floor(gt)])[
        'ordinal_error'] == pytest.approx((depth_metrics(noisy, gt)['ordinal_error'] + 0.5) / 2)


def test_garg_crop_mask_shape_and_bounds():
    mask = garg_crop_mask(375, 1242)
    assert mask.shape == (375, 1242) and mask.dtype == bool
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    assert (rows[0], rows[-1] + 1) == (153, 371)  # int(0.40810811 * 375), int(0.99189189 * 375)
    assert (cols[0], cols[-1] + 1) == (44, 1197)
    gt = np.full((375, 1242), 10.0)
    assert depth_metrics(gt, gt, garg_crop=True)['valid_pixels'] == int(mask.sum())


def test_constant_depth_floor_is_worse_than_a_good_prediction():
    gt = depth_scene()
    rng = np.random.default_rng(1)
    good = 0.37 * gt * (1.0 + 0.05 * rng.standard_normal(gt.shape))  # right up to scale + noise
    good_metrics = depth_metrics(good, gt)
    floor = constant_depth_floor(gt)
    assert floor['abs_rel'] > 3 * good_metrics['abs_rel']
    assert floor['a1'] < good_metrics['a1']
    # The floor predicts median(gt) everywhere.
    assert floor['scale_ratio'] == pytest.approx(np.median(gt))


def test_aggregate_depth_metrics_means_and_scale_spread():
    gt = depth_scene()
    frames = [depth_metrics(gt * s, gt) for s in (0.5, 1.0, 2.0)]
    frames.append(depth_metrics(gt, np.zeros_like(gt)))  # no valid pixel: ignored
    summary = aggregate_depth_metrics(frames)
    assert summary['frames'] == 3 and summary['abs_rel'] == pytest.approx(0.0, abs=1e-12)
    ratios = np.array([2.0, 1.0, 0.5])
    assert summary['scale_ratio_median'] == pytest.approx(1.0)
    assert summary['scale_ratio_std'] == pytest.approx(ratios.std())
    assert summary['scale_ratio_spread'] == pytest.approx(ratios.std() / 1.0)
    assert aggregate_depth_metrics([])['frames'] == 0


def test_flow_metrics_hand_made():
    gt = np.zeros((2, 3, 2))
    gt[..., 0] = 10.0  # |gt| = 10 px
    pred = gt.copy()
    perfect = flow_metrics(pred, gt)
    assert perfect == {'epe': 0.0, 'fl_all': 0.0, 'valid_pixels': 6}
    pred[0, 0] = (14.0, 0.0)  # error 4 px > 3 px and > 5 %: outlier
    pred[0, 1] = (12.0, 0.0)  # error 2 px: not an outlier
    metrics = flow_metrics(pred, gt)
    assert metrics['epe'] == pytest.approx(6.0 / 6)
    assert metrics['fl_all'] == pytest.approx(1 / 6)
    # For a large flow, 4 px is under 5 % of the magnitude: not an outlier.
    big = np.zeros((1, 1, 2))
    big[..., 0] = 100.0
    assert flow_metrics(big + np.array([4.0, 0.0]), big)['fl_all'] == 0.0
    # Valid mask and channel-first torch tensors.
    valid = np.array([[False, True, True], [True, True, True]])
    masked = flow_metrics(torch.tensor(pred).permute(2, 0, 1), torch.tensor(gt).permute(2, 0, 1),
                          valid)
    assert masked['valid_pixels'] == 5 and masked['epe'] == pytest.approx(2.0 / 5)
    assert flow_metrics(pred, gt, np.zeros((2, 3), bool))['valid_pixels'] == 0
