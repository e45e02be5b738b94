"""The whole per-frame path without ROS types: a decoded frame and its camera in, depth in the
published unit with the camera and rays of that depth out. The node, replay and the benchmarks
run frames through this one object, so replay computes what the robot publishes, frame for
frame (test_replay_node_identity.py).

One frame, in this order:
1. swap: a newer converted weight version, if any, starts serving (between two frames);
2. predict: the serving version computes the whole frame, at the output size (bounded by
   max_output_pixels, aspect kept);
3. camera: the camera's intrinsics rescaled to the depth image, and its rays when points or
   camera_height need them (online/camera.py); the adapter is told of a new calibration;
4. units: the model's relative depth to the published unit and topic (online/units.py,
   depth_mode: metres on `depth`, unitless on `depth/relative`), invalid pixels as REP-117 says;
5. pairs: the frame goes to the adaptation pair buffer *after* its prediction, so each frame
   is predicted by the version serving at that moment before the adapter can learn from it
   (honest adaptation numbers).
"""
import time
from dataclasses import dataclass, fields
from typing import Optional, Tuple

import numpy as np

from structflow_ros.online.camera import DepthCamera, RayCache, depth_camera
from structflow_ros.online.state_dir import CameraIdentity
from structflow_ros.online.units import (DEPTH_TOPICS, DepthScaler, ScaleUnavailable, is_metric,
                                         mark_invalid)


@dataclass
class OutputSettings:
    """What a frame's outputs look like: the node's live parameters of the same names."""
    output_height: int = 0  # 0 = the image's
    output_width: int = 0
    max_output_pixels: int = 4096 * 4096
    depth_mode: str = 'relative'
    depth_scale: float = 1.0
    camera_height: float = 1.0
    publish_points: bool = True  # only metric depth makes points (REP-118: metres)

    @property
    def points(self):
        return self.publish_points and is_metric(self.depth_mode)


OUTPUT_SETTINGS = tuple(f.name for f in fields(OutputSettings))


@dataclass
class FrameResult:
    depth: Optional[np.ndarray]  # (H_out, W_out) float32 in the published unit; None: no scale
    model_depth: np.ndarray  # the model's relative depth at the same size (metrics use it)
    version: int  # weight version that computed every pixel of it
    model_s: float  # time in the network, seconds
    pair: str  # what the pair buffer did with the frame ('' without a buffer)
    camera: Optional[DepthCamera] = None  # the depth image's camera; None without one
    no_scale: str = ''  # why `depth` is None (camera_height before a good ground fit)
    output_note: str = ''  # the asked output size was bounded (what and why)
    rays_missing: str = ''  # why there are no rays (when points or camera_height want them)
    topic: str = 'depth'  # where `depth` goes: 'depth' (metres) or 'depth/relative'
    invalid: Tuple[int, int] = (0, 0)  # pixels published as NaN and as +Inf (REP-117)

    @property
    def output_size(self) -> Tuple[int, int]:
        return self.model_depth.shape


def bounded_output_size(height, width, settings):
    """(height, width, note): the parameters' size (0 = the image's), scaled down, aspect kept,
    to max_output_pixels when a dimension that follows the image makes it larger."""
    out_height = settings.output_height or height
    out_width = settings.output_width or width
    limit = settings.max_output_pixels
    if out_height * out_width <= limit:
        return out_height, out_width, ''
    shrink = (limit / (out_height * out_width)) ** 0.5
    wanted = f'{out_width}x{out_height}'
    out_height, out_width = max(1, int(out_height * shrink)), max(1, int(out_width * shrink))
    return out_height, out_width, (f'output {wanted} for a {width}x{height} image is more than '
                                   f'max_output_pixels {limit}: publishing '
                                   f'{out_width}x{out_height}')


