"""The camera of a depth frame, without ROS types: calibration in, intrinsics and rays of the
published depth out, and the points made from them.

`CameraModel` mirrors the calibration fields of sensor_msgs/CameraInfo (ros/conversions.py
converts both ways), so the node, replay and the tools rescale intrinsics, back-project and make
points with this one code. Every function here also takes a CameraInfo message as it is (it
reads the same field names).

Pixel centres (the one convention, as in core/geometry.py): a pixel's centre is at integer
coordinates, so resizing by s maps u to (u + 0.5) * s - 0.5 (what OpenCV and
`F.interpolate(align_corners=False)` do); ROI offset and binning follow image_geometry.
Points are in the image's optical frame (x right, y down, z forward, REP 103).
"""
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Tuple

import cv2
import numpy as np

IDENTITY_3X3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class RegionOfInterest:
    x_offset: int = 0
    y_offset: int = 0
    height: int = 0
    width: int = 0


@dataclass(frozen=True)
class CameraModel:
    """A camera's calibration at one image size: CameraInfo's fields, without its header."""
    width: int
    height: int
    k: Tuple[float, ...]  # 3x3 row-major
    d: Tuple[float, ...] = ()
    distortion_model: str = ''
    r: Tuple[float, ...] = IDENTITY_3X3
    p: Tuple[float, ...] = (0.0,) * 12  # 3x4 row-major
    binning_x: int = 0
    binning_y: int = 0
    roi: RegionOfInterest = field(default_factory=RegionOfInterest)

    @classmethod
    def from_fields(cls, info):
        """From a CameraInfo message (rclpy or rosbags) or another CameraModel."""
        roi = info.roi
        return cls(width=int(info.width), height=int(info.height),
                   k=tuple(float(v) for v in info.k), d=tuple(float(v) for v in info.d),
                   distortion_model=str(info.distortion_model),
                   r=tuple(float(v) for v in info.r), p=tuple(float(v) for v in info.p),
                   binning_x=int(info.binning_x), binning_y=int(info.binning_y),
                   roi=RegionOfInterest(int(roi.x_offset), int(roi.y_offset),
                                        int(roi.height), int(roi.width)))

    @property
    def K(self):
        return np.array(self.k, dtype=np.float64).reshape(3, 3)


def camera_info_scale(info, image_width, image_height, out_width, out_height):
    """Per-axis map from the camera_info's full-sensor pixels to the depth image's pixels.

    Returns ((a_x, o_x), (a_y, o_y), note) with u_depth = (u_full - o + 0.5) * a - 0.5:
    ROI offset o and binning (image_geometry semantics), then the image -> depth resize. When
    the camera_info size (after ROI and binning) disagrees with the image, the image is taken
    to be a resized copy of it and `note` says so (the caller warns once).
    """
    note = ''
    axes = []
    for full, image_size, out_size, binning, roi_offset, roi_size, name in (
            (info.width, image_width, out_width, info.binning_x, info.roi.x_offset,
             info.roi.width, 'width'),
            (info.height, image_height, out_height, info.binning_y, info.roi.y_offset,
             info.roi.height, 'height')):
        binning = max(int(binning), 1)
        use_roi = info.roi.width > 0 and info.roi.height > 0
        offset = roi_offset if use_roi else 0
        region = roi_size if use_roi else full
        expected = region // binning if region else image_size
        scale = 1.0 / binning
        if expected != image_size:
            note += (f'camera_info {name} {expected} (after ROI/binning) differs from the image '
                     f'{name} {image_size}; intrinsics scaled by {image_size / expected:.4g}. ')
            scale *= image_size / expected
        axes.append((scale * out_size / image_size, float(offset)))
    return axes[0], axes[1], note.strip()


def camera_info_problem(info):
    """Why a CameraInfo cannot be used (None when it can): non-finite K, P, D or R, or a
    ROI/binning that leaves no pixels. K all zeros (an uncalibrated camera) is not a problem
    here: depth still serves, only points and camera_height need intrinsics (RayCache says so).
    """
    for name in ('k', 'p', 'd', 'r'):
        values = np.asarray(getattr(info, name), dtype=np.float64)
        if values.size and not np.isfinite(values).all():
            return (f'camera_info {name.upper()} has non-finite values '
                    f'({np.asarray(getattr(info, name)).tolist()[:9]})')
    k = np.asarray(info.k, dtype=np.float64)
    if k.size == 9 and (k[0] < 0 or k[4] < 0):
        return f'camera_info K has a negative focal length (fx={k[0]:g}, fy={k[4]:g})'
    use_roi = info.roi.width > 0 and info.roi.height > 0
    for full, binning, roi_size, name in ((info.width, info.binning_x, info.roi.width, 'width'),
                                          (info.height, info.binning_y, info.roi.height,
                                           'height')):
        region = roi_size if use_roi else full
        if region and region // max(int(binning), 1) == 0:
            return (f'camera_info {name}: {"ROI" if use_roi else "image"} of {region} pixels '
                    f'with binning {binning} leaves no pixel')
    return None


