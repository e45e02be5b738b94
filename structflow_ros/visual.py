"""Pictures of depth, shared by the node, the demo and replay (no ROS): depth -> colours,
per-pixel error -> colours, labelled panels side by side, an mp4-safe frame size."""
import cv2
import numpy as np

COLORMAPS = ('turbo', 'magma', 'inferno', 'plasma', 'viridis', 'jet')
COLORMAP_RANGE_MODES = ('percentile', 'fixed')
ERROR_RANGE = 0.5  # AbsRel shown at the hot end of the error map
LABEL_HEIGHT = 20


def colormap_limits(depth, range_mode='percentile', fixed=(0.0, 5.0), percentiles=(2.0, 98.0)):
    """Depth values mapped to the two ends of the colormap, for a fixed or per-frame range."""
    if range_mode == 'fixed':
        low, high = float(fixed[0]), float(fixed[1])
    elif range_mode == 'percentile':
        sample = depth[::4, ::4]  # 1/16 of the pixels: for display only, 16x cheaper
        sample = sample[np.isfinite(sample) & (sample > 0)]
        if sample.size == 0:
            return 0.0, 1.0
        low, high = (float(v) for v in np.percentile(sample, percentiles))
    else:
        raise ValueError(f"unknown colormap range mode '{range_mode}'; choose from "
                         f"{', '.join(COLORMAP_RANGE_MODES)}")
    if not high > low:
        high = low + max(abs(low) * 1e-3, 1e-6)
    return low, high


def colorize_depth(depth, limits, colormap='turbo'):
    """Depth (H, W) -> bgr8 (H, W, 3); near is the warm/bright end. Invalid pixels (NaN, <= 0,
    -Inf: REP-117's "too close") are black; +Inf (REP-117's "no return": beyond the range) takes
    the far end, as the sky does."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap '{colormap}'; choose from {', '.join(COLORMAPS)}")
    low, high = limits
    with np.errstate(invalid='ignore'):
        scaled = (np.float32(high) - depth) * np.float32(255.0 / (high - low))  # near -> 255
        np.clip(scaled, 0, 255, out=scaled)
        invalid = ~(depth > 0)  # NaN compares False: invalid too (+Inf clips to the far end)
    scaled[invalid] = 0
    bgr = cv2.applyColorMap(scaled.astype(np.uint8), getattr(cv2, 'COLORMAP_' + colormap.upper()))
    if invalid.any():
        bgr[invalid] = 0
    return bgr


def error_map(abs_rel, valid):
    """Per-pixel AbsRel -> bgr8 (inferno, 0 .. ERROR_RANGE), invalid pixels black."""
    scaled = np.clip(np.nan_to_num(abs_rel) / ERROR_RANGE * 255, 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(scaled, cv2.COLORMAP_INFERNO)
    bgr[~valid] = 0
    return bgr


def panel(bgr, label, scale=1):
    """bgr8 image scaled up by an integer factor, with a black label strip on top."""
    image = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    strip = np.zeros((LABEL_HEIGHT, image.shape[1], 3), np.uint8)
    cv2.putText(strip, label, (4, LABEL_HEIGHT - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([strip, image])


def even(image):
    """mp4 encoders want even sizes: pad one black row/column when needed."""
    pad_h, pad_w = image.shape[0] % 2, image.shape[1] % 2
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
    return image
