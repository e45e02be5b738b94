"""Pictures of ground truth: depth and flow colour codes and a contact sheet.

flow_to_color uses the Middlebury colour wheel (Baker et al., "A Database and Evaluation
Methodology for Optical Flow", IJCV 2011): hue = direction, saturation = magnitude.
"""
from typing import Optional, Sequence

import cv2
import numpy as np


def _color_wheel() -> np.ndarray:
    """The 55-entry Middlebury wheel (RY 15, YG 6, GC 4, CB 11, BM 13, MR 6), RGB in [0, 255]."""
    segments = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)),
                (4, (0, 255, 0), (0, 255, 255)), (11, (0, 255, 255), (0, 0, 255)),
                (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    rows = []
    for count, start, end in segments:
        t = np.arange(count)[:, None] / count
        rows.append(np.array(start) * (1 - t) + np.array(end) * t)
    return np.concatenate(rows, axis=0)


_WHEEL = _color_wheel()


def flow_to_color(flow: np.ndarray, valid: Optional[np.ndarray] = None,
                  max_flow: Optional[float] = None) -> np.ndarray:
    """Flow (H, W, 2) in pixels -> RGB uint8 (H, W, 3); invalid pixels black.

    max_flow: magnitude that saturates the colours (default: the largest valid magnitude).
    """
    flow = np.asarray(flow, dtype=np.float64)
    u, v = flow[..., 0], flow[..., 1]
    magnitude = np.hypot(u, v)
    ok = np.isfinite(magnitude) if valid is None else (np.asarray(valid, bool)
                                                       & np.isfinite(magnitude))
    if max_flow is None:
        max_flow = float(magnitude[ok].max()) if ok.any() else 1.0
    radius = np.clip(np.nan_to_num(magnitude) / max(max_flow, 1e-6), 0.0, 1.0)
    angle = np.arctan2(-v, -u) / np.pi                         # (-1, 1]
    position = (angle + 1) / 2 * (len(_WHEEL) - 1)
    k0 = np.floor(position).astype(np.int64)
    k1 = (k0 + 1) % len(_WHEEL)
    frac = (position - k0)[..., None]
    color = (1 - frac) * _WHEEL[k0] / 255 + frac * _WHEEL[k1] / 255
    color = 1 - radius[..., None] * (1 - color)                # white at zero flow
    color[~ok] = 0
    return np.round(color * 255).astype(np.uint8)


def depth_to_color(depth: np.ndarray, valid: Optional[np.ndarray] = None,
                   near_m: Optional[float] = None) -> np.ndarray:
    """Depth (H, W) metres -> RGB uint8 with the magma map on inverse depth; invalid black.

    Inverse depth (as monodepth2 shows disparity) spends the colours where depth matters.
    near_m: depth shown brightest; default the 5th percentile of valid depth (monodepth2 uses
    the 95th percentile of disparity the same way).
    """
    depth = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if near_m is None:
        near_m = float(np.percentile(depth[ok], 5)) if ok.any() else 1.0
    inverse = np.clip(near_m / np.where(ok, np.maximum(depth, 1e-6), np.inf), 0.0, 1.0)
    grey = np.round(inverse * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(grey, cv2.COLORMAP_MAGMA)
    rgb = bgr[..., ::-1].copy()
    rgb[~ok] = 0
    return rgb


def contact_sheet(frames: Sequence, title: str = '') -> np.ndarray:
    """RGB uint8 sheet: one row per frame of [RGB | depth | flow], with a small label each."""
    rows = []
    magnitudes = np.concatenate([np.linalg.norm(f.flow[f.flow_valid], axis=-1) for f in frames])
    # The 95th percentile lets the few huge flows (passing cars, the road under the camera)
    # saturate instead of washing out the colours of everything else.
    max_flow = float(np.percentile(magnitudes, 95)) if magnitudes.size else 1.0
    for frame in frames:
        tiles = [frame.rgb, depth_to_color(frame.depth, frame.depth_valid),
                 flow_to_color(frame.flow, frame.flow_valid, max_flow)]
        row = np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0))) for t in tiles], axis=1)
        label = f'{title} #{frame.index}'.strip()
        scale = max(row.shape[0] / 300.0, 0.3)
        cv2.putText(row, label, (6, int(14 * scale / 0.45) + 2), cv2.FONT_HERSHEY_SIMPLEX,
                    scale, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    return np.concatenate(rows, axis=0)


def write_png(path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG (OpenCV wants BGR); raises OSError when it cannot."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f'OpenCV could not write {path}')
