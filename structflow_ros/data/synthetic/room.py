"""A procedural indoor room, seen by a robot or a hand-held camera, with exact ground truth.

Why it exists: every street domain shows the same layout (ground below, sky above, depth
growing to a far horizon), and a model that only learned that loses to a constant depth on real
indoor cameras (NYU, TUM; issue 10). A room is a closed box a few metres across: floor, four
walls and a ceiling, furniture standing against the walls, open space under tables, things on
them, pictures, doors and windows on the walls; the camera is 0.3-1.7 m high and turns more
than it travels.

Layout (world frame as the street's: z up, metres): the room spans x in [0, width], y in
[0, length], z in [0, height]. The camera walks a smooth ellipse around the room's centre and
looks around (RoomCameraPath, domain 'room'), or circles a cluttered work table in the room's
middle at arm's length, looking down at it or out at the walls' furniture (WorkspaceCameraPath,
domain 'desk'); furniture is only placed where it stays clear of the path, so the camera never
enters an object. Each seed draws its own room size, furniture, materials, lights, camera
height and field of view; a 'desk' seed keeps the 'room' seed's size, materials, lights and
field of view, and furnishes it around its own path.

With room_furnishing 'cluttered' (domains 'cluttered_room', 'cluttered_desk') the same room
is made irregular: open shelves in place of the solid ones, desk clusters with partitions,
office chairs, people, piles on the floor, loose things on every desk (RoomWorld._clutter_room,
drawn from a random stream of its own, so the blocks that stay are the plain room's).

Objects reuse the street's shapes, ray tests and z-buffer (world.cast_objects); the shell is
cast from the inside. Frames come out as the street's SyntheticFrame with flow from
render.flow_between, so depth, flow and occlusion follow exactly the conventions of render.py.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from structflow_ros.data.synthetic import world as W
from structflow_ros.data.synthetic.camera import camera_rotation, intrinsics
from structflow_ros.data.synthetic.domains import DomainConfig
from structflow_ros.data.synthetic.photo_textures import OBJECT_SHARE, WALL_SHARE
from structflow_ros.data.synthetic.render import Renderer, _check_args
from structflow_ros.data.synthetic.shading import box, fbm, hash01, periodic_box

# Materials of room objects (ObjectTable.kind).
WOOD, PAINTED, FABRIC, SCREEN, PICTURE, WINDOW, DOOR, LIGHT, PLANT, METAL, BOOKS, SPINES, SKIN = \
    range(13)
# The shell is 'terrain' to the shared code (static, never sky); its face buffer holds which
# side was hit: the walls at x = 0, x = width, y = 0, y = length, then floor and ceiling.
WALL_X0, WALL_X1, WALL_Y0, WALL_Y1, FLOOR, CEILING = range(6)
_SHELL_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                          dtype=np.float64)   # inward normals of the shell faces
PATH_CLEARANCE_M = 0.4          # free space between the camera's path and any object
_PATH_SAMPLES = 96

_WALL_COLORS = ((0.80, 0.78, 0.72), (0.85, 0.84, 0.80), (0.70, 0.72, 0.68), (0.78, 0.70, 0.58),
                (0.62, 0.68, 0.74), (0.74, 0.62, 0.55), (0.55, 0.60, 0.50), (0.88, 0.86, 0.84),
                (0.60, 0.55, 0.52), (0.45, 0.50, 0.58))
_WOOD_COLORS = ((0.45, 0.28, 0.14), (0.62, 0.45, 0.28), (0.30, 0.18, 0.10), (0.72, 0.58, 0.40),
                (0.52, 0.36, 0.22))
_PAINT_COLORS = ((0.85, 0.85, 0.83), (0.12, 0.12, 0.13), (0.55, 0.57, 0.60), (0.60, 0.15, 0.12),
                 (0.15, 0.25, 0.45), (0.80, 0.72, 0.55), (0.30, 0.40, 0.30), (0.90, 0.90, 0.92))
_FABRIC_COLORS = ((0.35, 0.35, 0.38), (0.55, 0.20, 0.15), (0.20, 0.30, 0.50), (0.60, 0.55, 0.45),
                  (0.25, 0.40, 0.30), (0.70, 0.68, 0.65), (0.45, 0.30, 0.40))

_SKIN_COLORS = ((0.85, 0.64, 0.52), (0.70, 0.50, 0.38), (0.52, 0.36, 0.26), (0.36, 0.24, 0.17),
                (0.92, 0.74, 0.62))


@dataclass(frozen=True)
class RoomCameraPath:
    """Smooth seeded camera motion: an ellipse around the room's centre, looking around.

    Position (cx + ra cos p, cy + rb sin p) with phase p = phase0 + direction * omega * t; the
    heading follows the path's tangent plus a slow look-around swing (up to about 70 degrees,
    so walls and corners come into view, as a hand-held camera or a turning robot sees them).
    """

    centre: tuple
    radii: tuple
    omega: float
    phase: float
    direction: float
    height: float
    look_amp: float
    look_omega: float
    look_phase: float
    pitch: float
    pitch_amp: float
    roll_amp: float
    wobble_omega: float
    bob_m: ClassVar[float] = 0.02  # the camera's up-and-down bob (m)

    @classmethod
    def sample(cls, rng: np.random.Generator, size) -> 'RoomCameraPath':
        width, length, _ = size
        ra, rb = rng.uniform(0.12, 0.28) * width, rng.uniform(0.12, 0.28) * length
        speed = rng.uniform(0.25, 0.8)                        # m/s: a walk or a slow robot
        return cls(centre=(width / 2 + rng.uniform(-0.05, 0.05) * width,
                           length / 2 + rng.uniform(-0.05, 0.05) * length),
                   radii=(ra, rb), omega=speed / math.sqrt(0.5 * (ra * ra + rb * rb)),
                   phase=rng.uniform(0, 2 * math.pi), direction=float(rng.choice([-1.0, 1.0])),
                   height=rng.uniform(0.3, 1.7), look_amp=rng.uniform(0.0, 1.2),
                   look_omega=rng.uniform(0.1, 0.4), look_phase=rng.uniform(0, 2 * math.pi),
                   pitch=math.radians(rng.uniform(-5.0, 25.0)),
                   pitch_amp=math.radians(rng.uniform(0.5, 4.0)),
                   roll_amp=math.radians(rng.uniform(0.0, 3.0)),
                   wobble_omega=rng.uniform(0.8, 2.0))

    def _phase(self, t):
        return self.phase + self.direction * self.omega * t

    def position(self, t) -> np.ndarray:
        p = self._phase(t)
        x = self.centre[0] + self.radii[0] * math.cos(p)
        y = self.centre[1] + self.radii[1] * math.sin(p)
        z = self.height + self.bob_m * math.sin(self.wobble_omega * 2.3 * t)
        return np.array([x, y, z])

    def xy_samples(self) -> np.ndarray:
        """(S, 2) points of the whole loop (the path repeats), for keeping objects off it."""
        p = np.linspace(0.0, 2 * math.pi, _PATH_SAMPLES, endpoint=False)
        return np.stack([self.centre[0] + self.radii[0] * np.cos(p),
                         self.centre[1] + self.radii[1] * np.sin(p)], axis=1)

    def pose(self, t: float) -> np.ndarray:
        p = self._phase(t)
        tangent_x = -self.radii[0] * math.sin(p) * self.direction
        tangent_y = self.radii[1] * math.cos(p) * self.direction
        heading = math.atan2(tangent_y, tangent_x) + self.look_amp * math.sin(
            self.look_omega * t + self.look_phase)
        pitch = self.pitch + self.pitch_amp * math.sin(self.wobble_omega * t)
        roll = self.roll_amp * math.sin(self.wobble_omega * 0.7 * t + 1.0)
        pose = np.eye(4)
        pose[:3, :3] = camera_rotation(heading, pitch, roll)
        pose[:3, 3] = self.position(t)
        return pose


@dataclass(frozen=True)
class WorkspaceCameraPath(RoomCameraPath):
    """A hand-held or wrist camera circling a work table at arm's length (domain 'desk').

    The camera walks an ellipse around the table's centre (0.9-1.6 m out, fitted to the room),
    0.9-1.7 m high. Looking in, it aims at a point on the table top, so it looks down 20-55
    degrees at the clutter with the far side of the room behind; looking out, it faces the
    walls' desks, shelves and cabinets 1-3 m away, looking 10-35 degrees down. A slow swing of
    the gaze and a hand's wobble ride on top. The loop itself (position, xy_samples) is the
    walk's.
    """

    # `pitch` (inherited) is the outward gaze's mean pitch; inward, the aim point sets it.
    inward: bool
    aim_height: float            # inward: the height of the point looked at (table top + a bit)
    aim_offset: tuple            # inward: that point's offset from the table's centre (m)
    bob_m: ClassVar[float] = 0.03

    @classmethod
    def sample(cls, rng: np.random.Generator, size, table_top: float) -> 'WorkspaceCameraPath':
        width, length, _ = size
        inward = bool(rng.random() < 0.7)
        # Inward, at least 0.6 m from the walls, so wall furniture can stand clear of the path;
        # outward, 1.2 m (a camera facing a plain wall at arm's length sees nothing to learn),
        # but never under 0.75 m from the table's centre.
        wall_gap = 0.6 if inward else 1.2
        ra = max(min(rng.uniform(0.9, 1.6), width / 2 - wall_gap), 0.75)
        rb = max(min(rng.uniform(0.9, 1.6), length / 2 - wall_gap), 0.75)
        speed = rng.uniform(0.1, 0.4)                         # m/s: a person walking round
        return cls(centre=(width / 2, length / 2), radii=(ra, rb),
                   omega=speed / math.sqrt(0.5 * (ra * ra + rb * rb)),
                   phase=rng.uniform(0, 2 * math.pi), direction=float(rng.choice([-1.0, 1.0])),
                   height=rng.uniform(0.9, 1.7), inward=inward,
                   aim_height=table_top + rng.uniform(0.0, 0.25),
                   aim_offset=(rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)),
                   pitch=math.radians(rng.uniform(10.0, 35.0)),
                   look_amp=rng.uniform(0.0, 0.4), look_omega=rng.uniform(0.1, 0.4),
                   look_phase=rng.uniform(0, 2 * math.pi),
                   pitch_amp=math.radians(rng.uniform(1.0, 5.0)),
                   roll_amp=math.radians(rng.uniform(0.0, 4.0)),
                   wobble_omega=rng.uniform(0.8, 2.0))

    def pose(self, t: float) -> np.ndarray:
        position = self.position(t)
        swing = self.look_amp * math.sin(self.look_omega * t + self.look_phase)
        wobble = self.pitch_amp * math.sin(self.wobble_omega * t)
        if self.inward:
            to_aim = (self.centre[0] + self.aim_offset[0] - position[0],
                      self.centre[1] + self.aim_offset[1] - position[1])
            heading = math.atan2(to_aim[1], to_aim[0]) + swing
            pitch = math.atan2(position[2] - self.aim_height, math.hypot(*to_aim)) + wobble
        else:
            heading = math.atan2(position[1] - self.centre[1],
                                 position[0] - self.centre[0]) + swing
            pitch = self.pitch + wobble
        roll = self.roll_amp * math.sin(self.wobble_omega * 0.7 * t + 1.0)
        pose = np.eye(4)
        pose[:3, :3] = camera_rotation(heading, pitch, roll)
        pose[:3, 3] = position
        return pose


@dataclass(frozen=True)
class RoomLook:
    """Materials and lights of one room (drawn per seed)."""

    wall_color: tuple
    accent_wall: int              # -1: none, else the shell face painted in accent_color
    accent_color: tuple
    wallpaper_period: float       # 0: plain paint, else vertical stripes of this period (m)
    floor_kind: int               # 0 wood planks, 1 tiles, 2 carpet
    floor_color: tuple
    floor_period: float           # plank width or tile size (m)
    ceiling_color: tuple
    skirting_color: tuple
    lights: tuple                 # ((x, y, z), ...) lamp positions
    light_intensity: float
    ambient: float


class RoomWorld:
    """One room: its size, look, objects and the camera's path; the interface of world.World
    that render.flow_between and the shader use (config, objects, object_poses, camera_pose)."""

    def __init__(self, config: DomainConfig, seed: int, duration_s: float):
        self.config = config
        self.seed = int(seed)
        self.duration_s = duration_s
        rng = W._rng(seed, 40)
        # From a small bedroom (about 3 x 3 m) to an open office or a hall (8 x 12 m).
        self.size = (rng.uniform(2.8, 8.0), rng.uniform(3.2, 12.0), rng.uniform(2.4, 3.4))
        workspace = config.room_camera == 'workspace'
        if config.room_camera not in ('walk', 'workspace'):
            raise ValueError(f"unknown room camera {config.room_camera!r}; "
                             "valid: 'walk', 'workspace'")
        if config.room_furnishing not in ('boxes', 'cluttered'):
            raise ValueError(f"unknown room furnishing {config.room_furnishing!r}; "
                             "valid: 'boxes', 'cluttered'")
        if workspace:
            # Its own random stream, so the 'walk' rooms stay exactly as they were.
            rng_workspace = W._rng(seed, 44)
            table_top = rng_workspace.uniform(0.7, 0.78)
            self.path = WorkspaceCameraPath.sample(rng_workspace, self.size, table_top)
        else:
            self.path = RoomCameraPath.sample(rng, self.size)
        self.look = self._sample_look(W._rng(seed, 41))
        self._path_xy = self.path.xy_samples()
        builder = W._ObjectBuilder()
        self._footprints = []
        # What the clutter pass builds on (it draws from its own random stream, so the blocks'
        # layout is the 'boxes' room's): builder rows of the solid shelves with their wall, and
        # the surfaces things stand on (x, y, half_x, half_y, top, is_table).
        self._shelves = []
        self._surfaces = []
        rng_objects = W._rng(seed, 42)
        # Things on every table and low cabinet: 0-4 in a walk, 2-7 around a workspace.
        self._clutter_counts = (2, 8) if workspace else (0, 5)
        if workspace:
            self._add_work_table(builder, rng_workspace, table_top)
        for wall in (WALL_X0, WALL_X1, WALL_Y0, WALL_Y1):
            self._furnish_wall(builder, rng_objects, wall)
        self._add_free_standing(builder, rng_objects)
        if config.room_furnishing == 'cluttered':
            self._clutter_room(builder, W._rng(seed, 45))
        for (x, y, z) in self.look.lights:
            builder.add(W.BOX, LIGHT, (0.3, 0.3, 0.02), 0.0, (x, y, z - 0.02))
        self.objects = builder.build()
        self.lamp_positions = np.zeros((0, 3))

    # ------------------------------------------------------------------ layout
    def _sample_look(self, rng) -> RoomLook:
        width, length, height = self.size
        wall = np.array(_WALL_COLORS[rng.integers(len(_WALL_COLORS))])
        lights = []
        count = int(rng.integers(1, 4))
        for _ in range(count):
            lights.append((rng.uniform(0.25, 0.75) * width, rng.uniform(0.2, 0.8) * length,
                           height))
        floor_kind = int(rng.integers(3))
        floor_colors = (_WOOD_COLORS, ((0.75, 0.74, 0.70), (0.45, 0.45, 0.47), (0.60, 0.50, 0.40),
                                       (0.85, 0.85, 0.86)), _FABRIC_COLORS)[floor_kind]
        return RoomLook(
            wall_color=tuple(wall * rng.uniform(0.9, 1.05, 3)),
            accent_wall=int(rng.integers(-1, 4)) if rng.random() < 0.4 else -1,
            accent_color=tuple(_PAINT_COLORS[rng.integers(len(_PAINT_COLORS))]),
            wallpaper_period=rng.uniform(0.08, 0.4) if rng.random() < 0.25 else 0.0,
            floor_kind=floor_kind,
            floor_color=tuple(floor_colors[rng.integers(len(floor_colors))]),
            floor_period=rng.uniform(0.09, 0.2) if floor_kind == 0 else rng.uniform(0.3, 0.6),
            ceiling_color=tuple(np.full(3, rng.uniform(0.8, 0.95))),
            skirting_color=tuple(_PAINT_COLORS[rng.integers(len(_PAINT_COLORS))]),
            lights=tuple(lights), light_intensity=rng.uniform(0.6, 1.4),
            ambient=rng.uniform(0.25, 0.5))

    def _clear(self, x, y, half_x, half_y) -> bool:
        """An axis-aligned footprint is inside the room and off the camera's path."""
        width, length, _ = self.size
        if x - half_x < -1e-6 or x + half_x > width + 1e-6 or y - half_y < -1e-6 or \
                y + half_y > length + 1e-6:
            return False
        dx = np.maximum(np.abs(self._path_xy[:, 0] - x) - half_x, 0.0)
        dy = np.maximum(np.abs(self._path_xy[:, 1] - y) - half_y, 0.0)
        if np.min(np.hypot(dx, dy)) < PATH_CLEARANCE_M:
            return False
        for (ox, oy, ohx, ohy) in self._footprints:
            if abs(ox - x) < ohx + half_x and abs(oy - y) < ohy + half_y:
                return False
        return True

    def _furnish_wall(self, builder, rng, wall):
        """Furniture along one wall, side by side with gaps, plus things hung on the wall."""
        width, length, height = self.size
        along_length = wall in (WALL_X0, WALL_X1)
        span = length if along_length else width
        sign = 1.0 if wall in (WALL_X0, WALL_Y0) else -1.0
        base = 0.0 if sign > 0 else (width if along_length else length)

        def place(a, depth_m):
            """(x, y) of a footprint centre at `a` along the wall, depth_m deep, and its
            half extents in (x, y)."""
            d = base + sign * depth_m / 2
            return ((d, a) if along_length else (a, d))

        def halves(extent, depth_m):
            return (depth_m / 2, extent / 2) if along_length else (extent / 2, depth_m / 2)

        a = rng.uniform(0.0, 0.6)
        while a < span - 0.5:
            extent = rng.uniform(0.5, 2.0)
            if a + extent > span:
                extent = span - a
            kind = rng.choice(['cabinet', 'shelf', 'sofa', 'desk', 'none'],
                              p=[0.22, 0.2, 0.18, 0.25, 0.15])
            centre = a + extent / 2
            if kind == 'cabinet' or kind == 'shelf':
                depth_m = rng.uniform(0.3, 0.6)
                tall = rng.uniform(0.7, 2.2)
                x, y = place(centre, depth_m)
                hx, hy = halves(extent, depth_m)
                if self._clear(x, y, hx, hy):
                    material = BOOKS if kind == 'shelf' else (WOOD if rng.random() < 0.4
                                                              else PAINTED)
                    self._add(builder, rng, W.BOX, material, (hx, hy, tall / 2),
                              (x, y, tall / 2), footprint=(hx, hy))
                    if kind == 'shelf':
                        self._shelves.append((len(builder.rows) - 1, wall))
                    if kind == 'cabinet' and tall < 1.2:
                        self._surfaces.append((x, y, hx, hy, tall, False))
                        self._add_clutter(builder, rng, x, y, hx, hy, tall)
            elif kind == 'sofa':
                depth_m = rng.uniform(0.8, 1.9)
                seat = rng.uniform(0.4, 0.6)
                x, y = place(centre, depth_m)
                hx, hy = halves(extent, depth_m)
                if self._clear(x, y, hx, hy):
                    self._add(builder, rng, W.BOX, FABRIC, (hx, hy, seat / 2), (x, y, seat / 2),
                              footprint=(hx, hy))
                    bx, by = place(centre, 0.2)
                    bhx, bhy = halves(extent, 0.2)
                    back = seat + rng.uniform(0.3, 0.5)
                    self._add(builder, rng, W.BOX, FABRIC, (bhx, bhy, back / 2),
                              (bx, by, back / 2))
            elif kind == 'desk':
                depth_m = rng.uniform(0.55, 0.9)
                self._add_table(builder, rng, *place(centre, depth_m), *halves(extent, depth_m))
            a += extent + rng.uniform(0.0, 0.8)
        # On the wall: a door, pictures, a window or a screen (thin boxes, off the floor).
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.choice(['door', 'picture', 'window', 'screen'], p=[0.25, 0.4, 0.2, 0.15])
            extent = {'door': 0.9, 'picture': rng.uniform(0.3, 1.2),
                      'window': rng.uniform(0.8, 1.8), 'screen': rng.uniform(0.6, 1.4)}[kind]
            tall = {'door': 2.05, 'picture': rng.uniform(0.3, 0.9),
                    'window': rng.uniform(0.8, 1.5), 'screen': rng.uniform(0.4, 0.9)}[kind]
            bottom = 0.0 if kind == 'door' else min(rng.uniform(0.8, 1.4), height - tall - 0.1)
            if span < extent + 0.2:
                continue
            centre = rng.uniform(extent / 2 + 0.1, span - extent / 2 - 0.1)
            thick = {'door': 0.04, 'picture': 0.03, 'window': 0.02, 'screen': 0.06}[kind]
            x, y = place(centre, thick)
            hx, hy = halves(extent, thick)
            material = {'door': DOOR, 'picture': PICTURE, 'window': WINDOW,
                        'screen': SCREEN}[kind]
            self._add(builder, rng, W.BOX, material, (hx, hy, tall / 2),
                      (x, y, bottom + tall / 2))

    def _add_work_table(self, builder, rng, top):
        """The table the workspace camera circles: as large as the path leaves room for (0.4 m
        clear of it) and crowded with things."""
        x, y = self.path.centre
        hx, hy = rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.6)
        clutter = int(rng.integers(4, 10))
        # The path is an ellipse: shrink the table until its corners are clear of it too.
        while not self._clear(x, y, hx, hy):
            hx, hy = 0.9 * hx, 0.9 * hy
        self._add_table(builder, rng, x, y, hx, hy, top=top, clutter=clutter)

    def _add_table(self, builder, rng, x, y, hx, hy, top=None, clutter=None):
        """A table or desk: top, four legs, open space below and a few things on top."""
        if top is None:
            top = rng.uniform(0.7, 0.78)
        if not self._clear(x, y, hx, hy):
            return
        self._footprints.append((x, y, hx, hy))
        self._surfaces.append((x, y, hx, hy, top, True))
        material = WOOD if rng.random() < 0.6 else PAINTED
        self._add(builder, rng, W.BOX, material, (hx, hy, 0.02), (x, y, top - 0.02))
        leg = 0.025
        for sx in (-1, 1):
            for sy in (-1, 1):
                self._add(builder, rng, W.BOX, METAL if rng.random() < 0.5 else material,
                          (leg, leg, (top - 0.04) / 2),
                          (x + sx * (hx - 0.05), y + sy * (hy - 0.05), (top - 0.04) / 2))
        self._add_clutter(builder, rng, x, y, hx, hy, top, count=clutter)

    def _add_clutter(self, builder, rng, x, y, hx, hy, top, count=None):
        """Monitors, books, boxes, cups and plants standing on a surface at height `top`
        (`count` of them, else as many as the room's clutter counts draw)."""
        for _ in range(int(rng.integers(*self._clutter_counts)) if count is None else count):
            px = x + rng.uniform(-0.8, 0.8) * max(hx - 0.1, 0.0)
            py = y + rng.uniform(-0.8, 0.8) * max(hy - 0.1, 0.0)
            kind = rng.choice(['monitor', 'box', 'cup', 'plant'])
            if kind == 'monitor':
                w, h = rng.uniform(0.25, 0.35), rng.uniform(0.18, 0.3)
                yaw = rng.uniform(0, 2 * math.pi)
                self._add(builder, rng, W.BOX, SCREEN, (w, 0.02, h), (px, py, top + 0.08 + h),
                          yaw=yaw)
            elif kind == 'box':
                half = rng.uniform(0.04, 0.2, 3)
                material = rng.choice([PAINTED, BOOKS, WOOD])
                self._add(builder, rng, W.BOX, material, tuple(half), (px, py, top + half[2]),
                          yaw=rng.uniform(0, 2 * math.pi))
            elif kind == 'cup':
                r, h = rng.uniform(0.03, 0.08), rng.uniform(0.04, 0.12)
                self._add(builder, rng, W.CYLINDER, PAINTED, (r, r, h), (px, py, top + h))
            else:
                r = rng.uniform(0.06, 0.12)
                self._add(builder, rng, W.CYLINDER, PAINTED, (r, r, r), (px, py, top + r))
                self._add(builder, rng, W.SPHERE, PLANT, (1.6 * r, 1.6 * r, 2 * r),
                          (px, py, top + 2.6 * r))

    def _add_free_standing(self, builder, rng):
        """Tables with chairs, boxes, bins, plants and floor lamps away from the walls."""
        width, length, _ = self.size
        for _ in range(int(rng.integers(2, 9))):
            x, y = rng.uniform(0.3, width - 0.3), rng.uniform(0.3, length - 0.3)
            kind = rng.choice(['table', 'chair', 'box', 'bin', 'plant', 'lamp'])
            if kind == 'table':
                self._add_table(builder, rng, x, y, rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.6))
            elif kind == 'chair':
                half = rng.uniform(0.2, 0.25)
                seat = rng.uniform(0.42, 0.5)
                if self._clear(x, y, half, half):
                    self._footprints.append((x, y, half, half))
                    material = rng.choice([WOOD, FABRIC, PAINTED])
                    self._add(builder, rng, W.BOX, material, (half, half, 0.03),
                              (x, y, seat - 0.03))
                    self._add(builder, rng, W.BOX, METAL, (0.02, 0.02, (seat - 0.06) / 2),
                              (x, y, (seat - 0.06) / 2))
                    side = rng.choice([-1.0, 1.0])
                    self._add(builder, rng, W.BOX, material, (half, 0.02, 0.22),
                              (x, y + side * (half - 0.02), seat + 0.22))
            elif kind in ('box', 'bin'):
                half = rng.uniform(0.1, 0.4, 3)
                shape = W.BOX if kind == 'box' else W.CYLINDER
                if shape == W.CYLINDER:
                    half[1] = half[0]
                if self._clear(x, y, half[0], half[1]):
                    self._footprints.append((x, y, half[0], half[1]))
                    self._add(builder, rng, shape, rng.choice([PAINTED, WOOD, METAL]),
                              tuple(half), (x, y, half[2]))
            elif kind == 'plant':
                r = rng.uniform(0.12, 0.25)
                if self._clear(x, y, 1.6 * r, 1.6 * r):
                    self._footprints.append((x, y, 1.6 * r, 1.6 * r))
                    self._add(builder, rng, W.CYLINDER, PAINTED, (r, r, r), (x, y, r))
                    self._add(builder, rng, W.SPHERE, PLANT, (1.6 * r, 1.6 * r, 2.2 * r),
                              (x, y, 3.0 * r))
            else:
                if self._clear(x, y, 0.25, 0.25):
                    self._footprints.append((x, y, 0.25, 0.25))
                    tall = rng.uniform(1.3, 1.8)
                    self._add(builder, rng, W.CYLINDER, METAL, (0.02, 0.02, tall / 2),
                              (x, y, tall / 2))
                    self._add(builder, rng, W.CYLINDER, FABRIC, (0.2, 0.2, 0.15),
                              (x, y, tall + 0.1))

    # ------------------------------------------------------------------ clutter
    def _clutter_room(self, builder, rng):
        """Make the room as irregular as real ones (domain room_furnishing 'cluttered'): open
        shelves instead of solid ones, desk clusters with partitions, office chairs, people,
        piles on the floor and loose things on every desk. Why: a model that learned only
        solid blocks in a box flattens real rooms (TUM's desks, partitions and the hall behind
        them). Everything here draws from `rng` alone, so the blocks that stay are the 'boxes'
        room's."""
        for row, wall in self._shelves:
            self._open_shelf(builder, rng, builder.rows[row], wall)
            builder.rows[row] = None
        builder.rows = [row for row in builder.rows if row is not None]
        width, length, _ = self.size
        for _ in range(int(rng.integers(0, 3))):
            self._add_desk_cluster(builder, rng, rng.uniform(0.8, width - 0.8),
                                   rng.uniform(0.8, length - 0.8))
        chairs = []
        for (x, y, hx, hy, top, is_table) in list(self._surfaces):
            if is_table:
                chairs += self._dress_table(builder, rng, x, y, hx, hy, top)
            self._add_desk_things(builder, rng, x, y, hx, hy, top,
                                  int(rng.integers(2, 7) if is_table else rng.integers(0, 3)))
        for (x, y, facing, seat) in chairs:
            if rng.random() < 0.3:
                self._add_seated_person(builder, rng, x, y, facing, seat)
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0.3, width - 0.3), rng.uniform(0.3, length - 0.3)
            if self._clear(x, y, 0.3, 0.3):
                self._footprints.append((x, y, 0.3, 0.3))
                self._add_standing_person(builder, rng, x, y, rng.uniform(0, 2 * math.pi))
        for _ in range(int(rng.integers(1, 5))):
            self._add_floor_pile(builder, rng)

    def _open_shelf(self, builder, rng, solid_row, wall):
        """A shelf unit where the solid block `solid_row` stood: frame, boards, and on each
        board uneven runs of books, boxes and things with gaps to the back panel."""
        _, _, (hx, hy, hz), _, (x, y, _), *_ = solid_row
        along_length = wall in (WALL_X0, WALL_X1)
        half_along, depth = (hy, 2 * hx) if along_length else (hx, 2 * hy)
        into_room = 1.0 if wall in (WALL_X0, WALL_Y0) else -1.0
        back = (x - into_room * hx) if along_length else (y - into_room * hy)
        tall = 2 * hz
        frame = WOOD if rng.random() < 0.5 else PAINTED
        frame_color = int(rng.integers(1 << 16))

        def part(shape, material, a, d, z, half_a, half_d, half_z, color=None):
            """A box (or cylinder) at `a` along the wall, `d` out from its back, z its centre."""
            yaw = 0.0
            if along_length:
                pos, half = (back + into_room * d, y + a, z), (half_d, half_a, half_z)
                if material == SPINES:
                    # Turned a quarter, so the spines' axis (local x) runs along the wall.
                    yaw, half = math.pi / 2, (half_a, half_d, half_z)
            else:
                pos, half = (x + a, back + into_room * d, z), (half_a, half_d, half_z)
            if shape == W.CYLINDER:
                half = (half_a, half_a, half_z)
            self._add(builder, rng, shape, material, half, pos, yaw=yaw,
                      color=frame_color if color is None else color)

        board = 0.009
        if rng.random() < 0.7:                      # else the wall shows through
            part(W.BOX, frame, 0.0, 0.005, hz, half_along, 0.005, hz)
        for side in (-1.0, 1.0):
            part(W.BOX, frame, side * (half_along - board), depth / 2, hz, board, depth / 2, hz)
        levels = max(1, int(round(tall / rng.uniform(0.28, 0.42))))
        pitch = tall / levels
        for level in range(levels + 1):
            z = min(level * pitch + board, tall - board)
            part(W.BOX, frame, 0.0, depth / 2, z, half_along - 2 * board, depth / 2, board)
            if level == levels:
                break
            gap = pitch - 2 * board
            a = -half_along + 2 * board + rng.uniform(0.0, 0.1)
            while True:
                kind = rng.choice(['books', 'box', 'thing', 'gap'], p=[0.55, 0.12, 0.11, 0.22])
                run = {'books': rng.uniform(0.04, 0.3), 'box': rng.uniform(0.12, 0.35),
                       'thing': rng.uniform(0.08, 0.2), 'gap': rng.uniform(0.05, 0.4)}[kind]
                if a + run > half_along - 2 * board:
                    break
                centre, bottom = a + run / 2, z + board
                if kind == 'books':
                    h = rng.uniform(0.5, 0.95) * gap
                    d = rng.uniform(0.6, 0.95) * depth
                    part(W.BOX, SPINES, centre, d / 2 + 0.01, bottom + h / 2, run / 2, d / 2,
                         h / 2, color=int(rng.integers(1 << 16)))
                elif kind == 'box':
                    h = rng.uniform(0.4, 0.9) * gap
                    d = rng.uniform(0.5, 0.95) * depth
                    part(W.BOX, rng.choice([PAINTED, FABRIC, WOOD]), centre, d / 2 + 0.01,
                         bottom + h / 2, run / 2, d / 2, h / 2, color=int(rng.integers(1 << 16)))
                elif kind == 'thing':
                    # A jar or vase (cylinder) or a ball, plant or globe (sphere).
                    r = min(run / 2, depth / 2, gap / 2) * rng.uniform(0.5, 1.0)
                    h = rng.uniform(0.3, 0.9) * gap
                    if rng.random() < 0.6:
                        shape, material, half_z = W.CYLINDER, rng.choice([PAINTED, METAL]), h / 2
                    else:
                        shape, material, half_z = W.SPHERE, rng.choice([PAINTED, PLANT, METAL]), r
                    out = rng.uniform(r, depth - r)
                    part(shape, material, centre, out, bottom + half_z, r, r, half_z,
                         color=int(rng.integers(1 << 16)))
                a += run + (rng.uniform(0.0, 0.02) if kind == 'books' else 0.0)

    def _add_desk_cluster(self, builder, rng, x, y):
        """Two or four desks back to back with a partition between them (an open office)."""
        half_w, half_d = rng.uniform(0.6, 0.8), rng.uniform(0.33, 0.4)
        pairs = 2 if rng.random() < 0.5 else 1
        yaw_along_x = rng.random() < 0.5          # the partition runs along x, else along y
        hx, hy = (pairs * half_w, 2 * half_d) if yaw_along_x else (2 * half_d, pairs * half_w)
        if not self._clear(x, y, hx + 0.6, hy + 0.6):   # room for the chairs
            return
        top = rng.uniform(0.72, 0.76)
        for pair in range(pairs):
            # 2 mm apart, so that rounding never makes neighbours' footprints overlap.
            offset = (pair - (pairs - 1) / 2) * 2 * (half_w + 0.001)
            for side in (-1.0, 1.0):
                across = side * (half_d + 0.001)
                if yaw_along_x:
                    self._add_table(builder, rng, x + offset, y + across, half_w, half_d,
                                    top=top, clutter=0)
                else:
                    self._add_table(builder, rng, x + across, y + offset, half_d, half_w,
                                    top=top, clutter=0)
        tall = rng.uniform(1.1, 1.6)
        half = (hx, 0.015, tall / 2) if yaw_along_x else (0.015, hy, tall / 2)
        self._add(builder, rng, W.BOX, rng.choice([FABRIC, PAINTED]), half, (x, y, tall / 2))

    def _dress_table(self, builder, rng, x, y, hx, hy, top):
        """An office chair at a free long side of a table (sometimes a desk partition on the
        other side); returns the chairs as (x, y, facing, seat height)."""
        chairs = []
        along_x = hx >= hy                         # the long sides face +-y
        for side in rng.permutation([-1.0, 1.0]):
            out = (0.0, side) if along_x else (side, 0.0)
            reach = (hy if along_x else hx) + rng.uniform(0.15, 0.45)
            cx = x + out[0] * reach + (rng.uniform(-0.5, 0.5) * hx if along_x else 0.0)
            cy = y + out[1] * reach + (0.0 if along_x else rng.uniform(-0.5, 0.5) * hy)
            if not chairs and rng.random() < 0.75 and self._clear(cx, cy, 0.3, 0.3):
                facing = math.atan2(-out[1], -out[0]) + rng.uniform(-0.6, 0.6)
                seat = rng.uniform(0.42, 0.52)
                self._footprints.append((cx, cy, 0.3, 0.3))
                self._add_office_chair(builder, rng, cx, cy, facing, seat)
                chairs.append((cx, cy, facing, seat))
            elif rng.random() < 0.35:
                # A partition at the table's edge: on the desk top just inside the edge, or
                # on the floor just outside it (then it needs floor space of its own).
                on_desk = rng.random() < 0.4
                tall = rng.uniform(0.3, 0.6) if on_desk else rng.uniform(1.1, 1.6)
                bottom = top if on_desk else 0.0
                edge = (hy if along_x else hx) + (-0.016 if on_desk else 0.016)
                px, py = x + out[0] * edge, y + out[1] * edge
                half = (hx, 0.015, tall / 2) if along_x else (0.015, hy, tall / 2)
                if on_desk or self._clear(px, py, half[0], half[1]):
                    if not on_desk:
                        self._footprints.append((px, py, half[0], half[1]))
                    self._add(builder, rng, W.BOX, rng.choice([FABRIC, PAINTED]), half,
                              (px, py, bottom + tall / 2))
        return chairs

    def _add_office_chair(self, builder, rng, x, y, facing, seat):
        """Star base (a cross), a column, a seat and a backrest; `facing` is where a sitter
        looks (radians from +x)."""
        yaw = facing - math.pi / 2                 # the chair's local +y is its front
        color = rng.choice([FABRIC, PAINTED])
        spin = rng.uniform(0, math.pi)
        # The cross stands on castors (not drawn) 4 cm above the floor; the column runs from
        # it to the seat, the backrest stands on the seat's back edge.
        for turn in (0.0, math.pi / 2):
            self._add(builder, rng, W.BOX, METAL, (0.3, 0.025, 0.02), (x, y, 0.06),
                      yaw=spin + turn)
        self._add(builder, rng, W.CYLINDER, METAL, (0.025, 0.025, (seat - 0.16) / 2),
                  (x, y, 0.08 + (seat - 0.16) / 2))
        self._add(builder, rng, W.BOX, color, (0.24, 0.23, 0.04), (x, y, seat - 0.04), yaw=yaw)
        bx, by = _offset(x, y, yaw, 0.0, -0.2)
        back = rng.uniform(0.22, 0.35)
        self._add(builder, rng, W.BOX, color, (0.22, 0.03, back), (bx, by, seat + back),
                  yaw=yaw)

    def _add_standing_person(self, builder, rng, x, y, facing):
        """Legs, body, arms and head of a standing person 1.5-1.9 m tall."""
        tall = rng.uniform(1.5, 1.9)
        yaw = facing - math.pi / 2
        hip = 0.47 * tall
        trousers, top = int(rng.integers(1 << 16)), int(rng.integers(1 << 16))
        for side in (-1.0, 1.0):
            lx, ly = _offset(x, y, yaw, side * 0.09, rng.uniform(-0.08, 0.08))
            self._add(builder, rng, W.CYLINDER, FABRIC, (0.065, 0.065, hip / 2),
                      (lx, ly, hip / 2), color=trousers)
            ax, ay = _offset(x, y, yaw, side * 0.23, rng.uniform(-0.1, 0.1))
            self._add(builder, rng, W.CYLINDER, FABRIC, (0.045, 0.045, 0.16 * tall),
                      (ax, ay, 0.78 * tall - 0.16 * tall), color=top)
        shoulders = hip + 0.32 * tall
        self._add(builder, rng, W.BOX, FABRIC, (0.19, 0.11, 0.16 * tall),
                  (x, y, hip + 0.16 * tall), yaw=yaw, color=top)
        # Neck and head fill the rest of the height.
        head = min(0.115, (tall - shoulders) / 2 - 0.02)
        self._add(builder, rng, W.CYLINDER, SKIN, (0.05, 0.05, 0.03), (x, y, shoulders + 0.02))
        self._add(builder, rng, W.SPHERE, SKIN, (0.09, 0.1, head), (x, y, tall - head))

    def _add_seated_person(self, builder, rng, x, y, facing, seat):
        """Someone on the office chair at (x, y): thighs forward, shins down, body, head."""
        yaw = facing - math.pi / 2
        clothes, top = int(rng.integers(1 << 16)), int(rng.integers(1 << 16))
        tx, ty = _offset(x, y, yaw, 0.0, 0.12)
        self._add(builder, rng, W.BOX, FABRIC, (0.17, 0.22, 0.07), (tx, ty, seat + 0.07),
                  yaw=yaw, color=clothes)
        for side in (-1.0, 1.0):
            sx, sy = _offset(x, y, yaw, side * 0.09, 0.32)
            self._add(builder, rng, W.CYLINDER, FABRIC, (0.055, 0.055, seat / 2),
                      (sx, sy, seat / 2), color=clothes)
        bx, by = _offset(x, y, yaw, 0.0, -0.08)
        body = rng.uniform(0.26, 0.32)
        self._add(builder, rng, W.BOX, FABRIC, (0.19, 0.11, body), (bx, by, seat + 0.1 + body),
                  yaw=yaw, color=top)
        self._add(builder, rng, W.SPHERE, SKIN, (0.09, 0.1, 0.115),
                  (bx, by, seat + 0.1 + 2 * body + 0.105))

    def _add_desk_things(self, builder, rng, x, y, hx, hy, top, count):
        """Loose things on a desk: papers, keyboards, laptops, bottles, stacks of books,
        lamps, balls and boxes, each at its own angle."""
        for _ in range(count):
            # Centres keep 0.15 m from the edges (a wall-side edge touches the wall); the
            # largest things may still hang over the edge or touch the wall behind.
            px = x + rng.uniform(-1.0, 1.0) * max(hx - 0.15, 0.0)
            py = y + rng.uniform(-1.0, 1.0) * max(hy - 0.15, 0.0)
            yaw = rng.uniform(0, 2 * math.pi)
            kind = rng.choice(['papers', 'keyboard', 'laptop', 'bottle', 'books', 'lamp',
                               'ball', 'box'])
            if kind == 'papers':
                thick = 0.002 + 0.01 * rng.random()
                self._add(builder, rng, W.BOX, PAINTED, (0.105, 0.15, thick),
                          (px, py, top + thick), yaw=yaw)
            elif kind == 'keyboard':
                self._add(builder, rng, W.BOX, PAINTED, (0.22, 0.075, 0.012),
                          (px, py, top + 0.012), yaw=yaw)
            elif kind == 'laptop':
                self._add(builder, rng, W.BOX, METAL, (0.17, 0.12, 0.01), (px, py, top + 0.01),
                          yaw=yaw)
                lx, ly = _offset(px, py, yaw, 0.0, -0.12)
                self._add(builder, rng, W.BOX, SCREEN, (0.17, 0.008, 0.12),
                          (lx, ly, top + 0.14), yaw=yaw)
            elif kind == 'bottle':
                r, h = rng.uniform(0.03, 0.045), rng.uniform(0.08, 0.13)
                self._add(builder, rng, W.CYLINDER, PAINTED, (r, r, h), (px, py, top + h))
                self._add(builder, rng, W.CYLINDER, PAINTED, (0.015, 0.015, 0.03),
                          (px, py, top + 2 * h + 0.03))
            elif kind == 'books':
                z = top
                for _ in range(int(rng.integers(2, 6))):
                    thick = rng.uniform(0.01, 0.03)
                    self._add(builder, rng, W.BOX, rng.choice([PAINTED, FABRIC]),
                              (rng.uniform(0.07, 0.12), rng.uniform(0.1, 0.15), thick),
                              (px, py, z + thick), yaw=yaw + rng.uniform(-0.3, 0.3))
                    z += 2 * thick
            elif kind == 'lamp':
                arm = rng.uniform(0.2, 0.45)
                self._add(builder, rng, W.CYLINDER, METAL, (0.07, 0.07, 0.01),
                          (px, py, top + 0.01))
                self._add(builder, rng, W.CYLINDER, METAL, (0.01, 0.01, arm / 2),
                          (px, py, top + arm / 2))
                shade_x, shade_y = _offset(px, py, yaw, 0.0, 0.08)
                self._add(builder, rng, W.SPHERE, PAINTED, (0.08, 0.08, 0.06),
                          (shade_x, shade_y, top + arm))
            elif kind == 'ball':
                r = rng.uniform(0.05, 0.15)
                self._add(builder, rng, W.SPHERE, PAINTED, (r, r, r), (px, py, top + r))
            else:
                half = rng.uniform(0.05, 0.15, 3)
                self._add(builder, rng, W.BOX, rng.choice([PAINTED, WOOD, FABRIC]),
                          tuple(half), (px, py, top + half[2]), yaw=yaw)

    def _add_floor_pile(self, builder, rng):
        """Cardboard boxes, bags and bins heaped on the floor, mostly against a wall."""
        width, length, _ = self.size
        spread = rng.uniform(0.35, 0.6)
        items = []                                  # (kind, half, dx, dy, yaw) from the centre
        for _ in range(int(rng.integers(3, 10))):
            kind = rng.choice(['box', 'box', 'bag', 'bin'])
            if kind == 'bag':
                half = (rng.uniform(0.12, 0.25), rng.uniform(0.1, 0.2), rng.uniform(0.08, 0.18))
            else:
                half = tuple(rng.uniform(0.08, 0.3, 3))
                if kind == 'bin':
                    half = (half[0], half[0], half[2])
            items.append((kind, half, rng.uniform(-0.6, 0.6) * spread,
                          rng.uniform(-0.6, 0.6) * spread, rng.uniform(0, 2 * math.pi)))
        # How far the heap reaches from its centre, whichever way each thing is turned.
        reach = max(max(abs(dx), abs(dy)) + math.hypot(*half[:2])
                    for (_, half, dx, dy, _) in items)
        if rng.random() < 0.7:
            wall = int(rng.integers(4))
            along_x = wall in (WALL_Y0, WALL_Y1)
            span, across = (width, length) if along_x else (length, width)
            a = rng.uniform(reach, max(span - reach, reach))
            off = reach + rng.uniform(0.0, 0.2)
            d = off if wall in (WALL_X0, WALL_Y0) else across - off
            x, y = (a, d) if along_x else (d, a)
        else:
            x, y = rng.uniform(0.6, width - 0.6), rng.uniform(0.6, length - 0.6)
        if not self._clear(x, y, reach, reach):
            return
        self._footprints.append((x, y, reach, reach))
        placed = []                                 # (x, y, radius, top) of what is down
        for kind, half, dx, dy, yaw in items:
            px, py = x + dx, y + dy
            radius = math.hypot(half[0], half[1])
            # Stacked on whatever it overlaps, else on the floor.
            bottom = max([t for (ox, oy, orad, t) in placed
                          if math.hypot(ox - px, oy - py) < 0.6 * (orad + radius)], default=0.0)
            shape = {'box': W.BOX, 'bag': W.SPHERE, 'bin': W.CYLINDER}[kind]
            material = {'box': rng.choice([PAINTED, WOOD]), 'bag': FABRIC,
                        'bin': rng.choice([PAINTED, METAL])}[kind]
            self._add(builder, rng, shape, material, half, (px, py, bottom + half[2]),
                      yaw=0.0 if kind == 'bin' else yaw)
            placed.append((px, py, radius, bottom + 2 * half[2]))

    def _add(self, builder, rng, shape, material, half, pos, yaw=0.0, footprint=None,
             color=None):
        """One object; `color` gives its palette slot (parts of one thing share a colour),
        else it draws its own."""
        if footprint is not None:
            self._footprints.append((pos[0], pos[1], *footprint))
        builder.add(shape, material, half, float(yaw), tuple(float(v) for v in pos),
                    color_index=int(rng.integers(1 << 16)) if color is None else color,
                    seed=int(rng.integers(1 << 16)),
                    params=(rng.random(), rng.random(), rng.random()))

    # ------------------------------------------------------------------ motion
    def object_poses(self, t: float):
        """Yaw (M,) and position (M, 3) of every object: a room's objects stand still."""
        return self.objects.yaw.copy(), self.objects.pos.copy(), self.objects.s.copy()

    def camera_pose(self, t: float) -> np.ndarray:
        return self.path.pose(t)