class FramePipeline:
    """Serve frames from a DepthServer, in published units, feeding the adapter (optional)."""

    def __init__(self, server, pair_buffer=None, adapter=None):
        self.server = server
        self.pair_buffer = pair_buffer
        self.adapter = adapter
        self.scaler = DepthScaler()
        self.rays = RayCache()
        self._adapter_calibration = None

    def between_frames(self):
        """Swap in a newer converted version, if any (also called while no frame comes)."""
        return self.server.maybe_swap()

    def process(self, rgb, stamp_ns, camera=None, settings=None, frame_id='',
                no_camera='none received yet'):
        """One decoded RGB uint8 frame (H, W, 3) with its stamp, its camera (a CameraModel or a
        CameraInfo, None without one: `no_camera` says why) and `settings` (OutputSettings;
        None = the defaults)."""
        return process_frames([FrameJob(self, rgb, stamp_ns, camera, settings, frame_id,
                                        no_camera)])[0]

    def _begin(self, job):
        """Before the network: the output size, the adapter told whose frame this is."""
        height, width = job.rgb.shape[:2]
        out_height, out_width, note = bounded_output_size(height, width, job.settings)
        if self.adapter is not None:
            self.adapter.observe_camera(_identity(job.frame_id, width, height, job.camera))
        return (out_height, out_width), note

    def _finish(self, job, model_depth, version, model_s, output_note):
        """After the network: camera, units and topic, REP-117 values, the pair buffer."""
        settings, camera = job.settings, job.camera
        height, width = job.rgb.shape[:2]
        out_height, out_width = model_depth.shape
        result = FrameResult(None, model_depth, version, model_s, '', output_note=output_note,
                             topic=DEPTH_TOPICS[settings.depth_mode])
        need_rays = settings.points or settings.depth_mode == 'camera_height'
        if camera is None:
            result.rays_missing = job.no_camera
        else:
            result.camera = depth_camera(camera, width, height, out_width, out_height,
                                         self.rays, need_rays)
            result.rays_missing = result.camera.rays_missing
            if not result.camera.problem:
                self._tell_adapter(camera, height, width)
        self.scaler.configure(settings.depth_mode, settings.depth_scale,
                              settings.camera_height)
        rays = result.camera.rays if result.camera is not None else None
        try:
            result.depth = self.scaler.apply(model_depth, rays, result.rays_missing)  # a new array
            result.invalid = mark_invalid(result.depth, model_depth,
                                          self.server.served.predictor.max_depth)
        except ScaleUnavailable as error:
            result.no_scale = str(error)
        if self.pair_buffer is not None:
            result.pair = self.pair_buffer.add_frame(job.rgb, job.stamp_ns)
        return result

    def _tell_adapter(self, camera, height, width):
        """The calibrated adaptation loss may use K: tell the adapter when it changes."""
        if self.adapter is None:
            return
        calibration = (tuple(camera.k), int(camera.height), int(camera.width))
        if calibration != self._adapter_calibration:
            self._adapter_calibration = calibration
            self.adapter.set_camera(camera.k, (camera.height or height, camera.width or width))


@dataclass
class FrameJob:
    """One camera's frame for process_frames: FramePipeline.process's arguments."""
    pipeline: 'FramePipeline'
    rgb: np.ndarray
    stamp_ns: int
    camera: object = None
    settings: Optional[OutputSettings] = None
    frame_id: str = ''
    no_camera: str = 'none received yet'

    def __post_init__(self):
        self.settings = self.settings or OutputSettings()


def process_frames(jobs):
    """Frames of several cameras at once (FrameJob each) -> their FrameResults, in order.

    Cameras whose pipelines share a server (one node serving several cameras with one model)
    swap once and go through the network together: one version computes all of them, as one
    batch where the runner takes batches (DepthPredictor.predict_many). Each frame keeps its
    own output size, camera, units and pair buffer.
    """
    results = [None] * len(jobs)
    groups = {}
    for index, job in enumerate(jobs):
        groups.setdefault(id(job.pipeline.server), []).append(index)
    for indices in groups.values():
        server = jobs[indices[0]].pipeline.server
        server.maybe_swap()
        served = server.served  # read once: one version computes every frame of the group
        begun = [jobs[i].pipeline._begin(jobs[i]) for i in indices]
        started = time.perf_counter()
        depths = served.predictor.predict_many([jobs[i].rgb for i in indices],
                                               [size for size, _ in begun])
        model_s = time.perf_counter() - started  # the frames waited for the whole batch
        for i, depth, (_, note) in zip(indices, depths, begun):
            results[i] = jobs[i].pipeline._finish(jobs[i], depth, served.version, model_s,
                                                  note)
    return results


def _identity(frame_id, width, height, camera):
    """frame_id, size and (when its size fits) K: whose adaptation state fits this camera."""
    usable = camera is not None and (camera.width, camera.height) in ((width, height), (0, 0))
    K = tuple(float(v) for v in camera.k) if usable and any(camera.k) else None
    return CameraIdentity(frame_id, width, height, K)


def frame_warnings(result, settings, camera_topic, ray_note=''):
    """[(kind, text, period_s)]: what this frame lacked, for warnings throttled per kind (the
    node logs them; a size that changes every frame makes a new text every frame, so a set of
    warned texts would grow without bound and log every frame)."""
    height_mode = settings.depth_mode == 'camera_height'
    need_rays = settings.points or height_mode
    no_height = ', and no depth in camera_height mode' if height_mode else ''
    warnings = []
    if result.output_note:
        warnings.append(('output_size', result.output_note, 30.0))
    camera = result.camera
    if camera is None:
        if need_rays:
            warnings.append(('no_camera_info', f'no camera_info received on {camera_topic} '
                             f'yet: no depth/camera_info and no depth/points{no_height}', 30.0))
        return warnings
    if camera.problem:
        # A bad camera_info costs only what needs it: depth keeps coming in relative and
        # scale modes; depth/camera_info and depth/points wait for a good one.
        warnings.append(('bad_camera_info', f'ignoring the camera_info on {camera_topic}: '
                         f'{camera.problem}; no depth/camera_info and no depth/points until a '
                         f'valid one arrives{no_height}', 5.0))
        return warnings
    if camera.mismatch:
        warnings.append(('info_mismatch', camera.mismatch, 30.0))
    if ray_note and need_rays:
        warnings.append(('rays', ray_note, 30.0))
    return warnings
