"""A classical two-view geometry teacher: sparse, up-to-scale depth for real video without labels.

Two frames of a moving camera hold the depth of the static scene (design.md, "Real depth from
geometry"). Per pair (frame t, frame t + gap of a prepared clip):
1. dense flow both ways with OpenCV's DIS (Kroeger et al., ECCV 2016);
2. the relative motion from an essential matrix fitted with RANSAC to the forward-backward
   consistent flow (Nister's five-point solver in OpenCV);
3. depth of every pixel by triangulating its flow ray pair (least squares on the two rays);
4. a pixel keeps its label only when four cues agree: forward-backward consistency (occlusions,
   flow failures), the Sampson epipolar residual (independently moving objects and flow
   outliers break the rigid motion), the parallax angle (near the epipole and far away the
   triangulation is ill-conditioned), and cheirality (the point lies in front of both cameras);
5. confidence in (0, 1] from the same cues (cached; finetuning does not weigh by it yet).
Near-static pairs (median flow under `static_flow_px`) and pairs whose motion explains too few
pixels give no labels at all: the teacher abstains instead of guessing.

Without a calibration the focal length is self-calibrated per clip (`self_calibrate`): the
focal (principal point at the image centre, square pixels) under which one rigid motion best
explains each pair's flow, summed over the clip's moving pairs. A rigid fit with the wrong focal
leaves the rotation's flow misexplained, so the robust Sampson cost has its minimum near the
true focal whenever the camera turns; for pure forward motion the cost is flat, but then depth
from the flow does not depend on the focal either (z ~ r / r-dot about the epipole).

Labels are cached once per clip (`write_cache` / `read_cache`) in a NumPy .npz that holds the
clip's prepared frames (at most `max_width` wide), the labels of the frames that got them, the
intrinsics used and a JSON description. Finetuning reads it as scale-invariant supervision
(training.datasets.TeacherDepthDataset); `structflow teacher` writes it.
"""
import json
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

CACHE_VERSION = 1
CACHE_SUFFIX = '.teacher.npz'


class TeacherCacheError(ValueError):
    """A teacher cache file that cannot be used (missing, truncated, another version)."""


@dataclass(frozen=True)
class TeacherConfig:
    """How labels are made; stored in every cache so a cache describes itself."""

    # Frames are processed and cached at most this wide (the network sees ~30k pixels; labels
    # at this size are still ~3x finer than any training crop).
    max_width: int = 416
    # Partners: the frames this many steps before and after in the prepared (strided) clip.
    # A frame is labelled from both pairs, and only where the two agree (below).
    gap: int = 1
    # DIS preset: 'ultrafast', 'fast' or 'medium' (medium: 0.22 px EPE on RubberWhale).
    dis_preset: str = 'medium'
    # Forward-backward consistency |f_ab(x) + f_ba(x + f_ab(x))| in pixels at `max_width`.
    max_fb_px: float = 0.5
    # Sampson epipolar residual in pixels.
    max_epipolar_px: float = 0.5
    # Parallax: the angle between a point's two rays, times the focal length, in pixels. A
    # depth's relative error is about the flow error over this, and DIS errs by ~0.4 px on the
    # synthetic drives: 3 px keeps it near 10 % before the two-pair check (measured, see
    # docs/real_depth_teacher.md).
    min_parallax_px: float = 3.0
    # The two pairs' depths (after one scale between them) must agree within this |log ratio|:
    # it halves the error of the kept pixels on synthetic drives (0.14 -> 0.06-0.08).
    max_view_disagreement: float = 0.1
    # A pair whose median forward flow is under this many pixels barely moved: no labels.
    static_flow_px: float = 0.5
    # RANSAC inlier threshold for the essential matrix (pixels) and the share of the
    # consistent correspondences that must be inliers for the motion to be trusted.
    ransac_px: float = 0.5
    min_inlier_share: float = 0.3
    # Correspondences sampled for the motion fit and for self-calibration.
    fit_points: int = 3000
    # A frame keeps its labels only with at least this share of its pixels labelled.
    min_density: float = 0.01
    # Depth beyond this multiple of the frame's median is dropped (rays almost parallel).
    max_depth_ratio: float = 50.0

    def __post_init__(self):
        if self.dis_preset not in DIS_PRESETS:
            raise ValueError(f'dis_preset {self.dis_preset!r} is not one of '
                             f'{", ".join(DIS_PRESETS)}')
        if self.gap < 1 or self.max_width < 32:
            raise ValueError(f'gap must be >= 1 and max_width >= 32, got {self.gap}, '
                             f'{self.max_width}')