def _offset(x, y, yaw, lateral, forward):
    """World (x, y) of a point `lateral` along an object's local x and `forward` along its
    local y, for an object at (x, y) turned by `yaw` (the ray tests' convention)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return x + c * lateral - s * forward, y + s * lateral + c * forward


# --------------------------------------------------------------------- ray casting
def _shell(size, origin, rays):
    """Inside of the room box: (t, face) of each ray's exit (rays have camera-z = 1)."""
    t_best = np.full(rays.shape[0], np.inf)
    face = np.zeros(rays.shape[0], dtype=np.int8)
    with np.errstate(divide='ignore', invalid='ignore'):
        for axis, (low_face, high_face) in enumerate(((WALL_X0, WALL_X1), (WALL_Y0, WALL_Y1),
                                                      (FLOOR, CEILING))):
            d = rays[:, axis]
            t = np.where(d > 0, (size[axis] - origin[axis]) / d,
                         np.where(d < 0, (0.0 - origin[axis]) / d, np.inf))
            closer = t < t_best
            t_best[closer] = t[closer]
            face[closer] = np.where(d[closer] > 0, high_face, low_face)
    return t_best, face


def cast_room(world: RoomWorld, t: float, K: np.ndarray, height: int, width: int) -> W.Geometry:
    """Exact visibility for the camera at time t in the room (see world.cast)."""
    pose = world.camera_pose(t)
    origin = pose[:3, 3]
    rays_img = W.pixel_rays(K, pose, height, width)                 # (H, W, 3)
    rays = rays_img.reshape(-1, 3)                                   # (N, 3)
    depth, face = _shell(world.size, origin, rays)
    obj = np.full(depth.size, W.TERRAIN_ID, dtype=np.int32)
    yaw, pos, _ = world.object_poses(t)
    W.cast_objects(world.objects, np.arange(len(world.objects.kind)), yaw, pos, pose, K,
                   rays_img, world.config.far_m, depth, obj, face)
    shell_normal = _SHELL_NORMALS[np.clip(face, 0, 5)]
    return W.surface_geometry(world.objects, yaw, pos, pose, K, t, height, width, rays, depth,
                              obj, face, shell_normal)


