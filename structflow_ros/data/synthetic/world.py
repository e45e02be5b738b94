"""A procedural street and its exact ray casting (vectorised numpy, no per-pixel loops).

The street follows a road centre line made of straight pieces and circular bends. Everything is
placed in road coordinates (s: arc length, d: signed lateral offset, right of the direction of
travel positive) and then turned into world objects:
- terrain: road (z = 0) with a raised sidewalk (z = KERB_HEIGHT) beyond |d| = ROAD_HALF_WIDTH,
  joined by a kerb face;
- boxes: buildings (two rows), car bodies and cabins, lamp arms and heads, sign plates;
- vertical cylinders: lamp posts, sign posts, tree trunks; spheres: tree crowns.
Every object has a rigid pose per time (yaw about z plus a translation). Parked cars, buildings
and street furniture are static; moving cars follow their lane with their own speed profile.

The geometry pass returns, per pixel, the exact hit: depth, object id, face, world point and the
object's pose, from which render.py derives exact optical flow and occlusion. Layout is
deterministic by seed and stable in its prefix: rendering more frames extends the same street.
"""
import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from structflow_ros.data.synthetic.camera import EgoMotion
from structflow_ros.data.synthetic.domains import DomainConfig

LANE_WIDTH = 3.5
PARKING_WIDTH = 2.2
ROAD_HALF_WIDTH = 2 * LANE_WIDTH + PARKING_WIDTH   # two lanes and a parking lane per side
SIDEWALK_WIDTH = 3.5
KERB_HEIGHT = 0.15
EGO_LANE = 0.5 * LANE_WIDTH                          # ego drives in the inner right lane
NEAR_M = 0.05                                        # near clipping plane (z-depth)
MAX_HEADING_DEVIATION_DEG = 70.0                     # road heading stays within this of north

