"""The per-frame path without ROS types: decoded frame -> pair buffer hook -> served model ->
relative depth, with the version that computed it. The node, replay and the adaptation
benchmark run frames through this one object, so what they measure is what the robot runs.

Order matters for honest adaptation numbers: each frame is predicted by the version serving at
that moment *before* the adapter can learn from it (the pair it completes goes to the buffer
after the prediction).
"""
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class FrameResult:
    depth: np.ndarray  # (H_out, W_out) float32, the model's relative units
    version: int  # weight version that computed every pixel of it
    model_s: float  # time in the network, seconds
    pair: str  # what the pair buffer did with the frame ('' without a buffer)


class FramePipeline:
    """Serve frames from a DepthServer and feed the adaptation pair buffer (optional)."""

    def __init__(self, server, pair_buffer=None):
        self.server = server
        self.pair_buffer = pair_buffer

    def between_frames(self):
        """Swap in a newer converted version, if any (call it between two frames)."""
        return self.server.maybe_swap()

    def process(self, rgb, stamp_ns, output_size=None):
        """Relative depth of one decoded RGB uint8 frame (H, W, 3)."""
        served = self.server.served  # read once: one version computes the whole frame
        height, width = rgb.shape[:2]
        served.predictor.output_size = tuple(output_size) if output_size else (height, width)
        started = time.perf_counter()
        depth = served.predictor.predict(rgb)
        model_s = time.perf_counter() - started
        pair = self.pair_buffer.add_frame(rgb, stamp_ns) if self.pair_buffer is not None else ''
        return FrameResult(depth, served.version, model_s, pair)
