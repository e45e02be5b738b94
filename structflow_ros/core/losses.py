"""Self-supervised flow and depth losses; pure functions returning (loss, metrics) as in RAFT.

- Photometric error: 0.85 SSIM (3x3) + 0.15 L1 (monodepth2, Godard et al. 2019) or the census
  transform with a soft Hamming distance (UnFlow, Meister et al. 2018).
- Flow: multi-scale photometric loss of the backward-warped second frame, edge-aware smoothness
  and, after a warm-up, forward-backward consistency occlusion masks (UnFlow).
- Depth: monodepth2's per-pixel minimum reprojection with auto-masking and mean-normalised
  disparity smoothness; Eigen's scale-invariant log loss for dense or sparse ground truth.

Images are float (B, 3, H, W) in [0, 1]; flows are in pixels (see geometry.py conventions).
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from structflow_ros.core.geometry import check_finite, flow_warp, reproject_warp
from structflow_ros.core.networks import disp_to_depth

PHOTOMETRIC_KINDS = ('ssim_l1', 'census')
Metrics = Dict[str, float]


def _check_image(image: torch.Tensor, name: str) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise ValueError(f'{name} must be a (B, C, H, W) tensor, got '
                         f'{tuple(image.shape) if isinstance(image, torch.Tensor) else image!r}')
    if not image.is_floating_point():
        raise ValueError(f'{name} must be float in [0, 1], got {image.dtype}; convert uint8 '
                         'images with image.float() / 255 first')


def _masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of `values` over `mask` (broadcast); 0 (still in the graph) when the mask is empty."""
    if mask is None:
        return values.mean()
    mask = mask.expand_as(values).to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------------------------------------
# Photometric errors (per pixel)

def ssim_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel (1 - SSIM) / 2 over 3x3 windows with reflection padding (monodepth2's SSIM)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    a = F.pad(a, (1, 1, 1, 1), mode='reflect')
    b = F.pad(b, (1, 1, 1, 1), mode='reflect')
    mu_a = F.avg_pool2d(a, 3, 1)
    mu_b = F.avg_pool2d(b, 3, 1)
    sigma_a = F.avg_pool2d(a * a, 3, 1) - mu_a ** 2
    sigma_b = F.avg_pool2d(b * b, 3, 1) - mu_b ** 2
    sigma_ab = F.avg_pool2d(a * b, 3, 1) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + c1) * (2 * sigma_ab + c2)
    denominator = (mu_a ** 2 + mu_b ** 2 + c1) * (sigma_a + sigma_b + c2)
    return torch.clamp((1 - numerator / denominator) / 2, 0, 1)


def photometric_error(a: torch.Tensor, b: torch.Tensor, ssim_weight: float = 0.85
                      ) -> torch.Tensor:
    """Per-pixel 0.85 SSIM + 0.15 L1 error, (B, 1, H, W) (monodepth2)."""
    _check_image(a, 'a')
    _check_image(b, 'b')
    l1 = (a - b).abs().mean(1, keepdim=True)
    if ssim_weight == 0:
        return l1
    return ssim_weight * ssim_error(a, b).mean(1, keepdim=True) + (1 - ssim_weight) * l1


def _ternary_transform(image: torch.Tensor, radius: int) -> torch.Tensor:
    """Soft census signature (B, P*P, H, W) of a [0, 1] RGB or grey image (UnFlow)."""
    if image.shape[1] == 3:
        weights = torch.tensor([0.2989, 0.5870, 0.1140], device=image.device, dtype=image.dtype)
        grey = (image * weights.view(1, 3, 1, 1)).sum(1, keepdim=True) * 255.0
    else:
        grey = image.mean(1, keepdim=True) * 255.0
    patch = 2 * radius + 1
    kernel = torch.eye(patch * patch, device=image.device, dtype=image.dtype)
    kernel = kernel.reshape(patch * patch, 1, patch, patch)  # one-hot neighbour pickers
    padded = F.pad(grey, (radius,) * 4, mode='replicate')
    neighbours = F.conv2d(padded, kernel)  # (B, P*P, H, W)
    diff = neighbours - grey
    return diff / torch.sqrt(0.81 + diff ** 2)


