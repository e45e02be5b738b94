"""The one training step that flow pretraining, depth finetuning and online adaptation share.

Which losses run follows from the batch keys and the config weights:
- 'frame0', 'frame1' (B, 3, H, W): self-supervised flow loss frame0 -> frame1 (plus the backward
  flow when forward-backward occlusion masking is on);
- 'depth_gt' (B, 1, H, W) [+ 'depth_valid']: scale-invariant log loss on frame0's depth;
- 'K' (B, 3, 3) with 'frame1' and/or 'frame_prev' and a pose network: monodepth2's
  self-supervised depth loss with frame0 as the target view;
- 'teacher_depth' (B, 1, H, W) [+ 'teacher_valid']: the fully scale-invariant log loss on
  frame0's depth against the two-view geometry teacher's sparse, up-to-scale labels
  (data/teacher.py).
Frozen modules (requires_grad False) and the module's train()/eval() state are the caller's
choice; train_step never changes them. A NaN anywhere skips the step (never a backward on it:
see the grid_sample segfault in shared/toolchain.md) and says why in the metrics.
"""
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from structflow_ros.core.geometry import NonFiniteError, pose_vec_to_mat
from structflow_ros.core.losses import (DepthLossConfig, FlowLossConfig, flow_loss,
                                        log_depth_gradient_loss, scale_invariant_loss,
                                        self_supervised_depth_loss)
from structflow_ros.core.networks import disp_to_depth, normalize_image

LOSS_NAMES = ('flow', 'depth_supervised', 'depth_selfsup', 'depth_teacher', 'depth')
PRECISIONS = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


@dataclass
class TrainStepConfig:
    """Loss weights and optimisation settings of `train_step`."""

    flow: FlowLossConfig = field(default_factory=FlowLossConfig)
    depth: DepthLossConfig = field(default_factory=DepthLossConfig)
    # A weight of 0 switches a loss off even when the batch has its keys.
    flow_weight: float = 1.0
    depth_supervised_weight: float = 1.0
    depth_selfsup_weight: float = 1.0
    depth_teacher_weight: float = 1.0
    # Clip the global gradient norm (None: no clipping, the norm is still reported). Guards
    # online adaptation against one bad pair throwing the encoder far away.
    max_grad_norm: Optional[float] = 10.0
    # Forward precision: 'float32', or autocast in 'bfloat16' (CPUs with native bf16 units,
    # CUDA) or 'float16' (CUDA, with a GradScaler). Weights, gradients, the optimiser, the
    # losses and the NaN guards stay float32. A string so the config serialises;
    # `resolve_precision('auto', device)` picks one for a machine.
    precision: str = 'float32'

    def __post_init__(self):
        for name in ('flow_weight', 'depth_supervised_weight', 'depth_selfsup_weight',
                     'depth_teacher_weight'):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f'{name} must be a finite number >= 0, got {value!r}')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision {self.precision!r} is not one of {sorted(PRECISIONS)}')
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f'max_grad_norm must be positive or None, got {self.max_grad_norm}')


def resolve_precision(precision: str, device) -> str:
    """'auto' -> 'bfloat16' where the device computes bf16 natively, else 'float32'.

    (A CPU without bf16 units emulates it, slower than float32; float16 on CUDA needs a
    GradScaler, so `auto` leaves it to the caller to ask for it.)
    """
    if precision != 'auto':
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of auto, "
                             f"{', '.join(PRECISIONS)}")
        return precision
    device = torch.device(device)
    if device.type == 'cuda':
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float32'
    from structflow_ros.core.backends import cpu_native_bf16
    return 'bfloat16' if cpu_native_bf16()[0] else 'float32'


def make_optimizer(parameters, lr: float, device) -> torch.optim.Optimizer:
    """Adam with the fused kernel (one pass over each tensor instead of several per-op ones:
    measured 25 -> 14 ms per step for the 13 M flow-path parameters on 2 CPU cores)."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(parameters, lr=lr)


def _model_device(model: torch.nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device('cpu')


def _prepare_batch(batch: Dict[str, torch.Tensor], device: torch.device) -> Dict:
    prepared = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if key.startswith('frame'):
                value = normalize_image(value)
        prepared[key] = value
    if 'K' in prepared and prepared['K'].dim() == 2:
        prepared['K'] = prepared['K'].unsqueeze(0).expand(prepared['frame0'].shape[0], -1, -1)
    return prepared


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (attributes live there; calls go
    through the wrapper so that DDP sees the forward)."""
    return getattr(model, 'module', model)


