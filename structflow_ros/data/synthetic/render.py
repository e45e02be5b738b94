"""Render drives through the synthetic street with exact ground truth.

Per frame: RGB, metric z-depth, forward optical flow to the next frame (moving cars included),
occlusion, intrinsics and the camera pose. Everything comes from the same ray cast, so the
ground truth is exact, not estimated:
- depth: z-depth along the optical axis in metres. Sky pixels get the domain's far plane
  (DomainConfig.far_m, 400 m by default) and depth_valid False.
- flow (u, v) in pixels from frame t to t+1: each pixel's hit point is taken into its object's
  frame, moved with the object's own rigid motion to t+1 (static objects: identity) and
  projected into camera t+1. Sky is a surface at infinity: its flow is the rotation-only flow.
- occlusion: the point is out of view at t+1, or the surface seen there at t+1 is not the
  point (checked against the ray cast of frame t+1 within the pixel footprint).
  flow_valid = not occlusion.
Static pixels therefore satisfy flow = project(K, T_{t+1}^-1 T_t backproject(K, depth)) - uv
exactly, which the tests check.

    for frame in render_sequence('dusk', 100, 192, 640, seed=3):
        frame.rgb, frame.depth, frame.flow, frame.flow_valid, frame.K, frame.pose_c2w
"""
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np

from structflow_ros.data.sources import Frame, VideoSource
from structflow_ros.data.synthetic import world as W
from structflow_ros.data.synthetic.camera import intrinsics
from structflow_ros.data.synthetic.domains import DomainConfig, get_domain
from structflow_ros.data.synthetic.shading import Shader, grade

# Stamps start at a fixed, realistic epoch (2020-09-13 12:26:40 UTC) so that bags written from
# renders have plausible header times; index i is at STAMP_BASE_NS + i / fps.
STAMP_BASE_NS = 1_600_000_000 * 1_000_000_000


@dataclass
class SyntheticFrame:
    """One rendered frame with exact ground truth (see the module docstring for conventions)."""

    rgb: np.ndarray          # (H, W, 3) uint8
    depth: np.ndarray        # (H, W) float32 metres, z-depth; sky = far plane
    depth_valid: np.ndarray  # (H, W) bool, False on sky
    flow: np.ndarray         # (H, W, 2) float32 pixels (u, v) to frame index + 1
    flow_valid: np.ndarray   # (H, W) bool: in view at t+1 and not occluded
    occlusion: np.ndarray    # (H, W) bool: not flow_valid (occluded or out of view at t+1)
    moving: np.ndarray       # (H, W) bool: pixel on a moving car
    K: np.ndarray            # (3, 3) float64
    pose_c2w: np.ndarray     # (4, 4) float64, OpenCV camera axes, world z up
    stamp_ns: int
    index: int
    domain: str


def _check_args(num_frames, height, width, fps):
    if int(num_frames) < 1:
        raise ValueError(f'num_frames must be >= 1, got {num_frames}')
    if int(height) < 8 or int(width) < 8:
        raise ValueError(f'height and width must be >= 8 pixels, got {width}x{height}')
    if int(height) * int(width) > 4096 * 4096:
        raise ValueError(f'image size {width}x{height} is too large (at most 4096x4096)')
    if not fps > 0:
        raise ValueError(f'fps must be > 0, got {fps}')


def flow_between(world: W.World, g0: W.Geometry, g1: W.Geometry):
    """Exact forward flow (N, 2), validity (N,) and moving mask (N,) from g0 to g1."""
    objects = world.objects
    point = g0.point.copy()
    obj = g0.obj
    is_obj = obj >= 0
    moving = np.zeros(obj.shape, dtype=bool)
    moving[is_obj] = objects.car[obj[is_obj]] >= 0
    if moving.any():
        oi = obj[moving]
        local = g0.local[moving]
        cy, sy = np.cos(g1.obj_yaw[oi]), np.sin(g1.obj_yaw[oi])
        point[moving, 0] = g1.obj_pos[oi, 0] + cy * local[:, 0] - sy * local[:, 1]
        point[moving, 1] = g1.obj_pos[oi, 1] + sy * local[:, 0] + cy * local[:, 1]
        point[moving, 2] = g1.obj_pos[oi, 2] + local[:, 2]
    R1 = g1.pose_c2w[:3, :3]
    sky = obj == W.SKY_ID
    rel = point - g1.pose_c2w[:3, 3]
    rel[sky] = g0.ray[sky]                                         # sky: direction only
    # (N, 3) in camera t+1: R1^T rel, written per axis (no BLAS threads, no strided reduce).
    cam = np.stack([W.row_dot(rel, R1[:, 0]), W.row_dot(rel, R1[:, 1]),
                    W.row_dot(rel, R1[:, 2])], axis=1)
    K = g1.K
    height, width = g0.height, g0.width
    z = cam[:, 2]
    in_front = z > W.NEAR_M * (~sky) + 1e-9
    safe_z = np.where(in_front, z, 1.0)
    u1 = K[0, 0] * cam[:, 0] / safe_z + K[0, 2]
    v1 = K[1, 1] * cam[:, 1] / safe_z + K[1, 2]
    u0 = np.tile(np.arange(width, dtype=np.float64), height)
    v0 = np.repeat(np.arange(height, dtype=np.float64), width)
    flow = np.stack([u1 - u0, v1 - v0], axis=1)
    in_view = in_front & (u1 >= 0) & (u1 <= width - 1) & (v1 >= 0) & (v1 <= height - 1)
    # Visible at t+1: the surface seen at the nearest pixel there is this very point.
    nu = np.clip(np.round(u1), 0, width - 1).astype(np.int64)
    nv = np.clip(np.round(v1), 0, height - 1).astype(np.int64)
    nearest = nv * width + nu
    gap = W.row_norm(g1.point[nearest] - point)
    tolerance = 1.5 * g1.footprint[nearest] + 0.01 * g1.depth[nearest]
    visible = np.where(sky, g1.obj[nearest] == W.SKY_ID,
                       (g1.obj[nearest] != W.SKY_ID) & (gap <= tolerance))
    valid = in_view & visible
    flow[~in_front] = 0.0
    return flow.astype(np.float32), valid, moving


