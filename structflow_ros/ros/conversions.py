"""ROS message <-> NumPy at the node's edge: images in, depth / colour / camera_info / points out.

Decoding itself is `structflow_ros.data.image_codec` (shared with the bag readers); this module
adds the ROS message types, classifies bad input for diagnostics, and builds the outputs.
Conventions (REP 103/118, depth_image_proc): `depth` is 32FC1 z-depth along the optical axis;
points are in the image's optical frame (x right, y down, z forward); a pixel's centre is at
integer coordinates, so resizing by s maps u to (u + 0.5) * s - 0.5 (what OpenCV and
`F.interpolate(align_corners=False)` do), and camera_info is rescaled the same way.
"""
import sys
from typing import NamedTuple, Optional

import cv2
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from structflow_ros.data.image_codec import (SUPPORTED_ENCODINGS, ImageDecodeError,
                                             decode_compressed, decode_image)
from structflow_ros.visual import (COLORMAP_RANGE_MODES, COLORMAPS,  # noqa: F401 - re-exported
                                   colorize_depth, colormap_limits)

_NATIVE_BIGENDIAN = sys.byteorder == 'big'


class BadImageError(ImageDecodeError):
    """An input frame was refused; `kind` names the problem for diagnostics counters."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------
def image_msg_to_rgb(msg, max_pixels, bit_depth=16):
    """sensor_msgs/Image or CompressedImage -> RGB uint8 (H, W, 3), or BadImageError with a kind.

    Kinds: empty, zero_size, too_large, unsupported_encoding, size_mismatch, corrupt.
    `bit_depth`: bits per sample of 16-bit encodings, or a BitDepthEstimator (image_codec).
    """
    data = msg.data
    if isinstance(msg, Image) or hasattr(msg, 'encoding'):
        height, width, encoding = int(msg.height), int(msg.width), msg.encoding
        if height <= 0 or width <= 0:
            raise BadImageError('zero_size', f'zero-size image {width}x{height} '
                                f'({encoding!r}); width and height must be > 0')
        if len(data) == 0:
            raise BadImageError('empty', f'empty image data for a {width}x{height} '
                                f'{encoding!r} image (expected step * height bytes)')
        if height * width > max_pixels:
            raise BadImageError('too_large', f'image {width}x{height} has {height * width} '
                                f'pixels, more than max_image_pixels={max_pixels}')
        if encoding not in SUPPORTED_ENCODINGS:
            raise BadImageError('unsupported_encoding', f'unsupported image encoding '
                                f'{encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)}')
        try:
            return decode_image(encoding, height, width, int(msg.step), data,
                                bool(msg.is_bigendian), max_pixels=max_pixels,
                                bit_depth=bit_depth)
        except ImageDecodeError as error:  # what is left: step / data size inconsistencies
            raise BadImageError('size_mismatch', str(error)) from None
    if len(data) == 0:
        raise BadImageError('empty', f'empty CompressedImage data (format {msg.format!r})')
    try:
        return decode_compressed(data, msg.format, max_pixels=max_pixels)
    except ImageDecodeError as error:
        kind = 'too_large' if 'max_pixels' in str(error) else 'corrupt'
        raise BadImageError(kind, str(error)) from None


# ----------------------------------------------------------------------------------------------
# Depth and colour images
# ----------------------------------------------------------------------------------------------
def depth_to_image_msg(depth, header):
    """(H, W) float depth -> sensor_msgs/Image 32FC1 with `header` (the input image's)."""
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    msg = Image()
    msg.header = header
    msg.height, msg.width = depth.shape
    msg.encoding = '32FC1'
    msg.is_bigendian = int(_NATIVE_BIGENDIAN)
    msg.step = depth.shape[1] * 4
    msg.data = depth.tobytes()
    return msg


def bgr_to_image_msg(bgr, header):
    bgr = np.ascontiguousarray(bgr, dtype=np.uint8)
    msg = Image()
    msg.header = header
    msg.height, msg.width = bgr.shape[:2]
    msg.encoding = 'bgr8'
    msg.is_bigendian = 0
    msg.step = bgr.shape[1] * 3
    msg.data = bgr.tobytes()
    return msg


def image_msg_to_array(msg):
    """Decode the node's own outputs (32FC1, bgr8) back to NumPy (tests, tools)."""
    if msg.encoding == '32FC1':
        dtype, channels = np.dtype('>f4' if msg.is_bigendian else '<f4'), 1
    elif msg.encoding in ('bgr8', 'rgb8'):
        dtype, channels = np.dtype(np.uint8), 3
    else:
        raise ValueError(f'image_msg_to_array reads 32FC1, bgr8 and rgb8, got {msg.encoding!r}')
    rows = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)
    row_bytes = msg.width * channels * dtype.itemsize
    pixels = rows[:, :row_bytes].copy().view(dtype).reshape(msg.height, msg.width, channels)
    return pixels[..., 0] if channels == 1 else pixels


# ----------------------------------------------------------------------------------------------
# camera_info
# ----------------------------------------------------------------------------------------------
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


