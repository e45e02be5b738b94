"""The image-independent prior floor and the image gain (design.md, issue 25).

The prior floor of a set is the geometric mean of the model's own predictions over the set,
per image size, used for every frame and scored like the model; image gain = 1 - AbsRel(model)
/ AbsRel(prior). Hand-computed on a tiny set, a model that ignores its input has gain exactly
0, and `structflow evaluate` reports both in metrics.json.
"""
import json

import numpy as np
import pytest
import torch

from structflow_ros.core.metrics import (PriorFloor, depth_metrics, image_gain,
                                         prior_floor_predictions)


def _small_set():
    """Two 2x3 frames and one 4x4 frame with known predictions and ground truth."""
    predictions = [np.array([[1.0, 2.0, 4.0], [8.0, 1.0, 2.0]]),
                   np.array([[4.0, 8.0, 1.0], [2.0, 4.0, 8.0]]),
                   np.arange(1.0, 17.0).reshape(4, 4)]
    truths = [np.array([[2.0, 4.0, 8.0], [4.0, 2.0, 8.0]]),
              np.array([[1.0, 2.0, 4.0], [2.0, 8.0, 4.0]]),
              np.full((4, 4), 5.0) + np.eye(4)]
    return predictions, truths


def test_prior_floor_equals_the_hand_computed_geometric_mean_and_abs_rel():
    predictions, truths = _small_set()
    maps = prior_floor_predictions(predictions)
    # 2x3: sqrt(1*4), sqrt(2*8), sqrt(4*1) / sqrt(8*2), sqrt(1*4), sqrt(2*8).
    expected = np.array([[2.0, 4.0, 2.0], [4.0, 2.0, 4.0]])
    np.testing.assert_allclose(maps[0], expected, rtol=1e-12)
    assert maps[1] is maps[0]  # one map per image size
    # The only 4x4 frame is its own geometric mean.
    np.testing.assert_allclose(maps[2], predictions[2], rtol=1e-12)
    # Frame 0: gt median 4, prior median 3, so the prior is scaled by 4/3 to
    # [[8/3, 16/3, 8/3], [16/3, 8/3, 16/3]] against gt [[2, 4, 8], [4, 2, 8]]:
    # |error| / gt = 1/3, 1/3, 2/3, 1/3, 1/3, 1/3, mean 7/18.
    first = depth_metrics(maps[0], truths[0])
    assert first['scale_ratio'] == pytest.approx(4 / 3)
    assert first['abs_rel'] == pytest.approx(7 / 18)
    # Frame 1: gt median 3, prior median 3, ratio 1; against gt [[1, 2, 4], [2, 8, 4]]:
    # |error| / gt = 1, 1, 1/2, 1, 3/4, 0, mean 17/24.
    second = depth_metrics(maps[1], truths[1])
    assert second['scale_ratio'] == pytest.approx(1.0)
    assert second['abs_rel'] == pytest.approx(17 / 24)
    # The streaming form scores the same on every frame.
    prior = PriorFloor()
    for pred, gt in zip(predictions, truths):
        prior.add(pred, gt)
    scored = prior.per_frame()
    assert [m['abs_rel'] for m in scored[:2]] == pytest.approx([7 / 18, 17 / 24])
    # The 4x4 frame is alone at its size: its prior is its own prediction.
    assert [m['prior_frames'] for m in scored] == [2, 2, 1]
    assert scored[2] == {**depth_metrics(predictions[2], truths[2]), 'prior_frames': 1}


def test_prior_floor_guards_depths_at_or_below_zero_and_skips_non_finite():
    maps = prior_floor_predictions([np.array([[0.0, 4.0, np.nan]]),
                                    np.array([[-1.0, 1.0, 9.0]])])
    assert maps[0][0, 0] == pytest.approx(1e-9)  # both guarded to 1e-9, as depth_metrics
    assert maps[0][0, 1] == pytest.approx(2.0)
    assert maps[0][0, 2] == pytest.approx(9.0)  # the NaN frame left out of that pixel
    assert np.isfinite(maps[0]).all()