# Object shapes.
BOX, SPHERE, CYLINDER = 0, 1, 2
# Object classes (materials chosen per face at shading time).
BUILDING, CAR_BODY, CAR_CABIN, POLE, TRUNK, FOLIAGE, SIGN, LAMP, VAN_BODY = range(9)
# Pixel ids that are not objects.
SKY_ID = -1
TERRAIN_ID = -2
# Terrain sub-materials (stored in the face buffer for terrain pixels).
ROAD, KERB, SIDEWALK, YARD = range(4)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """Independent, reproducible random stream for one part of the world."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *stream])


class RoadCurve:
    """Road centre line: straight pieces joined by circular arcs (tangent-continuous)."""

    def __init__(self, seed: int, s_min: float, s_max: float):
        rng = _rng(seed, 1)
        s0, lengths, xs, ys, headings, curvatures = [], [], [], [], [], []
        s, x, y, heading = s_min, 0.0, s_min, math.pi / 2  # passes through (0, 0) at s = 0
        # The first piece is straight until a little past the start of the drive.
        length = -s_min + rng.uniform(25.0, 70.0)
        straight = True
        while True:
            if straight:
                k = 0.0
            else:
                turn = math.radians(rng.uniform(12.0, 50.0)) * rng.choice([-1.0, 1.0])
                # Keep the heading within 70 degrees of north: the road then never comes back
                # near itself, so nearby pieces alone decide what is road.
                if abs(heading + turn - math.pi / 2) > math.radians(MAX_HEADING_DEVIATION_DEG):
                    turn = -turn
                radius = rng.uniform(45.0, 110.0)
                k = math.copysign(1.0 / radius, turn)
                length = abs(turn) * radius
            s0.append(s)
            lengths.append(length)
            xs.append(x)
            ys.append(y)
            headings.append(heading)
            curvatures.append(k)
            x, y, heading = self._advance(x, y, heading, k, length)
            s += length
            if s > s_max:
                break
            straight = not straight
            if straight:
                length = rng.uniform(30.0, 140.0)
        self.s0 = np.array(s0)
        self.length = np.array(lengths)
        self.x0 = np.array(xs)
        self.y0 = np.array(ys)
        self.h0 = np.array(headings)
        self.k = np.array(curvatures)
        self.s_end = s
        # Bounding boxes of the pieces (sampled; an arc bulges < 1 m between 17 samples).
        boxes = []
        for i in range(len(self.s0)):
            x_i, y_i, _ = self.frame_at(self.s0[i] + np.linspace(0, 1, 17) * self.length[i])
            boxes.append((x_i.min() - 1.0, x_i.max() + 1.0, y_i.min() - 1.0, y_i.max() + 1.0))
        self.bbox = np.array(boxes)

    @staticmethod
    def _advance(x, y, heading, k, u):
        if k == 0.0:
            return x + u * math.cos(heading), y + u * math.sin(heading), heading
        h1 = heading + k * u
        return (x + (math.sin(h1) - math.sin(heading)) / k,
                y - (math.cos(h1) - math.cos(heading)) / k, h1)

    def frame_at(self, s):
        """(x, y, heading) of the centre line at arc lengths s (arrays, clamped to the road)."""
        s = np.asarray(s, dtype=np.float64)
        index = np.clip(np.searchsorted(self.s0, s, side='right') - 1, 0, len(self.s0) - 1)
        u = s - self.s0[index]
        h0, k = self.h0[index], self.k[index]
        heading = h0 + k * u
        safe_k = np.where(k == 0.0, 1.0, k)
        x_arc = self.x0[index] + (np.sin(heading) - np.sin(h0)) / safe_k
        y_arc = self.y0[index] - (np.cos(heading) - np.cos(h0)) / safe_k
        x = np.where(k == 0.0, self.x0[index] + u * np.cos(h0), x_arc)
        y = np.where(k == 0.0, self.y0[index] + u * np.sin(h0), y_arc)
        return x, y, heading

    def pieces_between(self, s_lo: float, s_hi: float) -> np.ndarray:
        """Indices of the pieces that overlap [s_lo, s_hi]."""
        return np.flatnonzero((self.s0 <= s_hi) & (self.s0 + self.length >= s_lo))

    def project(self, px, py, pieces: Optional[np.ndarray] = None,
                margin: Optional[float] = None):
        """Road coordinates of world points: (s, d, heading), d > 0 right of the travel direction.

        Points that project onto none of `pieces` get d = 1e3 (far off the road). With a
        `margin`, points further than that from a piece's bounding box skip that piece (the
        answer is then only exact for |d| < margin).
        """
        all_x = np.asarray(px, dtype=np.float64)
        all_y = np.asarray(py, dtype=np.float64)
        if pieces is None:
            pieces = np.arange(len(self.s0))
        best_d = np.full(all_x.shape, 1e3)
        best_s = np.zeros(all_x.shape)
        best_h = np.zeros(all_x.shape)
        for i in pieces:
            x0, y0, h0, k, length = self.x0[i], self.y0[i], self.h0[i], self.k[i], self.length[i]
            if margin is None:
                sel = slice(None)
            else:
                x_lo, x_hi, y_lo, y_hi = self.bbox[i]
                sel = np.flatnonzero((all_x > x_lo - margin) & (all_x < x_hi + margin)
                                     & (all_y > y_lo - margin) & (all_y < y_hi + margin))
                if sel.size == 0:
                    continue
            px, py = all_x[sel], all_y[sel]
            if k == 0.0:
                dx, dy = px - x0, py - y0
                u = dx * math.cos(h0) + dy * math.sin(h0)
                d = dx * math.sin(h0) - dy * math.cos(h0)
                heading = h0
            else:
                radius = 1.0 / abs(k)
                cx = x0 - math.sin(h0) / k    # centre on the left for k > 0
                cy = y0 + math.cos(h0) / k
                dx, dy = px - cx, py - cy
                start = h0 - math.copysign(math.pi / 2, k)
                cs, ss = math.cos(start), math.sin(start)
                # Angle from the arc's start direction, already in (-pi, pi].
                u = np.arctan2(dy * cs - dx * ss, dx * cs + dy * ss) / k
                d = math.copysign(1.0, k) * (np.hypot(dx, dy) - radius)
                heading = h0 + k * u
            inside = (u >= 0.0) & (u <= length) & (np.abs(d) < np.abs(best_d[sel]))
            best_d[sel] = np.where(inside, d, best_d[sel])
            best_s[sel] = np.where(inside, self.s0[i] + u, best_s[sel])
            best_h[sel] = np.where(inside, heading, best_h[sel])
        return best_s, best_d, best_h


@dataclass
class ObjectTable:
    """All objects of the world as parallel arrays (M objects)."""

    shape: np.ndarray      # (M,) int8 BOX / SPHERE / CYLINDER
    kind: np.ndarray       # (M,) int8 object class (BUILDING, CAR_BODY, ...)
    half: np.ndarray       # (M, 3) half extents in the local frame (x lateral, y along, z up)
    yaw: np.ndarray        # (M,) static yaw, or yaw offset in the car frame for moving parts
    pos: np.ndarray        # (M, 3) static position, or offset in the car frame
    car: np.ndarray        # (M,) int32 moving-car index, -1 for static objects
    s: np.ndarray          # (M,) arc length of static objects (for culling)
    radius: np.ndarray     # (M,) bounding radius
    color_index: np.ndarray  # (M,) int32 palette slot (domain palettes pick the colour)
    seed: np.ndarray       # (M,) int32 texture seed
    params: np.ndarray     # (M, 6) float32 class-specific texture parameters


class _ObjectBuilder:
    def __init__(self):
        self.rows = []

    def add(self, shape, kind, half, yaw, pos, car=-1, s=0.0, color_index=0, seed=0,
            params=(0.0,) * 6):
        self.rows.append((shape, kind, tuple(half), yaw, tuple(pos), car, s, color_index, seed,
                          tuple(params)))

    def build(self) -> ObjectTable:
        rows = self.rows
        return ObjectTable(
            shape=np.array([r[0] for r in rows], dtype=np.int8),
            kind=np.array([r[1] for r in rows], dtype=np.int8),
            half=np.array([r[2] for r in rows], dtype=np.float64).reshape(-1, 3),
            yaw=np.array([r[3] for r in rows], dtype=np.float64),
            pos=np.array([r[4] for r in rows], dtype=np.float64).reshape(-1, 3),
            car=np.array([r[5] for r in rows], dtype=np.int32),
            s=np.array([r[6] for r in rows], dtype=np.float64),
            radius=np.array([math.sqrt(sum(h * h for h in r[2])) for r in rows]),
            color_index=np.array([r[7] for r in rows], dtype=np.int32),
            seed=np.array([r[8] for r in rows], dtype=np.int32),
            params=np.array([r[9] + (0.0,) * (6 - len(r[9])) for r in rows],
                            dtype=np.float32).reshape(-1, 6))


@dataclass
class MovingCars:
    """Cars that drive along lanes: s(t) = s0 + direction * S_lane(t) or follow the ego."""

    lane_d: np.ndarray      # (C,) lateral offset of the lane
    direction: np.ndarray   # (C,) +1 with the ego, -1 oncoming
    s0: np.ndarray          # (C,)
    v: np.ndarray           # (C,) mean speed
    amp: np.ndarray         # (C,) speed-change amplitude (fraction)
    w: np.ndarray
    phase: np.ndarray
    follows_ego: np.ndarray  # (C,) bool: lead car keeping a gap to the ego car

    def arc_length(self, t: float, ego: EgoMotion) -> np.ndarray:
        travelled = self.v * (t + self.amp / self.w * (np.cos(self.phase)
                                                       - np.cos(self.w * t + self.phase)))
        free = self.s0 + self.direction * travelled
        # Lead car: gap s0 (+ a slow oscillation of amplitude amp metres) ahead of the ego.
        lead = float(ego.arc_length(t)) + self.s0 + self.amp * (
            np.sin(self.w * t + self.phase) - np.sin(self.phase))
        return np.where(self.follows_ego, lead, free)


def _add_car(builder: _ObjectBuilder, rng, yaw, pos, car_index, s, van_chance=0.15):
    """A car as a body box plus a cabin box (or one tall van box) in the car's local frame."""
    length = rng.uniform(3.9, 4.8)
    width = rng.uniform(1.7, 1.9)
    color = int(rng.integers(0, 1 << 16))
    seed = int(rng.integers(0, 1 << 30))
    x, y = pos
    if rng.uniform() < van_chance:
        length = rng.uniform(4.8, 5.6)
        height = rng.uniform(1.8, 2.2)
        body_pos = (0.0, 0.0, 0.12 + height / 2) if car_index >= 0 else (
            x, y, 0.12 + height / 2)
        builder.add(BOX, VAN_BODY, (width / 2, length / 2, height / 2), yaw, body_pos,
                    car=car_index, s=s, color_index=color, seed=seed,
                    params=(0.12 + height / 2, length, height, 0.0))
        return
    body_h = rng.uniform(0.78, 0.92)
    cabin_h = rng.uniform(0.45, 0.58)
    cabin_len = length * rng.uniform(0.45, 0.58)
    cabin_shift = -length * rng.uniform(0.02, 0.10)
    z_body = 0.12 + body_h / 2
    z_cabin = 0.12 + body_h + cabin_h / 2
    c, si = math.cos(yaw), math.sin(yaw)
    if car_index >= 0:   # offsets in the car frame
        body_pos = (0.0, 0.0, z_body)
        cabin_pos = (0.0, cabin_shift, z_cabin)
    else:                # static world placement
        body_pos = (x, y, z_body)
        cabin_pos = (x - si * cabin_shift, y + c * cabin_shift, z_cabin)
    builder.add(BOX, CAR_BODY, (width / 2, length / 2, body_h / 2), yaw, body_pos,
                car=car_index, s=s, color_index=color, seed=seed,
                params=(z_body, length, body_h, 0.0))
    builder.add(BOX, CAR_CABIN, (width / 2 * 0.9, cabin_len / 2, cabin_h / 2), yaw, cabin_pos,
                car=car_index, s=s, color_index=color, seed=seed + 1,
                params=(z_cabin, cabin_len, cabin_h, 0.0))