def rescale_camera(info, image_width, image_height, out_width, out_height):
    """The depth image's camera: K and P rescaled, size = depth size, ROI/binning reset.

    Distortion and rectification (D, R) are unitless and stay as they are. `info` is a
    CameraModel or anything with CameraInfo's fields. Returns (CameraModel, note); `note` is
    non-empty when the camera did not match the image.
    """
    (a_x, o_x), (a_y, o_y), note = camera_info_scale(info, image_width, image_height,
                                                     out_width, out_height)
    k = np.array(info.k, dtype=np.float64).reshape(3, 3)
    p = np.array(info.p, dtype=np.float64).reshape(3, 4)
    for matrix in (k, p):
        row_x, row_y = matrix[0].copy(), matrix[1].copy()
        # Principal point: the pixel-centre rule; focal lengths, skew and Tx/Ty: linear scale.
        matrix[0] = row_x * a_x
        matrix[0, 2] = (row_x[2] - o_x + 0.5) * a_x - 0.5
        matrix[1] = row_y * a_y
        matrix[1, 2] = (row_y[2] - o_y + 0.5) * a_y - 0.5
    return CameraModel(width=int(out_width), height=int(out_height),
                       distortion_model=info.distortion_model, d=tuple(info.d),
                       k=tuple(k.reshape(-1).tolist()), r=tuple(info.r),
                       p=tuple(p.reshape(-1).tolist())), note


class DepthCamera(NamedTuple):
    """What one camera gives one depth frame (see `depth_camera`)."""
    info: Optional['CameraModel']  # for depth/camera_info; None: not published for this frame
    rays: Optional[np.ndarray]  # (H, W, 3) float32 unit-depth rays; None: no points / height
    problem: str  # why the camera_info is unusable ('' when it is usable)
    mismatch: str  # camera_info size differs from the image (intrinsics were scaled)
    rays_missing: str  # why there are no rays ('' when there are, or none were asked for)


def depth_camera(info, image_width, image_height, out_width, out_height, ray_cache, need_rays):
    """The depth image's camera from the latest camera_info, checked end to end.

    A camera_info that passes `camera_info_problem` can still overflow once scaled (fx = 1e308
    doubled, fx = 1e-320 dividing): every number that leaves here is finite, or the
    camera_info is refused with the reason. The node publishes depth either way.
    """
    problem = camera_info_problem(info)
    if problem:
        return DepthCamera(None, None, problem, '', f'the last one is unusable ({problem})')
    with np.errstate(over='ignore', invalid='ignore'):  # overflow is checked right below
        depth_info, mismatch = rescale_camera(info, image_width, image_height, out_width,
                                              out_height)
    if not (np.isfinite(depth_info.k).all() and np.isfinite(depth_info.p).all()):
        problem = (f'camera_info K/P overflow when scaled to the {out_width}x{out_height} depth '
                   f'image (K={list(info.k)})')
        return DepthCamera(None, None, problem, mismatch, f'the last one is unusable ({problem})')
    if not need_rays:
        return DepthCamera(depth_info, None, '', mismatch, '')
    rays = ray_cache.rays(depth_info)
    if rays is None:
        return DepthCamera(depth_info, None, '', mismatch, ray_cache.note or
                           'camera_info gave no rays')
    return DepthCamera(depth_info, rays, '', mismatch, '')