def test_sparse_ground_truth_is_kept_compactly_and_scores_the_same():
    rng = np.random.default_rng(3)
    gt = np.where(rng.random((20, 30)) < 0.1, rng.uniform(2, 60, (20, 30)), 0.0)
    predictions = [rng.uniform(1, 5, (20, 30)) for _ in range(3)]
    prior = PriorFloor(max_depth=50.0, garg_crop=True)
    for pred in predictions:
        prior.add(pred, gt)
    reference = prior_floor_predictions(predictions)[0]
    for scored in prior.per_frame():
        assert scored == {**depth_metrics(reference, gt, max_depth=50.0, garg_crop=True),
                          'prior_frames': 3}


def test_identical_predictions_have_image_gain_exactly_zero():
    rng = np.random.default_rng(1)
    layout = np.linspace(2.0, 40.0, 6)[:, None] * np.ones((6, 8), np.float32)
    truths = [rng.uniform(2, 60, (6, 8)) for _ in range(5)]
    maps = prior_floor_predictions([layout] * len(truths))
    np.testing.assert_array_equal(maps[0], layout)  # bit for bit, not just close
    model = [depth_metrics(layout, gt)['abs_rel'] for gt in truths]
    prior = [depth_metrics(m, gt)['abs_rel'] for m, gt in zip(maps, truths)]
    assert image_gain(np.mean(model), np.mean(prior)) == 0.0


def test_a_model_that_ignores_the_image_has_image_gain_exactly_zero():
    from structflow_ros.core import ModelConfig, build_model
    from structflow_ros.training.evaluation import evaluate_depth
    torch.manual_seed(0)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=False,
                                    pose_branch=False)).eval()
    with torch.no_grad():  # the first convolution sees nothing: one output for any image
        model.structure_encoder.conv1.weight.zero_()
    rng = np.random.default_rng(0)
    frames = [{'rgb': rng.integers(0, 256, (48, 80, 3), dtype=np.uint8),
               'depth': rng.uniform(2, 40, (48, 80))} for _ in range(3)]
    result = evaluate_depth(model, frames, keep_predictions=True)
    np.testing.assert_array_equal(result['predictions'][0], result['predictions'][2])
    assert result['image_gain'] == 0.0
    assert [m['abs_rel'] for m in result['prior_per_frame']] == \
        [m['abs_rel'] for m in result['per_frame']]


def test_image_gain():
    assert image_gain(0.3, 0.4) == pytest.approx(0.25)
    assert image_gain(0.5, 0.4) == pytest.approx(-0.25)
    assert image_gain(0.2, 0.2) == 0.0
    assert np.isnan(image_gain(0.2, float('nan'))) and np.isnan(image_gain(0.2, 0.0))


def test_evaluate_writes_prior_and_image_gain(tmp_path, capsys):
    from structflow_ros.cli import evaluate
    from structflow_ros.core import ModelConfig, build_model
    from structflow_ros.core.checkpoint import save_checkpoint
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / 'tiny.pt', build_model(
        ModelConfig(height=64, width=96, flow_branch=False, pose_branch=False)))
    out = tmp_path / 'eval'
    assert evaluate.main(evaluate.get_args_parser().parse_args(
        ['--weights', str(weights), '--synthetic', 'fog:3:9', '--no-flow', '--device', 'cpu',
         '--out', str(out)])) == 0
    printed = capsys.readouterr().out
    assert 'synthetic_fog          prior' in printed and 'image gain' in printed
    depth = json.loads((out / 'metrics.json').read_text())['depth']['synthetic_fog']
    assert depth['prior']['frames'] == 3 and len(depth['prior_per_frame']) == 3
    assert depth['image_gain'] == pytest.approx(
        1 - depth['model']['abs_rel'] / depth['prior']['abs_rel'])
    # The prior has a layout: it orders pixel pairs, unlike one constant depth (0.5).
    assert depth['floor']['ordinal_error'] == 0.5
    assert 0.0 <= depth['prior']['ordinal_error'] <= 1.0