class World:
    """The street for one seed, long enough for a drive of `duration_s` seconds."""

    def __init__(self, config: DomainConfig, seed: int, duration_s: float):
        self.config = config
        self.seed = int(seed)
        self.ego = EgoMotion.sample(config, _rng(seed, 2), EGO_LANE)
        far = config.far_m
        ego_end = float(self.ego.arc_length(duration_s))
        self.s_min = -60.0
        self.s_max = ego_end + far + 60.0
        self.curve = RoadCurve(seed, self.s_min - 20.0, self.s_max + 60.0)
        self.duration_s = duration_s
        builder = _ObjectBuilder()
        self.lamps: List[tuple] = []
        for side in (1.0, -1.0):
            self._add_buildings(builder, side)
            self._add_street_furniture(builder, side)
            self._add_parked_cars(builder, side)
        self.cars = self._add_moving_cars(builder, ego_end)
        self.objects = builder.build()
        self.lamp_positions = (np.array(self.lamps, dtype=np.float64).reshape(-1, 3))

    # ----------------------------------------------------------------- layout
    def _place(self, s, d):
        """World (x, y, heading) of road coordinates."""
        x, y, h = self.curve.frame_at(np.array([s]))
        x, y, h = float(x[0]), float(y[0]), float(h[0])
        return x + d * math.sin(h), y - d * math.cos(h), h

    def _clear_of_road(self, x, y, yaw, half_x, half_y, side, min_abs_d, s_hint):
        """True when a footprint stays beyond |d| >= min_abs_d on its own side of the road.

        s_hint: arc length the footprint was placed at (only nearby road pieces can matter).
        """
        c, s = math.cos(yaw), math.sin(yaw)
        px, py = [], []
        for fx in (-1.0, 0.0, 1.0):
            for fy in (-1.0, 0.0, 1.0):
                lx, ly = fx * half_x, fy * half_y
                px.append(x + c * lx - s * ly)
                py.append(y + s * lx + c * ly)
        # Heading within 70 degrees of north: road points 160 m of arc apart are > 54 m apart.
        reach = math.hypot(half_x, half_y) + abs(min_abs_d) + 160.0
        pieces = self.curve.pieces_between(s_hint - reach, s_hint + reach)
        _, d, _ = self.curve.project(np.array(px), np.array(py), pieces)
        return bool(np.all(side * d >= min_abs_d))

    def _add_buildings(self, builder, side):
        rng = _rng(self.seed, 10, int(side > 0))
        s = self.s_min - 30.0
        edge = ROAD_HALF_WIDTH + SIDEWALK_WIDTH
        while s < self.s_max:
            frontage = rng.uniform(8.0, 26.0)
            gap = rng.uniform(2.5, 9.0) if rng.uniform() < 0.25 else rng.uniform(0.0, 0.4)
            depth = rng.uniform(8.0, 16.0)
            height = rng.uniform(5.0, 12.0) if rng.uniform() < 0.55 else rng.uniform(12.0, 26.0)
            setback = 0.0 if rng.uniform() < 0.6 else rng.uniform(0.3, 2.0)
            style = float(rng.integers(0, 3))          # plaster, brick, office bands
            floor_h = rng.uniform(2.8, 3.6)
            win_period = rng.uniform(1.8, 3.4)
            win_w = rng.uniform(0.35, 0.62)
            win_h = rng.uniform(0.40, 0.65)
            color = int(rng.integers(0, 1 << 16))
            tex_seed = int(rng.integers(0, 1 << 30))
            s_mid = s + frontage / 2
            for row in range(2):
                if row == 1:
                    if rng.uniform() > 0.65:
                        break
                    setback = setback + depth + rng.uniform(4.0, 14.0)
                    depth = rng.uniform(8.0, 14.0)
                    height = rng.uniform(14.0, 40.0)
                    color = int(rng.integers(0, 1 << 16))
                    style = float(rng.integers(0, 3))
                    tex_seed = int(rng.integers(0, 1 << 30))
                d = side * (edge + setback + depth / 2)
                x, y, h = self._place(s_mid, d)
                yaw = h - math.pi / 2
                if self._clear_of_road(x, y, yaw, depth / 2, frontage / 2, side, edge - 0.05,
                                       s_mid):
                    builder.add(BOX, BUILDING, (depth / 2, frontage / 2, height / 2), yaw,
                                (x, y, height / 2), s=s_mid, color_index=color, seed=tex_seed,
                                params=(floor_h, win_period, win_w, win_h, style, 0.0))
            s += frontage + gap

    def _add_street_furniture(self, builder, side):
        rng = _rng(self.seed, 20, int(side > 0))
        s = self.s_min + rng.uniform(0.0, 10.0)
        d_line = side * (ROAD_HALF_WIDTH + 0.7)
        while s < self.s_max:
            x, y, h = self._place(s, d_line)
            yaw = h - math.pi / 2
            c, si = math.cos(yaw), math.sin(yaw)
            choice = rng.uniform()
            seed = int(rng.integers(0, 1 << 30))
            if choice < 0.35:   # street lamp: post, arm over the road, head
                post_h = rng.uniform(6.5, 8.0)
                builder.add(CYLINDER, POLE, (0.1, 0.1, post_h / 2), yaw, (x, y, post_h / 2),
                            s=s, seed=seed)
                arm = rng.uniform(1.2, 2.2)
                ax, ay = x - side * c * arm / 2, y - side * si * arm / 2
                builder.add(BOX, POLE, (arm / 2, 0.05, 0.05), yaw, (ax, ay, post_h - 0.1),
                            s=s, seed=seed + 1)
                hx, hy = x - side * c * arm, y - side * si * arm
                builder.add(BOX, LAMP, (0.35, 0.16, 0.08), yaw, (hx, hy, post_h - 0.2),
                            s=s, seed=seed + 2)
                self.lamps.append((hx, hy, post_h - 0.35))
            elif choice < 0.8:  # tree: trunk and crown
                trunk_h = rng.uniform(2.5, 4.0)
                radius = rng.uniform(1.5, 2.6)
                builder.add(CYLINDER, TRUNK, (0.18, 0.18, trunk_h / 2), yaw,
                            (x, y, trunk_h / 2), s=s, seed=seed,
                            color_index=int(rng.integers(0, 1 << 16)))
                builder.add(SPHERE, FOLIAGE, (radius, radius, radius * 0.9), yaw,
                            (x, y, trunk_h + radius * 0.7), s=s, seed=seed + 1,
                            color_index=int(rng.integers(0, 1 << 16)),
                            params=(radius, 0.0, 0.0, 0.0))
            else:               # traffic sign facing the ego traffic
                post_h = rng.uniform(2.2, 2.8)
                builder.add(CYLINDER, POLE, (0.04, 0.04, post_h / 2), yaw, (x, y, post_h / 2),
                            s=s, seed=seed)
                size = rng.uniform(0.3, 0.45)
                builder.add(BOX, SIGN, (size, 0.03, size), yaw, (x, y, post_h + size - 0.1),
                            s=s, seed=seed + 1, color_index=int(rng.integers(0, 1 << 16)))
            s += rng.uniform(7.0, 16.0)

    def _add_parked_cars(self, builder, side):
        rng = _rng(self.seed, 30, int(side > 0))
        s = self.s_min + rng.uniform(0.0, 8.0)
        d = side * (ROAD_HALF_WIDTH - PARKING_WIDTH / 2)
        while s < self.s_max:
            if rng.uniform() < 0.15:
                s += rng.uniform(15.0, 40.0)      # an empty stretch
                continue
            x, y, h = self._place(s, d)
            yaw = h - math.pi / 2 + (0.0 if side > 0 else math.pi) + math.radians(
                rng.uniform(-3.0, 3.0))
            _add_car(builder, rng, yaw, (x, y), -1, s)
            s += rng.uniform(5.2, 9.0)

    def _add_moving_cars(self, builder, ego_end):
        """Traffic in three lanes plus maybe a lead car; every lane has its own speed profile.

        Each lane draws from its own random streams (ahead of / behind its first car, car
        shapes keyed by position in the lane), so a longer drive keeps the same traffic.
        """
        lanes = [(-EGO_LANE, -1.0), (-EGO_LANE - LANE_WIDTH, -1.0), (EGO_LANE + LANE_WIDTH, 1.0)]
        rows, shapes = [], []
        ego_start = float(self.ego.arc_length(0.0))
        for lane, (lane_d, direction) in enumerate(lanes):
            rng = _rng(self.seed, 40, lane)
            v = rng.uniform(6.0, 14.0)
            amp = rng.uniform(0.0, 0.3)
            w = 2 * math.pi / rng.uniform(6.0, 14.0)
            phase = rng.uniform(0, 2 * math.pi)
            travel = v * (1 + amp) * self.duration_s + 20.0
            # One car starts in view ahead so that every sequence has moving objects.
            first = ego_start + rng.uniform(18.0, 45.0)
            lo, hi = self.s_min - travel, self.s_max + travel
            for step, limit in ((1, hi), (-1, lo)):
                spacing = _rng(self.seed, 41, lane, step + 1)
                s, ordinal = first, 0
                while (s < limit) if step > 0 else (s > limit):
                    if step > 0 or ordinal > 0:
                        rows.append((lane_d, direction, s, v, amp, w, phase, False))
                        shapes.append((lane, step * ordinal))
                    s += step * spacing.uniform(14.0, 60.0)
                    ordinal += 1
        rng = _rng(self.seed, 42)
        if rng.uniform() < 0.7:   # a lead car in the ego lane keeping a gap
            gap = rng.uniform(14.0, 26.0)
            rows.append((EGO_LANE, 1.0, gap, 0.0, rng.uniform(0.0, (gap - 9.0) / 2),
                         2 * math.pi / rng.uniform(6.0, 12.0), rng.uniform(0, 2 * math.pi), True))
            shapes.append((len(lanes), 0))
        cars = MovingCars(*[np.array([r[i] for r in rows]) for i in range(8)])
        cars.follows_ego = cars.follows_ego.astype(bool)
        for index, (lane, ordinal) in enumerate(shapes):
            _add_car(builder, _rng(self.seed, 43, lane, ordinal + (1 << 20)), 0.0, (0.0, 0.0),
                     index, 0.0)
        return cars

    # ----------------------------------------------------------------- poses
    def object_poses(self, t: float):
        """Yaw (M,) and position (M, 3) of every object at time t (seconds)."""
        objects = self.objects
        yaw = objects.yaw.copy()
        pos = objects.pos.copy()
        s = objects.s.copy()
        moving = objects.car >= 0
        if np.any(moving):
            cars = self.cars
            car_s = cars.arc_length(t, self.ego)
            x, y, h = self.curve.frame_at(car_s)
            car_yaw = h - math.pi / 2 + np.where(cars.direction < 0, math.pi, 0.0)
            car_x = x + cars.lane_d * np.sin(h)
            car_y = y - cars.lane_d * np.cos(h)
            index = objects.car[moving]
            cy, sy = np.cos(car_yaw[index]), np.sin(car_yaw[index])
            off = objects.pos[moving]
            yaw[moving] = car_yaw[index] + objects.yaw[moving]
            pos[moving, 0] = car_x[index] + cy * off[:, 0] - sy * off[:, 1]
            pos[moving, 1] = car_y[index] + sy * off[:, 0] + cy * off[:, 1]
            pos[moving, 2] = off[:, 2]
            s[moving] = car_s[index]
        return yaw, pos, s

    def camera_pose(self, t: float) -> np.ndarray:
        return self.ego.pose(t, self.curve)