# --------------------------------------------------------------------- shading
def _color(palette, keys) -> np.ndarray:
    """A palette colour per pixel, picked by an integer key (object colour index)."""
    table = np.asarray(palette, dtype=np.float32)
    return table[np.asarray(keys) % len(table)]


def _face_uv(local, face):
    """Surface coordinates (metres) on an axis-aligned face: the two axes it spans."""
    axis = np.clip(face, 0, 5) // 2                 # 0: x faces, 1: y faces, 2: z faces
    u = np.where(axis == 0, local[:, 1], local[:, 0])
    v = np.where(axis == 2, local[:, 1], local[:, 2])
    return u, v


class RoomShader:
    """Linear RGB of a room Geometry: per-material albedo, lamps, ambient light, emitters;
    with a PhotoTextures bank, photographs on some objects and walls (photo_textures.py)."""

    def __init__(self, world: RoomWorld, textures=None):
        self.world = world
        self.look = world.look
        self.textures = textures

    def shade(self, g: W.Geometry) -> np.ndarray:
        n = g.depth.size
        albedo = np.zeros((n, 3), dtype=np.float32)
        emission = np.zeros((n, 3), dtype=np.float32)
        fp = g.footprint.astype(np.float32)
        shell = np.flatnonzero(g.obj == W.TERRAIN_ID)
        if shell.size:
            albedo[shell] = self._shell(g, shell, fp[shell])
        objects = self.world.objects
        idx = np.flatnonzero(g.obj >= 0)
        if idx.size:
            albedo[idx], emission[idx] = self._objects(g, idx, fp[idx], objects)
        if self.textures is not None:
            self._photographs(g, albedo, fp)
        return albedo * self._lighting(g) + emission

    def _photographs(self, g, albedo, fp):
        """Replace the albedo of the chosen objects and walls by a photo texture; which ones,
        which texture and how large depend only on the object's (or wall's) seed, so every
        frame of the walk shows the same."""
        objects = self.world.objects
        idx = np.flatnonzero(g.obj >= 0)
        if idx.size:
            seed = objects.seed[g.obj[idx]]
            chosen = (hash01(seed, 101) < OBJECT_SHARE) & ~np.isin(
                objects.kind[g.obj[idx]], (LIGHT, WINDOW, SCREEN))
            k = idx[chosen]
            if k.size:
                u, v = _face_uv(g.local[k], g.face[k])
                albedo[k] = self.textures.sample(
                    (hash01(seed[chosen], 102) * 1e6).astype(np.int64), u, v,
                    0.4 + 1.1 * hash01(seed[chosen], 103), fp[k])
        w = np.flatnonzero((g.obj == W.TERRAIN_ID) & (g.face < FLOOR))
        if w.size:
            face = g.face[w]
            chosen = (hash01(np.full(w.size, self.world.seed), face, 104) < WALL_SHARE) & \
                (g.point[w, 2] > 0.08)        # the skirting stays
            k, face = w[chosen], face[chosen]
            if k.size:
                p = g.point[k]
                u = np.where(face < WALL_Y0, p[:, 1], p[:, 0])
                wall_seed = np.full(k.size, self.world.seed)
                albedo[k] = self.textures.sample(
                    (hash01(wall_seed, face, 105) * 1e6).astype(np.int64), u, p[:, 2],
                    1.5 + 2.0 * hash01(wall_seed, face, 106), fp[k])

    def _shell(self, g, idx, fp):
        look = self.look
        p = g.point[idx]
        face = g.face[idx]
        out = np.empty((idx.size, 3), dtype=np.float32)
        wall = face < FLOOR
        w = np.flatnonzero(wall)
        if w.size:
            u = np.where(face[w] < WALL_Y0, p[w, 1], p[w, 0])
            z = p[w, 2]
            color = np.tile(np.asarray(look.wall_color, np.float32), (w.size, 1))
            if look.accent_wall >= 0:
                color[face[w] == look.accent_wall] = np.asarray(look.accent_color, np.float32)
            shade = 1.0 + 0.04 * fbm(u, z, fp[w], 2.0, seed=self.world.seed)
            if look.wallpaper_period > 0:
                shade += 0.06 * (periodic_box(u / look.wallpaper_period, 0.0, 0.5,
                                              fp[w] / look.wallpaper_period) - 0.5)
            color *= shade[:, None]
            skirting = box(z, -1.0, 0.08, fp[w])
            out[w] = color + (np.asarray(look.skirting_color, np.float32) - color) * \
                skirting[:, None]
        f = np.flatnonzero(face == FLOOR)
        if f.size:
            out[f] = self._floor(p[f, 0], p[f, 1], fp[f])
        c = np.flatnonzero(face == CEILING)
        if c.size:
            out[c] = np.asarray(look.ceiling_color, np.float32) * (
                1.0 + 0.02 * fbm(p[c, 0], p[c, 1], fp[c], 1.5, seed=3))[:, None]
        return out

    def _floor(self, x, y, fp):
        look = self.look
        base = np.asarray(look.floor_color, np.float32)
        period = look.floor_period
        if look.floor_kind == 0:     # planks along y, staggered joints, grain along the plank
            plank = np.floor(x / period)
            offset = hash01(plank.astype(np.int64), 7) * 2.0
            board = np.floor((y + offset) / 1.2)
            tone = 0.8 + 0.4 * hash01(plank.astype(np.int64), board.astype(np.int64))
            grain = 0.08 * fbm(x * 6.0, y * 0.5, fp * 6.0, 3.0, seed=plank % 17)
            joint = 1.0 - 0.35 * (1.0 - periodic_box(x / period, 0.03, 1.0, fp / period))
            shade = (tone + grain) * joint
        elif look.floor_kind == 1:   # tiles with grout lines
            tile_x, tile_y = np.floor(x / period), np.floor(y / period)
            tone = 0.9 + 0.2 * hash01(tile_x.astype(np.int64), tile_y.astype(np.int64))
            grout = periodic_box(x / period, 0.02, 1.0, fp / period) * periodic_box(
                y / period, 0.02, 1.0, fp / period)
            shade = (tone + 0.03 * fbm(x, y, fp, 4.0, seed=5)) * (0.55 + 0.45 * grout)
        else:                        # carpet
            shade = 1.0 + 0.12 * fbm(x, y, fp, 12.0, octaves=3, seed=9)
        return base * np.asarray(shade, np.float32)[:, None]

    def _objects(self, g, idx, fp, objects):
        oi = g.obj[idx]
        kind = objects.kind[oi]
        local = g.local[idx]
        face = g.face[idx]
        seed = objects.seed[oi]
        params = objects.params[oi]
        u, v = _face_uv(local, face)
        albedo = np.zeros((idx.size, 3), dtype=np.float32)
        emission = np.zeros((idx.size, 3), dtype=np.float32)
        noise = fbm(u, v, fp, 6.0, seed=seed % 97)
        for material in np.unique(kind):
            sel = kind == material
            key = objects.color_index[oi[sel]]
            if material == WOOD:
                grain = fbm(u[sel] * 8.0, v[sel], fp[sel] * 8.0, 2.0, seed=seed[sel] % 31)
                albedo[sel] = _color(_WOOD_COLORS, key) * (1.0 + 0.15 * grain)[:, None]
            elif material in (PAINTED, METAL):
                palette = _PAINT_COLORS if material == PAINTED else ((0.55, 0.56, 0.58),
                                                                      (0.25, 0.25, 0.27))
                albedo[sel] = _color(palette, key) * (1.0 + 0.04 * noise[sel])[:, None]
            elif material == FABRIC:
                albedo[sel] = _color(_FABRIC_COLORS, key) * (1.0 + 0.1 * noise[sel])[:, None]
            elif material == PLANT:
                albedo[sel] = np.array([0.10, 0.28, 0.08], np.float32) * (
                    1.0 + 0.35 * fbm(u[sel], v[sel], fp[sel], 12.0, seed=11))[:, None]
            elif material == BOOKS:
                # Shelves every ~0.35 m with rows of book spines of random colour and width.
                row = np.floor(v[sel] / 0.35)
                spine = np.floor(u[sel] / (0.025 + 0.03 * params[sel, 0]))
                colors = _color(_PAINT_COLORS + _FABRIC_COLORS,
                                (hash01(spine.astype(np.int64), row.astype(np.int64)) * 97)
                                .astype(np.int64))
                board = 1.0 - periodic_box(v[sel] / 0.35, 0.0, 0.9, fp[sel] / 0.35)
                wood = _color(_WOOD_COLORS, key)
                albedo[sel] = colors + (wood - colors) * board[:, None]
            elif material == SPINES:
                # A run of books on an open shelf: spines of random colour and width side by
                # side along the object's local x, some with a lighter label band.
                spine_width = 0.015 + 0.035 * params[sel, 0]
                spine = np.floor(u[sel] / spine_width)
                pick = hash01(spine.astype(np.int64), seed[sel].astype(np.int64))
                palette = _PAINT_COLORS + _FABRIC_COLORS + _WOOD_COLORS
                colors = _color(palette, (pick * 97).astype(np.int64))
                # Spines narrower than a pixel fade to the palette's mean instead of aliasing.
                blur = np.clip(fp[sel] / spine_width - 0.5, 0.0, 1.0)[:, None]
                colors = colors + (np.mean(palette, axis=0, dtype=np.float32) - colors) * blur
                label = box(v[sel], 0.02 + 0.04 * params[sel, 1], 0.06 + 0.04 * params[sel, 1],
                            fp[sel]) * (pick > 0.5)
                albedo[sel] = colors * (0.85 + 0.3 * pick)[:, None] + (0.85 - colors) * (
                    0.6 * label)[:, None]
            elif material == SKIN:
                albedo[sel] = _color(_SKIN_COLORS, key) * (1.0 + 0.05 * noise[sel])[:, None]
            elif material == SCREEN:
                albedo[sel] = 0.04
                # The front shows a dim picture; the back and sides are a plastic case.
                emission[sel] = (0.05 + 0.15 * params[sel, :3]) * (
                    1.0 + 0.3 * fbm(u[sel], v[sel], fp[sel], 3.0, seed=seed[sel] % 13))[:, None]
            elif material == PICTURE:
                a = _color(_PAINT_COLORS, key)
                b = _color(_FABRIC_COLORS, key // 7)
                mix = np.clip(0.5 + fbm(u[sel], v[sel], fp[sel], 3.0, seed=seed[sel] % 41),
                              0, 1)
                albedo[sel] = a + (b - a) * mix[:, None]
            elif material == WINDOW:
                # Bright daylight through glass, with a frame and a cross bar.
                half_u = np.maximum(objects.half[oi[sel], 0], objects.half[oi[sel], 1])
                bars = 1.0 - box(np.abs(u[sel]), -1.0, 0.03, fp[sel]) - box(
                    np.abs(v[sel]), -1.0, 0.03, fp[sel]) - box(
                    np.abs(u[sel]), half_u - 0.05, half_u + 1.0, fp[sel])
                albedo[sel] = 0.8
                emission[sel] = (np.array([0.9, 0.95, 1.05], np.float32) * (
                    1.2 + 0.3 * fbm(u[sel], v[sel], fp[sel], 0.8, seed=2)
                )[:, None]) * np.clip(bars, 0, 1)[:, None]
            elif material == DOOR:
                panel = box(np.abs(v[sel]), 0.35, 0.45, fp[sel])
                albedo[sel] = _color(_WOOD_COLORS + _PAINT_COLORS[:3], key) * (
                    1.0 - 0.25 * panel + 0.05 * noise[sel])[:, None]
            elif material == LIGHT:
                albedo[sel] = 0.9
                emission[sel] = 3.0
            else:
                raise ValueError(f'room material {material} has no shading')
        return albedo, emission

    def _lighting(self, g) -> np.ndarray:
        look = self.look
        n = g.normal.astype(np.float32)
        point = g.point.astype(np.float32)
        light = np.full((n.shape[0], 1), look.ambient, dtype=np.float32) * (
            0.75 + 0.25 * n[:, 2:3])
        for lamp in look.lights:
            to_lamp = np.asarray(lamp, np.float32) - point
            dist = np.sqrt(np.sum(to_lamp * to_lamp, axis=1)) + 1e-3
            lambert = np.clip(np.sum(n * to_lamp, axis=1) / dist, 0.0, None)
            light += (look.light_intensity * lambert / (1.0 + (dist / 2.5) ** 2))[:, None]
        # Contact darkening where walls and furniture meet the floor (cheap ambient occlusion).
        vertical = 1.0 - np.abs(n[:, 2])
        light *= (1.0 - 0.3 * vertical * np.exp(-np.maximum(point[:, 2], 0) / 0.3))[:, None]
        return light


# --------------------------------------------------------------------- renderer
def room_config(config: DomainConfig, seed: int) -> DomainConfig:
    """The domain's look with this room's camera and colour balance: every room has its own
    field of view (wide robot cameras to Kinect-like 58 degrees) and white balance."""
    rng = W._rng(seed, 43)
    tint = rng.uniform(0.9, 1.1, 3)
    return dataclasses.replace(config, focal_x_frac=float(rng.uniform(0.5, 0.95)),
                               exposure=float(config.exposure * rng.uniform(0.8, 1.25)),
                               tint=tuple(float(v) for v in tint / tint.mean()))


class RoomRenderer(Renderer):
    """Renders frames of one (seed, size) room walk: the street Renderer with a room's world,
    cast and shader (frames, stamps and ground truth come from Renderer). textures: a
    photo_textures.PhotoTextures bank (None: procedural materials only)."""

    def __init__(self, domain: DomainConfig, num_frames: int, height: int, width: int,
                 seed: int = 0, fps: float = 10.0, textures=None):
        _check_args(num_frames, height, width, fps)
        self.config = room_config(domain, seed)
        self.domain = domain.name
        self.num_frames = int(num_frames)
        self.height, self.width = int(height), int(width)
        self.seed = int(seed)
        self.fps = float(fps)
        self.world = RoomWorld(self.config, self.seed, (self.num_frames + 1) / self.fps)
        self.K = intrinsics(self.config, self.height, self.width)
        self.shader = RoomShader(self.world, textures)

    def cast(self, index: int) -> W.Geometry:
        return cast_room(self.world, self.time_of(index), self.K, self.height, self.width)