def _plan(model, batch: Dict, config: TrainStepConfig) -> Dict[str, bool]:
    """Decide which losses run for this batch and config (and explain when none can)."""
    has_flow_branch = getattr(unwrap(model), 'flow_decoder', None) is not None
    has_pose = getattr(unwrap(model), 'pose_net', None) is not None
    has_pair = 'frame0' in batch and 'frame1' in batch
    sources = [key for key in ('frame_prev', 'frame1') if key in batch]
    plan = {
        'flow': config.flow_weight > 0 and has_pair and has_flow_branch,
        'depth_supervised': config.depth_supervised_weight > 0 and 'frame0' in batch
        and 'depth_gt' in batch,
        'depth_selfsup': config.depth_selfsup_weight > 0 and 'frame0' in batch
        and 'K' in batch and bool(sources) and has_pose,
        'depth_teacher': config.depth_teacher_weight > 0 and 'frame0' in batch
        and 'teacher_depth' in batch,
    }
    if not any(plan.values()):
        raise ValueError(
            f'no loss can run: batch keys {sorted(batch)}, flow branch {has_flow_branch}, pose '
            f'network {has_pose}, weights flow={config.flow_weight}, depth_supervised='
            f'{config.depth_supervised_weight}, depth_selfsup={config.depth_selfsup_weight}, '
            f'depth_teacher={config.depth_teacher_weight}. '
            "Need 'frame0'+'frame1' (flow), 'frame0'+'depth_gt' (supervised depth), "
            "'frame0'+'K'+'frame1'/'frame_prev' with a pose network (self-supervised depth) or "
            "'frame0'+'teacher_depth' (two-view teacher)")
    return plan


def _depth_and_target(outputs: Dict, batch: Dict, target_key: str, valid_key: str,
                      min_depth: float, max_depth: float):
    """(predicted depth at the target's size, target, valid mask), each (B, 1, H, W), for a
    loss on a depth map target (ground truth or the teacher's labels)."""
    target = batch[target_key].float()
    if target.dim() == 3:
        target = target.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    valid = batch.get(valid_key)
    valid = (target > 0) if valid is None else valid.reshape(target.shape).bool()
    disp = outputs['disp'][0].float()
    if disp.shape[-2:] != target.shape[-2:]:
        disp = F.interpolate(disp, size=target.shape[-2:], mode='bilinear', align_corners=False)
    _, depth = disp_to_depth(disp, min_depth, max_depth)
    return depth, target, valid