# --------------------------------------------------------------------- ray casting
@dataclass
class Geometry:
    """Exact per-pixel hit of one frame (flattened arrays of N = H * W pixels)."""

    height: int
    width: int
    K: np.ndarray            # (3, 3)
    pose_c2w: np.ndarray     # (4, 4)
    time: float
    depth: np.ndarray        # (N,) z-depth, far plane for sky
    obj: np.ndarray          # (N,) int32 object index, SKY_ID or TERRAIN_ID
    face: np.ndarray         # (N,) int8 box face 0..5 (+x,-x,+y,-y,+z,-z) or terrain material
    point: np.ndarray        # (N, 3) world hit point (sky: camera centre + far * ray)
    ray: np.ndarray          # (N, 3) world ray direction with unit camera-z component
    ray_norm: np.ndarray     # (N,) length of `ray` (distance along the ray = depth * ray_norm)
    footprint: np.ndarray    # (N,) metres covered by one pixel on the surface (for filtering)
    normal: np.ndarray       # (N, 3) world surface normal (sky: -ray direction)
    local: np.ndarray        # (N, 3) hit point in the object's frame (terrain: world point)
    road_s: np.ndarray       # (N,) terrain: arc length; 0 elsewhere
    road_d: np.ndarray       # (N,) terrain: lateral offset
    road_heading: np.ndarray  # (N,) terrain: road heading
    obj_yaw: np.ndarray      # (M,) object yaw at this time
    obj_pos: np.ndarray      # (M, 3) object position at this time


