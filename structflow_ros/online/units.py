"""Depth units: what the node publishes in `depth`, and how it gets there. Pure NumPy, no ROS.

A monocular network predicts depth only up to an unknown scale (Wang et al., ICRA 2020 and
monodepth2 evaluate with per-frame median scaling for this reason). `depth_mode` makes the unit
explicit:

- `relative`: the model output divided by its per-frame median over the valid pixels of every
  second row and column (`sample_median`), so that median of every published frame is exactly
  1.0 and the full-image median within a fraction of a percent of it (unitless; stable to
  compare between frames, not metres).
- `scale`: metres = `depth_scale` * model output (a scale calibrated once for this model and
  camera, e.g. the median ratio against a depth sensor).
- `camera_height`: metres from the known height of the camera above a flat ground. The depth is
  back-projected with camera_info, a plane is fitted robustly (RANSAC + least squares) to the
  lower part of the image, and metres = camera_height / (distance of that plane from the
  camera in model units). The per-frame scale is smoothed in log space, a frame whose fit fails
  reuses the last good scale, and no depth is published before the first good fit (never a
  frame in the wrong unit).

Where each goes (REP-118: a depth image is 32FC1 in metres): the metric modes publish on
`depth`, relative depth on `depth/relative` only, so that no consumer of `depth`
(depth_image_proc, RViz DepthCloud, a costmap) can take unitless values for metres. Invalid
pixels follow REP-117 in both (`mark_invalid`).
"""
from dataclasses import dataclass

import numpy as np

DEPTH_MODES = ('relative', 'scale', 'camera_height')
# The topic (relative to the node) each depth_mode publishes its depth on.
DEPTH_TOPICS = {'relative': 'depth/relative', 'scale': 'depth', 'camera_height': 'depth'}
# A model depth within this fraction of the network's far limit is saturated: the network said
# "as far as I can say" (sky, a horizon), not a distance.
FAR_LIMIT_MARGIN = 1e-3


def is_metric(mode):
    return DEPTH_TOPICS[mode] == 'depth'


def mark_invalid(depth, model_depth, far_limit):
    """REP-117 values in a published depth image, in place: NaN where the model gave no finite
    positive depth, +Inf ("no return", beyond the measurable range) where it saturated at its
    far limit `far_limit` (model units). Nothing is ever too close for the network (its near
    limit is a bound of the sigmoid, not a measurement), so -Inf never occurs. Returns how many
    pixels became NaN and +Inf."""
    nan = ~(np.isfinite(model_depth) & (model_depth > 0))
    far = ~nan & (model_depth >= far_limit * (1.0 - FAR_LIMIT_MARGIN))
    depth[nan] = np.nan
    depth[far] = np.inf
    return int(nan.sum()), int(far.sum())


class ScaleUnavailable(RuntimeError):
    """No metric scale is known yet for this frame (camera_height mode before a good fit)."""


def valid_mask(depth):
    return np.isfinite(depth) & (depth > 0)


def sample_median(depth):
    """Median of the valid pixels on every second row and column (the upper median).

    A quarter of the pixels and one partial sort (np.partition) instead of np.median's full
    two-point partition: about 8x cheaper per frame, and on a depth map (smooth, with
    hundreds of thousands of pixels) it differs from the full median by far less than 1 %.
    """
    sample = depth[::2, ::2]
    values = sample.ravel()
    if not (np.isfinite(values).all() and (values > 0).all()):
        values = sample[valid_mask(sample)]
        if values.size == 0:
            values = depth[valid_mask(depth)]
    if values.size == 0:
        raise ScaleUnavailable('the depth frame has no finite positive pixel to normalise by')
    middle = values.size // 2
    return float(np.partition(values, middle)[middle])


def relative_scale(depth):
    """1 / sample_median: the factor that makes the frame's (sampled) median exactly 1.0."""
    return 1.0 / sample_median(depth)


@dataclass
class GroundFitConfig:
    """Robust ground plane fit on the back-projected depth (camera_height mode)."""

    # Rows below this fraction of the height are searched for the ground: for a forward-looking
    # robot camera the lower 40 % of the image is mostly floor or road.
    region_start: float = 0.6
    # Subsample to at most this many points: the fit is O(iterations * points) per frame.
    max_points: int = 1500
    iterations: int = 48
    # A point is an inlier when its distance to the plane is below this fraction of its depth
    # (monocular depth errors grow with distance, so a fixed threshold would favour near points).
    inlier_tolerance: float = 0.03
    # Reject the fit when fewer than this share of the region's points lie on the plane.
    min_inlier_ratio: float = 0.3
    # The plane's normal must be within this angle of the camera's up axis (-y in the optical
    # frame): a wall or a car is not the ground.
    max_tilt_deg: float = 45.0
    # Exponential smoothing of log(scale) between frames (1.0 = no smoothing).
    smoothing: float = 0.3
    seed: int = 0


def fit_plane_least_squares(points):
    """(N, 3) points -> unit normal n and offset d with n . p + d = 0 (total least squares)."""
    centroid = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    normal = vt[-1]
    return normal, -float(normal @ centroid)


