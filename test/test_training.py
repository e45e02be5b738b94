"""train_step, compute_losses and grad_cosine_similarity of structflow_ros.core.training."""
import math
import time

import pytest
import torch
import torch.nn.functional as F

from structflow_ros.core.geometry import flow_warp, pixel_grid
from structflow_ros.core.losses import DepthLossConfig
from structflow_ros.core.networks import build_model
from structflow_ros.core import training
from structflow_ros.core.training import (TrainStepConfig, compute_losses,
                                          grad_cosine_similarity, train_step)

H = W = 64
FLOW_MODULES = ('structure_encoder', 'motion_encoder', 'flow_decoder')


def smooth_texture(seed, height=H, width=W, cells=10):
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, cells, cells, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode='bicubic',
                         align_corners=False).clamp(0, 1)


def smooth_flow_pair(seed=0):
    """(frame0, frame1, true flow): frame0(p) = frame1(p + flow(p)) for a smooth flow field."""
    frame1 = smooth_texture(seed)
    grid = pixel_grid(H, W)
    flow = torch.stack((2.5 + 1.5 * torch.sin(2 * math.pi * grid[1] / H),
                        -1.5 + 1.0 * torch.cos(2 * math.pi * grid[0] / W)))[None]  # (1, 2, H, W)
    frame0, _ = flow_warp(frame1, flow)
    return frame0, frame1, flow


def make_model(**overrides):
    torch.manual_seed(0)
    return build_model(height=H, width=W, **overrides)