DIS_PRESETS = {'ultrafast': cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               'fast': cv2.DISOPTICAL_FLOW_PRESET_FAST,
               'medium': cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


@dataclass
class TwoViewLabel:
    """Labels of one frame from one pair: depth up to scale (median 1 over the kept pixels,
    0 where there is no label), confidence (0 where none) and what happened."""

    depth: np.ndarray       # (H, W) float32
    confidence: np.ndarray  # (H, W) float32 in [0, 1]
    stats: Dict[str, float] = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return self.depth > 0


def intrinsics_from_focal(focal: float, height: int, width: int) -> np.ndarray:
    """K with square pixels and the principal point at the image centre (pixel centres at
    integer coordinates, as everywhere in the project)."""
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0],
                     [0.0, 0.0, 1.0]])


def _grey(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return np.ascontiguousarray(image.astype(np.uint8))
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'teacher frames must be RGB uint8 (H, W, 3) or grey (H, W), got '
                         f'{image.dtype} {image.shape}')
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def dis_flow_both_ways(image0: np.ndarray, image1: np.ndarray, preset: str = 'medium'
                       ) -> Tuple[np.ndarray, np.ndarray]:
    """Forward and backward DIS flow, (H, W, 2) float32 each."""
    grey0, grey1 = _grey(image0), _grey(image1)
    if grey0.shape != grey1.shape:
        raise ValueError(f'the two frames differ in size: {grey0.shape} vs {grey1.shape}')
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
    return dis.calc(grey0, grey1, None), dis.calc(grey1, grey0, None)


def forward_backward_error(flow_fw: np.ndarray, flow_bw: np.ndarray
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """(|f_fw(x) + f_bw(x + f_fw(x))| per pixel, target inside the image) for (H, W, 2) flows."""
    height, width = flow_fw.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32),
                                 np.arange(height, dtype=np.float32))
    map_x, map_y = grid_x + flow_fw[..., 0], grid_y + flow_fw[..., 1]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    back = cv2.remap(flow_bw, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.linalg.norm(flow_fw + back, axis=-1), inside


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def sampson_px(F: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Sampson distance (pixels) of correspondences p0 -> p1 ((N, 2) each) under F."""
    h0 = np.concatenate([p0, np.ones((len(p0), 1))], 1)
    h1 = np.concatenate([p1, np.ones((len(p1), 1))], 1)
    Fx0 = h0 @ F.T  # (N, 3): epipolar lines in image 1
    Ftx1 = h1 @ F  # (N, 3): epipolar lines in image 0
    numerator = np.sum(h1 * Fx0, 1) ** 2
    denominator = Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2
    return np.sqrt(numerator / np.maximum(denominator, 1e-12))


def fundamental_from_motion(K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """F of the motion x1 = R x0 + t (camera 0 to camera 1) with intrinsics K."""
    K_inv = np.linalg.inv(K)
    return K_inv.T @ _skew(np.ravel(t)) @ R @ K_inv


def fit_motion(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, ransac_px: float,
               seed: int = 0) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(R, unit t, inlier mask) of the essential matrix fitted to p0 -> p1 with RANSAC, or
    None when no motion is found. Seeded, so the same pair always gives the same motion."""
    if len(p0) < 8:
        return None
    cv2.setRNGSeed(seed)
    E, mask = cv2.findEssentialMat(p0, p1, K, method=cv2.RANSAC, prob=0.999,
                                   threshold=ransac_px)
    if E is None or E.shape[0] < 3:
        return None
    E = E[:3]  # the five-point solver may return several solutions stacked; RANSAC's best first
    inliers = mask.ravel() > 0
    # recoverPose's own mask also drops points beyond 50 baselines (most of a highway view),
    # so the inliers are the essential matrix's; recoverPose only picks R, t by cheirality.
    _, R, t, _ = cv2.recoverPose(E, p0, p1, K, mask=mask.copy())
    return R, t.ravel(), inliers


def _signed_sampson(F, h0, h1):
    Fx0 = h0 @ F.T
    Ftx1 = h1 @ F
    denominator = Fx0[:, 0] ** 2 + Fx0[:, 1] ** 2 + Ftx1[:, 0] ** 2 + Ftx1[:, 1] ** 2
    return np.sum(h1 * Fx0, 1) / np.sqrt(np.maximum(denominator, 1e-12))


def _rotation(vector):
    return cv2.Rodrigues(np.asarray(vector, np.float64).reshape(3, 1))[0]


def refine_motion(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray,
                  iterations: int = 12, huber_px: float = 0.5
                  ) -> Tuple[np.ndarray, np.ndarray, float]:
    """(R, unit t, mean squared Sampson residual) after Levenberg-Marquardt on the Sampson
    residuals (Huber-weighted), from a RANSAC start: RANSAC returns the motion with the most
    inliers, not the least residual, and comparing focals needs the least residual."""
    h0 = np.concatenate([p0, np.ones((len(p0), 1))], 1)
    h1 = np.concatenate([p1, np.ones((len(p1), 1))], 1)
    t = np.ravel(t) / np.linalg.norm(t)
    # The translation moves on its unit sphere: two directions orthogonal to t.
    basis = np.linalg.svd(t.reshape(1, 3))[2][1:]

    def residuals(params, R0=R, t0=t, basis=basis):
        R_new = _rotation(params[:3]) @ R0
        t_new = t0 + params[3:] @ basis
        return _signed_sampson(fundamental_from_motion(K, R_new, t_new), h0, h1)

    params, damping = np.zeros(5), 1e-3
    current = residuals(params)
    for _ in range(iterations):
        weights = np.minimum(1.0, huber_px / np.maximum(np.abs(current), 1e-12))
        jacobian = np.empty((len(current), 5))
        for k in range(5):
            step = np.zeros(5)
            step[k] = 1e-6
            jacobian[:, k] = (residuals(params + step) - current) / 1e-6
        JtW = jacobian.T * weights
        gradient = JtW @ current
        normal = JtW @ jacobian
        delta = -np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), gradient)
        candidate = residuals(params + delta)
        if np.sum(weights * candidate ** 2) < np.sum(weights * current ** 2):
            params, current, damping = params + delta, candidate, damping * 0.3
        else:
            damping *= 10.0
    R_new = _rotation(params[:3]) @ R
    t_new = t + params[3:] @ basis
    cost = float(np.mean(np.minimum(np.abs(current), 4 * huber_px) ** 2))
    return R_new, t_new / np.linalg.norm(t_new), cost


