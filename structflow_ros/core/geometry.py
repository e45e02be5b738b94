"""Camera geometry and image warping: pixel grids, back-projection, rigid flow, guarded sampling.

Conventions (used by every function here and by the losses):
- Pixel coordinates are in pixels with the centre of the top-left pixel at (0, 0) and the centre
  of the bottom-right one at (W - 1, H - 1); `F.grid_sample` is therefore always called with
  `align_corners=True`.
- Flow is (B, 2, H, W) in pixels, channel 0 is u (along x, columns), channel 1 is v (along y,
  rows). A forward flow from frame 0 to frame 1 maps pixel p of frame 0 to p + flow(p) in frame 1,
  so `flow_warp(frame1, flow_fw)` reconstructs frame 0 (backward warping, as in UnFlow).
- Rigid transforms `T_t_to_s` are (B, 4, 4) and map points from the target camera (the one whose
  depth is given) into the source camera, as monodepth2's `cam_T_cam`.

torch 2.13/2.14 on CPU segfault in the backward of `F.grid_sample` (border/reflection padding)
when the grid holds a NaN (see shared/toolchain.md). Every sampling here goes through
`sample_image`, which refuses non-finite grids with `NonFiniteError` instead.
"""
import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

PADDING_MODES = ('border', 'zeros', 'reflection')


class NonFiniteError(ValueError):
    """A tensor that must be finite holds NaN or inf (for instance a flow fed to a warp)."""


def check_finite(tensor: torch.Tensor, name: str, why: str = '') -> None:
    """Raise NonFiniteError naming `name` when `tensor` holds NaN or inf."""
    if not bool(torch.isfinite(tensor).all()):
        nan_count = int(torch.isnan(tensor).sum())
        inf_count = int(torch.isinf(tensor).sum())
        raise NonFiniteError(
            f'{name} holds {nan_count} NaN and {inf_count} inf values of {tensor.numel()}; '
            f'only finite values are accepted{": " + why if why else ""}')


def _check_shape(tensor: torch.Tensor, name: str, ndim: int, channels: Optional[int] = None,
                 expected: str = '') -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f'{name} must be a torch.Tensor {expected}, got {type(tensor).__name__}')
    if tensor.dim() != ndim or (channels is not None and tensor.shape[1] != channels):
        raise ValueError(f'{name} must have shape {expected}, got {tuple(tensor.shape)}')


@functools.lru_cache(maxsize=64)
def _pixel_grid_cached(height: int, width: int, device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
    # Built outside inference mode so that autograd may save it for backward later; the cached
    # tensor is shared between threads and must never be modified in place.
    with torch.inference_mode(False), torch.no_grad():
        ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                                torch.arange(width, device=device, dtype=dtype), indexing='ij')
        grid = torch.stack((xs, ys), dim=0)  # (2, H, W)
    return grid


