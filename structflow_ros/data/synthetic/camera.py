"""Pinhole camera, rotations and the ego vehicle's drive through the synthetic street.

Conventions (used by every synthetic ground-truth field):
- World frame: x east, y north, z up (metres). The road lies on z = 0.
- Camera frame: OpenCV, x right, y down, z forward. `pose_c2w` maps camera to world
  (4x4), so a camera point X_c goes to world as R @ X_c + t.
- Pixel (u, v) is the centre of column u, row v; K maps camera points to those coordinates.
- Depth is z-depth along the optical axis (not the distance along the ray).
"""
import math
from dataclasses import dataclass

import numpy as np

from structflow_ros.data.synthetic.domains import DomainConfig


def intrinsics(config: DomainConfig, height: int, width: int) -> np.ndarray:
    """K (3, 3) float64 for an image of height x width pixels with square pixels."""
    if height < 8 or width < 8:
        raise ValueError(f'image size must be at least 8x8 pixels, got {width}x{height}')
    focal = config.focal_x_frac * width
    cx = width / 2.0 + config.principal_offset[0] * width
    cy = height / 2.0 + config.principal_offset[1] * height
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


def rot_x(angle: float) -> np.ndarray:
    """Rotation matrix about the x axis (radians, right-handed)."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def camera_rotation(heading: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation of a camera looking along `heading` (radians from world +x).

    pitch > 0 tilts the optical axis down, roll > 0 turns the image clockwise (the world seen
    turning anti-clockwise); both in radians.
    """
    forward = np.array([math.cos(heading), math.sin(heading), 0.0])
    right = np.array([math.sin(heading), -math.cos(heading), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    level = np.stack([right, down, forward], axis=1)  # columns: camera x, y, z in world
    # In the camera frame a rotation about x by -pitch moves the optical axis towards +y (down).
    tilt = rot_x(-pitch)
    c, s = math.cos(roll), math.sin(roll)
    spin = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return level @ tilt @ spin


@dataclass(frozen=True)
class EgoMotion:
    """Smooth, seeded ego motion along the road: speed changes, steering wobble, bumps.

    Arc length along the road is the closed-form integral of
    v(t) = v0 * (1 + a1 sin(w1 t + p1) + a2 sin(w2 t + p2)), with a1 + a2 < 1 so the car never
    reverses; turns come from the road's own bends (see world.RoadCurve).
    """

    v0: float
    a1: float
    w1: float
    p1: float
    a2: float
    w2: float
    p2: float
    s_start: float
    lane_offset: float       # metres right of the road centre line
    wobble_amp: float        # lateral wobble within the lane, metres
    wobble_w: float
    wobble_p: float
    yaw_amp: float           # radians
    yaw_w: float
    yaw_p: float
    pitch_mean: float
    pitch_amp: float
    pitch_w: float
    pitch_p: float
    roll_amp: float
    roll_w: float
    roll_p: float
    height: float

    @classmethod
    def sample(cls, config: DomainConfig, rng: np.random.Generator,
               lane_offset: float) -> 'EgoMotion':
        """Draw a drive for `config` (speed, camera height and jitter come from the domain)."""
        variation = config.speed_variation
        a1 = variation * rng.uniform(0.55, 0.8)
        a2 = variation * rng.uniform(0.15, 0.3)
        return cls(
            v0=config.speed_mps * rng.uniform(0.85, 1.15),
            a1=a1, w1=2 * math.pi / rng.uniform(9.0, 16.0), p1=rng.uniform(0, 2 * math.pi),
            a2=a2, w2=2 * math.pi / rng.uniform(3.0, 6.0), p2=rng.uniform(0, 2 * math.pi),
            s_start=0.0, lane_offset=lane_offset,
            wobble_amp=rng.uniform(0.1, 0.3), wobble_w=2 * math.pi / rng.uniform(5.0, 9.0),
            wobble_p=rng.uniform(0, 2 * math.pi),
            yaw_amp=math.radians(config.yaw_jitter_deg) * rng.uniform(0.6, 1.0),
            yaw_w=2 * math.pi / rng.uniform(2.5, 5.0), yaw_p=rng.uniform(0, 2 * math.pi),
            pitch_mean=math.radians(config.camera_pitch_deg),
            pitch_amp=math.radians(config.pitch_amp_deg) * rng.uniform(0.6, 1.0),
            pitch_w=2 * math.pi / rng.uniform(0.8, 1.6), pitch_p=rng.uniform(0, 2 * math.pi),
            roll_amp=math.radians(config.roll_amp_deg) * rng.uniform(0.6, 1.0),
            roll_w=2 * math.pi / rng.uniform(1.5, 3.0), roll_p=rng.uniform(0, 2 * math.pi),
            height=config.camera_height_m)

    def arc_length(self, t):
        """Distance driven along the road at time t (seconds), plus s_start."""
        t = np.asarray(t, dtype=np.float64)
        travelled = t + self.a1 / self.w1 * (math.cos(self.p1) - np.cos(self.w1 * t + self.p1))
        travelled = travelled + self.a2 / self.w2 * (
            math.cos(self.p2) - np.cos(self.w2 * t + self.p2))
        return self.s_start + self.v0 * travelled

    def speed(self, t):
        t = np.asarray(t, dtype=np.float64)
        return self.v0 * (1 + self.a1 * np.sin(self.w1 * t + self.p1)
                          + self.a2 * np.sin(self.w2 * t + self.p2))

    def pose(self, t: float, curve) -> np.ndarray:
        """Camera-to-world 4x4 (OpenCV camera axes) at time t on `curve`."""
        s = float(self.arc_length(t))
        x, y, heading = (float(v[0]) for v in curve.frame_at(np.array([s])))
        lateral = self.lane_offset + self.wobble_amp * math.sin(self.wobble_w * t + self.wobble_p)
        lateral_rate = self.wobble_amp * self.wobble_w * math.cos(self.wobble_w * t
                                                                  + self.wobble_p)
        # Steering follows the lateral wobble (the car points where it goes) plus a jitter.
        steer = -math.atan2(lateral_rate, max(float(self.speed(t)), 0.5))
        yaw = heading + steer + self.yaw_amp * math.sin(self.yaw_w * t + self.yaw_p)
        pitch = self.pitch_mean + self.pitch_amp * math.sin(self.pitch_w * t + self.pitch_p)
        roll = self.roll_amp * math.sin(self.roll_w * t + self.roll_p)
        bump = 0.02 * math.sin(self.pitch_w * 1.7 * t + self.roll_p)
        right = np.array([math.sin(heading), -math.cos(heading)])
        position = np.array([x + lateral * right[0], y + lateral * right[1], self.height + bump])
        pose = np.eye(4)
        pose[:3, :3] = camera_rotation(yaw, pitch, roll)
        pose[:3, 3] = position
        return pose
