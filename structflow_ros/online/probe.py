"""Can these weights serve? One probe frame through the depth path, before anything swaps.

Used by the server (every new version, on its converter thread) and by the adapter (new base
weights from a `~/reload_weights`, before adaptation rebases on them): weights that hold NaN,
give constant depth or are too slow for the budget are refused with the reason, and whatever
serves keeps serving. No ROS.
"""
import time

import numpy as np

# A new version must compute a probe frame within this time before it may serve (a checkpoint
# declaring a huge input size once cost 7 s and 2.2 GB per frame).
PROBE_BUDGET_S = 5.0


class NotServableError(ValueError):
    """Weights that load but cannot serve (non-finite or constant depth, too slow)."""


def probe_frame(height, width):
    """A fixed textured RGB frame (gradients and a checkerboard): any working depth network
    gives finite, non-constant depth on it."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    checker = ((u // 16 + v // 16) % 2) * 60.0
    rgb = np.stack([u / max(width - 1, 1) * 180 + checker, v / max(height - 1, 1) * 180 + 30,
                    120 + checker], -1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def check_predictor(predictor, budget_s=PROBE_BUDGET_S):
    """Run the probe frame through a DepthPredictor; raise NotServableError saying why its
    weights must not serve. Returns the probe's wall time."""
    height, width = predictor.input_size
    rgb = probe_frame(height, width)
    started = time.perf_counter()
    depth = predictor.predict(rgb)
    elapsed = time.perf_counter() - started
    if not np.isfinite(depth).all():
        bad = int((~np.isfinite(depth)).sum())
        raise NotServableError(f'non-finite depth on a probe frame ({bad} of {depth.size} '
                               'pixels): the weights hold NaN/inf or overflow')
    spread = float(depth.max() - depth.min())
    if not spread > 1e-6 * max(float(np.abs(depth).mean()), 1e-12):
        raise NotServableError(f'constant depth on a probe frame ({float(depth.mean()):g} '
                               'everywhere): the weights are degenerate')
    if elapsed > budget_s:
        raise NotServableError(f'a probe frame at the network size {height}x{width} took '
                               f'{elapsed:.1f} s (budget {budget_s:.1f} s); set input_height/'
                               'input_width smaller')
    return elapsed


def check_servable(served, budget_s=PROBE_BUDGET_S):
    """check_predictor for a built ServedModel (the server's standby)."""
    return check_predictor(served.predictor, budget_s)
