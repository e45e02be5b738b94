"""Evaluation metrics, so every number in the project is computed one way (design.md protocol).

Depth: Eigen et al. 2014 metrics over valid ground-truth pixels, capped to [min_depth,
max_depth], with per-frame median scaling for relative predictions and the Garg crop on KITTI
(as monodepth2's evaluate_depth.py), plus an ordinal error that no flat prediction can game.
Beside a model, two floors on the same frames: one constant depth, and the image-independent
prior (the geometric mean of the model's own predictions over the set, used for every frame),
with the image gain, the share of the prior's AbsRel that the image removes.
Flow: end-point error and KITTI's Fl outlier rate.
Inputs may be NumPy arrays or torch tensors; results are plain Python floats.
"""
from typing import Dict, Iterable, List, Optional

import numpy as np

DEPTH_KEYS = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3', 'ordinal_error')
# Ordinal error: pixel pairs whose true depths differ by more than this ratio, this many per
# frame (drawn with a fixed seed, so a frame always gets the same pairs).
ORDINAL_MIN_RATIO = 1.1
ORDINAL_PAIRS = 20000


def _to_numpy(array, name: str) -> np.ndarray:
    """Tensor or array -> float64 (H, W) array; squeezes leading singleton dimensions."""
    if array is None:
        return None
    if hasattr(array, 'detach'):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f'{name} must be an (H, W) map (leading 1s allowed), got {array.shape}')
    return array