class Renderer:
    """Renders frames of one (domain, seed, size) drive; keeps the world between frames."""

    def __init__(self, domain, num_frames: int, height: int, width: int, seed: int = 0,
                 fps: float = 10.0):
        _check_args(num_frames, height, width, fps)
        self.config: DomainConfig = get_domain(domain)
        self.domain = self.config.name
        self.num_frames = int(num_frames)
        self.height, self.width = int(height), int(width)
        self.seed = int(seed)
        self.fps = float(fps)
        # One extra frame interval: the last frame's flow needs the cast of frame num_frames.
        self.world = W.World(self.config, self.seed, (self.num_frames + 1) / self.fps)
        self.K = intrinsics(self.config, self.height, self.width)
        self.shader = Shader(self.world, self.config)

    def time_of(self, index: int) -> float:
        return index / self.fps

    def stamp_of(self, index: int) -> int:
        return STAMP_BASE_NS + round(index * 1e9 / self.fps)

    def cast(self, index: int) -> W.Geometry:
        return W.cast(self.world, self.time_of(index), self.K, self.height, self.width)

    def frames(self, start: int = 0, stop: Optional[int] = None) -> Iterator[SyntheticFrame]:
        """Frames start..stop-1; each ray cast is done once and reused for the previous flow."""
        stop = self.num_frames if stop is None else min(int(stop), self.num_frames)
        if not 0 <= start < stop:
            return
        h, w = self.height, self.width
        nxt = self.cast(start)
        for index in range(start, stop):
            g = nxt
            nxt = self.cast(index + 1)
            rgb = grade(self.shader.shade(g), self.config, h, w)
            flow, valid, moving = flow_between(self.world, g, nxt)
            depth = g.depth.astype(np.float32).reshape(h, w)
            yield SyntheticFrame(
                rgb=rgb, depth=depth, depth_valid=(g.obj != W.SKY_ID).reshape(h, w),
                flow=flow.reshape(h, w, 2), flow_valid=valid.reshape(h, w),
                occlusion=~valid.reshape(h, w), moving=moving.reshape(h, w), K=self.K.copy(),
                pose_c2w=g.pose_c2w.copy(), stamp_ns=self.stamp_of(index), index=index,
                domain=self.domain)


def open_renderer(domain, num_frames: int, height: int, width: int, seed: int = 0,
                  fps: float = 10.0, textures=None):
    """The renderer of a domain's scene: the street (Renderer) or a room (room.RoomRenderer);
    both have K, time_of, stamp_of, cast and frames. textures: a photo_textures.PhotoTextures
    bank for some of a room's surfaces (room scenes only)."""
    config = get_domain(domain)
    if config.scene == 'room':
        from structflow_ros.data.synthetic.room import RoomRenderer
        return RoomRenderer(config, num_frames, height, width, seed, fps, textures)
    if textures is not None:
        raise ValueError(f"photo textures are drawn on room scenes only; domain '{domain}' is "
                         f"a {config.scene} scene")
    return Renderer(config, num_frames, height, width, seed, fps)


def render_sequence(domain: str, num_frames: int, height: int, width: int, seed: int = 0,
                    fps: float = 10.0, textures=None) -> Iterator[SyntheticFrame]:
    """Yield `num_frames` SyntheticFrames of a seeded drive (or room walk) in `domain`
    (deterministic)."""
    return open_renderer(domain, num_frames, height, width, seed, fps, textures).frames()