def _loss_terms(model, batch: Dict, config: TrainStepConfig, step: int,
                autocast: Optional[torch.autocast] = None
                ) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
    """Weighted loss terms (name -> scalar tensor) and their metrics for one batch."""
    batch = _prepare_batch(batch, _model_device(model))
    plan = _plan(model, batch, config)
    frame0 = batch['frame0']
    frame1 = batch.get('frame1')
    need_backward = plan['flow'] and config.flow.fb_occlusion \
        and step >= config.flow.occlusion_start_step
    need_depth = plan['depth_supervised'] or plan['depth_selfsup'] or plan['depth_teacher']
    need_pose_next = plan['depth_selfsup'] and frame1 is not None
    with autocast if autocast is not None else contextlib.nullcontext():
        # One forward: the structure encoder runs once for every head (and BatchNorm sees it once).
        outputs = model(frame0, frame1, depth=need_depth, flow=plan['flow'],
                        flow_backward=need_backward, pose=need_pose_next)
        pose_prev = None
        if plan['depth_selfsup'] and 'frame_prev' in batch:
            # Temporal order in, inverted out (monodepth2): pose_net(prev, target) gives
            # target-from-prev motion, its inverse maps target points into the prev camera.
            pose_prev = unwrap(model).pose_net(batch['frame_prev'], frame0)

    terms, metrics = {}, {}
    model_config = getattr(unwrap(model), 'config', None)
    min_depth = getattr(model_config, 'min_depth', 0.1)
    max_depth = getattr(model_config, 'max_depth', 100.0)
    if plan['flow']:
        flows_fw = [f.float() for f in outputs['flow']]
        flows_bw = [f.float() for f in outputs['flow_backward']] if need_backward else None
        loss, flow_metrics = flow_loss(frame0, frame1, flows_fw, flows_bw, config.flow, step)
        terms['flow'] = config.flow_weight * loss
        metrics.update(flow_metrics)
    if plan['depth_supervised']:
        depth, gt, valid = _depth_and_target(outputs, batch, 'depth_gt', 'depth_valid',
                                             min_depth, max_depth)
        loss, silog_metrics = scale_invariant_loss(depth, gt, valid, config.depth.silog_lambda)
        metrics.update({'depth_silog': silog_metrics['silog'],
                        'depth_valid_pixels': float(silog_metrics['valid_pixels'])})
        if config.depth.gradient_weight > 0:
            gradient = log_depth_gradient_loss(depth, gt, valid, config.depth.gradient_scales)
            loss = loss + config.depth.gradient_weight * gradient
            metrics['depth_gradient'] = float(gradient.detach())
        terms['depth_supervised'] = config.depth_supervised_weight * loss
    if plan['depth_teacher']:
        depth, labels, valid = _depth_and_target(outputs, batch, 'teacher_depth',
                                                 'teacher_valid', min_depth, max_depth)
        loss, teacher_metrics = scale_invariant_loss(depth, labels, valid,
                                                     config.depth.teacher_lambda)
        metrics.update({'depth_teacher_silog': teacher_metrics['silog'],
                        'depth_teacher_pixels': float(teacher_metrics['valid_pixels'])})
        terms['depth_teacher'] = config.depth_teacher_weight * loss
    if plan['depth_selfsup']:
        sources, poses = [], []
        if pose_prev is not None:
            axis_angle, translation = pose_prev
            sources.append(batch['frame_prev'])
            poses.append(pose_vec_to_mat(axis_angle.float(), translation.float(), invert=True))
        if need_pose_next:
            axis_angle, translation = outputs['pose']
            sources.append(frame1)
            poses.append(pose_vec_to_mat(axis_angle.float(), translation.float()))
        disps = [d.float() for d in outputs['disp']]
        loss, selfsup_metrics = self_supervised_depth_loss(
            frame0, sources, disps, batch['K'].float(), poses, min_depth, max_depth, config.depth)
        terms['depth_selfsup'] = config.depth_selfsup_weight * loss
        metrics.update(selfsup_metrics)
    return terms, metrics