def garg_crop_mask(height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of the Garg crop (rows 0.408-0.992, cols 0.036-0.964; monodepth2)."""
    crop = np.array([0.40810811 * height, 0.99189189 * height,
                     0.03594771 * width, 0.96405229 * width]).astype(np.int32)
    mask = np.zeros((height, width), dtype=bool)
    mask[crop[0]:crop[1], crop[2]:crop[3]] = True
    return mask


def ordinal_error(pred, gt, min_ratio: float = ORDINAL_MIN_RATIO, pairs: int = ORDINAL_PAIRS,
                  seed: int = 0) -> float:
    """Share of pixel pairs the prediction orders wrongly (WHDR-style, Chen et al. 2016).

    pred and gt: 1-D arrays over the valid pixels. Pairs are drawn at random; only those whose
    true depths differ by more than `min_ratio` count; a predicted tie counts half. Scale-free,
    and one constant depth scores exactly 0.5, so unlike AbsRel a flat prediction cannot beat
    it by matching a flat scene (a wall). NaN when no pair is that far apart.
    """
    rng = np.random.default_rng(seed)
    first = rng.integers(0, gt.size, pairs)
    second = rng.integers(0, gt.size, pairs)
    truth = np.sign(gt[first] - gt[second])
    ordered = np.maximum(gt[first], gt[second]) > min_ratio * np.minimum(gt[first], gt[second])
    if not ordered.any():
        return float('nan')
    predicted = np.sign(pred[first] - pred[second])[ordered]
    wrong = np.where(predicted == 0, 0.5, (predicted != truth[ordered]).astype(np.float64))
    return float(np.mean(wrong))


def depth_metrics(pred, gt, valid=None, min_depth: float = 1e-3, max_depth: float = 80.0,
                  median_scaling: bool = True, garg_crop: bool = False) -> Dict[str, float]:
    """Eigen depth metrics of `pred` against `gt` (both (H, W), same shape, metres).

    Valid pixels: finite gt inside (min_depth, max_depth) (zeros in sparse lidar are missing),
    and `valid` and the Garg crop when given. With median scaling, pred is multiplied by
    median(gt) / median(pred) (reported as scale_ratio); then predictions are clamped to
    [min_depth, max_depth]. ordinal_error uses the prediction before that clamp (the order of
    depths beyond the cap is still the model's). No valid pixel: every metric is NaN and
    valid_pixels is 0.
    """
    pred = _to_numpy(pred, 'pred').astype(np.float64)
    gt = _to_numpy(gt, 'gt').astype(np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f'pred {pred.shape} and gt {gt.shape} differ; resize the prediction '
                         'to the ground-truth size first (as monodepth2 does)')
    mask = np.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
    if valid is not None:
        valid = _to_numpy(valid, 'valid')
        if valid.shape != gt.shape:
            raise ValueError(f'valid {valid.shape} and gt {gt.shape} differ')
        mask &= valid.astype(bool)
    if garg_crop:
        mask &= garg_crop_mask(*gt.shape)
    if not np.isfinite(pred[mask]).all():
        raise ValueError('pred holds NaN or inf on valid pixels; only finite depths are accepted')
    count = int(mask.sum())
    if count == 0:
        return {**{key: float('nan') for key in DEPTH_KEYS}, 'scale_ratio': float('nan'),
                'valid_pixels': 0}
    # Relative predictions may be in any unit: only guard against <= 0 before the scaling,
    # then cap to the evaluation range (monodepth2's order).
    pred_valid = np.maximum(pred[mask], 1e-9)
    gt_valid = gt[mask]
    ordinal = ordinal_error(pred_valid, gt_valid)
    ratio = 1.0
    if median_scaling:
        ratio = float(np.median(gt_valid) / np.median(pred_valid))
    pred_valid = np.clip(pred_valid * ratio, min_depth, max_depth)
    thresh = np.maximum(gt_valid / pred_valid, pred_valid / gt_valid)
    metrics = {
        'abs_rel': float(np.mean(np.abs(gt_valid - pred_valid) / gt_valid)),
        'sq_rel': float(np.mean((gt_valid - pred_valid) ** 2 / gt_valid)),
        'rmse': float(np.sqrt(np.mean((gt_valid - pred_valid) ** 2))),
        'rmse_log': float(np.sqrt(np.mean((np.log(gt_valid) - np.log(pred_valid)) ** 2))),
        'a1': float(np.mean(thresh < 1.25)),
        'a2': float(np.mean(thresh < 1.25 ** 2)),
        'a3': float(np.mean(thresh < 1.25 ** 3)),
        'ordinal_error': ordinal,
        'scale_ratio': ratio,
        'valid_pixels': count,
    }
    return metrics


def constant_depth_floor(gt, valid=None, **kwargs) -> Dict[str, float]:
    """Metrics of a prediction that is the same depth everywhere, after median scaling.

    The floor every model must beat on the same frames (design.md). Keyword arguments go to
    `depth_metrics` (min_depth, max_depth, garg_crop); median scaling is always on.
    """
    kwargs['median_scaling'] = True
    gt_array = _to_numpy(gt, 'gt')
    return depth_metrics(np.ones(gt_array.shape), gt_array, valid, **kwargs)


def _guarded_depth(pred: np.ndarray):
    """max(pred, 1e-9) where pred is finite, else 1, and the finite mask.

    The same guard as `depth_metrics` (depths <= 0 become 1e-9 before any ratio), so a
    relative prediction in any unit averages in log space without -inf or NaN.
    """
    finite = np.isfinite(pred)
    return np.maximum(np.where(finite, pred, 1.0), 1e-9), finite


class _GeometricMeans:
    """Running per-pixel geometric mean of depth maps, one per map shape.

    Logs are summed relative to the first map of each shape (its guarded depth is the
    reference): the sums stay small, and maps that are all the same give back exactly that
    map (reference * exp(0)), so a model that ignores its input scores exactly its own prior.
    """

    def __init__(self):
        self._sums: Dict[tuple, list] = {}  # shape -> [reference, its log, log sum, count]
        self._means: Dict[tuple, np.ndarray] = {}
        self.maps: Dict[tuple, int] = {}  # shape -> how many maps were added

    def add(self, pred: np.ndarray) -> None:
        depth, finite = _guarded_depth(pred)
        log = np.log(depth)
        if pred.shape not in self._sums:
            self._sums[pred.shape] = [depth, log, np.zeros(pred.shape),
                                      np.zeros(pred.shape, np.int64)]
        _, reference_log, total, count = self._sums[pred.shape]
        total += np.where(finite, log - reference_log, 0.0)
        count += finite
        self.maps[pred.shape] = self.maps.get(pred.shape, 0) + 1
        self._means.pop(pred.shape, None)

    def mean(self, shape: tuple) -> np.ndarray:
        """exp(mean log) per pixel over every map of `shape`; NaN where none was finite."""
        if shape not in self._means:
            reference, _, total, count = self._sums[shape]
            with np.errstate(invalid='ignore', divide='ignore'):
                self._means[shape] = reference * np.exp(total / count)  # 0 / 0: NaN
        return self._means[shape]


def prior_floor_predictions(predictions) -> List[np.ndarray]:
    """The image-independent prior floor's prediction for each frame of a set (design.md).

    predictions: the model's (H, W) depth maps of one set, each at its ground-truth size. Each
    frame gets the per-pixel geometric mean of the predictions of its own size (frames are
    grouped by shape: a set may mix cameras). Why: a model can beat the constant-depth floor
    with a layout it learned once (a road-plane gradient, a near floor and far ceiling) while
    ignoring the image; scored exactly like the model (`depth_metrics`), this prediction is
    that layout alone, so a model sees the set only where it beats it. The geometric mean, in
    log space, because median scaling makes depth a ratio scale: a frame predicted twice as
    far everywhere weighs the same as any other. Depths <= 0 are guarded as in `depth_metrics`
    (1e-9); NaN and inf are left out of a pixel's mean (NaN where no frame is finite there).
    Frames of one size share one array: do not write into the results.
    """
    maps = [_to_numpy(pred, 'prediction').astype(np.float64) for pred in predictions]
    means = _GeometricMeans()
    for pred in maps:
        means.add(pred)
    return [means.mean(pred.shape) for pred in maps]


class PriorFloor:
    """The prior floor of a set built one frame at a time, then scored like the model.

    `add(pred, gt, valid)` per frame (pred at the ground truth's size), then `per_frame()`:
    `depth_metrics` of each frame's `prior_floor_predictions` map against its ground truth,
    with the keyword arguments given here (min_depth, max_depth, garg_crop), plus
    prior_frames: how many frames of the set share its size. A frame alone at its size (a
    one-frame set) is its own prior, so its image gain is 0 by construction. For a set that
    arrives as a stream (a bag, a generator of frames): only one log-sum per image size is
    kept, never the predictions, and each frame's ground truth only where it is scored when
    that is under half the pixels (sparse lidar); a dense map is kept as given.
    """

    def __init__(self, **kwargs):
        kwargs['median_scaling'] = True
        self._kwargs = kwargs
        self._means = _GeometricMeans()
        self._truths: list = []

    def __len__(self) -> int:
        return len(self._truths)

    def add(self, pred, gt, valid=None) -> None:
        pred = _to_numpy(pred, 'pred').astype(np.float64)
        gt = _to_numpy(gt, 'gt')
        if pred.shape != gt.shape:
            raise ValueError(f'pred {pred.shape} and gt {gt.shape} differ; resize the '
                             'prediction to the ground-truth size first')
        self._means.add(pred)
        mask = np.isfinite(gt) & (gt > self._kwargs.get('min_depth', 1e-3)) & \
            (gt < self._kwargs.get('max_depth', 80.0))
        if valid is not None:
            mask &= _to_numpy(valid, 'valid').astype(bool)
        if mask.mean() < 0.5:
            # Sparse: the scored pixels only; NaN elsewhere is never valid in depth_metrics.
            self._truths.append((gt.shape, np.flatnonzero(mask), gt[mask]))
        else:
            self._truths.append((gt, valid))

    def per_frame(self) -> List[Dict[str, float]]:
        """`depth_metrics` of the prior floor on every frame added, in order."""
        results = []
        for truth in self._truths:
            if len(truth) == 3:
                shape, index, values = truth
                gt = np.full(shape, np.nan)
                gt.flat[index] = values
                valid = None
            else:
                gt, valid = truth
            metrics = depth_metrics(self._means.mean(gt.shape), gt, valid, **self._kwargs)
            metrics['prior_frames'] = self._means.maps[gt.shape]
            results.append(metrics)
        return results


def image_gain(model_abs_rel: float, prior_abs_rel: float) -> float:
    """1 - AbsRel(model) / AbsRel(prior floor): the share of the prior's error the image removes.

    Why: beating the constant depth can come from the layout alone; a model sees a set only
    when this is positive (design.md). A model that ignores its input predicts its own prior
    on every frame, so its gain is 0. NaN when either is not finite or the prior's is <= 0.
    """
    model_abs_rel, prior_abs_rel = float(model_abs_rel), float(prior_abs_rel)
    if not (np.isfinite(model_abs_rel) and np.isfinite(prior_abs_rel)) or prior_abs_rel <= 0:
        return float('nan')
    return 1.0 - model_abs_rel / prior_abs_rel


def aggregate_depth_metrics(per_frame: Iterable[Dict[str, float]]) -> Dict[str, float]:
    """Mean of per-frame metrics over frames with valid pixels, plus the scale-ratio spread.

    scale_ratio_spread = std / median of the per-frame ratios: a stable scale is what a robot
    needs (design.md).
    """
    frames = [m for m in per_frame if m.get('valid_pixels', 0) > 0]
    result = {'frames': len(frames), 'valid_pixels': int(sum(m['valid_pixels'] for m in frames))}
    if not frames:
        result.update({key: float('nan') for key in DEPTH_KEYS})
        result.update(scale_ratio_median=float('nan'), scale_ratio_std=float('nan'),
                      scale_ratio_spread=float('nan'))
        return result
    for key in DEPTH_KEYS:
        result[key] = float(np.mean([m[key] for m in frames]))
    ratios = np.array([m['scale_ratio'] for m in frames], dtype=np.float64)
    median = float(np.median(ratios))
    std = float(np.std(ratios))
    result.update(scale_ratio_median=median, scale_ratio_std=std,
                  scale_ratio_spread=std / median if median != 0 else float('nan'))
    return result


def _flow_to_numpy(flow, name: str) -> np.ndarray:
    if hasattr(flow, 'detach'):
        flow = flow.detach().cpu().numpy()
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim == 4 and flow.shape[0] == 1:
        flow = flow[0]
    if flow.ndim == 3 and flow.shape[-1] != 2 and flow.shape[0] == 2:
        flow = np.transpose(flow, (1, 2, 0))  # (2, H, W) -> (H, W, 2)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f'{name} must be a flow of shape (H, W, 2) or (2, H, W), got '
                         f'{flow.shape}')
    return flow


def flow_metrics(pred, gt, valid: Optional[np.ndarray] = None) -> Dict[str, float]:
    """End-point error and Fl-all over valid pixels (KITTI 2015 outliers: > 3 px and > 5 %).

    pred, gt: (H, W, 2) (or (2, H, W)) in pixels; valid: (H, W), defaults to finite gt.
    fl_all is a fraction in [0, 1] (KITTI prints it in percent). No valid pixel: NaN metrics.
    """
    pred = _flow_to_numpy(pred, 'pred')
    gt = _flow_to_numpy(gt, 'gt')
    if pred.shape != gt.shape:
        raise ValueError(f'pred {pred.shape} and gt {gt.shape} differ')
    mask = np.isfinite(gt).all(-1)
    if valid is not None:
        valid = _to_numpy(valid, 'valid')
        if valid.shape != gt.shape[:2]:
            raise ValueError(f'valid {valid.shape} does not match the flow {gt.shape[:2]}')
        mask &= valid.astype(bool)
    count = int(mask.sum())
    if count == 0:
        return {'epe': float('nan'), 'fl_all': float('nan'), 'valid_pixels': 0}
    if not np.isfinite(pred[mask]).all():
        raise ValueError('pred flow holds NaN or inf on valid pixels')
    error = np.linalg.norm(pred[mask] - gt[mask], axis=-1)
    magnitude = np.linalg.norm(gt[mask], axis=-1)
    outlier = (error > 3.0) & (error > 0.05 * magnitude)
    return {'epe': float(error.mean()), 'fl_all': float(outlier.mean()), 'valid_pixels': count}
