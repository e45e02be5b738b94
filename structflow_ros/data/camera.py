"""A camera's intrinsics for another image size (NumPy, no ROS).

Pixel centres sit at integer coordinates, so resizing by s maps u to (u + 0.5) * s - 0.5 (what
OpenCV and `F.interpolate(align_corners=False)` do): the principal point follows that rule, the
focal lengths and skew scale linearly. (core.geometry.scale_intrinsics is the torch version for
training, monodepth2's convention: every entry of rows 0 and 1 scaled.)
"""
import numpy as np


def resize_intrinsics(K, from_size, to_size):
    """3x3 K of an image of `from_size` (H, W) for the same view at `to_size` (H, W); a
    `from_size` with a zero (a camera_info without a size) is taken to be `to_size`."""
    height, width = to_size
    from_h, from_w = from_size if from_size and all(from_size) else to_size
    sx, sy = width / from_w, height / from_h
    K = np.array(K, dtype=np.float64)
    K[0, 0], K[0, 1], K[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
    K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
    return K