class RayCache:
    """Unit-depth camera rays (x/z, y/z, 1) per pixel of the depth image, cached per camera.

    Distortion is removed with OpenCV (plumb_bob / rational_polynomial, equidistant), so a raw
    image back-projects right; a model OpenCV does not know is ignored with a note.
    """

    def __init__(self):
        self._key, self._rays, self.note = None, None, ''

    def rays(self, depth_info):
        """(H, W, 3) float32 rays for a rescaled camera; None without valid intrinsics."""
        key = (depth_info.width, depth_info.height, tuple(depth_info.k), tuple(depth_info.d),
               depth_info.distortion_model)
        if key != self._key:
            self._key, self._rays = key, self._compute(depth_info)
        return self._rays

    def _compute(self, info):
        k = np.array(info.k, dtype=np.float64).reshape(3, 3)
        width, height = int(info.width), int(info.height)
        self.note = ''
        if k[0, 0] <= 0 or k[1, 1] <= 0 or width <= 0 or height <= 0:
            self.note = ('camera_info has no intrinsics (K[0] or K[4] <= 0, an uncalibrated '
                         'camera): no points and no camera_height scale')
            return None
        u, v = np.meshgrid(np.arange(width, dtype=np.float64),
                           np.arange(height, dtype=np.float64))  # (H, W) each
        distortion = np.array(info.d, dtype=np.float64)
        model = info.distortion_model
        if distortion.size and np.any(distortion != 0):
            pixels = np.stack([u.ravel(), v.ravel()], axis=1)[:, None, :]  # (N, 1, 2)
            if model in ('plumb_bob', 'rational_polynomial') and distortion.size in (4, 5, 8,
                                                                                     12, 14):
                normalised = cv2.undistortPoints(pixels, k, distortion)
            elif model == 'equidistant' and distortion.size >= 4:
                normalised = cv2.fisheye.undistortPoints(pixels, k, distortion[:4])
            else:
                self.note = (f'distortion model {model!r} with {distortion.size} coefficients '
                             'is not supported; distortion ignored for back-projection')
                normalised = None
            if normalised is not None:
                x, y = normalised.reshape(height, width, 2).transpose(2, 0, 1)
                return self._finite_or_none(np.stack([x, y, np.ones_like(x)], axis=-1))
        with np.errstate(over='ignore', invalid='ignore'):  # _finite_or_none checks
            y = (v - k[1, 2]) / k[1, 1]
            x = (u - k[0, 2] - k[0, 1] * y) / k[0, 0]
        return self._finite_or_none(np.stack([x, y, np.ones_like(x)], axis=-1))  # (H, W, 3)

    def _finite_or_none(self, rays):
        """float32 rays, or None (with a note) when any overflowed: a tiny focal length or
        a degenerate distortion makes x/z or y/z infinite, and a point cloud must not hold
        infinities or NaN its is_dense flag does not admit."""
        with np.errstate(over='ignore', invalid='ignore'):
            rays = rays.astype(np.float32)
        if not np.isfinite(rays).all():
            self.note = ('camera_info intrinsics give non-finite rays (focal length too small '
                         'or a degenerate distortion): no points and no camera_height scale')
            return None
        return rays


# ----------------------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------------------
POINT_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4')])
# (name, byte offset) of each float32 field of a point, as PointCloud2 describes them.
POINT_FIELD_OFFSETS = (('x', 0), ('y', 4), ('z', 8), ('rgb', 12))


def decimated_pixels(height, width, decimation):
    """Rows and columns of the depth pixels that become points (every `decimation`-th)."""
    return np.arange(0, height, decimation), np.arange(0, width, decimation)


def cloud_points(depth, rays, rgb, decimation):
    """Organised points (xyz + packed rgb float, as RViz reads it) of every n-th depth pixel:
    a (h, w) POINT_DTYPE array and whether it is dense (no NaN point).

    `depth` (H, W) z-depth, `rays` (H, W, 3) from RayCache, `rgb` the input image (any size:
    sampled at each depth pixel's centre). Invalid depth, or a point beyond float32 (huge
    rays), gives a NaN point.
    """
    rows, cols = decimated_pixels(*depth.shape, decimation)
    z = depth[np.ix_(rows, cols)]  # (h, w)
    with np.errstate(over='ignore', invalid='ignore'):
        xyz = rays[np.ix_(rows, cols)] * z[..., None]  # (h, w, 3)
    scale_y, scale_x = rgb.shape[0] / depth.shape[0], rgb.shape[1] / depth.shape[1]
    src_rows = np.minimum(((rows + 0.5) * scale_y).astype(np.int64), rgb.shape[0] - 1)
    src_cols = np.minimum(((cols + 0.5) * scale_x).astype(np.int64), rgb.shape[1] - 1)
    colour = rgb[np.ix_(src_rows, src_cols)].astype(np.uint32)  # (h, w, 3)
    packed = (colour[..., 0] << 16) | (colour[..., 1] << 8) | colour[..., 2]
    cloud = np.empty(z.shape, dtype=POINT_DTYPE)
    cloud['x'], cloud['y'], cloud['z'] = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    invalid = ~(np.isfinite(z) & (z > 0) & np.isfinite(xyz).all(axis=-1))
    if invalid.any():
        for name in ('x', 'y', 'z'):
            cloud[name][invalid] = np.nan
    cloud['rgb'] = packed.astype('<u4').view('<f4')
    return cloud, not bool(invalid.any())
