"""Replay one bag through the node's per-frame pipeline; per-frame rows, outputs written as
they come (a Ctrl-C keeps everything processed so far, the output bag closed and valid).

The objects are the node's own, built by the same `online.stack.build_stack` (no ROS): the
weight store, the DepthServer (backend, probe, swaps between frames), the FramePipeline (units,
the camera of the depth, each frame predicted by the serving version before the pair buffer sees
it) and, with adaptation, the PairBuffer and the OnlineAdapter thread built from the node's
adapt_* parameters. So what replay writes is what the node publishes for the same frames
(test_replay_node_identity.py); metrics are taken on the model's relative depth, before units.
"""
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np

from structflow_ros.core.metrics import PriorFloor, constant_depth_floor, depth_metrics
from structflow_ros.online.adapter import adapter_config_from_node_parameters
from structflow_ros.online.pipeline import OutputSettings
from structflow_ros.online.server import read_serving_checkpoint
from structflow_ros.online.stack import StackSettings, build_stack
from structflow_ros.visual import colorize_depth, colormap_limits, error_map, panel


@dataclass
class ReplaySettings:
    weights: Path
    device: str = 'cpu'
    backend: str = 'auto'
    threads: int = 0
    input_size: tuple = (0, 0)  # the network size; (0, 0) = the checkpoint's
    network_aspect: str = 'auto'  # the node's parameter: auto, keep or squash
    adapt: bool = False
    adapt_parameters: dict = field(default_factory=dict)  # the node's adapt_* values
    adapt_state_dir: Optional[Path] = None
    realtime: bool = False
    max_depth: float = 80.0
    label: str = ''
    # The node's output parameters (units, points): replay publishes what the node would.
    depth_mode: str = 'relative'
    depth_scale: float = 1.0
    camera_height: float = 1.0
    publish_points: bool = True
    points_decimation: int = 2


@dataclass
class FrameRow:
    index: int
    stamp_ns: int
    version: int
    latency_ms: float
    model_ms: float
    pair: str
    width: int
    height: int
    metrics: Optional[dict] = None  # median-scaled Eigen metrics (depth_metrics)
    raw_metrics: Optional[dict] = None  # the depth as published, no scaling
    floor_abs_rel: float = float('nan')
    gt_points: int = 0
    # The image-independent prior floor on this frame (depth_metrics), known only once the
    # whole bag is replayed: ReplayRun.score_prior_floor() fills it.
    prior_metrics: Optional[dict] = None