def compute_losses(model: torch.nn.Module, batch: Dict[str, torch.Tensor],
                   config: Optional[TrainStepConfig] = None, step: int = 0
                   ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Total weighted loss of one batch and its metrics, without any optimiser step.

    Raises NonFiniteError when a NaN reaches a warp (the caller decides what to do);
    `train_step` turns that into a skipped step.
    """
    config = config or TrainStepConfig()
    terms, metrics = _loss_terms(model, batch, config, step)
    total = sum(terms.values())
    for name, term in terms.items():
        metrics[f'loss_{name}'] = float(term.detach())
    metrics['loss'] = float(total.detach())
    return total, metrics


def _snapshot_buffers(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {name: buffer.detach().clone() for name, buffer in model.named_buffers()}


def _restore_buffers(model: torch.nn.Module, snapshot: Dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(snapshot[name])


def _skipped(metrics: Dict, reason: str, start: float) -> Dict:
    metrics.update(skipped=1, skip_reason=reason, step_time_s=time.perf_counter() - start)
    metrics.setdefault('loss', float('nan'))
    metrics.setdefault('grad_norm', float('nan'))
    return metrics


def train_step(model: torch.nn.Module, batch: Dict[str, torch.Tensor],
               optimizer: torch.optim.Optimizer, config: Optional[TrainStepConfig] = None,
               scaler: Optional['torch.amp.GradScaler'] = None, step: int = 0,
               regularizer: Optional[Callable] = None) -> Dict[str, float]:
    """One optimisation step on `batch`; returns float metrics (losses, grad_norm, step_time_s).

    `step` is the global step (it gates the occlusion warm-up). `regularizer(model)` returns
    (scalar loss, metrics) added to the total as the term 'regularizer' (e.g. `L2SP`, which
    holds online adaptation near the shipped weights). A non-finite loss, a NaN that reached a
    warp, or a non-finite gradient skips the step: no backward on NaN, no weight change, and
    metrics carry skipped=1 with a skip_reason string. Otherwise skipped=0.
    """
    config = config or TrainStepConfig()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    autocast = None
    dtype = PRECISIONS[config.precision]
    if dtype is torch.float16 and scaler is None:
        raise ValueError("precision 'float16' needs a GradScaler (CUDA); use 'bfloat16' or "
                         "'float32' without one")
    if dtype is not None:
        autocast = torch.autocast(_model_device(model).type, dtype=dtype)
    # A skipped step must leave the model as it was, BatchNorm running statistics included
    # (a NaN frame would otherwise poison them for good while the weights look untouched).
    buffers = _snapshot_buffers(model)
    try:
        terms, metrics = _loss_terms(model, batch, config, step, autocast)
    except NonFiniteError as error:
        _restore_buffers(model, buffers)
        return _skipped({}, f'non-finite values reached the loss: {error}', start)
    if regularizer is not None:
        terms['regularizer'], regularizer_metrics = regularizer(unwrap(model))
        metrics.update(regularizer_metrics)
    total = sum(terms.values())
    for name, term in terms.items():
        metrics[f'loss_{name}'] = float(term.detach())
    metrics['loss'] = float(total.detach())
    if not math.isfinite(metrics['loss']):
        _restore_buffers(model, buffers)
        bad = [name for name, term in terms.items() if not bool(torch.isfinite(term))]
        return _skipped(metrics, f'non-finite loss in {bad}; no backward was run', start)
    if not total.requires_grad:
        _restore_buffers(model, buffers)
        return _skipped(metrics, 'no trainable parameter gets a gradient from the losses that '
                        f'ran ({sorted(terms)}); check requires_grad of the modules', start)

    parameters = [p for group in optimizer.param_groups for p in group['params']]
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.unscale_(optimizer)
    else:
        total.backward()
    with_grad = [p for p in parameters if p.grad is not None]
    max_norm = config.max_grad_norm if config.max_grad_norm is not None else float('inf')
    grad_norm = float(torch.nn.utils.clip_grad_norm_(with_grad, max_norm)) if with_grad else 0.0
    metrics['grad_norm'] = grad_norm
    metrics['params_with_grad'] = float(len(with_grad))
    if scaler is not None:
        # The scaler skips the update itself when the scaled gradients overflowed.
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() < scale_before:
            metrics['skipped'] = 1
            metrics['skip_reason'] = 'gradient overflow under mixed precision (scale reduced)'
        else:
            metrics['skipped'] = 0
    elif not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        del total, terms  # free the graph before restoring the buffers it saved
        _restore_buffers(model, buffers)
        return _skipped(metrics, 'non-finite gradient norm; the optimiser step was skipped',
                        start)
    else:
        optimizer.step()
        metrics['skipped'] = 0
    metrics['step_time_s'] = time.perf_counter() - start
    return metrics


class L2SP:
    """weight * sum ||theta - theta_0||^2 over the trainable parameters named in the anchor
    (L2-SP, Li et al., ICML 2018): keeps a finetuned or adapting network near the weights it
    started from, against forgetting the source domain. The anchor is a frozen copy."""

    def __init__(self, model: torch.nn.Module, weight: float, names=None):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f'L2SP weight must be a finite number >= 0, got {weight!r}')
        self.weight = float(weight)
        self.anchor = {name: parameter.detach().clone()
                       for name, parameter in unwrap(model).named_parameters()
                       if (names is None or name in names) and parameter.requires_grad}
        if not self.anchor:
            raise ValueError('L2SP has nothing to anchor: no trainable parameter selected')

    def __call__(self, model: torch.nn.Module) -> Tuple[torch.Tensor, Dict[str, float]]:
        parameters = dict(model.named_parameters())
        squared = sum(((parameters[name] - anchor.to(parameters[name].device)) ** 2).sum()
                      for name, anchor in self.anchor.items())
        return self.weight * squared, {'l2sp_distance': float(squared.detach().sqrt())}


# What on-robot adaptation may train (design.md: which parameters adapt decides the sign of the
# effect). Each choice names parameters by their prefix (or BatchNorm affine for norm_affine).
TRAINABLE_CHOICES = {
    'encoder': ('structure_encoder.',),
    'encoder_top': ('structure_encoder.layer3.', 'structure_encoder.layer4.'),
    'encoder_early': ('structure_encoder.conv1.', 'structure_encoder.bn1.',
                      'structure_encoder.layer1.', 'structure_encoder.layer2.'),
    'flow_path': ('structure_encoder.', 'motion_encoder.', 'flow_decoder.'),
    'norm_affine': (),
}


def set_trainable(model: torch.nn.Module, choice: str) -> list:
    """Make exactly the parameters of `choice` trainable (requires_grad); return their names."""
    if choice not in TRAINABLE_CHOICES:
        raise ValueError(f"unknown trainable choice {choice!r}; choose from "
                         f"{', '.join(TRAINABLE_CHOICES)}")
    model = unwrap(model)
    norm_affine = set()
    if choice == 'norm_affine':
        for module_name, module in model.structure_encoder.named_modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                norm_affine |= {f'structure_encoder.{module_name}.weight',
                                f'structure_encoder.{module_name}.bias'}
    names = []
    for name, parameter in model.named_parameters():
        selected = name in norm_affine or name.startswith(TRAINABLE_CHOICES[choice])
        parameter.requires_grad_(selected)
        if selected:
            names.append(name)
    return names


def grad_cosine_similarity(model: torch.nn.Module, batch: Dict[str, torch.Tensor],
                           module_name: str = 'structure_encoder', loss_a: str = 'depth',
                           loss_b: str = 'flow', config: Optional[TrainStepConfig] = None,
                           step: int = 0) -> float:
    """Cosine between the gradients of two losses on one module's trainable parameters.

    Test-time training helps the main task when the two gradients correlate (Sun et al.,
    ICML 2020), so this is the number to watch between the depth and flow losses on the shared
    encoder. Loss names: 'flow', 'depth_supervised', 'depth_selfsup', 'depth_teacher',
    'depth' (every depth term present). Leaves .grad and the BatchNorm running statistics
    untouched. Returns NaN when one gradient is zero.
    """
    for name in (loss_a, loss_b):
        if name not in LOSS_NAMES:
            raise ValueError(f'unknown loss {name!r}; choose from {LOSS_NAMES}')
    module = getattr(unwrap(model), module_name, None)
    if not isinstance(module, torch.nn.Module):
        children = [n for n, _ in unwrap(model).named_children()]
        raise ValueError(f'model has no module {module_name!r}; it has {children}')
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f'{module_name} has no trainable parameter (all requires_grad=False)')
    config = config or TrainStepConfig()
    buffers = _snapshot_buffers(model)

    def pick(terms, name):
        keys = (('depth_supervised', 'depth_selfsup', 'depth_teacher') if name == 'depth'
                else (name,))
        present = [terms[key] for key in keys if key in terms]
        if not present:
            raise ValueError(f'loss {name!r} did not run for this batch (ran: {sorted(terms)}); '
                             'see training.py for the batch keys each loss needs')
        return sum(present)

    def flat_grad(loss):
        grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                          for g, p in zip(grads, parameters)])

    try:
        terms, _ = _loss_terms(model, batch, config, step)
        grad_a, grad_b = flat_grad(pick(terms, loss_a)), flat_grad(pick(terms, loss_b))
    finally:
        # Restore BatchNorm statistics only now: backward checks they were not modified.
        _restore_buffers(model, buffers)
    norm_a, norm_b = grad_a.norm(), grad_b.norm()
    if float(norm_a) == 0 or float(norm_b) == 0:
        return float('nan')
    return float((grad_a @ grad_b) / (norm_a * norm_b))