def pixel_grid(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Return the (2, H, W) grid of pixel coordinates (x, y), shared and cached per device/dtype.

    The returned tensor is cached and shared (also between threads): never modify it in place.
    """
    if height < 1 or width < 1:
        raise ValueError(f'pixel_grid needs height and width >= 1, got {height}x{width}')
    return _pixel_grid_cached(int(height), int(width), torch.device(device or 'cpu'), dtype)


def sample_image(image: torch.Tensor, coords: torch.Tensor, padding_mode: str = 'border'
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly sample `image` (B, C, H, W) at pixel coordinates `coords` (B, 2, H', W').

    Returns (sampled (B, C, H', W'), valid (B, 1, H', W')), valid = 1 where the sample location
    lies inside the image [0, W-1] x [0, H-1]. Raises NonFiniteError on a non-finite grid rather
    than letting torch's CPU grid_sample backward segfault on it.
    """
    _check_shape(image, 'image', 4, expected='(B, C, H, W)')
    _check_shape(coords, 'coords', 4, 2, expected='(B, 2, H, W) pixel coordinates (x, y)')
    if padding_mode not in PADDING_MODES:
        raise ValueError(f'padding_mode {padding_mode!r} is not one of {PADDING_MODES}')
    if coords.shape[0] != image.shape[0]:
        raise ValueError(f'image batch {image.shape[0]} and coords batch {coords.shape[0]} differ')
    check_finite(coords, 'sampling coordinates',
                 'grid_sample backward segfaults on NaN grids on CPU (shared/toolchain.md); '
                 'a NaN upstream (diverged network, log of a non-positive depth) reached a warp')
    height, width = image.shape[-2:]
    x, y = coords[:, 0], coords[:, 1]  # (B, H', W') each
    tol = 1e-3  # pixels; round-off of an identity reprojection must not flag the border
    valid = ((x >= -tol) & (x <= width - 1 + tol)
             & (y >= -tol) & (y <= height - 1 + tol)).unsqueeze(1)
    # Normalise to [-1, 1] with align_corners=True; max(.., 1) keeps 1-pixel axes finite.
    grid = torch.stack((2.0 * x / max(width - 1, 1) - 1.0,
                        2.0 * y / max(height - 1, 1) - 1.0), dim=-1)  # (B, H', W', 2)
    # Far-away samples give the same values (border/zeros); clamping keeps huge values harmless.
    grid = grid.clamp(-2.0, 2.0)
    sampled = F.grid_sample(image, grid.to(image.dtype), mode='bilinear',
                            padding_mode=padding_mode, align_corners=True)
    return sampled, valid.to(image.dtype)


def flow_warp(image: torch.Tensor, flow: torch.Tensor, padding_mode: str = 'border'
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Backward-warp `image` with `flow` (B, 2, H, W) in pixels: out(p) = image(p + flow(p)).

    Returns (warped (B, C, H, W), valid_mask (B, 1, H, W)) where the mask marks pixels whose
    sample location lies inside the image. Raises NonFiniteError on a non-finite flow.
    """
    _check_shape(flow, 'flow', 4, 2, expected='(B, 2, H, W) in pixels (u, v)')
    _check_shape(image, 'image', 4, expected='(B, C, H, W)')
    if flow.shape[-2:] != image.shape[-2:]:
        raise ValueError(f'flow {tuple(flow.shape)} and image {tuple(image.shape)} must have the '
                         'same height and width; upsample the flow (and scale it) first')
    check_finite(flow, 'flow', 'grid_sample backward segfaults on NaN grids on CPU '
                 '(shared/toolchain.md); the flow network or its input diverged')
    grid = pixel_grid(flow.shape[2], flow.shape[3], flow.device, flow.dtype)
    return sample_image(image, grid.unsqueeze(0) + flow, padding_mode)


def backproject(depth: torch.Tensor, inv_K: torch.Tensor) -> torch.Tensor:
    """Lift a depth map (B, 1, H, W) to camera points (B, 3, H*W): X = depth * inv_K [x, y, 1]."""
    _check_shape(depth, 'depth', 4, 1, expected='(B, 1, H, W)')
    _check_shape(inv_K, 'inv_K', 3, expected='(B, 3, 3)')
    batch, _, height, width = depth.shape
    grid = pixel_grid(height, width, depth.device, depth.dtype).reshape(2, -1)  # (2, H*W)
    ones = torch.ones(1, height * width, device=depth.device, dtype=depth.dtype)
    homogeneous = torch.cat((grid, ones), dim=0)  # (3, H*W)
    rays = inv_K[:, :3, :3].to(depth.dtype) @ homogeneous  # (B, 3, H*W)
    return rays * depth.reshape(batch, 1, -1)


def transform_points(points: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Apply rigid transforms T (B, 4, 4) to points (B, 3, N); returns (B, 3, N)."""
    _check_shape(points, 'points', 3, 3, expected='(B, 3, N)')
    _check_shape(T, 'T', 3, expected='(B, 4, 4)')
    return T[:, :3, :3] @ points + T[:, :3, 3:4]


def project(points: torch.Tensor, K: torch.Tensor, T: Optional[torch.Tensor] = None,
            shape: Optional[Tuple[int, int]] = None, eps: float = 1e-7) -> torch.Tensor:
    """Project camera points (B, 3, N), moved by T (B, 4, 4), to pixel coordinates.

    Returns (B, 2, H, W) when `shape` = (H, W) is given (N must equal H*W), else (B, 2, N).
    Points at or behind the camera get a depth of `eps`, so they land far away (and finite).
    """
    _check_shape(K, 'K', 3, expected='(B, 3, 3)')
    cam = transform_points(points, T) if T is not None else points
    pixels = K[:, :3, :3].to(cam.dtype) @ cam  # (B, 3, N)
    z = pixels[:, 2:3].clamp(min=eps)
    coords = pixels[:, :2] / z  # (B, 2, N)
    if shape is None:
        return coords
    height, width = shape
    if height * width != coords.shape[-1]:
        raise ValueError(f'shape {shape} does not match {coords.shape[-1]} points')
    return coords.reshape(coords.shape[0], 2, height, width)


def _skew(vec: torch.Tensor) -> torch.Tensor:
    """(B, 3) -> (B, 3, 3) cross-product matrices."""
    zero = torch.zeros_like(vec[:, 0])
    x, y, z = vec[:, 0], vec[:, 1], vec[:, 2]
    return torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=1).reshape(-1, 3, 3)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, (B, 3) -> (B, 3, 3), with a Taylor series near zero (finite grads)."""
    _check_shape(axis_angle, 'axis_angle', 2, 3, expected='(B, 3)')
    theta_sq = (axis_angle ** 2).sum(dim=1)  # (B,)
    small = theta_sq < 1e-8
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta_sq), theta_sq))
    # sin(t)/t and (1-cos(t))/t^2, with their series where t is tiny (never a division by 0).
    a = torch.where(small, 1.0 - theta_sq / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta_sq / 24.0, (1.0 - torch.cos(theta)) / theta ** 2)
    skew = _skew(axis_angle)
    eye = torch.eye(3, device=axis_angle.device, dtype=axis_angle.dtype).expand_as(skew)
    return eye + a[:, None, None] * skew + b[:, None, None] * (skew @ skew)


def pose_vec_to_mat(axis_angle: torch.Tensor, translation: torch.Tensor,
                    invert: bool = False) -> torch.Tensor:
    """Build T (B, 4, 4) = [R | t] from an axis-angle and a translation (monodepth2).

    With `invert=True` returns the inverse [R^T | -R^T t]; monodepth2 inverts the PoseNet output
    for a source frame that precedes the target (pose_net(source, target)).
    """
    _check_shape(translation, 'translation', 2, 3, expected='(B, 3)')
    rotation = axis_angle_to_matrix(axis_angle)
    t = translation.unsqueeze(-1)  # (B, 3, 1)
    if invert:
        rotation = rotation.transpose(1, 2)
        t = -(rotation @ t)
    batch = rotation.shape[0]
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=rotation.device, dtype=rotation.dtype)
    top = torch.cat((rotation, t), dim=2)  # (B, 3, 4)
    return torch.cat((top, bottom.expand(batch, 1, 4)), dim=1)  # (B, 4, 4)


def rigid_flow(depth: torch.Tensor, K: torch.Tensor, T_t_to_s: torch.Tensor) -> torch.Tensor:
    """Flow (B, 2, H, W) in pixels induced on the target view by a camera motion and a depth map.

    `T_t_to_s` maps target camera points into the source camera; the result, fed to `flow_warp`
    with the source image, reconstructs the target image.
    """
    batch, _, height, width = depth.shape
    points = backproject(depth, torch.linalg.inv(K[:, :3, :3].to(depth.dtype)))
    coords = project(points, K, T_t_to_s, shape=(height, width))
    return coords - pixel_grid(height, width, depth.device, depth.dtype).unsqueeze(0)


def reproject_warp(source_image: torch.Tensor, depth: torch.Tensor, K: torch.Tensor,
                   T_t_to_s: torch.Tensor, padding_mode: str = 'border'
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Synthesise the target view from `source_image` with the target depth and the motion.

    Returns (warped (B, C, H, W), valid (B, 1, H, W)); valid excludes samples outside the source
    image and points that fall behind the source camera. Raises NonFiniteError on NaN input.
    """
    _check_shape(depth, 'depth', 4, 1, expected='(B, 1, H, W)')
    check_finite(depth, 'depth', 'a NaN depth would reach grid_sample (CPU segfault)')
    check_finite(T_t_to_s, 'T_t_to_s', 'a NaN pose would reach grid_sample (CPU segfault)')
    batch, _, height, width = depth.shape
    points = backproject(depth, torch.linalg.inv(K[:, :3, :3].to(depth.dtype)))
    cam = transform_points(points, T_t_to_s)  # (B, 3, H*W)
    in_front = (cam[:, 2:3] > 1e-3).reshape(batch, 1, height, width)
    coords = project(cam, K, None, shape=(height, width))
    warped, valid = sample_image(source_image, coords, padding_mode)
    return warped, valid * in_front.to(valid.dtype)


def scale_intrinsics(K: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """Return K (..., 3, 3) for an image resized by (sx, sy): rows 0 and 1 scaled (monodepth2).

    monodepth2 keeps normalised intrinsics and multiplies them by the image size, which is this.
    """
    if K.shape[-2:] != (3, 3):
        raise ValueError(f'K must end in (3, 3), got {tuple(K.shape)}')
    if sx <= 0 or sy <= 0:
        raise ValueError(f'scale factors must be positive, got sx={sx}, sy={sy}')
    factors = torch.tensor([sx, sy, 1.0], device=K.device, dtype=K.dtype).reshape(3, 1)
    return K * factors