class ReplayRun:
    """Build the serving stack for one set of weights; `process(frame)` -> FrameRow."""

    def __init__(self, settings: ReplaySettings, log=None):
        self.settings = settings
        self._log = log or (lambda level, text: None)
        state_dict, meta = read_serving_checkpoint(settings.weights)
        if settings.adapt and not meta['model_config'].flow_branch:
            raise ValueError(f'--adapt needs weights with the flow branch; '
                             f'{settings.weights} has the depth path only')
        self.stack = build_stack(state_dict, meta, StackSettings(
            device=settings.device, input_size=settings.input_size, backend=settings.backend,
            threads=settings.threads, network_aspect=settings.network_aspect,
            adapt=settings.adapt,
            adapter_config=adapter_config_from_node_parameters(settings.adapt_parameters),
            adapt_state_dir=settings.adapt_state_dir, adapt_resume=False, log=self._log))
        del state_dict
        self.store, self.server = self.stack.store, self.stack.server
        self.adapter, self.buffer = self.stack.adapter, self.stack.buffer
        self.pipeline = self.stack.pipeline
        self.stack.enter_serving_thread()  # frames are served from this (the caller's) thread
        self.swaps: List[tuple] = []  # (frame index, version)
        self._last_version = self.server.served.version
        self._started = None
        self._first_record_ns = None
        # The prior floor: the geometric mean of the replay's own predictions over the frames
        # with ground truth (the set), scored on each once the bag is done.
        self.prior = PriorFloor(max_depth=settings.max_depth)
        self._prior_rows: List[FrameRow] = []

    def start(self):
        self.stack.start()

    def close(self):
        self.stack.close()

    def _pace(self, frame):
        """--realtime: wait until the frame's recorded time (the camera's clock)."""
        if self._started is None:
            self._started, self._first_record_ns = time.monotonic(), frame.record_ns
            return
        due = self._started + (frame.record_ns - self._first_record_ns) / 1e9
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def output_settings(self, frame):
        """The node's outputs for this frame, at the ground-truth size (else the image's)."""
        settings = self.settings
        height, width = frame.gt.shape if frame.gt is not None else frame.rgb.shape[:2]
        return OutputSettings(output_height=height, output_width=width,
                              max_output_pixels=max(height * width, 1),
                              depth_mode=settings.depth_mode, depth_scale=settings.depth_scale,
                              camera_height=settings.camera_height,
                              publish_points=settings.publish_points)

    def process(self, frame):
        """One frame through the node's per-frame path (swap, predict, camera, units, pairs),
        then metrics on the model's depth. Returns (FrameRow, FrameResult)."""
        if self.settings.realtime:
            self._pace(frame)
        started = time.perf_counter()
        result = self.pipeline.process(frame.rgb, frame.stamp_ns, frame.camera,
                                       self.output_settings(frame), frame.frame_id)
        latency_ms = (time.perf_counter() - started) * 1e3
        if result.version != self._last_version:
            self.swaps.append((frame.index, result.version))
            self._last_version = result.version
        row = FrameRow(frame.index, frame.stamp_ns, result.version, latency_ms,
                       result.model_s * 1e3, result.pair, frame.rgb.shape[1],
                       frame.rgb.shape[0])
        depth = result.model_depth
        if frame.gt is not None:
            valid = np.isfinite(frame.gt) & (frame.gt > 0)
            row.gt_points = int((valid & (frame.gt < self.settings.max_depth)).sum())
            if row.gt_points:
                row.metrics = depth_metrics(depth, frame.gt, valid,
                                            max_depth=self.settings.max_depth)
                row.raw_metrics = depth_metrics(depth, frame.gt, valid,
                                                max_depth=self.settings.max_depth,
                                                median_scaling=False)
                row.floor_abs_rel = constant_depth_floor(
                    frame.gt, valid, max_depth=self.settings.max_depth)['abs_rel']
            self.prior.add(depth, frame.gt, valid)
            self._prior_rows.append(row)
        return row, result

    def score_prior_floor(self):
        """Score the prior floor on every frame with ground truth replayed so far: sets each
        measured row's prior_metrics (call once the bag is done, or after a Ctrl-C)."""
        for row, metrics in zip(self._prior_rows, self.prior.per_frame()):
            row.prior_metrics = metrics if row.metrics is not None else None

    def status(self):
        return self.adapter.status() if self.adapter is not None else {}


def error_image(depth, gt, ratio, max_depth):
    """Per-pixel AbsRel of the median-scaled depth (dilated so sparse lidar shows), bgr8."""
    valid = np.isfinite(gt) & (gt > 0) & (gt < max_depth)
    with np.errstate(invalid='ignore', divide='ignore'):
        scaled = np.clip(depth * (ratio if np.isfinite(ratio) else 1.0), 1e-3, max_depth)
        abs_rel = np.where(valid, np.abs(scaled - gt) / np.where(valid, gt, 1.0), 0.0)
    if valid.mean() < 0.2:  # sparse lidar: grow each point so the picture is readable
        kernel = np.ones((5, 5), np.uint8)
        abs_rel = cv2.dilate(abs_rel.astype(np.float32), kernel)
        valid = cv2.dilate(valid.astype(np.uint8), kernel).astype(bool)
    return error_map(abs_rel, valid)


def colorize(depth):
    """The colour picture of a depth map (bgr8), made once per frame for video and bag."""
    return colorize_depth(depth, colormap_limits(depth))


def side_by_side(frame, colored, row, depth, max_depth, size=None):
    """image | depth (| error with ground truth), bgr8, each panel at the image size."""
    height, width = frame.rgb.shape[:2]
    if colored.shape[:2] != (height, width):
        colored = cv2.resize(colored, (width, height), interpolation=cv2.INTER_NEAREST)
    panels = [panel(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR),
                    f'#{frame.index} version {row.version}'),
              panel(colored, f'depth {row.latency_ms:.0f} ms')]
    if frame.gt is not None:
        ratio = row.metrics['scale_ratio'] if row.metrics else float('nan')
        error = error_image(depth, frame.gt, ratio, max_depth)
        if error.shape[:2] != (height, width):
            error = cv2.resize(error, (width, height), interpolation=cv2.INTER_NEAREST)
        label = (f"AbsRel {row.metrics['abs_rel']:.3f}" if row.metrics else 'no ground truth')
        panels.append(panel(error, label))
    image = np.hstack(panels)
    if size is not None and (image.shape[1], image.shape[0]) != size:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return image