def rescale_camera_info(info, image_width, image_height, out_width, out_height, header=None):
    """camera_info for the depth image: K and P rescaled, size = depth size, ROI/binning reset.

    Distortion and rectification (D, R) are unitless and stay as they are. Returns
    (CameraInfo, note); `note` is non-empty when the input camera_info did not match the image.
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
    out = CameraInfo()
    out.header = header if header is not None else info.header
    out.width, out.height = int(out_width), int(out_height)
    out.distortion_model = info.distortion_model
    out.d = list(info.d)
    out.k = k.reshape(-1).tolist()
    out.r = list(info.r)
    out.p = p.reshape(-1).tolist()
    out.binning_x = out.binning_y = 0
    return out, note


class DepthCamera(NamedTuple):
    """What one camera_info gives one depth frame (see `depth_camera`)."""
    info: Optional[CameraInfo]  # for depth/camera_info; None: not published for this frame
    rays: Optional[np.ndarray]  # (H, W, 3) float32 unit-depth rays; None: no points / height
    problem: str  # why the camera_info is unusable ('' when it is usable)
    mismatch: str  # camera_info size differs from the image (intrinsics were scaled)
    rays_missing: str  # why there are no rays ('' when there are, or none were asked for)


def depth_camera(info, image_width, image_height, out_width, out_height, header, ray_cache,
                 need_rays):
    """The depth image's camera from the latest camera_info, checked end to end.

    A camera_info that passes `camera_info_problem` can still overflow once scaled (fx = 1e308
    doubled, fx = 1e-320 dividing): every number that leaves here is finite, or the
    camera_info is refused with the reason. The node publishes depth either way.
    """
    problem = camera_info_problem(info)
    if problem:
        return DepthCamera(None, None, problem, '', f'the last one is unusable ({problem})')
    with np.errstate(over='ignore', invalid='ignore'):  # overflow is checked right below
        depth_info, mismatch = rescale_camera_info(info, image_width, image_height, out_width,
                                                   out_height, header)
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
        """(H, W, 3) float32 rays for a rescaled CameraInfo; None without valid intrinsics."""
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
# PointCloud2
# ----------------------------------------------------------------------------------------------
try:  # sensor_msgs_py is on every ROS 2 install; not on PyPI
    from sensor_msgs_py import point_cloud2
except ImportError:  # pragma: no cover - depends on the install
    point_cloud2 = None

POINT_DTYPE = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('rgb', '<f4')])
POINT_FIELDS = [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)
                for name, offset in (('x', 0), ('y', 4), ('z', 8), ('rgb', 12))]


def decimated_pixels(height, width, decimation):
    """Rows and columns of the depth pixels that become points (every `decimation`-th)."""
    return np.arange(0, height, decimation), np.arange(0, width, decimation)


def depth_to_pointcloud(depth, rays, rgb, decimation, header, use_sensor_msgs_py=True):
    """Organised PointCloud2 (xyz + packed rgb float, as RViz reads it) of every n-th pixel.

    `depth` (H, W) z-depth, `rays` (H, W, 3) from RayCache, `rgb` the input image (any size:
    sampled at each depth pixel's centre). Invalid depth gives NaN points (is_dense False).
    The message is made by sensor_msgs_py.point_cloud2 where installed, else by hand; both
    give the same message (a test checks).
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
    # No depth, or a point beyond float32 (huge rays): NaN, and the cloud says it is not dense.
    invalid = ~(np.isfinite(z) & (z > 0) & np.isfinite(xyz).all(axis=-1))
    if invalid.any():
        for name in ('x', 'y', 'z'):
            cloud[name][invalid] = np.nan
    cloud['rgb'] = packed.astype('<u4').view('<f4')
    if use_sensor_msgs_py and point_cloud2 is not None:
        # create_cloud reads a 2-D array as (width, height); give it the rows one after
        # the other and state the organised shape here (rows of `width` points).
        msg = point_cloud2.create_cloud(header, POINT_FIELDS, cloud.reshape(-1))
    else:
        msg = PointCloud2()
        msg.header = header
        msg.fields = POINT_FIELDS
        msg.is_bigendian = False
        msg.point_step = POINT_DTYPE.itemsize
        msg.data = cloud.tobytes()
    msg.height, msg.width = z.shape
    msg.row_step = POINT_DTYPE.itemsize * z.shape[1]
    msg.is_dense = not bool(invalid.any())
    return msg


def pointcloud_to_array(msg):
    """PointCloud2 with x, y, z, rgb float32 fields -> structured (H, W) array (tests, tools)."""
    offsets = {field.name: field.offset for field in msg.fields}
    dtype = np.dtype({'names': list(offsets), 'formats': ['<f4'] * len(offsets),
                      'offsets': list(offsets.values()), 'itemsize': msg.point_step})
    return np.frombuffer(bytes(msg.data), dtype=dtype).reshape(msg.height, msg.width)


def unpack_rgb(packed_float):
    """Packed rgb float32 -> (..., 3) uint8 RGB."""
    packed = np.asarray(packed_float, dtype='<f4').view('<u4')
    return np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255],
                    axis=-1).astype(np.uint8)