def state_copy(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def same_state(model, reference):
    return all(torch.equal(value, reference[name]) or
               (torch.isnan(value).any() and torch.equal(torch.nan_to_num(value),
                                                         torch.nan_to_num(reference[name])))
               for name, value in model.state_dict().items())


def finetune_batch(batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = {key: torch.rand(batch_size, 3, H, W, generator=generator)
              for key in ('frame_prev', 'frame0', 'frame1')}
    depth_gt = 1.0 + 20.0 * torch.rand(batch_size, 1, H, W, generator=generator)
    depth_valid = torch.rand(batch_size, 1, H, W, generator=generator) < 0.3
    K = torch.tensor([[50.0, 0.0, 31.5], [0.0, 50.0, 31.5], [0.0, 0.0, 1.0]])
    return {**frames, 'depth_gt': depth_gt, 'depth_valid': depth_valid, 'K': K}


@pytest.fixture(autouse=True, scope='module')
def one_torch_thread():
    """One intra-op thread: on 2 shared cores, 2 spinning OpenMP threads ran 2-8x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize('precision', ['float32', 'bfloat16'])
def test_overfit_flow_on_a_synthetic_pair_cuts_epe_5x(precision):
    """80 flow-loss steps on one pair with a known smooth flow field (fixed seed, CPU), in
    float32 and with the bf16 autocast forward the trainer uses on CPUs with bf16 units."""
    frame0, frame1, true_flow = smooth_flow_pair()
    model = make_model(pose_branch=False).to(memory_format=torch.channels_last)

    def epe():
        model.eval()
        with torch.no_grad():
            predicted = model.flow(frame0, frame1)[0]
        model.train()
        return float((predicted - true_flow).norm(dim=1).mean())

    initial = epe()
    optimizer = training.make_optimizer(model.parameters(), 1e-3, 'cpu')
    batch = {'frame0': frame0, 'frame1': frame1}
    start = time.perf_counter()
    for step in range(80):
        metrics = train_step(model, batch, optimizer, TrainStepConfig(precision=precision),
                             step=step)
        assert metrics['skipped'] == 0
    final = epe()
    print(f'overfit ({precision}): EPE {initial:.3f} -> {final:.3f} px (ratio '
          f'{initial / final:.1f}x) in {time.perf_counter() - start:.1f} s')
    assert initial > 2.0  # the untrained network predicts near-zero flow
    assert final * 5 < initial


def test_flow_loss_reaches_every_flow_parameter_and_no_other_module():
    model = make_model()
    frame0, frame1, _ = smooth_flow_pair()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    metrics = train_step(model, {'frame0': frame0, 'frame1': frame1}, optimizer)
    assert metrics['skipped'] == 0 and metrics['grad_norm'] > 0
    for module in FLOW_MODULES:
        for name, parameter in getattr(model, module).named_parameters():
            assert parameter.grad is not None, f'{module}.{name} got no gradient'
            assert float(parameter.grad.abs().sum()) > 0, f'{module}.{name} gradient is zero'
    for module in ('depth_decoder', 'pose_net'):
        assert all(p.grad is None for p in getattr(model, module).parameters()), module


def test_frozen_structure_encoder_gets_no_gradient_and_does_not_change():
    model = make_model(pose_branch=False)
    model.structure_encoder.requires_grad_(False)
    before = {k: v.clone() for k, v in model.structure_encoder.state_dict().items()
              if 'running' not in k and 'num_batches' not in k}
    frame0, frame1, _ = smooth_flow_pair()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    metrics = train_step(model, {'frame0': frame0, 'frame1': frame1}, optimizer)
    assert metrics['skipped'] == 0
    assert all(p.grad is None for p in model.structure_encoder.parameters())
    assert all(p.grad is not None for p in model.flow_decoder.parameters())
    after = model.structure_encoder.state_dict()
    assert all(torch.equal(value, after[name]) for name, value in before.items())


def test_nan_in_the_network_skips_the_step_without_backward():
    model = make_model(pose_branch=False)
    with torch.no_grad():
        model.flow_decoder.heads[0][1].bias[0] = float('nan')
    reference = state_copy(model)
    frame0, frame1, _ = smooth_flow_pair()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    metrics = train_step(model, {'frame0': frame0, 'frame1': frame1}, optimizer)
    assert metrics['skipped'] == 1
    assert 'non-finite' in metrics['skip_reason'] and 'flow' in metrics['skip_reason']
    assert all(p.grad is None for p in model.parameters())  # backward never ran
    assert same_state(model, reference)


def test_nan_loss_skips_the_step_and_says_why(monkeypatch):
    real_flow_loss = training.flow_loss

    def nan_flow_loss(*args, **kwargs):
        loss, metrics = real_flow_loss(*args, **kwargs)
        return loss * float('nan'), metrics  # still in the graph: backward would be possible

    monkeypatch.setattr(training, 'flow_loss', nan_flow_loss)
    model = make_model(pose_branch=False)
    reference = state_copy(model)
    frame0, frame1, _ = smooth_flow_pair()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    metrics = train_step(model, {'frame0': frame0, 'frame1': frame1}, optimizer)
    assert metrics['skipped'] == 1 and math.isnan(metrics['loss'])
    assert 'non-finite loss' in metrics['skip_reason'] and "'flow'" in metrics['skip_reason']
    assert 'no backward' in metrics['skip_reason']
    assert all(p.grad is None for p in model.parameters())
    assert same_state(model, reference)


def test_batch_keys_select_the_losses():
    model = make_model()
    batch = finetune_batch()
    loss, metrics = compute_losses(model, batch)
    assert {'loss_flow', 'loss_depth_supervised', 'loss_depth_selfsup'} <= set(metrics)
    assert metrics['loss'] == pytest.approx(float(loss.detach()))
    assert metrics['loss'] == pytest.approx(metrics['loss_flow'] + metrics['loss_depth_supervised']
                                            + metrics['loss_depth_selfsup'], rel=1e-5)
    assert metrics['depth_valid_pixels'] == float(batch['depth_valid'].sum())
    _, flow_only = compute_losses(model, {'frame0': batch['frame0'], 'frame1': batch['frame1']})
    assert 'loss_flow' in flow_only and 'loss_depth_supervised' not in flow_only
    _, supervised_only = compute_losses(
        model, {'frame0': batch['frame0'], 'depth_gt': batch['depth_gt']})
    assert set(k for k in supervised_only if k.startswith('loss_')) == {'loss_depth_supervised'}
    # The gradient matching term is part of the supervised loss only when weighted.
    assert 'depth_gradient' not in metrics
    config = TrainStepConfig(depth=DepthLossConfig(gradient_weight=0.5))
    _, with_gradient = compute_losses(model, batch, config)
    assert with_gradient['depth_gradient'] > 0
    assert with_gradient['loss_depth_supervised'] == pytest.approx(
        metrics['loss_depth_supervised'] + 0.5 * with_gradient['depth_gradient'], rel=1e-4)
    # Weights switch losses off; uint8 frames are accepted.
    uint8_batch = {**batch, 'frame0': (batch['frame0'] * 255).to(torch.uint8)}
    _, no_flow = compute_losses(model, uint8_batch, TrainStepConfig(flow_weight=0.0))
    assert 'loss_flow' not in no_flow and 'loss_depth_selfsup' in no_flow
    with pytest.raises(ValueError, match="'frame0'\\+'frame1'"):
        compute_losses(model, {'frame0': batch['frame0']})


def test_finetune_step_trains_depth_and_flow_jointly():
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    metrics = train_step(model, finetune_batch(), optimizer)
    assert metrics['skipped'] == 0 and math.isfinite(metrics['grad_norm'])
    for module in ('structure_encoder', 'depth_decoder', 'flow_decoder', 'pose_net'):
        assert all(p.grad is not None for p in getattr(model, module).parameters()), module
    assert metrics['step_time_s'] > 0


def test_occlusion_warm_up_switches_on_the_backward_flow():
    model = make_model(pose_branch=False)
    frame0, frame1, _ = smooth_flow_pair()
    config = TrainStepConfig()
    config.flow.fb_occlusion = True
    config.flow.occlusion_start_step = 5
    batch = {'frame0': frame0, 'frame1': frame1}
    _, before = compute_losses(model, batch, config, step=4)
    _, after = compute_losses(model, batch, config, step=5)
    assert before['flow_occlusion_active'] == 0.0 and after['flow_occlusion_active'] == 1.0


def test_grad_clipping_bounds_the_update():
    model = make_model(pose_branch=False)
    frame0, frame1, _ = smooth_flow_pair()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    config = TrainStepConfig(max_grad_norm=1e-4)
    metrics = train_step(model, {'frame0': frame0, 'frame1': frame1}, optimizer, config)
    clipped = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    assert metrics['grad_norm'] > 1e-4  # reported before clipping
    assert float(clipped.norm()) == pytest.approx(1e-4, rel=1e-3)


def test_grad_cosine_similarity_between_depth_and_flow():
    model = make_model()
    batch = finetune_batch()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    cosine = grad_cosine_similarity(model, batch)
    assert -1.0 <= cosine <= 1.0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())
    assert grad_cosine_similarity(model, batch, loss_a='flow', loss_b='flow') == pytest.approx(
        1.0, abs=1e-5)
    with pytest.raises(ValueError, match='choose from'):
        grad_cosine_similarity(model, batch, loss_a='photometric')
    with pytest.raises(ValueError, match='did not run'):
        grad_cosine_similarity(model, {'frame0': batch['frame0'], 'frame1': batch['frame1']})


def test_precision_choices_and_float16_without_scaler_refused():
    assert training.resolve_precision('float32', 'cpu') == 'float32'
    assert training.resolve_precision('auto', 'cpu') in ('float32', 'bfloat16')
    with pytest.raises(ValueError, match='auto, float32, bfloat16, float16'):
        training.resolve_precision('half', 'cpu')
    with pytest.raises(ValueError, match='precision'):
        TrainStepConfig(precision='fp8')
    model = make_model(pose_branch=False)
    frame0, frame1, _ = smooth_flow_pair()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match='GradScaler'):
        train_step(model, {'frame0': frame0, 'frame1': frame1}, optimizer,
                   TrainStepConfig(precision='float16'))


def test_bfloat16_forward_keeps_losses_float32_and_close_to_float32():
    """Under bf16 autocast the losses are computed in float32 from the bf16 network outputs:
    the loss agrees with the float32 one to bf16 precision and is a float32 tensor."""
    model = make_model(pose_branch=False)
    frame0, frame1, _ = smooth_flow_pair()
    batch = {'frame0': frame0, 'frame1': frame1}
    reference, _ = compute_losses(model, batch)
    terms, _ = training._loss_terms(model, batch, TrainStepConfig(), 0,
                                    torch.autocast('cpu', dtype=torch.bfloat16))
    assert terms['flow'].dtype == torch.float32
    assert float(terms['flow'].detach()) == pytest.approx(float(reference.detach()), rel=0.02)


def test_l2sp_is_zero_at_the_anchor_and_pulls_back_toward_it():
    model = make_model(pose_branch=False)
    frame0, frame1, _ = smooth_flow_pair()
    batch = {'frame0': frame0, 'frame1': frame1}
    training.set_trainable(model, 'encoder')
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    regularizer = training.L2SP(model, weight=1.0)
    assert set(regularizer.anchor) == set(start)
    loss, metrics = regularizer(model)
    assert float(loss) == 0.0 and metrics['l2sp_distance'] == 0.0

    def distance_after(weight, steps=5):
        net = make_model(pose_branch=False)
        training.set_trainable(net, 'encoder')
        anchor = training.L2SP(net, weight=weight)
        optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.05)
        for step in range(steps):
            metrics = train_step(net, batch, optimizer, TrainStepConfig(max_grad_norm=None),
                                 step=step, regularizer=anchor)
            assert metrics['skipped'] == 0 and 'loss_regularizer' in metrics
        return anchor(net)[1]['l2sp_distance']
    # lr * 2 * weight = 0.5: each step removes half of the distance the task loss added.
    free, held = distance_after(0.0), distance_after(5.0)
    assert held < 0.5 * free, (held, free)
    with pytest.raises(ValueError, match='finite number >= 0'):
        training.L2SP(model, weight=float('nan'))


def test_set_trainable_selects_exactly_what_adapts():
    model = make_model(pose_branch=False)
    frame0, frame1, _ = smooth_flow_pair()
    for choice, must, must_not in (
            ('encoder', 'structure_encoder.conv1.weight', 'motion_encoder.head.weight'),
            ('encoder_top', 'structure_encoder.layer4.1.conv2.weight',
             'structure_encoder.layer1.0.conv1.weight'),
            ('flow_path', 'flow_decoder.heads.0.1.weight', 'depth_decoder.heads.0.1.weight'),
            ('norm_affine', 'structure_encoder.layer2.0.bn1.weight',
             'structure_encoder.layer2.0.conv1.weight')):
        names = training.set_trainable(model, choice)
        assert must in names and must_not not in names, choice
        model.zero_grad(set_to_none=True)
        loss, _ = compute_losses(model, {'frame0': frame0, 'frame1': frame1})
        loss.backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
        assert with_grad <= set(names) and with_grad, choice
    with pytest.raises(ValueError, match='choose from encoder, encoder_top'):
        training.set_trainable(model, 'everything')
