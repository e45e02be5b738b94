"""ROS message <-> NumPy at the node's edge: images in, depth / colour / camera_info / points out.

Decoding itself is `structflow_ros.data.image_codec` (shared with the bag readers); this module
adds the ROS message types, classifies bad input for diagnostics, and builds the outputs.
Conventions (REP 103/118, depth_image_proc): `depth` is 32FC1 z-depth along the optical axis.
The camera math (rescaled intrinsics, rays, points) is ROS-free in online/camera.py; here only
the messages are made.
"""
import sys

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

from structflow_ros.data.image_codec import (SUPPORTED_ENCODINGS, ImageDecodeError,
                                             decode_compressed, decode_image)
from structflow_ros.online.camera import (POINT_DTYPE, POINT_FIELD_OFFSETS, CameraModel,
                                          cloud_points)
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
def camera_model(info):
    """sensor_msgs/CameraInfo -> online.camera.CameraModel (the calibration, no header)."""
    return CameraModel.from_fields(info)


def camera_info_msg(camera, header):
    """online.camera.CameraModel -> sensor_msgs/CameraInfo with `header` (depth/camera_info)."""
    out = CameraInfo()
    out.header = header
    out.width, out.height = int(camera.width), int(camera.height)
    out.distortion_model = camera.distortion_model
    out.d = list(camera.d)
    out.k = list(camera.k)
    out.r = list(camera.r)
    out.p = list(camera.p)
    out.binning_x, out.binning_y = int(camera.binning_x), int(camera.binning_y)
    out.roi.x_offset, out.roi.y_offset = camera.roi.x_offset, camera.roi.y_offset
    out.roi.height, out.roi.width = camera.roi.height, camera.roi.width
    return out


# ----------------------------------------------------------------------------------------------
# PointCloud2
# ----------------------------------------------------------------------------------------------
try:  # sensor_msgs_py is on every ROS 2 install; not on PyPI
    from sensor_msgs_py import point_cloud2
except ImportError:  # pragma: no cover - depends on the install
    point_cloud2 = None

POINT_FIELDS = [PointField(name=name, offset=offset, datatype=PointField.FLOAT32, count=1)
                for name, offset in POINT_FIELD_OFFSETS]


def depth_to_pointcloud(depth, rays, rgb, decimation, header, use_sensor_msgs_py=True):
    """Organised PointCloud2 of `online.camera.cloud_points` (xyz + packed rgb float).

    The message is made by sensor_msgs_py.point_cloud2 where installed, else by hand; both
    give the same message (a test checks).
    """
    cloud, dense = cloud_points(depth, rays, rgb, decimation)
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
    msg.height, msg.width = cloud.shape
    msg.row_step = POINT_DTYPE.itemsize * cloud.shape[1]
    msg.is_dense = dense
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