def test_evaluate_real_pools_the_prior_and_the_image_gain(shared_data, tmp_path, capsys):
    from structflow_ros.cli import evaluate
    from structflow_ros.core import ModelConfig, build_model
    from structflow_ros.core.checkpoint import save_checkpoint
    torch.manual_seed(0)
    weights = save_checkpoint(tmp_path / 'tiny.pt', build_model(
        ModelConfig(height=64, width=96, flow_branch=False, pose_branch=False)))
    out = tmp_path / 'real'
    assert evaluate.main(evaluate.get_args_parser().parse_args(
        ['--weights', str(weights), '--synthetic', '--real', '--real-sets', 'kitti_depth',
         'argoverse', '--no-flow', '--device', 'cpu', '--shared-data', str(shared_data),
         '--out', str(out)])) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / 'metrics.json').read_text())
    for name in ('real_kitti_depth', 'real_argoverse'):
        entry = report['depth'][name]
        assert entry['prior']['frames'] == entry['model']['frames'] > 0
        assert f'{name:<22} image gain' in printed
    pooled = report['pooled']['real_outdoor']
    # Pooled: one prior over the pooled frames per network input size (these weights are
    # served squashed, so the four frames of two sets and two sizes share one), the gain from
    # the pooled AbsRels.
    assert pooled['prior_source'] == 'pooled frames, per network input size'
    priors = pooled['prior_per_frame']
    assert [f['prior_frames'] for f in priors] == [4, 4, 4, 4]
    assert pooled['prior']['abs_rel'] == pytest.approx(
        sum(f['abs_rel'] for f in priors) / len(priors))
    assert pooled['image_gain'] == pytest.approx(
        1 - pooled['model']['abs_rel'] / pooled['prior']['abs_rel'])
    assert 'real_outdoor           image gain' in printed
    # Argoverse's one frame is its own prior: gain 0 by construction, and said so.
    assert report['depth']['real_argoverse']['image_gain'] == 0.0
    assert '1 of 1 frames alone at their image size' in printed
    assert (out / 'real_sheet.png').stat().st_size > 10000


def test_pooled_prior_is_one_prior_per_network_size_across_sets():
    from structflow_ros.cli.evaluate import pooled_prior
    from structflow_ros.core.metrics import constant_depth_floor
    rng = np.random.default_rng(0)

    def frame(height, width):
        return {'depth': rng.uniform(2, 30, (height, width)), 'name': f'{height}x{width}'}

    # Two sets whose frames differ in pixels (8x16, 10x20) but are served at one network size,
    # and one frame of another shape. Constant predictions per frame: the geometric mean is a
    # constant too, so each frame's prior scores exactly its constant-depth floor.
    first = ([frame(8, 16), frame(8, 16)], 80.0, False, True)
    second = ([frame(10, 20), frame(9, 9)], 80.0, False, True)
    predictions = [[np.full((8, 16), 2.0), np.full((8, 16), 8.0)],
                   [np.full((10, 20), 4.0), np.full((9, 9), 3.0)]]

    def network_size(height, width):
        return (4, 8) if width == 2 * height else (6, 6)

    per_frame = pooled_prior([(first, predictions[0]), (second, predictions[1])],
                             network_size)
    assert [f['prior_frames'] for f in per_frame] == [3, 3, 3, 1]
    frames = first[0] + second[0]
    for metrics, item in zip(per_frame, frames):
        floor = constant_depth_floor(item['depth'])
        assert metrics['abs_rel'] == pytest.approx(floor['abs_rel'], rel=1e-9)
        assert metrics['name'] == item['name']