def census_error(a: torch.Tensor, b: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Per-pixel soft Hamming distance of census signatures, mean over the patch, (B, 1, H, W).

    Robust to illumination changes (UnFlow's ternary loss). UnFlow sums over the 7x7 patch and
    applies a Charbonnier penalty; the mean keeps the scale comparable to `photometric_error`.
    """
    _check_image(a, 'a')
    _check_image(b, 'b')
    if radius < 1:
        raise ValueError(f'census radius must be >= 1, got {radius}')
    distance = (_ternary_transform(a, radius) - _ternary_transform(b, radius)) ** 2
    return (distance / (0.1 + distance)).mean(1, keepdim=True)


def photometric_loss(target: torch.Tensor, warped: torch.Tensor,
                     mask: Optional[torch.Tensor] = None, kind: str = 'ssim_l1'
                     ) -> Tuple[torch.Tensor, Metrics]:
    """Mean photometric error between `target` and `warped` over `mask` (B, 1, H, W)."""
    if kind == 'ssim_l1':
        error = photometric_error(target, warped)
    elif kind == 'census':
        error = census_error(target, warped)
    else:
        raise ValueError(f'unknown photometric kind {kind!r}; choose from {PHOTOMETRIC_KINDS}')
    loss = _masked_mean(error, mask)
    return loss, {'photometric': float(loss.detach())}


# ---------------------------------------------------------------------------------------------
# Smoothness

def edge_aware_smoothness(field: torch.Tensor, image: torch.Tensor, order: int = 1,
                          edge_alpha: float = 1.0) -> Tuple[torch.Tensor, Metrics]:
    """Edge-aware smoothness of `field` (B, C, H, W), weights exp(-alpha |dI|) (monodepth2).

    order=1 penalises gradients (piecewise-constant fields); order=2 penalises second
    derivatives (piecewise-planar fields, better for flow: UnFlow, ARFlow). For disparity the
    caller divides by its mean first (monodepth2) so the loss does not shrink the depth.
    """
    _check_image(image, 'image')
    if field.dim() != 4 or field.shape[-2:] != image.shape[-2:]:
        raise ValueError(f'field {tuple(field.shape)} must be (B, C, H, W) with the height and '
                         f'width of image {tuple(image.shape)}; resize the image to the field')
    if order not in (1, 2):
        raise ValueError(f'smoothness order must be 1 or 2, got {order}')
    image_dx = (image[:, :, :, :-1] - image[:, :, :, 1:]).abs().mean(1, keepdim=True)
    image_dy = (image[:, :, :-1, :] - image[:, :, 1:, :]).abs().mean(1, keepdim=True)
    weight_x = torch.exp(-edge_alpha * image_dx)  # (B, 1, H, W-1)
    weight_y = torch.exp(-edge_alpha * image_dy)  # (B, 1, H-1, W)
    field_dx = field[:, :, :, :-1] - field[:, :, :, 1:]
    field_dy = field[:, :, :-1, :] - field[:, :, 1:, :]
    if order == 2:
        field_dx = field_dx[:, :, :, :-1] - field_dx[:, :, :, 1:]  # (B, C, H, W-2)
        field_dy = field_dy[:, :, :-1, :] - field_dy[:, :, 1:, :]  # (B, C, H-2, W)
        weight_x = weight_x[:, :, :, 1:]
        weight_y = weight_y[:, :, 1:, :]
    loss = (field_dx.abs() * weight_x).mean() + (field_dy.abs() * weight_y).mean()
    return loss, {'smoothness': float(loss.detach())}


# ---------------------------------------------------------------------------------------------
# Flow

def forward_backward_occlusion(flow_fw: torch.Tensor, flow_bw: torch.Tensor,
                               alpha1: float = 0.01, alpha2: float = 0.5
                               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Occlusion masks (B, 1, H, W), 1 = occluded, by forward-backward consistency (UnFlow).

    A pixel is occluded when |w_f + w_b(p + w_f)|^2 > alpha1 (|w_f|^2 + |w_b(p + w_f)|^2) +
    alpha2. No gradient flows through the masks.
    """
    with torch.no_grad():
        flow_fw, flow_bw = flow_fw.detach(), flow_bw.detach()
        bw_at_fw, _ = flow_warp(flow_bw, flow_fw)  # w_b sampled where w_f points
        fw_at_bw, _ = flow_warp(flow_fw, flow_bw)

        def occluded(flow, other_warped):
            mismatch = ((flow + other_warped) ** 2).sum(1, keepdim=True)
            magnitude = (flow ** 2).sum(1, keepdim=True) + (other_warped ** 2).sum(1, keepdim=True)
            return (mismatch > alpha1 * magnitude + alpha2).to(flow.dtype)

        return occluded(flow_fw, bw_at_fw), occluded(flow_bw, fw_at_bw)


@dataclass
class FlowLossConfig:
    """Weights of the self-supervised flow loss (pretraining and online adaptation)."""

    # 'ssim_l1' (monodepth2) or 'census' (UnFlow; robust to exposure changes).
    photometric: str = 'ssim_l1'
    # Weight per decoder scale (scale s is 1/2^s resolution); the loss is their weighted mean.
    # Every scale's flow is upsampled to full resolution before the warp (monodepth2 style).
    scale_weights: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # Edge-aware smoothness on each scale's flow (pixels of that scale) vs the image at that
    # scale. Flow in pixels is larger than disparity, hence the small weight.
    smooth_weight: float = 0.05
    # 1: first-order (piecewise constant); 2: second-order (piecewise planar, UnFlow/ARFlow).
    smooth_order: int = 1
    # exp(-edge_alpha |dI|): 10 lets image edges (|dI| ~ 0.1) relax smoothness (ARFlow).
    edge_alpha: float = 10.0
    # Forward-backward occlusion masks (needs the backward flow), enabled only from this step
    # on: early flows are wrong everywhere and would mask the whole image (UnFlow).
    fb_occlusion: bool = False
    occlusion_start_step: int = 2000
    occlusion_alpha1: float = 0.01
    occlusion_alpha2: float = 0.5
    # Mask pixels whose flow points outside the other image (they have nothing to compare).
    mask_out_of_view: bool = True
    # True: every scale's flow is upsampled and compared at full resolution (monodepth2).
    # False: scales > 0 compare area-downsampled frames at their own resolution, which makes
    # the loss about 3x cheaper (measured: the loss was 60 % of a 320x96 CPU training step).
    full_resolution_scales: bool = False

    def __post_init__(self):
        if self.photometric not in PHOTOMETRIC_KINDS:
            raise ValueError(f'unknown photometric kind {self.photometric!r}; '
                             f'choose from {PHOTOMETRIC_KINDS}')
        if self.smooth_order not in (1, 2):
            raise ValueError(f'smooth_order must be 1 or 2, got {self.smooth_order}')
        if not self.scale_weights or any(w < 0 for w in self.scale_weights) \
                or sum(self.scale_weights) <= 0:
            raise ValueError(f'scale_weights must be non-negative with a positive sum, got '
                             f'{self.scale_weights}')


def upsample_flow(flow: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a flow (B, 2, h, w) in pixels of its scale to (B, 2, H, W) in full-res pixels."""
    if flow.shape[-2:] == (height, width):
        return flow
    resized = F.interpolate(flow, size=(height, width), mode='bilinear', align_corners=False)
    factors = torch.tensor([width / flow.shape[-1], height / flow.shape[-2]],
                           device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
    return resized * factors


def _resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image, size=(height, width), mode='area')


def flow_loss(frame0: torch.Tensor, frame1: torch.Tensor, flows_fw: Sequence[torch.Tensor],
              flows_bw: Optional[Sequence[torch.Tensor]] = None,
              config: Optional[FlowLossConfig] = None, step: int = 0
              ) -> Tuple[torch.Tensor, Metrics]:
    """Multi-scale self-supervised flow loss (photometric + smoothness [+ occlusion masks]).

    frame0, frame1: (B, 3, H, W) float in [0, 1]. flows_fw[s]: (B, 2, H/2^s, W/2^s) frame0 ->
    frame1 in pixels of scale s; flows_bw the same for frame1 -> frame0 (optional; when given
    the backward direction is also trained and the two are averaged). `step` is the training
    step, compared with `config.occlusion_start_step`.
    """
    config = config or FlowLossConfig()
    _check_image(frame0, 'frame0')
    _check_image(frame1, 'frame1')
    if frame0.shape != frame1.shape:
        raise ValueError(f'frames differ in shape: {tuple(frame0.shape)} vs {tuple(frame1.shape)}')
    if not flows_fw:
        raise ValueError('flows_fw is empty; pass the list of flows over scales')
    if flows_bw is not None and len(flows_bw) != len(flows_fw):
        raise ValueError(f'flows_bw has {len(flows_bw)} scales, flows_fw {len(flows_fw)}')
    num_scales = min(len(flows_fw), len(config.scale_weights))
    height, width = frame0.shape[-2:]
    use_occlusion = config.fb_occlusion and flows_bw is not None \
        and step >= config.occlusion_start_step
    directions = [(frame0, frame1, flows_fw, flows_bw)]
    if flows_bw is not None:
        directions.append((frame1, frame0, flows_bw, flows_fw))

    total = frame0.new_zeros(())
    photometric_sum = smoothness_sum = 0.0
    occluded_fraction = valid_fraction = 0.0
    weight_sum = sum(config.scale_weights[:num_scales])
    for scale in range(num_scales):
        weight = config.scale_weights[scale]
        if weight == 0:
            continue
        for direction, (target, source, flows, flows_other) in enumerate(directions):
            flow = flows[scale]
            if config.full_resolution_scales or scale == 0:
                size = (height, width)
                full_flow = upsample_flow(flow, height, width)  # (B, 2, H, W) full-res pixels
            else:
                size = tuple(flow.shape[-2:])
                full_flow = flow
                target, source = _resize_image(target, *size), _resize_image(source, *size)
            warped, valid = flow_warp(source, full_flow)
            mask = valid if config.mask_out_of_view else torch.ones_like(valid)
            if use_occlusion:
                other = upsample_flow(flows_other[scale], *size)
                occluded, _ = forward_backward_occlusion(
                    full_flow, other, config.occlusion_alpha1, config.occlusion_alpha2)
                mask = mask * (1 - occluded)
                if scale == 0 and direction == 0:
                    occluded_fraction = float(occluded.mean())
            if scale == 0 and direction == 0:
                valid_fraction = float(valid.mean())
            photo, _ = photometric_loss(target, warped, mask, config.photometric)
            image_small = _resize_image(target, flow.shape[-2], flow.shape[-1])
            smooth, _ = edge_aware_smoothness(flow, image_small, config.smooth_order,
                                              config.edge_alpha)
            term = photo + config.smooth_weight * smooth
            total = total + (weight / weight_sum / len(directions)) * term
            photometric_sum += weight / weight_sum / len(directions) * float(photo.detach())
            smoothness_sum += weight / weight_sum / len(directions) * float(smooth.detach())
    metrics = {
        'flow_loss': float(total.detach()),
        'flow_photometric': photometric_sum,
        'flow_smoothness': smoothness_sum,
        'flow_occluded_fraction': occluded_fraction,
        'flow_valid_fraction': valid_fraction,
        'flow_occlusion_active': float(use_occlusion),
    }
    return total, metrics


# ---------------------------------------------------------------------------------------------
# Depth

def min_reprojection_loss(target: torch.Tensor, sources_warped: List[torch.Tensor],
                          sources_unwarped: List[torch.Tensor], automask: bool = True,
                          generator: Optional[torch.Generator] = None
                          ) -> Tuple[torch.Tensor, Metrics]:
    """Per-pixel minimum photometric error over source views with auto-masking (monodepth2).

    With `automask`, the identity (unwarped) errors join the minimum, plus tiny noise to break
    ties, so pixels that do not change between frames (static camera, objects moving with the
    camera) pick the identity and give no gradient.
    """
    if not sources_warped:
        raise ValueError('sources_warped is empty; pass at least one warped source view')
    reprojection = torch.cat([photometric_error(target, w) for w in sources_warped], 1)
    candidates = reprojection  # (B, S, H, W)
    if automask:
        if len(sources_unwarped) == 0:
            raise ValueError('automask needs the unwarped source views (sources_unwarped)')
        identity = torch.cat([photometric_error(target, s) for s in sources_unwarped], 1)
        noise = torch.randn(identity.shape, generator=generator, dtype=identity.dtype,
                            device='cpu' if generator is not None else identity.device)
        identity = identity + 1e-5 * noise.to(identity.device)
        candidates = torch.cat((identity, reprojection), 1)  # (B, 2S, H, W)
    best, index = candidates.min(1)
    loss = best.mean()
    metrics = {'reprojection': float(loss.detach())}
    if automask:
        metrics['automask_fraction'] = float((index < identity.shape[1]).float().mean())
    return loss, metrics


@dataclass
class DepthLossConfig:
    """Weights of the self-supervised and supervised depth losses (monodepth2 defaults)."""

    # Disparity smoothness weight; monodepth2 uses 1e-3 and divides it by 2^scale.
    smooth_weight: float = 1e-3
    automask: bool = True
    # Weight of each decoder scale; every scale's disparity is upsampled to full resolution.
    scale_weights: Tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # Variance focus of the scale-invariant log loss (BTS uses 0.85; Eigen's 0.5 is softer).
    silog_lambda: float = 0.85
    # Weight of the multi-scale log-depth gradient matching term added to the supervised loss
    # (`log_depth_gradient_loss`; MegaDepth uses 0.5). 0 = off, the loss is silog alone.
    gradient_weight: float = 0.0
    gradient_scales: int = 4
    # Variance focus of the loss on the two-view teacher's labels: 1, fully scale-invariant,
    # since each label map has a scale of its own (data/teacher.py: median 1 per frame).
    teacher_lambda: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.gradient_weight) and self.gradient_weight >= 0):
            raise ValueError(f'gradient_weight must be a finite number >= 0, got '
                             f'{self.gradient_weight!r}')
        if not (isinstance(self.gradient_scales, int) and self.gradient_scales >= 1):
            raise ValueError(f'gradient_scales must be an integer >= 1, got '
                             f'{self.gradient_scales!r}')


def self_supervised_depth_loss(target: torch.Tensor, sources: List[torch.Tensor],
                               disps: Sequence[torch.Tensor], K: torch.Tensor,
                               poses: List[torch.Tensor], min_depth: float, max_depth: float,
                               config: Optional[DepthLossConfig] = None
                               ) -> Tuple[torch.Tensor, Metrics]:
    """monodepth2's multi-scale loss: min reprojection + automask + disparity smoothness.

    target: (B, 3, H, W); sources: list of (B, 3, H, W); disps[s]: (B, 1, H/2^s, W/2^s) sigmoid
    disparity of the target; K: (B, 3, 3) intrinsics at full resolution; poses: one
    T_target_to_source (B, 4, 4) per source.
    """
    config = config or DepthLossConfig()
    _check_image(target, 'target')
    if len(sources) != len(poses) or not sources:
        raise ValueError(f'need one pose per source view, got {len(sources)} sources and '
                         f'{len(poses)} poses')
    height, width = target.shape[-2:]
    num_scales = min(len(disps), len(config.scale_weights))
    weight_sum = sum(config.scale_weights[:num_scales])
    total = target.new_zeros(())
    reprojection_sum = smoothness_sum = 0.0
    automask_fraction = 0.0
    for scale in range(num_scales):
        weight = config.scale_weights[scale] / weight_sum
        if weight == 0:
            continue
        disp = disps[scale]
        check_finite(disp, f'disparity at scale {scale}')
        disp_full = F.interpolate(disp, size=(height, width), mode='bilinear',
                                  align_corners=False)
        _, depth = disp_to_depth(disp_full, min_depth, max_depth)
        warped = [reproject_warp(source, depth, K, pose)[0]
                  for source, pose in zip(sources, poses)]
        reprojection, reprojection_metrics = min_reprojection_loss(
            target, warped, sources, config.automask)
        mean_disp = disp.mean(dim=(2, 3), keepdim=True).clamp(min=1e-7)
        image_small = _resize_image(target, disp.shape[-2], disp.shape[-1])
        smooth, _ = edge_aware_smoothness(disp / mean_disp, image_small, 1, 1.0)
        total = total + weight * (reprojection + config.smooth_weight / 2 ** scale * smooth)
        reprojection_sum += weight * reprojection_metrics['reprojection']
        smoothness_sum += weight * float(smooth.detach())
        if scale == 0:
            automask_fraction = reprojection_metrics.get('automask_fraction', 0.0)
    metrics = {
        'depth_selfsup_loss': float(total.detach()),
        'depth_reprojection': reprojection_sum,
        'depth_smoothness': smoothness_sum,
        'depth_automask_fraction': automask_fraction,
    }
    return total, metrics


def _masked_log_residual(pred_depth: torch.Tensor, gt_depth: torch.Tensor,
                         valid_mask: torch.Tensor, eps: float
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(valid, log pred - log gt) of the ground-truth depth losses; the residual is 0 outside
    `valid` (the mask, finite and positive ground truth), depths clamped to `eps` before the log.
    """
    if pred_depth.shape != gt_depth.shape or valid_mask.shape != gt_depth.shape:
        raise ValueError(f'pred {tuple(pred_depth.shape)}, gt {tuple(gt_depth.shape)} and valid '
                         f'{tuple(valid_mask.shape)} must have the same shape (B, 1, H, W)')
    valid = valid_mask.bool() & torch.isfinite(gt_depth) & (gt_depth > 0)
    gt_safe = torch.where(valid, gt_depth, torch.ones_like(gt_depth))
    residual = torch.log(pred_depth.clamp(min=eps)) - torch.log(gt_safe.clamp(min=eps))
    return valid, torch.where(valid, residual, torch.zeros_like(residual))


def log_depth_gradient_loss(pred_depth: torch.Tensor, gt_depth: torch.Tensor,
                            valid_mask: torch.Tensor, scales: int = 4, eps: float = 1e-6
                            ) -> torch.Tensor:
    """Multi-scale gradient matching of log depth (Li & Snavely, MegaDepth, CVPR 2018).

    R = log pred - log gt; the loss is the mean |dR/dx| + |dR/dy| over pixel pairs that are
    both valid, at `scales` subsamplings (every 2^k-th pixel), averaged over scales and images.
    A global scale cancels in R's differences, so, like silog, it does not ask for metric
    depth; unlike silog it is local: a flat wall predicted as a slope, or an object edge
    blurred into its background, costs the same wherever the rest of the image is.
    """
    valid, residual = _masked_log_residual(pred_depth, gt_depth, valid_mask, eps)
    weight = valid.to(residual.dtype)
    per_scale = []
    for scale in range(scales):
        step = 2 ** scale
        r = residual[..., ::step, ::step]
        w = weight[..., ::step, ::step]
        if r.shape[-1] < 2 or r.shape[-2] < 2:
            break
        pair_x = w[..., :, 1:] * w[..., :, :-1]  # (B, 1, h, w-1): both pixels valid
        pair_y = w[..., 1:, :] * w[..., :-1, :]  # (B, 1, h-1, w)
        grad_sum = ((r[..., :, 1:] - r[..., :, :-1]).abs() * pair_x).flatten(1).sum(1) + \
            ((r[..., 1:, :] - r[..., :-1, :]).abs() * pair_y).flatten(1).sum(1)  # (B,)
        pairs = pair_x.flatten(1).sum(1) + pair_y.flatten(1).sum(1)  # (B,)
        has_pairs = pairs > 0
        if bool(has_pairs.any()):
            per_scale.append((grad_sum[has_pairs] / pairs[has_pairs]).mean())
    if not per_scale:
        return pred_depth.sum() * 0.0
    return torch.stack(per_scale).mean()


def scale_invariant_loss(pred_depth: torch.Tensor, gt_depth: torch.Tensor,
                         valid_mask: torch.Tensor, lam: float = 0.85, eps: float = 1e-6
                         ) -> Tuple[torch.Tensor, Metrics]:
    """Scale-invariant log loss sqrt(mean d^2 - lam mean(d)^2), d = log pred - log gt.

    Eigen et al. 2014 (lam -> variance focus as in BTS). Computed per image over its valid
    pixels (dense or sparse ground truth; zeros in sparse lidar are simply invalid) and averaged
    over images that have any. Depths are clamped to `eps` before the log, so a non-positive
    depth never makes NaN. No valid pixel: loss 0 (in the graph), metrics valid_pixels = 0.
    """
    check_finite(pred_depth, 'pred_depth')
    valid, residual = _masked_log_residual(pred_depth, gt_depth, valid_mask, eps)
    batch = pred_depth.shape[0]
    valid_flat = valid.reshape(batch, -1).to(pred_depth.dtype)  # (B, N)
    diff = residual.reshape(batch, -1)  # (B, N), zero outside the mask
    count = valid_flat.sum(1)  # (B,)
    has_pixels = count > 0
    valid_pixels = int(count.sum())
    if valid_pixels == 0:
        loss = pred_depth.sum() * 0.0
        return loss, {'silog': 0.0, 'valid_pixels': 0}
    count_safe = count.clamp(min=1.0)
    mean_sq = (diff ** 2).sum(1) / count_safe
    mean = diff.sum(1) / count_safe
    # The clamp keeps sqrt's gradient finite for a perfect prediction.
    per_image = torch.sqrt((mean_sq - lam * mean ** 2).clamp(min=1e-8))
    loss = per_image[has_pixels].mean()
    return loss, {'silog': float(loss.detach()), 'valid_pixels': valid_pixels}