def measure_render_speed(height: int = 96, width: int = 320, frames: int = 20,
                         domain: str = 'day', seed: int = 0,
                         threads: Optional[int] = 1) -> float:
    """Frames per second of render_sequence (RGB, depth, flow, occlusion) on this machine.

    threads: OpenCV thread count during the measurement (the numpy work is single-threaded
    already), so the default measures one core, as CI gets. World set-up (tens of ms) is not
    counted; every frame includes its ground truth and the ray cast of the next frame.
    """
    import cv2
    previous = cv2.getNumThreads()
    if threads is not None:
        cv2.setNumThreads(int(threads))
    try:
        renderer = open_renderer(domain, frames, height, width, seed)
        start = time.perf_counter()
        count = sum(1 for _ in renderer.frames())
        seconds = time.perf_counter() - start
    finally:
        cv2.setNumThreads(previous)
    return count / seconds


class SyntheticSource(VideoSource):
    """The synthetic drive as a VideoSource of Frames (RGB only), for flow pretraining.

    Each pass re-renders lazily (deterministic by seed), so memory stays flat.
    """

    def __init__(self, domain: str = 'day', num_frames: int = 100, height: int = 96,
                 width: int = 320, seed: int = 0, fps: float = 10.0, **kwargs):
        _check_args(num_frames, height, width, fps)
        self.config = get_domain(domain)
        self.domain = self.config.name
        self.height, self.width, self.seed, self.fps = int(height), int(width), int(seed), fps
        super().__init__(f'synthetic:{self.domain}:seed{self.seed}', int(num_frames), **kwargs)

    def _read(self) -> Iterator[Frame]:
        for frame in render_sequence(self.domain, self._raw_num_frames, self.height,
                                     self.width, self.seed, self.fps):
            yield Frame(frame.rgb, frame.stamp_ns, frame.index)


class SyntheticDataset:
    """A rendered drive held in memory, with depth and flow samples for training/evaluation.

    depth_sample(i) -> dict(rgb, depth, valid, K); flow_sample(i) -> dict(image1, image2,
    flow, valid) for frames i and i+1 (i < len(self) - 1). `depth` and `flow` give map-style
    views (`__len__`/`__getitem__`) that a torch DataLoader accepts as they are.
    """

    def __init__(self, domain: str = 'day', num_frames: int = 20, height: int = 96,
                 width: int = 320, seed: int = 0, fps: float = 10.0):
        self.frames: List[SyntheticFrame] = list(
            render_sequence(domain, num_frames, height, width, seed, fps))
        self.domain = get_domain(domain).name
        self.depth = _DepthView(self)
        self.flow = _FlowView(self)

    def __len__(self) -> int:
        return len(self.frames)

    def depth_sample(self, index: int) -> dict:
        f = self.frames[index]
        return {'rgb': f.rgb, 'depth': f.depth, 'valid': f.depth_valid, 'K': f.K}

    def flow_sample(self, index: int) -> dict:
        if not 0 <= index < len(self.frames) - 1:
            raise IndexError(f'flow sample index {index} out of range 0..{len(self.frames) - 2}')
        f0, f1 = self.frames[index], self.frames[index + 1]
        return {'image1': f0.rgb, 'image2': f1.rgb, 'flow': f0.flow, 'valid': f0.flow_valid}


class _DepthView:
    def __init__(self, data: SyntheticDataset):
        self.data = data

    def __len__(self):
        return len(self.data.frames)

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f'depth sample index {index} out of range 0..{len(self) - 1}')
        return self.data.depth_sample(index)


class _FlowView:
    def __init__(self, data: SyntheticDataset):
        self.data = data

    def __len__(self):
        return max(len(self.data.frames) - 1, 0)

    def __getitem__(self, index):
        if index < 0:
            index += len(self)
        return self.data.flow_sample(index)


def SyntheticDepthDataset(domain='day', num_frames=20, height=96, width=320, seed=0, fps=10.0):
    """Map-style dataset of dict(rgb, depth, valid, K) (see SyntheticDataset)."""
    return SyntheticDataset(domain, num_frames, height, width, seed, fps).depth


def SyntheticFlowDataset(domain='day', num_frames=20, height=96, width=320, seed=0, fps=10.0):
    """Map-style dataset of dict(image1, image2, flow, valid) (see SyntheticDataset)."""
    return SyntheticDataset(domain, num_frames, height, width, seed, fps).flow


__all__ = ['SyntheticFrame', 'render_sequence', 'measure_render_speed', 'SyntheticSource',
           'SyntheticDataset', 'SyntheticDepthDataset', 'SyntheticFlowDataset', 'Renderer',
           'flow_between', 'open_renderer', 'STAMP_BASE_NS']