def row_dot(a: np.ndarray, b) -> np.ndarray:
    """Row-wise dot product of (N, 3) arrays (or with one 3-vector), without a strided reduce."""
    b = np.asarray(b)
    if b.ndim == 1:
        return a[:, 0] * b[0] + a[:, 1] * b[1] + a[:, 2] * b[2]
    return a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] + a[:, 2] * b[:, 2]


def row_norm(a: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean norm of an (N, 3) array."""
    return np.sqrt(a[:, 0] * a[:, 0] + a[:, 1] * a[:, 1] + a[:, 2] * a[:, 2])


def pixel_rays(K: np.ndarray, pose_c2w: np.ndarray, height: int, width: int):
    """World ray directions (H, W, 3) with camera-z component 1, so t along a ray = z-depth."""
    u = np.arange(width, dtype=np.float64)
    v = np.arange(height, dtype=np.float64)
    xc = (u - K[0, 2]) / K[0, 0]
    yc = (v - K[1, 2]) / K[1, 1]
    R = pose_c2w[:3, :3]
    # (H, W, 3) = x * R[:, 0] + y * R[:, 1] + R[:, 2]
    return (xc[None, :, None] * R[:, 0] + yc[:, None, None] * R[:, 1] + R[:, 2])


def _screen_boxes(corners_cam, K, height, width, far):
    """Pixel rectangles (M, 4) [u0, u1, v0, v1) covering boxes given by their camera corners.

    Corners behind the near plane are replaced by the box edges' crossings of that plane, so
    boxes beside and behind the camera get tight, correct rectangles.
    """
    z = corners_cam[..., 2]                                     # (M, 8)
    edges = np.array([[0, 1], [2, 3], [4, 5], [6, 7], [0, 2], [1, 3], [4, 6], [5, 7],
                      [0, 4], [1, 5], [2, 6], [3, 7]])
    a, b = corners_cam[:, edges[:, 0]], corners_cam[:, edges[:, 1]]   # (M, 12, 3)
    za, zb = a[..., 2], b[..., 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        frac = (NEAR_M - za) / (zb - za)
    crosses = (za - NEAR_M) * (zb - NEAR_M) < 0
    crossing = a + frac[..., None] * (b - a)                          # (M, 12, 3)
    points = np.concatenate([corners_cam, crossing], axis=1)          # (M, 20, 3)
    valid = np.concatenate([z >= NEAR_M, crosses], axis=1)           # (M, 20)
    pz = np.where(valid, np.maximum(points[..., 2], NEAR_M), 1.0)
    pu = K[0, 0] * points[..., 0] / pz + K[0, 2]
    pv = K[1, 1] * points[..., 1] / pz + K[1, 2]
    big = 1e9
    u0 = np.where(valid, pu, big).min(axis=1)
    u1 = np.where(valid, pu, -big).max(axis=1)
    v0 = np.where(valid, pv, big).min(axis=1)
    v1 = np.where(valid, pv, -big).max(axis=1)
    visible = valid.any(axis=1) & (z.min(axis=1) < far)
    rect = np.stack([np.floor(u0), np.ceil(u1) + 1, np.floor(v0), np.ceil(v1) + 1], axis=1)
    rect[:, 0:2] = np.clip(rect[:, 0:2], 0, width)
    rect[:, 2:4] = np.clip(rect[:, 2:4], 0, height)
    visible &= (rect[:, 1] > rect[:, 0]) & (rect[:, 3] > rect[:, 2])
    return rect.astype(np.int64), visible


_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
                         dtype=np.float64)   # (8, 3); edges above index this order


def _intersect_box(ox, oy, oz, dx, dy, dz, hx, hy, hz):
    """Slab test in the box frame: (t_enter, face) with t = inf on a miss."""
    with np.errstate(divide='ignore', invalid='ignore'):
        tx1, tx2 = (-hx - ox) / dx, (hx - ox) / dx
        ty1, ty2 = (-hy - oy) / dy, (hy - oy) / dy
        tz1, tz2 = (-hz - oz) / dz, (hz - oz) / dz
    txn, txf = np.minimum(tx1, tx2), np.maximum(tx1, tx2)
    tyn, tyf = np.minimum(ty1, ty2), np.maximum(ty1, ty2)
    tzn, tzf = np.minimum(tz1, tz2), np.maximum(tz1, tz2)
    t_near = np.maximum(np.maximum(txn, tyn), tzn)
    t_far = np.minimum(np.minimum(txf, tyf), tzf)
    hit = (t_far >= t_near) & (t_near > NEAR_M)
    t = np.where(hit, t_near, np.inf)
    # Entering face: the axis whose slab was entered last; its normal opposes the ray.
    face = np.where(txn >= np.maximum(tyn, tzn), np.where(dx > 0, 1, 0),
                    np.where(tyn >= tzn, np.where(dy > 0, 3, 2), np.where(dz > 0, 5, 4)))
    return t, face.astype(np.int8)


def _intersect_sphere(ox, oy, oz, dx, dy, dz, rx, ry, rz):
    """Ray against an axis-aligned ellipsoid (a squashed sphere for tree crowns)."""
    ox, oy, oz = ox / rx, oy / ry, oz / rz
    dx, dy, dz = dx / rx, dy / ry, dz / rz
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - 1.0
    disc = b * b - a * c
    with np.errstate(invalid='ignore'):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc >= 0) & (t > NEAR_M), t, np.inf)
    return t, np.zeros(t.shape, dtype=np.int8)


def _intersect_cylinder(ox, oy, oz, dx, dy, dz, r, _, hz):
    """Ray against a vertical capped cylinder; face 0 = side, 4 = top cap."""
    a = dx * dx + dy * dy
    b = ox * dx + oy * dy
    c = ox * ox + oy * oy - r * r
    disc = b * b - a * c
    with np.errstate(invalid='ignore', divide='ignore'):
        t_side = (-b - np.sqrt(disc)) / a
        z_side = oz + t_side * dz
        side_ok = (disc >= 0) & (t_side > NEAR_M) & (np.abs(z_side) <= hz)
        t_cap = (hz - oz) / dz
        cx, cy = ox + t_cap * dx, oy + t_cap * dy
        cap_ok = (oz > hz) & (dz < 0) & (cx * cx + cy * cy <= r * r) & (t_cap > NEAR_M)
    t = np.where(side_ok, t_side, np.inf)
    t = np.where(cap_ok & (t_cap < t), t_cap, t)
    face = np.where(cap_ok & (t == t_cap), 4, 0).astype(np.int8)
    return t, face


_AXIS_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                         dtype=np.float64)   # local normals of box faces 0..5
_INTERSECT = {BOX: _intersect_box, SPHERE: _intersect_sphere, CYLINDER: _intersect_cylinder}


LARGE_RECT_PIXELS = 1500   # objects covering more pixels are cast one by one on their rectangle


def _cast_one(objects, index, rect, cos, sin, o_local, rays_img, depth_img, obj_img, face_img):
    """Cast one (large) object on its screen rectangle and update the z-buffer in place."""
    u0, u1, v0, v1 = rect
    wdx = rays_img[v0:v1, u0:u1, 0]
    wdy = rays_img[v0:v1, u0:u1, 1]
    ldx = cos * wdx + sin * wdy
    ldy = -sin * wdx + cos * wdy
    ldz = rays_img[v0:v1, u0:u1, 2]
    hx, hy, hz = objects.half[index]
    t_hit, f_hit = _INTERSECT[int(objects.shape[index])](
        o_local[0], o_local[1], o_local[2], ldx, ldy, ldz, hx, hy, hz)
    zb = depth_img[v0:v1, u0:u1]
    closer = t_hit < zb
    if closer.any():
        zb[closer] = t_hit[closer]
        obj_img[v0:v1, u0:u1][closer] = index
        face_img[v0:v1, u0:u1][closer] = f_hit[closer]


def _cast_batch(objects, indices, rects, cos, sin, o_local, rays, depth, obj, face, width):
    """Cast many small objects at once: one element per (object, pixel of its rectangle)."""
    rect_w = rects[:, 1] - rects[:, 0]
    area = rect_w * (rects[:, 3] - rects[:, 2])
    owner = np.repeat(np.arange(indices.size), area)                  # (E,) object slot
    first = np.cumsum(area) - area
    k = np.arange(owner.size) - first[owner]
    pixel = (rects[owner, 2] + k // rect_w[owner]) * width + rects[owner, 0] + k % rect_w[owner]
    ray = rays[pixel]                                                  # (E, 3)
    ce, se = cos[owner], sin[owner]
    ldx = ce * ray[:, 0] + se * ray[:, 1]
    ldy = -se * ray[:, 0] + ce * ray[:, 1]
    ldz = ray[:, 2]
    o = o_local[owner]
    half = objects.half[indices][owner]
    shape = objects.shape[indices][owner]
    t_hit = np.full(owner.size, np.inf)
    f_hit = np.zeros(owner.size, dtype=np.int8)
    for kind, intersect in _INTERSECT.items():
        sel = np.flatnonzero(shape == kind)
        if sel.size:
            t_hit[sel], f_hit[sel] = intersect(
                o[sel, 0], o[sel, 1], o[sel, 2], ldx[sel], ldy[sel], ldz[sel],
                half[sel, 0], half[sel, 1], half[sel, 2])
    hit = np.flatnonzero(t_hit < depth[pixel])
    if hit.size == 0:
        return
    # Nearest hit per pixel: sort by (pixel, t) and keep the first of each pixel.
    order = hit[np.lexsort((t_hit[hit], pixel[hit]))]
    keep = order[np.unique(pixel[order], return_index=True)[1]]
    target = pixel[keep]
    depth[target] = t_hit[keep]
    obj[target] = indices[owner[keep]]
    face[target] = f_hit[keep]


def _terrain(world: World, origin, rays, s_cam, far):
    """Road (z = 0) and sidewalk (z = KERB_HEIGHT) with the kerb face between them."""
    n = rays.shape[0]
    depth = np.full(n, np.inf)
    material = np.zeros(n, dtype=np.int8)
    road_s = np.zeros(n)
    road_d = np.zeros(n)
    road_h = np.zeros(n)
    down = np.flatnonzero(rays[:, 2] < -1e-9)
    if down.size == 0:
        return depth, material, road_s, road_d, road_h
    pieces = world.curve.pieces_between(s_cam - 50.0, s_cam + far + 50.0)
    r = rays[down]
    t_top = (KERB_HEIGHT - origin[2]) / r[:, 2]
    t_low = (0.0 - origin[2]) / r[:, 2]
    # Beyond the sidewalk only 'off the road' matters, so pieces can skip far points.
    margin = ROAD_HALF_WIDTH + SIDEWALK_WIDTH + 2.0
    top_s, top_d, top_h = world.curve.project(origin[0] + t_top * r[:, 0],
                                              origin[1] + t_top * r[:, 1], pieces, margin)
    raised = np.abs(top_d) >= ROAD_HALF_WIDTH
    t = t_top.copy()
    s_out, d_out, h_out = top_s.copy(), top_d.copy(), top_h.copy()
    mat = np.where(np.abs(top_d) < ROAD_HALF_WIDTH + SIDEWALK_WIDTH, SIDEWALK, YARD)
    low = np.flatnonzero(~raised)
    if low.size:
        low_s, low_d, low_h = world.curve.project(origin[0] + t_low[low] * r[low, 0],
                                                  origin[1] + t_low[low] * r[low, 1], pieces,
                                                  margin)
        on_road = np.abs(low_d) < ROAD_HALF_WIDTH
        # Kerb: the ray crosses |d| = ROAD_HALF_WIDTH between the two levels.
        d_top = np.abs(top_d[low])
        frac = np.clip((ROAD_HALF_WIDTH - d_top) / np.maximum(np.abs(low_d) - d_top, 1e-9),
                       0.0, 1.0)
        t_kerb = t_top[low] + frac * (t_low[low] - t_top[low])
        t[low] = np.where(on_road, t_low[low], t_kerb)
        mat[low] = np.where(on_road, ROAD, KERB)
        s_out[low] = np.where(on_road, low_s, top_s[low] + frac * (low_s - top_s[low]))
        d_out[low] = np.where(on_road, low_d,
                              np.copysign(ROAD_HALF_WIDTH, low_d))
        h_out[low] = low_h
    keep = t < far
    idx = down[keep]
    depth[idx] = t[keep]
    material[idx] = mat[keep]
    road_s[idx] = s_out[keep]
    road_d[idx] = d_out[keep]
    road_h[idx] = h_out[keep]
    return depth, material, road_s, road_d, road_h


def cast(world: World, t: float, K: np.ndarray, height: int, width: int) -> Geometry:
    """Exact visibility for the camera at time t: depth, object ids, points, normals."""
    far = world.config.far_m
    pose = world.camera_pose(t)
    origin = pose[:3, 3]
    rays_img = pixel_rays(K, pose, height, width)                  # (H, W, 3)
    rays = rays_img.reshape(-1, 3)                                  # (N, 3)
    s_cam = float(world.ego.arc_length(t))
    depth, terrain_mat, road_s, road_d, road_h = _terrain(world, origin, rays, s_cam, far)
    obj = np.where(np.isfinite(depth), TERRAIN_ID, SKY_ID).astype(np.int32)
    face = terrain_mat.copy()
    depth = np.where(np.isfinite(depth), depth, far)

    yaw, pos, obj_s = world.object_poses(t)
    objects = world.objects
    near_road = (obj_s > s_cam - 40.0 - objects.radius) & (
        obj_s < s_cam + far * 1.5 + objects.radius)
    cast_objects(objects, np.flatnonzero(near_road), yaw, pos, pose, K, rays_img, far,
                 depth, obj, face)
    terrain_normal = np.zeros((depth.size, 3))
    terrain_normal[:, 2] = 1.0
    kerb = np.flatnonzero((obj == TERRAIN_ID) & (face == KERB))
    if kerb.size:
        # Kerb faces look back towards the road centre: -sign(d) * right.
        sign = -np.sign(road_d[kerb])
        terrain_normal[kerb] = np.stack([sign * np.sin(road_h[kerb]),
                                         -sign * np.cos(road_h[kerb]), np.zeros(kerb.size)],
                                        axis=1)
    return surface_geometry(objects, yaw, pos, pose, K, t, height, width, rays, depth, obj,
                            face, terrain_normal, road_s, road_d, road_h)


def cast_objects(objects: ObjectTable, cand: np.ndarray, yaw, pos, pose, K, rays_img, far,
                 depth, obj, face) -> None:
    """Z-buffer the objects `cand` (indices) into depth/obj/face (flat (N,) arrays, in place).

    Each object is cast only on its screen rectangle: large ones one by one, nearest first
    (they hide the rest), small ones all at once.
    """
    if not cand.size:
        return
    height, width = rays_img.shape[:2]
    rays = rays_img.reshape(-1, 3)
    depth_img = depth.reshape(height, width)
    obj_img = obj.reshape(height, width)
    face_img = face.reshape(height, width)
    origin = pose[:3, 3]
    w2c = np.linalg.inv(pose)
    c, s = np.cos(yaw[cand]), np.sin(yaw[cand])
    local = _CORNER_SIGNS[None] * objects.half[cand][:, None, :]   # (M, 8, 3)
    wx = pos[cand, 0, None] + c[:, None] * local[..., 0] - s[:, None] * local[..., 1]
    wy = pos[cand, 1, None] + s[:, None] * local[..., 0] + c[:, None] * local[..., 1]
    wz = pos[cand, 2, None] + local[..., 2]
    world_pts = np.stack([wx, wy, wz], axis=-1)                     # (M, 8, 3)
    cam_pts = world_pts @ w2c[:3, :3].T + w2c[:3, 3]
    rects, visible = _screen_boxes(cam_pts, K, height, width, far)
    area = (rects[:, 1] - rects[:, 0]) * (rects[:, 3] - rects[:, 2])
    rel = origin - pos[cand]                                         # (M, 3)
    # Camera centre in each object's frame (world -> object: rotate by -yaw).
    o_local = np.stack([c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1],
                        rel[:, 2]], axis=1)
    large = np.flatnonzero(visible & (area > LARGE_RECT_PIXELS))
    large = large[np.argsort(np.clip(cam_pts[large, :, 2], NEAR_M, None).min(axis=1))]
    for j in large:
        _cast_one(objects, cand[j], rects[j], c[j], s[j], o_local[j], rays_img,
                  depth_img, obj_img, face_img)
    small = np.flatnonzero(visible & (area <= LARGE_RECT_PIXELS))
    if small.size:
        _cast_batch(objects, cand[small], rects[small], c[small], s[small],
                    o_local[small], rays, depth, obj, face, width)


def surface_geometry(objects: ObjectTable, yaw, pos, pose, K, t, height, width, rays, depth,
                     obj, face, terrain_normal, road_s=None, road_d=None,
                     road_h=None) -> Geometry:
    """The Geometry of a finished z-buffer: hit points, normals, object-local points and
    pixel footprints. terrain_normal (N, 3): the normals of TERRAIN_ID pixels (the caller's
    ground: the street's road and kerbs, a room's floor, walls and ceiling)."""
    origin = pose[:3, 3]
    point = origin + depth[:, None] * rays
    # Surface normals and object-local points (index arrays: cheaper than boolean masks).
    normal = np.zeros_like(point)
    local = point.copy()
    is_obj = np.flatnonzero(obj >= 0)
    oi = obj[is_obj]
    cy, sy = np.cos(yaw[oi]), np.sin(yaw[oi])
    rel = point[is_obj] - pos[oi]
    lx = cy * rel[:, 0] + sy * rel[:, 1]
    ly = -sy * rel[:, 0] + cy * rel[:, 1]
    lz = rel[:, 2]
    local[is_obj] = np.stack([lx, ly, lz], axis=1)
    shape = objects.shape[oi]
    fo = face[is_obj]
    ln = _AXIS_NORMALS[np.clip(fo, 0, 5)]
    sphere = np.flatnonzero(shape == SPHERE)
    if sphere.size:
        half = objects.half[oi[sphere]]
        e = np.stack([lx[sphere], ly[sphere], lz[sphere]], axis=1) / half ** 2
        ln[sphere] = e / row_norm(e)[:, None]
    cyl = np.flatnonzero((shape == CYLINDER) & (fo == 0))
    if cyl.size:
        e = np.stack([lx[cyl], ly[cyl], np.zeros(cyl.size)], axis=1)
        ln[cyl] = e / np.maximum(row_norm(e), 1e-9)[:, None]
    normal[is_obj] = np.stack([cy * ln[:, 0] - sy * ln[:, 1], sy * ln[:, 0] + cy * ln[:, 1],
                               ln[:, 2]], axis=1)
    terrain = obj == TERRAIN_ID
    normal[terrain] = terrain_normal[terrain]
    sky = obj == SKY_ID
    ray_len = row_norm(rays)
    normal[sky] = -rays[sky] / ray_len[sky, None]
    cos = np.abs(row_dot(normal, rays)) / ray_len
    footprint = depth / K[0, 0] * ray_len / np.maximum(cos, 0.05)
    zeros = np.zeros(depth.size)
    road_s = zeros if road_s is None else road_s
    road_d = zeros if road_d is None else road_d
    road_h = zeros if road_h is None else road_h
    return Geometry(height, width, K, pose, t, depth, obj, face, point, rays, ray_len, footprint,
                    normal, local, road_s, road_d, road_h, yaw, pos)