def triangulate_rays(x0: np.ndarray, x1: np.ndarray, R: np.ndarray, t: np.ndarray
                     ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depths (z0 in camera 0, z1 in camera 1) and parallax angle (degrees) of normalised rays.

    x0, x1: (N, 3) rays K^-1 [u, v, 1] in each camera; motion X1 = R X0 + t. Solves
    z0 R x0 - z1 x1 = -t in least squares (the midpoint of the two rays' closest points).
    """
    a = x0 @ R.T  # (N, 3): camera 0's ray in camera 1's axes
    b = x1
    aa, bb, ab = np.sum(a * a, 1), np.sum(b * b, 1), np.sum(a * b, 1)
    at, bt = a @ t, b @ t
    det = aa * bb - ab ** 2
    det_safe = np.where(np.abs(det) > 1e-12, det, 1e-12)
    z0 = (-at * bb + ab * bt) / det_safe
    z1 = (aa * bt - ab * at) / det_safe
    cosine = ab / np.sqrt(aa * bb)
    parallax = np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))
    return z0, z1, parallax


def flow_geometry(flow_fw: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray):
    """Every pixel's flow ray pair under the motion X1 = R X0 + t, as (H, W) maps: depth in
    camera 0 and camera 1, parallax in pixels (ray angle x focal) and the Sampson epipolar
    residual in pixels."""
    height, width = flow_fw.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float64)
    p0 = np.stack([grid_x.ravel(), grid_y.ravel()], 1)  # (H*W, 2)
    p1 = p0 + flow_fw.reshape(-1, 2).astype(np.float64)
    K_inv = np.linalg.inv(K)
    ones = np.ones((len(p0), 1))
    z0, z1, parallax = triangulate_rays(np.concatenate([p0, ones], 1) @ K_inv.T,
                                        np.concatenate([p1, ones], 1) @ K_inv.T, R, t)
    parallax_px = np.radians(parallax) * float(np.sqrt(K[0, 0] * K[1, 1]))
    epipolar = sampson_px(fundamental_from_motion(K, R, t), p0, p1)
    return tuple(v.reshape(height, width) for v in (z0, z1, parallax_px, epipolar))


def _fb_consistent_points(flow_fw, flow_bw, max_fb_px):
    error, inside = forward_backward_error(flow_fw, flow_bw)
    consistent = inside & (error < max_fb_px)
    return error, consistent


def _sample(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    index = np.flatnonzero(mask.ravel())
    if len(index) > count:
        index = rng.choice(index, count, replace=False)
    return np.sort(index)


def two_view_depth(image0: np.ndarray, image1: np.ndarray, K: np.ndarray,
                   config: Optional[TeacherConfig] = None, flows=None, seed: int = 0
                   ) -> TwoViewLabel:
    """Sparse depth of image0 (up to scale: median 1 over the kept pixels) from the pair
    (image0, image1) with intrinsics K; `flows` = precomputed (forward, backward) DIS flows."""
    config = config or TeacherConfig()
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f'K must be a finite 3x3 intrinsics matrix with positive focals, got '
                         f'{K.tolist()}')
    flow_fw, flow_bw = flows if flows is not None else dis_flow_both_ways(
        image0, image1, config.dis_preset)
    height, width = flow_fw.shape[:2]
    empty = np.zeros((height, width), np.float32)
    magnitude = np.linalg.norm(flow_fw, axis=-1)
    stats = {'median_flow_px': float(np.median(magnitude)), 'density': 0.0}
    if stats['median_flow_px'] < config.static_flow_px:
        return TwoViewLabel(empty, empty.copy(), dict(stats, abstained='static'))
    fb_error, consistent = _fb_consistent_points(flow_fw, flow_bw, config.max_fb_px)
    stats['fb_consistent'] = float(consistent.mean())
    rng = np.random.default_rng(seed)
    fit = _sample(consistent, config.fit_points, rng)
    p0 = np.stack([fit % width, fit // width], 1).astype(np.float64)
    p1 = p0 + flow_fw.reshape(-1, 2)[fit].astype(np.float64)
    motion = fit_motion(p0, p1, K, config.ransac_px, seed)
    if motion is None:
        return TwoViewLabel(empty, empty.copy(), dict(stats, abstained='no_motion'))
    R, t, inliers = motion
    stats['inlier_share'] = float(inliers.mean())
    stats['rotation_deg'] = float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))
    if stats['inlier_share'] < config.min_inlier_share:
        return TwoViewLabel(empty, empty.copy(), dict(stats, abstained='few_inliers'))
    z0, z1, parallax_px, epipolar = flow_geometry(flow_fw, K, R, t)
    keep = consistent & (epipolar < config.max_epipolar_px) & \
        (parallax_px > config.min_parallax_px) & (z0 > 0) & (z1 > 0)
    if keep.mean() < config.min_density:
        return TwoViewLabel(empty, empty.copy(), dict(stats, density=float(keep.mean()),
                                                      abstained='sparse'))
    median = float(np.median(z0[keep]))
    depth = np.where(keep, z0 / median, 0.0)
    far = depth > config.max_depth_ratio
    keep &= ~far
    depth[far] = 0.0
    # Confidence: each cue's margin to its threshold; the parallax term saturates at 3x the
    # minimum, where the triangulation is well-conditioned.
    confidence = (np.exp(-(fb_error / config.max_fb_px) ** 2)
                  * np.exp(-(epipolar / config.max_epipolar_px) ** 2)
                  * np.clip(parallax_px / (3 * config.min_parallax_px), 0.0, 1.0))
    confidence = np.where(keep, confidence, 0.0)
    stats['density'] = float(keep.mean())
    return TwoViewLabel(depth.astype(np.float32), confidence.astype(np.float32), stats)


def combine_pairs(first: TwoViewLabel, second: TwoViewLabel, max_disagreement: float
                  ) -> TwoViewLabel:
    """One frame's labels from two pairs (its frames before and after): the second pair's
    depth is brought to the first's scale by the median ratio over the pixels both label; a
    pixel is kept where the two agree within `max_disagreement` in |log ratio|, with their
    geometric mean. Two pairs seldom share a flow error, so agreement screens out what one
    pair's cues let through (flow errors on dark or textureless surfaces, mismatched
    repeats)."""
    stats = {'density_pairs': [first.stats.get('density', 0.0), second.stats.get('density', 0.0)],
             'median_flow_px': first.stats.get('median_flow_px', 0.0)}
    empty = np.zeros_like(first.depth)
    common = first.valid & second.valid
    if common.sum() < 50:
        reason = first.stats.get('abstained') or second.stats.get('abstained') or 'disagree'
        return TwoViewLabel(empty, empty.copy(), dict(stats, density=0.0, abstained=reason))
    ratio = float(np.median(first.depth[common] / second.depth[common]))
    log_ratio = np.zeros_like(first.depth)
    log_ratio[common] = np.log(first.depth[common]) - np.log(second.depth[common] * ratio)
    keep = common & (np.abs(log_ratio) < max_disagreement)
    if not keep.any():
        return TwoViewLabel(empty, empty.copy(), dict(stats, density=0.0, abstained='disagree'))
    depth = np.where(keep, np.sqrt(first.depth * second.depth * ratio), 0.0)
    depth = np.where(keep, depth / np.median(depth[keep]), 0.0)
    confidence = np.where(keep, 0.5 * (first.confidence + second.confidence)
                          * np.exp(-(log_ratio / max_disagreement) ** 2), 0.0)
    stats['density'] = float(keep.mean())
    stats['agreement'] = float(keep.sum() / common.sum())
    return TwoViewLabel(depth.astype(np.float32), confidence.astype(np.float32), stats)


class PairFlows:
    """DIS flows of a clip's pairs, each computed once: frame i's pair with i + gap is frame
    i + gap's pair with i, the same two flows swapped. Keeps the latest `keep` pairs."""

    def __init__(self, frames: Sequence[np.ndarray], preset: str = 'medium', keep: int = 8):
        self.frames, self.preset, self.keep = frames, preset, keep
        self._flows: Dict[Tuple[int, int], Tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, i: int, j: int) -> Tuple[np.ndarray, np.ndarray]:
        """(flow i -> j, flow j -> i)."""
        key = (min(i, j), max(i, j))
        if key not in self._flows:
            if len(self._flows) >= self.keep:
                self._flows.pop(next(iter(self._flows)))
            self._flows[key] = dis_flow_both_ways(self.frames[key[0]], self.frames[key[1]],
                                                  self.preset)
        forward, backward = self._flows[key]
        return (forward, backward) if i < j else (backward, forward)


def label_frame(frames: Sequence[np.ndarray], i: int, K: np.ndarray,
                config: Optional[TeacherConfig] = None, seed: int = 0,
                flows: Optional[PairFlows] = None) -> TwoViewLabel:
    """Labels of frame i of a clip from its pairs with frames i - gap and i + gap (an end
    frame, with one partner only, gets none). `flows`: a clip's PairFlows, shared by its
    frames."""
    config = config or TeacherConfig()
    flows = flows or PairFlows(frames, config.dis_preset)
    before, after = i - config.gap, i + config.gap
    if before < 0 or after >= len(frames):
        empty = np.zeros(frames[i].shape[:2], np.float32)
        return TwoViewLabel(empty, empty.copy(), {'density': 0.0, 'abstained': 'clip_end'})
    forward = two_view_depth(frames[i], frames[after], K, config, flows=flows(i, after),
                             seed=seed)
    if forward.stats.get('abstained'):
        return forward
    backward = two_view_depth(frames[i], frames[before], K, config, flows=flows(i, before),
                              seed=seed + 1)
    label = combine_pairs(forward, backward, config.max_view_disagreement)
    if not label.stats.get('abstained') and label.stats['density'] < config.min_density:
        label.stats['abstained'] = 'sparse'
    return label


def moving_pairs(images: Sequence[np.ndarray], gap: int, static_flow_px: float,
                 max_pairs: int, preset: str = 'medium'):
    """Up to `max_pairs` (i, j, forward flow, backward flow) pairs of a clip, evenly spread,
    whose median flow shows motion."""
    candidates = list(range(0, max(0, len(images) - gap)))
    if len(candidates) > max_pairs * 3:
        candidates = [candidates[k] for k in np.linspace(0, len(candidates) - 1,
                                                         max_pairs * 3).round().astype(int)]
    pairs = []
    for i in candidates:
        flow_fw, flow_bw = dis_flow_both_ways(images[i], images[i + gap], preset)
        if np.median(np.linalg.norm(flow_fw, axis=-1)) >= static_flow_px:
            pairs.append((i, i + gap, flow_fw, flow_bw))
        if len(pairs) >= max_pairs:
            break
    return pairs


# Focal lengths searched by self-calibration, as multiples of the image width: from a wide
# 113 deg horizontal field of view (0.33) to a narrow 27 deg one (2.1).
FOCAL_RANGE = (0.33, 2.1)
# Without a usable signal (a clip that never turns), the focal of a 70 deg horizontal field of
# view: between KITTI's 82 deg and the Udacity dashcam's 58 deg.
PRIOR_FOCAL_WIDTHS = 0.71
# A cost curve whose highest point is within this fraction of its lowest carries no focal.
FLAT_CURVE = 0.05
# Residuals under this (pixels) are below what any flow measures: a pair's costs are divided
# by its lowest, but never by less than this squared, so exact flows make flat curves.
RESIDUAL_FLOOR_PX = 0.05


def _pair_correspondences(flow_fw, flow_bw, config, rng):
    """(p0, p1) of a pair for self-calibration: forward-backward consistent flow that a
    fundamental matrix (no focal needed) explains, so moving objects and flow outliers are out
    before any focal is tried, and every focal is judged on the same points."""
    height, width = flow_fw.shape[:2]
    if flow_bw is None:  # flow known to be right (a test's exact flow): every pixel
        consistent = np.ones((height, width), bool)
    else:
        _, consistent = _fb_consistent_points(flow_fw, flow_bw, config.max_fb_px)
    sample = _sample(consistent, config.fit_points, rng)
    if len(sample) < 50:
        return None
    p0 = np.stack([sample % width, sample // width], 1).astype(np.float64)
    p1 = p0 + flow_fw.reshape(-1, 2)[sample].astype(np.float64)
    F, mask = cv2.findFundamentalMat(p0, p1, cv2.FM_RANSAC, config.ransac_px, 0.999)
    if F is None or F.shape != (3, 3) or mask is None or mask.sum() < 50:
        return None
    inliers = mask.ravel() > 0
    return p0[inliers], p1[inliers]


def focal_costs(pairs, height: int, width: int, focals: Sequence[float],
                config: Optional[TeacherConfig] = None, seed: int = 0) -> np.ndarray:
    """(pairs, focals) costs: per pair, the mean squared Sampson residual of its
    correspondences under the rigid motion (essential matrix) fitted with each focal, divided
    by the pair's lowest cost. A pair that turns has a sharp valley at its focal; one that only
    drives straight ahead is flat and adds nothing."""
    config = config or TeacherConfig()
    rng = np.random.default_rng(seed)
    rows = []
    for _, _, flow_fw, flow_bw in pairs:
        points = _pair_correspondences(flow_fw, flow_bw, config, rng)
        if points is None:
            continue
        p0, p1 = points
        row, previous = [], None
        for focal in focals:
            K = intrinsics_from_focal(focal, height, width)
            # Starts: RANSAC at this focal, and the motion refined at the previous focal (the
            # five-point RANSAC sometimes picks a wrong one of its solutions; the warm start
            # keeps the curve smooth from one focal to the next).
            starts = [m[:2] for m in (fit_motion(p0, p1, K, config.ransac_px, seed),)
                      if m is not None] + ([previous] if previous is not None else [])
            if not starts:
                row.append(np.inf)
                continue
            fits = [refine_motion(p0, p1, K, R, t, huber_px=config.ransac_px)
                    for R, t in starts]
            best = min(fits, key=lambda fit: fit[2])
            previous = best[:2]
            row.append(best[2])
        row = np.asarray(row)
        if np.isfinite(row).any():
            rows.append(row / max(np.min(row[np.isfinite(row)]), RESIDUAL_FLOOR_PX ** 2))
    if not rows:
        raise ValueError('self-calibration found no moving pair with consistent flow')
    return np.minimum(np.stack(rows), 10.0)


def self_calibrate(images: Optional[Sequence[np.ndarray]], config: Optional[TeacherConfig] = None,
                   max_pairs: int = 12, gap: int = 3, seed: int = 0, pairs=None,
                   size: Optional[Tuple[int, int]] = None) -> Tuple[float, Dict]:
    """The focal (pixels, at these images' size) under which one rigid motion per pair best
    explains the clip's flow: a log grid over FOCAL_RANGE, then a finer one around the best.
    Pairs `gap` frames apart, so that turns add up to more rotation. When the summed cost curve
    is flat (the clip never turns: the focal cannot be seen, and depth from forward motion
    hardly depends on it) the prior PRIOR_FOCAL_WIDTHS x width is returned. `pairs` (with
    `size` (H, W)) replaces the clip's DIS pairs by given (i, j, forward, backward or None)
    flows. Returns (focal, details: the curves, pairs used, whether the prior was taken)."""
    config = config or TeacherConfig()
    if pairs is None:
        height, width = np.asarray(images[0]).shape[:2]
        gap = max(1, min(gap, len(images) - 1))
        pairs = moving_pairs(images, gap, config.static_flow_px, max_pairs, config.dis_preset)
    else:
        height, width = size
    if not pairs:
        raise ValueError(f'self-calibration needs a moving pair; no pair of frames '
                         f'{gap} apart moved more than {config.static_flow_px} px (median flow)')
    # One sweep (the refined motion of each focal starts the next): 25 focals, 8 % apart, and
    # a parabola through the lowest three in log focal.
    focals = width * np.geomspace(*FOCAL_RANGE, 25)
    costs = focal_costs(pairs, height, width, focals, config, seed).mean(0)
    details = {'pairs': len(pairs), 'width': width, 'height': height,
               'focals': focals.round(2).tolist(), 'costs': costs.round(5).tolist()}
    if costs.max() - costs.min() < FLAT_CURVE:
        focal = PRIOR_FOCAL_WIDTHS * width
        details.update(focal_px=focal, prior=True)
        return focal, details
    best = int(np.argmin(costs))
    log_focal = np.log(focals[best])
    if 0 < best < len(focals) - 1:
        left, middle, right = costs[best - 1:best + 2]
        curvature = left - 2 * middle + right
        if curvature > 0:
            step = np.log(focals[best + 1] / focals[best])
            log_focal += step * 0.5 * (left - right) / curvature
    focal = float(np.exp(log_focal))
    details.update(focal_px=focal, prior=False)
    return focal, details


# ---------------------------------------------------------------------------------------------
# Clips and the cache


def resize_for_teacher(image: np.ndarray, max_width: int) -> np.ndarray:
    if image.shape[1] <= max_width:
        return np.ascontiguousarray(image)
    size = (max_width, round(image.shape[0] * max_width / image.shape[1]))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def read_clip(spec: str, max_width: int) -> Tuple[List[np.ndarray], Optional[np.ndarray]]:
    """The prepared frames of a data spec (crop, stride, calib: data/video_spec.py), at most
    `max_width` wide, and K at that size (None without calib=)."""
    from structflow_ros.data.camera import resize_intrinsics
    from structflow_ros.data.video_spec import open_spec
    source = open_spec(spec)
    frames, K = [], None
    try:
        for frame in source:
            image = np.asarray(frame.image)
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
            small = resize_for_teacher(image, max_width)
            if K is None and getattr(source, 'K', None) is not None:
                K = resize_intrinsics(source.K, image.shape[:2], small.shape[:2])
            frames.append(small)
    finally:
        source.close()
    return frames, K


def label_clip(frames: Sequence[np.ndarray], K: Optional[np.ndarray],
               config: Optional[TeacherConfig] = None, progress=None, seed: int = 0):
    """Labels for every frame of a clip: (labels {frame index: (partner, TwoViewLabel)},
    K used, description). Without K the focal is self-calibrated first."""
    config = config or TeacherConfig()
    if len(frames) < 2:
        raise ValueError(f'a clip needs at least 2 frames for two-view labels, got {len(frames)}')
    height, width = frames[0].shape[:2]
    description = {'frames': len(frames), 'height': height, 'width': width}
    if K is None:
        try:
            focal, details = self_calibrate(frames, config, seed=seed)
        except ValueError as error:
            # A clip that never moves shows no focal; it gets the prior and then abstains
            # frame by frame (an empty cache), as a calibrated one would.
            focal = PRIOR_FOCAL_WIDTHS * width
            details = {'focal_px': focal, 'prior': True, 'why': str(error)}
        K = intrinsics_from_focal(focal, height, width)
        description.update(intrinsics='self_calibrated', self_calibration=details)
    else:
        description['intrinsics'] = 'calibrated'
    labels, abstained = {}, {}
    flows = PairFlows(frames, config.dis_preset)
    for i in range(len(frames)):
        label = label_frame(frames, i, K, config, seed=seed + 2 * i, flows=flows)
        reason = label.stats.get('abstained')
        if reason is None:
            labels[i] = (i + config.gap, label)
        else:
            abstained[reason] = abstained.get(reason, 0) + 1
        if progress is not None:
            progress.update(1)
    description.update(labelled=len(labels), abstained=abstained,
                       mean_density=float(np.mean([lab.stats['density']
                                                   for _, lab in labels.values()]))
                       if labels else 0.0)
    return labels, np.asarray(K, np.float64), description


def cache_name(spec: str) -> str:
    """A file name for a data spec: its path's last parts and options, filesystem-safe."""
    path, _, options = spec.partition('#')
    parts = Path(path).parts[-3:]
    # A calib=FILE option is named by its file's stem (the path would make the name too long).
    options = ','.join(f'calib={Path(o[6:]).stem}' if o.startswith('calib=') else o
                       for o in filter(None, options.split(',')))
    text = '_'.join(parts) + ('_' + options if options else '')
    safe = ''.join(c if c.isalnum() or c in '-_.' else '-' for c in text).strip('-_.')
    return safe + CACHE_SUFFIX


def write_cache(path, spec: str, frames: Sequence[np.ndarray], labels: Dict, K: np.ndarray,
                config: TeacherConfig, description: Dict) -> Path:
    """Write one clip's cache atomically (a temporary file renamed into place)."""
    path = Path(path)
    indices = sorted(labels)
    height, width = frames[0].shape[:2]
    depth = np.zeros((len(indices), height, width), np.float16)
    confidence = np.zeros((len(indices), height, width), np.uint8)
    for k, i in enumerate(indices):
        label = labels[i][1]
        depth[k] = label.depth.astype(np.float16)
        confidence[k] = np.round(label.confidence * 255).astype(np.uint8)
    meta = {'version': CACHE_VERSION, 'spec': str(spec), 'config': asdict(config), **description}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp')
    with open(tmp, 'wb') as handle:
        np.savez_compressed(handle, images=np.stack(frames), depth=depth, confidence=confidence,
                            index=np.asarray(indices, np.int32),
                            partner=np.asarray([labels[i][0] for i in indices], np.int32),
                            K=np.asarray(K, np.float64), meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)
    return path


@dataclass
class TeacherClip:
    """One clip of a teacher cache, as read back."""

    path: str
    images: np.ndarray      # (N, H, W, 3) uint8
    depth: np.ndarray       # (M, H, W) float16, 0 = no label
    confidence: np.ndarray  # (M, H, W) uint8, confidence * 255
    index: np.ndarray       # (M,) frame of each label
    partner: np.ndarray     # (M,) the other frame of its pair
    K: np.ndarray           # (3, 3) at the cached size
    meta: Dict


CACHE_KEYS = ('images', 'depth', 'confidence', 'index', 'partner', 'K', 'meta')


def _meta(path: Path, data) -> Dict:
    try:
        meta = json.loads(str(data['meta']))
    except ValueError:
        raise TeacherCacheError(f'teacher cache {path}: its description is not JSON') from None
    if meta.get('version') != CACHE_VERSION:
        raise TeacherCacheError(f"teacher cache {path} is version {meta.get('version')}, this "
                                f'code reads {CACHE_VERSION}; rewrite it with `structflow '
                                'teacher`')
    return meta


def read_cache_meta(path) -> Dict:
    """A cache's description alone (the frames stay compressed on disk); TeacherCacheError
    naming the file when it cannot be read."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if 'meta' not in data.files:
                raise TeacherCacheError(f'teacher cache {path} lacks its description; rewrite '
                                        'it with `structflow teacher`')
            return _meta(path, data)
    except TeacherCacheError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise TeacherCacheError(f'teacher cache {path} cannot be read ({error}); rewrite it '
                                'with `structflow teacher`') from None


def read_cache(path) -> TeacherClip:
    """Read and check one cache file; any problem raises TeacherCacheError naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in CACHE_KEYS if key not in data.files]
            if missing:
                raise TeacherCacheError(f'teacher cache {path} lacks {missing}; rewrite it with '
                                        '`structflow teacher`')
            arrays = {key: data[key] for key in CACHE_KEYS}
    except TeacherCacheError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise TeacherCacheError(f'teacher cache {path} cannot be read ({error}); rewrite it '
                                'with `structflow teacher`') from None
    meta = _meta(path, arrays)
    images, depth = arrays['images'], arrays['depth']
    count = len(images)
    shapes_ok = (images.ndim == 4 and images.shape[3] == 3 and images.dtype == np.uint8
                 and depth.shape[1:] == images.shape[1:3]
                 and arrays['confidence'].shape == depth.shape
                 and arrays['index'].shape == arrays['partner'].shape == (len(depth),)
                 and arrays['K'].shape == (3, 3))
    if not shapes_ok:
        raise TeacherCacheError(f'teacher cache {path}: arrays of inconsistent shapes '
                                f'(images {images.shape}, depth {depth.shape})')
    for name in ('index', 'partner'):
        values = arrays[name]
        if len(values) and (values.min() < 0 or values.max() >= count):
            raise TeacherCacheError(f'teacher cache {path}: {name} points outside its '
                                    f'{count} frames')
    return TeacherClip(str(path), images, depth, arrays['confidence'], arrays['index'],
                       arrays['partner'], arrays['K'], meta)


def cache_files(paths: Sequence[str]) -> List[Path]:
    """Cache files named directly or found (*.teacher.npz) in the folders named."""
    files = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(path.glob('*' + CACHE_SUFFIX))
            if not found:
                raise TeacherCacheError(f'{path} holds no *{CACHE_SUFFIX} teacher cache; write '
                                        'one with `structflow teacher SOURCES --out '
                                        f'{path}`')
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise TeacherCacheError(f'teacher cache {path} does not exist')
    return files