def fit_ground_plane(points, config=GroundFitConfig(), rng=None):
    """RANSAC ground plane in camera optical coordinates (x right, y down, z forward).

    Returns (normal pointing up toward the camera, camera-to-plane distance, inlier ratio), or
    raises ScaleUnavailable saying why no plausible ground was found.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 10:
        raise ScaleUnavailable(f'only {len(points)} valid points in the ground region '
                               '(need >= 10)')
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    if len(points) > config.max_points:
        points = points[rng.choice(len(points), config.max_points, replace=False)]
    tolerance = config.inlier_tolerance * np.abs(points[:, 2])  # (N,)
    min_up = np.cos(np.deg2rad(config.max_tilt_deg))
    samples = rng.integers(0, len(points), size=(config.iterations, 3))
    best_inliers, best_count = None, 0
    for index in samples:
        p0, p1, p2 = points[index]
        normal = np.cross(p1 - p0, p2 - p0)
        norm = np.linalg.norm(normal)
        if norm < 1e-12:
            continue
        normal /= norm
        if normal[1] > 0:  # orient up (-y) so that d > 0 means the camera is above the plane
            normal = -normal
        offset = -float(normal @ p0)
        if -normal[1] < min_up or offset <= 0:
            continue
        inliers = np.abs(points @ normal + offset) < tolerance
        count = int(inliers.sum())
        if count > best_count:
            best_inliers, best_count = inliers, count
    if best_inliers is None or best_count < 3:
        raise ScaleUnavailable('no plane within '
                               f'{config.max_tilt_deg:g} deg of horizontal below the camera')
    ratio = best_count / len(points)
    if ratio < config.min_inlier_ratio:
        raise ScaleUnavailable(f'ground plane supported by only {ratio:.0%} of the region '
                               f'(need {config.min_inlier_ratio:.0%})')
    normal, offset = fit_plane_least_squares(points[best_inliers])
    if normal[1] > 0:
        normal, offset = -normal, -offset
    if offset <= 0 or -normal[1] < min_up:
        raise ScaleUnavailable('the refined ground plane is not below the camera')
    return normal, offset, ratio


class DepthScaler:
    """Turns the model's depth into the published unit; owned by the inference thread."""

    def __init__(self, mode='relative', depth_scale=1.0, camera_height=1.0,
                 ground=GroundFitConfig()):
        self.configure(mode, depth_scale, camera_height)
        self.ground = ground
        self._rng = np.random.default_rng(ground.seed)
        self._log_scale = None  # smoothed log(scale) of camera_height mode
        self.last_scale = None
        self.last_inlier_ratio = None
        self.last_fit_error = ''

    def configure(self, mode, depth_scale, camera_height):
        if mode not in DEPTH_MODES:
            raise ValueError(f"unknown depth_mode '{mode}'; choose from {', '.join(DEPTH_MODES)}")
        if not depth_scale > 0 or not camera_height > 0:
            raise ValueError(f'depth_scale and camera_height must be > 0, got {depth_scale}, '
                             f'{camera_height}')
        if getattr(self, 'mode', None) != mode:
            self._log_scale = None
        self.mode, self.depth_scale, self.camera_height = mode, depth_scale, camera_height

    @property
    def unit(self):
        return 'relative (median 1.0)' if self.mode == 'relative' else 'm'

    def apply(self, depth, rays=None, rays_missing='none received yet'):
        """Model depth (H, W) -> published depth (H, W) float32.

        `rays` (H, W, 3) are the camera rays (x/z, y/z, 1) of each pixel (camera_height mode
        only); `rays_missing` says why there are none (the error names the real cause: no
        camera_info yet, an unusable one, K all zeros). Raises ScaleUnavailable when the frame
        cannot be given the asked-for unit.
        """
        if self.mode == 'relative':
            self.last_scale = relative_scale(depth)
            return (depth * np.float32(self.last_scale)).astype(np.float32, copy=False)
        if self.mode == 'scale':
            self.last_scale = self.depth_scale
            return (depth * np.float32(self.depth_scale)).astype(np.float32, copy=False)
        return depth * np.float32(self._camera_height_scale(depth, rays, rays_missing))

    def _camera_height_scale(self, depth, rays, rays_missing):
        if rays is None:
            raise ScaleUnavailable('depth_mode camera_height needs camera_info (intrinsics) to '
                                   f'back-project the depth; {rays_missing}')
        height = depth.shape[0]
        start = int(round(self.ground.region_start * height))
        region = depth[start:]
        valid = valid_mask(region)
        points = rays[start:][valid] * region[valid][:, None]  # (N, 3)
        try:
            _, distance, ratio = fit_ground_plane(points, self.ground, self._rng)
        except ScaleUnavailable as error:
            self.last_fit_error = str(error)
            if self._log_scale is None:
                raise ScaleUnavailable(f'no ground plane fitted yet: {error}') from None
            return self.last_scale  # reuse the last good scale
        self.last_fit_error = ''
        self.last_inlier_ratio = ratio
        log_scale = float(np.log(self.camera_height / distance))
        if self._log_scale is None:
            self._log_scale = log_scale
        else:
            alpha = self.ground.smoothing
            self._log_scale = (1 - alpha) * self._log_scale + alpha * log_scale
        self.last_scale = float(np.exp(self._log_scale))
        return self.last_scale
