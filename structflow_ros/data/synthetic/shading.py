"""Procedural textures and lighting for the synthetic street.

Photometric (self-supervised) losses need texture everywhere, and they need texture that moves
rigidly with its surface and does not flicker. So every pattern here is a function of the hit
point in the object's own frame (terrain: world / road coordinates), and every pattern is
filtered by the pixel's footprint on the surface:
- noise octaves fade out before they alias (a cheap, analytic stand-in for mip-mapping);
- stripes, tiles and windows use exact box-filtered step functions.
Noise is a tileable band-limited tile sampled with cv2.remap (bilinear, wrapped), one call per
octave over all pixels of a material, which keeps a 320x96 frame in a few milliseconds.
"""
import math

import cv2
import numpy as np

from structflow_ros.data.synthetic import world as W
from structflow_ros.data.synthetic.domains import DomainConfig

_TILE = 256
_FEATURE_TEXELS = 16.0     # texels per noise feature at base frequency
_noise_tile_cache = []


def _noise_tile() -> np.ndarray:
    """Tileable, band-limited Gaussian noise (zero mean, unit std), made once per process."""
    if not _noise_tile_cache:
        rng = np.random.default_rng(20200601)
        white = rng.standard_normal((_TILE, _TILE))
        fy = np.fft.fftfreq(_TILE)[:, None]
        fx = np.fft.fftfreq(_TILE)[None, :]
        radius = np.hypot(fx, fy)
        # Low-pass with its energy around 1 / _FEATURE_TEXELS; content above 1/8 cycle per texel
        # is negligible, so bilinear sampling reproduces it and the fade rule below holds.
        spectrum = np.fft.fft2(white) * np.exp(-(radius * _FEATURE_TEXELS / 1.6) ** 2)
        spectrum[0, 0] = 0.0
        tile = np.real(np.fft.ifft2(spectrum))
        tile = (tile - tile.mean()) / tile.std()
        _noise_tile_cache.append(tile.astype(np.float32))
    return _noise_tile_cache[0]


def _remap(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear, wrapped lookup of the noise tile at texel coordinates (any 1-D length)."""
    n = x.size
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    cols = 1024
    rows = -(-n // cols)
    mx = np.zeros(rows * cols, dtype=np.float32)
    my = np.zeros(rows * cols, dtype=np.float32)
    mx[:n] = np.mod(x, _TILE)
    my[:n] = np.mod(y, _TILE)
    out = cv2.remap(_noise_tile(), mx.reshape(rows, cols), my.reshape(rows, cols),
                    cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    return out.reshape(-1)[:n]


def fbm(u, v, footprint, freq, octaves=3, seed=0, gain=0.5):
    """Fractal noise of surface coordinates (metres), zero mean, roughly unit-ish amplitude.

    freq: features per metre of the first octave. Each octave fades out once its features get
    smaller than about four pixels (footprint in metres per pixel), so distant surfaces turn to
    their mean colour instead of aliasing into flicker.
    """
    seed = np.asarray(seed, dtype=np.float64)
    total = np.zeros(np.shape(u), dtype=np.float32)
    norm = 0.0
    amp = 1.0
    for octave in range(octaves):
        f = freq * 2.0 ** octave
        amp_now = amp
        amp *= gain
        norm += amp_now
        fade = np.clip((0.25 - footprint * f) / 0.13, 0.0, 1.0)
        if not np.any(fade > 0):
            continue
        scale = f * _FEATURE_TEXELS
        ox = ((seed + octave * 7.31) * 0.7548776662) % 1.0 * _TILE
        oy = ((seed + octave * 3.17) * 0.5698402910) % 1.0 * _TILE
        total += (amp_now * fade * _remap(u * scale + ox, v * scale + oy)).astype(np.float32)
    return total / norm


def box(x, lo, hi, width):
    """Indicator of lo <= x <= hi, box-filtered over `width` (exact, so no aliasing)."""
    width = np.maximum(width, 1e-6)
    return np.clip(np.minimum(x + width / 2, hi) - np.maximum(x - width / 2, lo), 0.0,
                   None) / width


def periodic_box(x, lo, hi, width):
    """Indicator of lo <= frac(x) <= hi (0 <= lo < hi <= 1), box-filtered over `width`.

    Uses the closed-form integral of the square wave, so a pattern smaller than a pixel turns
    into its duty cycle instead of moire.
    """
    width = np.maximum(width, 1e-6)

    def integral(t):
        whole = np.floor(t)
        return whole * (hi - lo) + np.clip(t - whole - lo, 0.0, hi - lo)

    return (integral(x + width / 2) - integral(x - width / 2)) / width


def hash01(*keys) -> np.ndarray:
    """Deterministic pseudo-random value in [0, 1) per integer key tuple (vectorised)."""
    h = np.zeros(np.shape(keys[0]), dtype=np.int64)
    for key, prime in zip(keys, (73856093, 19349663, 83492791, 2654435761 & 0x7FFFFFFF)):
        h = h ^ ((np.asarray(key, dtype=np.int64) * prime) & 0xFFFFFFFF)
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float32) / float(1 << 24)


def _smoothstep(a, b, x):
    t = np.clip((x - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _mix(a, b, t):
    t = np.asarray(t, dtype=np.float32)
    return a + (b - a) * t[..., None]


def _rgb(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 3)


class Shader:
    """Turns a Geometry into a linear-RGB image for one domain (look) of the world."""

    def __init__(self, world: W.World, config: DomainConfig):
        self.world = world
        self.config = config
        self.facades = _rgb(config.facade_palette)
        self.cars = _rgb(config.car_palette)
        self.contrast = float(config.texture_contrast)
        el = math.radians(config.sun_elevation_deg)
        az = math.radians(config.sun_azimuth_deg)
        self.sun = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az),
                             math.sin(el)])
        self.sign_colors = _rgb([(0.05, 0.20, 0.60), (0.75, 0.05, 0.05), (0.95, 0.75, 0.05),
                                 (0.05, 0.45, 0.15)])

    # ------------------------------------------------------------------ entry
    def shade(self, g: W.Geometry) -> np.ndarray:
        """Linear RGB (N, 3) float32 before fog and grading, plus emission added in."""
        n = g.depth.size
        albedo = np.zeros((n, 3), dtype=np.float32)
        emission = np.zeros((n, 3), dtype=np.float32)
        lateral_fp = (g.depth * g.ray_norm / g.K[0, 0]).astype(np.float32)
        fp = g.footprint.astype(np.float32)
        terrain = np.flatnonzero(g.obj == W.TERRAIN_ID)
        if terrain.size:
            albedo[terrain] = self._terrain(g, terrain, fp[terrain], lateral_fp[terrain])
        objects = self.world.objects
        is_obj = g.obj >= 0
        kinds = np.full(n, -1, dtype=np.int16)
        kinds[is_obj] = objects.kind[g.obj[is_obj]]
        for kind, method in ((W.BUILDING, self._building), (W.CAR_BODY, self._car_body),
                             (W.VAN_BODY, self._car_body), (W.CAR_CABIN, self._cabin),
                             (W.POLE, self._pole), (W.LAMP, self._lamp), (W.TRUNK, self._trunk),
                             (W.FOLIAGE, self._foliage), (W.SIGN, self._sign)):
            idx = np.flatnonzero(kinds == kind)
            if idx.size:
                albedo[idx], emission[idx] = method(g, idx, fp[idx])
        color = albedo * self._lighting(g)
        color += emission
        sky = np.flatnonzero(g.obj == W.SKY_ID)
        if sky.size:
            color[sky] = self._sky(g, sky)
        return self._fog(g, color)

    # ------------------------------------------------------------------ terrain
    def _terrain(self, g, idx, fp, lat_fp):
        cfg = self.config
        c = self.contrast
        x, y = g.point[idx, 0], g.point[idx, 1]
        s, d = g.road_s[idx], g.road_d[idx]
        mat = g.face[idx]
        seed = self.world.seed % 9973
        out = np.zeros((idx.size, 3), dtype=np.float32)
        grain = fbm(x, y, fp, 2.5, 3, seed)
        coarse = fbm(x, y, fp, 0.25, 3, seed + 1)

        road = np.flatnonzero(mat == W.ROAD)
        if road.size:
            r_s, r_d, r_fp, r_lat = s[road], d[road], fp[road], lat_fp[road]
            base = _rgb(cfg.asphalt_color)[0]
            r_x, r_y = x[road], y[road]
            mid = fbm(r_x, r_y, r_fp, 0.9, 2, seed + 3)
            tone = 1.0 + c * (0.4 * grain[road] + 0.2 * mid + 0.2 * coarse[road])
            patch = _smoothstep(0.55, 0.75, fbm(r_x, r_y, r_fp, 0.07, 2, seed + 2))
            tone *= 1.0 - 0.25 * patch
            # Tar-sealed cracks: thin dark lines where a smooth noise crosses zero. The noise
            # changes by roughly 0.4 units per metre, so a footprint of fp metres filters over
            # 0.4 * fp units and lines thinner than a pixel fade instead of aliasing.
            crack_noise = fbm(r_x, r_y, r_fp, 0.18, 2, seed + 4)
            crack = box(crack_noise, -0.025, 0.025, 0.4 * r_fp)
            tone *= 1.0 - 0.5 * crack
            # Tyre wear: lighter, polished bands in every lane.
            lane_pos = np.abs(r_d) / W.LANE_WIDTH
            tone *= 1.0 + 0.10 * c * periodic_box(lane_pos + 0.25, 0.05, 0.2, r_lat / W.LANE_WIDTH)
            color = base * tone[:, None]
            a = np.abs(r_d)
            centre = box(a, 0.08, 0.2, r_lat)
            dashes = box(a, W.LANE_WIDTH - 0.07, W.LANE_WIDTH + 0.07, r_lat) * periodic_box(
                r_s / 9.0, 0.0, 1.0 / 3.0, r_fp / 9.0)
            edge = box(a, 2 * W.LANE_WIDTH - 0.08, 2 * W.LANE_WIDTH + 0.08, r_lat)
            stalls = box(a, 2 * W.LANE_WIDTH, W.ROAD_HALF_WIDTH, r_lat) * periodic_box(
                r_s / 6.5, 0.0, 0.02, r_fp / 6.5)
            zone = box(np.mod(r_s, 140.0), 60.0, 64.0, r_fp)
            crossing = zone * (a < 2 * W.LANE_WIDTH) * periodic_box(r_d / 1.0, 0.0, 0.5,
                                                                    r_lat / 1.0)
            wear = np.clip(0.8 + 0.5 * grain[road], 0.3, 1.0)
            white = np.clip(dashes + edge + stalls + crossing, 0, 1) * wear
            yellow = centre * wear
            color = _mix(color, _rgb(cfg.marking_color)[0] * (0.95 + 0.1 * coarse[road,
                                                                                   None]), white)
            color = _mix(color, _rgb(cfg.centre_line_color)[0], yellow)
            out[road] = color
        kerb = np.flatnonzero(mat == W.KERB)
        if kerb.size:
            tone = 0.62 + c * 0.08 * grain[kerb] + 0.05 * coarse[kerb]
            out[kerb] = _rgb(cfg.sidewalk_color)[0] * 1.2 * tone[:, None] / 0.62
        walk = np.flatnonzero(mat == W.SIDEWALK)
        if walk.size:
            w_s, w_d, w_fp = s[walk], d[walk], fp[walk]
            size = 0.5
            gu, gv = w_s / size, w_d / size
            grout = (1.0 - periodic_box(gu, 0.0, 0.06, w_fp / size)) * (
                1.0 - periodic_box(gv, 0.0, 0.06, w_fp / size))
            tile_var = hash01(np.floor(gu).astype(np.int64), np.floor(gv).astype(np.int64), 7)
            visible = np.clip(1.5 - 2.0 * w_fp / size, 0.0, 1.0)
            tone = (1.0 + c * (0.25 * (tile_var - 0.5) * visible + 0.12 * grain[walk]
                               + 0.1 * coarse[walk]))
            tone *= 0.72 + 0.28 * grout
            out[walk] = _rgb(cfg.sidewalk_color)[0] * tone[:, None]
        yard = np.flatnonzero(mat == W.YARD)
        if yard.size:
            dirt = _smoothstep(-0.3, 0.5, coarse[yard])
            color = _mix(_rgb(cfg.yard_color)[0] * np.ones((yard.size, 1), np.float32),
                         np.array([0.30, 0.24, 0.16], np.float32), dirt)
            out[yard] = color * (1.0 + c * 0.35 * grain[yard])[:, None]
        return out

    # ------------------------------------------------------------------ objects
    def _palette(self, palette, idx_obj, jitter_seed):
        base = palette[idx_obj % len(palette)]
        jitter = 0.85 + 0.3 * hash01(idx_obj, jitter_seed)[:, None]
        return base * jitter

    def _building(self, g, idx, fp):
        cfg = self.config
        c = self.contrast
        objects = self.world.objects
        oi = g.obj[idx]
        p = objects.params[oi]
        floor_h, period, win_w, win_h, style = p[:, 0], p[:, 1], p[:, 2], p[:, 3], p[:, 4]
        seed = objects.seed[oi] % 10007
        local = g.local[idx]
        face = g.face[idx]
        half = objects.half[oi]
        # Facade coordinates: u along the wall, v height above the ground.
        u = np.where(face <= 1, local[:, 1], local[:, 0]) + 0.37 * (face % 2)
        v = local[:, 2] + half[:, 2]
        wall = self._palette(self.facades, objects.color_index[oi], 3)
        stains = fbm(u, v, fp, 0.35, 3, seed)
        grain = fbm(u, v, fp, 4.0, 3, seed + 11)
        tone = 1.0 + c * (0.18 * stains + 0.12 * grain)
        # Brick: staggered courses with per-brick colour and mortar.
        brick = style == 1
        course = v / 0.075
        shift = 0.5 * (np.floor(course) % 2)
        bu = u / 0.24 + shift
        mortar = periodic_box(course, 0.0, 0.18, fp / 0.075) + periodic_box(
            bu, 0.0, 0.07, fp / 0.24)
        brick_var = hash01(np.floor(bu).astype(np.int64), np.floor(course).astype(np.int64), 5)
        brick_vis = np.clip(1.5 - 2.0 * fp / 0.075, 0.0, 1.0)
        tone = np.where(brick, tone * (1.0 + c * 0.25 * (brick_var - 0.5) * brick_vis)
                        * (1.0 - 0.3 * np.clip(mortar, 0, 1)), tone)
        # Office style: horizontal concrete bands between ribbon windows.
        office = style == 2
        win_w = np.where(office, 0.92, win_w)
        color = wall * tone[:, None]
        # Floors: a plinth band, a taller ground floor, then regular storeys.
        ground_h = floor_h * 1.25
        storey = (v - ground_h) / floor_h
        upper = v > ground_h
        cell_u = u / period
        fp_u = fp / period
        fp_v = fp / floor_h
        win_u = periodic_box(cell_u, 0.5 - win_w / 2, 0.5 + win_w / 2, fp_u)
        win_v = periodic_box(storey, 0.25, 0.25 + win_h, fp_v)
        frame_u = periodic_box(cell_u, 0.5 - win_w / 2 - 0.04, 0.5 + win_w / 2 + 0.04, fp_u)
        frame_v = periodic_box(storey, 0.21, 0.29 + win_h, fp_v)
        top = half[:, 2] * 2 - 0.6
        below_roof = box(v, ground_h, top, fp)
        window = win_u * win_v * below_roof
        frame = np.clip(frame_u * frame_v * below_roof - window, 0, 1)
        # Ground floor: shop windows and a darker plinth.
        shop_u = periodic_box(u / (period * 2), 0.12, 0.88, fp / (period * 2))
        shop = shop_u * box(v, 0.5, ground_h - 0.5, fp)
        window = window + shop * (1 - upper)
        cornice = box(v, ground_h - 0.25, ground_h, fp) + box(v, top, top + 0.3, fp)
        color = color * (1.0 - 0.25 * np.clip(cornice, 0, 1))[:, None]
        color = _mix(color, np.array([0.75, 0.74, 0.70], np.float32) * (
            0.9 + 0.1 * grain[:, None]), frame * (style != 2))
        # Glass: a dark reflection gradient with per-window blinds and variation.
        wi = np.floor(cell_u).astype(np.int64)
        wj = np.floor(storey).astype(np.int64)
        var = hash01(wi, wj, seed)
        var_vis = np.clip(1.5 - 1.0 * fp_u * 2, 0.0, 1.0)
        in_cell = storey - np.floor(storey)
        glass = np.stack([0.05 + 0.10 * in_cell, 0.07 + 0.10 * in_cell,
                          0.10 + 0.12 * in_cell], axis=1).astype(np.float32)
        blinds = (var > 0.6) * var_vis
        glass = _mix(glass, np.array([0.55, 0.5, 0.42], np.float32) * (0.6 + 0.4 * var[:, None]),
                     blinds * 0.7)
        glass *= (1.0 + 0.15 * c * grain)[:, None]
        color = _mix(color, glass, window)
        emission = np.zeros_like(color)
        if cfg.window_light_prob > 0:
            lit = (hash01(wi, wj, seed + 1) < cfg.window_light_prob).astype(np.float32)
            lit = lit * var_vis + cfg.window_light_prob * (1 - var_vis)
            glow = window * lit * (0.6 + 0.6 * var)
            emission = _rgb(cfg.window_light_color)[0] * glow[:, None] * 0.55
        roof = face == 4
        if roof.any():
            rg = fbm(local[roof, 0], local[roof, 1], fp[roof], 1.5, 3, seed[roof] + 3)
            color[roof] = np.array([0.22, 0.21, 0.2], np.float32) * (1 + 0.4 * c * rg)[:, None]
        return color, emission

    def _car_body(self, g, idx, fp):
        cfg = self.config
        objects = self.world.objects
        oi = g.obj[idx]
        p = objects.params[oi]
        z_centre, length, height = p[:, 0], p[:, 1], p[:, 2]
        local = g.local[idx]
        face = g.face[idx]
        van = objects.kind[oi] == W.VAN_BODY
        seed = objects.seed[oi] % 10007
        paint = self._palette(self.cars, objects.color_index[oi], 9)
        grain = fbm(local[:, 0] + local[:, 1], local[:, 2], fp, 3.0, 2, seed)
        color = paint * (1.0 + 0.08 * grain[:, None])
        # Height shading: a darker sill and a light reflection line, typical of car paint.
        z = local[:, 2] + z_centre
        color *= (0.75 + 0.25 * _smoothstep(0.1, 0.55, z) + 0.12 * box(
            z, 0.12 + height * 0.55, 0.12 + height * 0.62, fp))[:, None]
        emission = np.zeros_like(color)
        side = face <= 1
        # Wheels on the sides: tyre ring and rim.
        ly = local[:, 1]
        axle = length / 2 - 0.85
        wheel_d = np.minimum(np.hypot(ly - axle, z - 0.34), np.hypot(ly + axle, z - 0.34))
        tyre = box(wheel_d, -1.0, 0.33, fp) * side
        rim = box(wheel_d, -1.0, 0.19, fp) * side
        color = _mix(color, np.array([0.03, 0.03, 0.035], np.float32), tyre)
        color = _mix(color, np.array([0.45, 0.46, 0.48], np.float32) * (
            0.8 + 0.2 * grain[:, None]), rim)
        # Door gaps and van side windows.
        door = box(ly, -0.02, 0.02, fp) * side * box(z, 0.3, 0.12 + height - 0.05, fp)
        color *= (1.0 - 0.6 * door)[:, None]
        van_glass = van * box(z, 1.25, 0.12 + height - 0.15, fp) * (
            1 - periodic_box(ly / 1.2, 0.0, 0.08, fp / 1.2)) * (face <= 3)
        color = _mix(color, np.array([0.06, 0.08, 0.1], np.float32), van_glass)
        # Lights and number plates on the ends; rear = -y (face 3), front = +y (face 2).
        lx = local[:, 0]
        half_w = objects.half[oi, 0]
        lamp = box(np.abs(lx), half_w - 0.42, half_w - 0.08, fp) * box(
            z, 0.12 + height * 0.62, 0.12 + height * 0.85, fp)
        plate = box(lx, -0.26, 0.26, fp) * box(z, 0.35, 0.47, fp)
        grille = box(lx, -0.45, 0.45, fp) * box(z, 0.12 + height * 0.45,
                                                0.12 + height * 0.7, fp)
        front, rear = face == 2, face == 3
        color = _mix(color, np.array([0.05, 0.05, 0.05], np.float32), grille * front)
        color = _mix(color, np.array([0.9, 0.9, 0.85], np.float32), plate * (front | rear))
        color = _mix(color, np.array([0.85, 0.85, 0.8], np.float32), lamp * front)
        color = _mix(color, np.array([0.55, 0.02, 0.02], np.float32), lamp * rear)
        night = cfg.headlight_intensity > 0 or cfg.street_light_intensity > 0.5
        if night:
            moving = objects.car[oi] >= 0
            glow = lamp * moving
            emission += np.array([1.0, 0.95, 0.8], np.float32) * (glow * front)[:, None] * 1.5
            emission += np.array([0.9, 0.05, 0.03], np.float32) * (glow * rear)[:, None] * 0.8
        return color, emission

    def _cabin(self, g, idx, fp):
        objects = self.world.objects
        oi = g.obj[idx]
        p = objects.params[oi]
        local = g.local[idx]
        face = g.face[idx]
        half = objects.half[oi]
        paint = self._palette(self.cars, objects.color_index[oi], 9)
        z = local[:, 2] + half[:, 2]
        # Pillars at the cabin ends and in the middle; glass elsewhere below the roof line.
        pillar = np.clip(box(np.abs(local[:, 1]), half[:, 1] - 0.12, half[:, 1] + 1, fp)
                         + box(local[:, 1], -0.06, 0.06, fp) * (face <= 1), 0, 1)
        sill = box(z, -1.0, 0.05, fp)
        glass_mask = (1 - pillar) * (1 - sill) * (face != 4)
        sky_reflection = 0.06 + 0.12 * (z / np.maximum(p[:, 2], 0.1))
        glass = np.stack([sky_reflection, sky_reflection * 1.1, sky_reflection * 1.3], axis=1)
        grain = fbm(local[:, 0] + local[:, 1], z, fp, 2.0, 2, objects.seed[oi] % 10007)
        glass = glass * (1 + 0.3 * grain[:, None])
        color = _mix(paint, glass.astype(np.float32), glass_mask)
        return color, np.zeros_like(color)

    def _cylinder_uv(self, g, idx):
        local = g.local[idx]
        half = self.world.objects.half[g.obj[idx]]
        angle = np.arctan2(local[:, 1], local[:, 0]) * half[:, 0]
        return angle, local[:, 2]

    def _pole(self, g, idx, fp):
        u, v = self._cylinder_uv(g, idx)
        seed = self.world.objects.seed[g.obj[idx]] % 10007
        grain = fbm(u * 0.3, v * 3.0, fp * 3.0, 1.0, 3, seed)
        bands = box(np.mod(v, 3.1), 0.0, 0.12, fp)
        tone = 0.42 * (1.0 + 0.25 * self.contrast * grain) * (1 - 0.4 * bands)
        color = np.stack([tone, tone * 1.02, tone * 1.06], axis=1).astype(np.float32)
        return color, np.zeros_like(color)

    def _lamp(self, g, idx, fp):
        color = np.full((idx.size, 3), 0.15, dtype=np.float32)
        emission = np.zeros_like(color)
        light = self.config.street_light_intensity
        if light > 0:
            underside = (g.face[idx] == 5).astype(np.float32)
            emission += np.array([1.0, 0.85, 0.6], np.float32) * (underside * 2.5 * light)[:,
                                                                                            None]
        return color, emission

    def _trunk(self, g, idx, fp):
        u, v = self._cylinder_uv(g, idx)
        seed = self.world.objects.seed[g.obj[idx]] % 10007
        bark = fbm(u * 4.0, v * 0.8, fp * 4.0, 2.0, 3, seed)
        tone = 1.0 + 0.5 * self.contrast * bark
        return _rgb(self.config.trunk_color)[0] * tone[:, None], np.zeros((idx.size, 3),
                                                                         np.float32)

    def _foliage(self, g, idx, fp):
        objects = self.world.objects
        oi = g.obj[idx]
        local = g.local[idx]
        radius = objects.params[oi, 0]
        u = np.arctan2(local[:, 1], local[:, 0]) * radius
        v = local[:, 2] + 0.3 * local[:, 0]
        seed = objects.seed[oi] % 10007
        leaves = fbm(u, v, fp, 1.6, 4, seed, gain=0.65)
        holes = _smoothstep(0.5, 1.2, fbm(u, v, fp, 0.7, 2, seed + 5))
        hue = hash01(objects.color_index[oi], 17)
        base = _rgb(self.config.foliage_color)[0] * np.stack(
            [0.8 + 0.5 * hue, 1.0 + 0.2 * hue, 0.8 + 0.3 * (1 - hue)], axis=1)
        tone = np.clip(1.0 + 0.55 * self.contrast * leaves, 0.2, 2.0) * (1 - 0.5 * holes)
        # Self shadowing: lower half of the crown is darker.
        tone *= 0.7 + 0.3 * _smoothstep(-radius, radius * 0.6, local[:, 2])
        return (base * tone[:, None]).astype(np.float32), np.zeros((idx.size, 3), np.float32)

    def _sign(self, g, idx, fp):
        objects = self.world.objects
        oi = g.obj[idx]
        local = g.local[idx]
        half = objects.half[oi]
        face = g.face[idx]
        kind = objects.color_index[oi] % len(self.sign_colors)
        inner = self.sign_colors[kind]
        x = local[:, 0] / half[:, 0]
        z = local[:, 2] / half[:, 2]
        fpn = fp / half[:, 0]
        border = 1 - box(x, -0.82, 0.82, fpn) * box(z, -0.82, 0.82, fpn)
        symbol = np.clip(box(x, -0.12, 0.12, fpn) * box(z, -0.55, 0.35, fpn)
                         + box(x, -0.35, 0.35, fpn) * box(z, 0.2, 0.45, fpn), 0, 1)
        white = np.array([0.9, 0.9, 0.88], np.float32)
        color = _mix(inner, white, np.clip(border + symbol, 0, 1))
        back = face != 3
        color[back] = 0.35
        return color.astype(np.float32), np.zeros((idx.size, 3), np.float32)

    # ------------------------------------------------------------------ light, sky, fog
    def _lighting(self, g) -> np.ndarray:
        cfg = self.config
        n = g.normal.astype(np.float32)
        sun = np.clip(W.row_dot(n, self.sun.astype(np.float32)), 0.0, None)
        light = (_rgb(cfg.sun_color)[0] * cfg.sun_intensity * sun[:, None]
                 + _rgb(cfg.ambient_color)[0] * cfg.ambient_intensity
                 * (0.6 + 0.4 * n[:, 2:3]))
        # Contact darkening near the ground (cheap ambient occlusion).
        z = g.point[:, 2].astype(np.float32)
        vertical = 1.0 - np.abs(n[:, 2])
        light *= (1.0 - 0.35 * vertical * np.exp(-np.maximum(z, 0) / 0.5))[:, None]
        if cfg.street_light_intensity > 0 and len(self.world.lamp_positions):
            light += self._street_lights(g, n)
        if cfg.headlight_intensity > 0:
            light += self._headlights(g, n)
        return light

    def _street_lights(self, g, n):
        lamps = self.world.lamp_positions
        cam = g.pose_c2w[:3, 3]
        # Lamps further than 60 m add under 1 % of a lamp's light at its foot: skip them.
        near = lamps[(lamps[:, 0] - cam[0]) ** 2 + (lamps[:, 1] - cam[1]) ** 2 < 60.0 ** 2]
        out = np.zeros((g.depth.size, 3), dtype=np.float32)
        active = np.flatnonzero(g.obj != W.SKY_ID)
        p = g.point[active].astype(np.float32)
        px, py, pz = p[:, 0], p[:, 1], p[:, 2]
        nx, ny, nz = n[active, 0], n[active, 1], n[active, 2]
        total = np.zeros(active.size, dtype=np.float32)
        for lx, ly, lz in near.astype(np.float32):
            rx, ry, rz = lx - px, ly - py, lz - pz
            dist2 = rx * rx + ry * ry + rz * rz
            cos = np.clip((rx * nx + ry * ny + rz * nz) / np.sqrt(dist2 + 1e-6), 0.0, None)
            total += cos * 18.0 / (dist2 + 4.0)
        out[active] = np.array([1.0, 0.8, 0.55], np.float32) * (
            total * self.config.street_light_intensity)[:, None]
        return out

    def _headlights(self, g, n):
        # The lamps sit at the camera: the cone is fixed in the image.
        K = g.K
        x = (np.tile(np.arange(g.width), g.height) - K[0, 2]) / K[0, 0]
        y = (np.repeat(np.arange(g.height), g.width) - K[1, 2]) / K[1, 1] - 0.08
        cone = np.exp(-(x / 0.45) ** 2 - (y / 0.18) ** 2)
        dist = g.depth * g.ray_norm
        facing = np.clip(-W.row_dot(n, g.ray) / g.ray_norm, 0.0, None)
        power = self.config.headlight_intensity * cone * facing * 60.0 / (dist * dist + 20.0)
        power[g.obj == W.SKY_ID] = 0.0
        return (np.array([1.0, 0.95, 0.85], np.float32) * power[:, None]).astype(np.float32)

    def _sky(self, g, idx):
        cfg = self.config
        d = g.ray[idx] / g.ray_norm[idx, None]
        up = d[:, 2].astype(np.float32)
        t = _smoothstep(-0.02, 0.45, up) ** 0.7
        color = _mix(_rgb(cfg.sky_horizon)[0] * np.ones((idx.size, 1), np.float32),
                     _rgb(cfg.sky_zenith)[0], t)
        # Clouds on a plane at infinity: a function of the direction only.
        lift = np.maximum(up, 0.0) + 0.12
        cu, cv = d[:, 0] / lift, d[:, 1] / lift
        fp = (1.0 / g.K[0, 0]) / lift ** 2
        density = fbm(cu, cv, fp, 0.8, 4, 4242 + self.world.seed % 997, gain=0.55)
        cover = cfg.cloud_cover
        cloud = _smoothstep(0.9 - 1.9 * cover, 1.4 - 1.9 * cover, density)
        cloud *= _smoothstep(-0.01, 0.08, up)
        shade = 0.85 + 0.15 * np.clip(density, -1, 1)
        color = _mix(color, _rgb(cfg.cloud_color)[0] * shade[:, None], cloud * 0.9)
        if cfg.show_sun_disc:
            sun = W.row_dot(d, self.sun)
            glow = np.exp((sun - 1.0) * 400.0) + 0.25 * np.exp((sun - 1.0) * 20)
            color = color + _rgb(cfg.sun_color)[0] * (glow * (1 - 0.8 * cloud))[:, None].astype(
                np.float32)
        return color

    def _fog(self, g, color):
        cfg = self.config
        dist = (g.depth * g.ray_norm).astype(np.float32)
        sky = g.obj == W.SKY_ID
        dist[sky] = cfg.far_m * 0.6
        transmission = np.exp(-cfg.fog_density * dist)[:, None]
        return color * transmission + _rgb(cfg.fog_color)[0] * (1 - transmission)


def grade(color: np.ndarray, config: DomainConfig, height: int, width: int) -> np.ndarray:
    """Linear RGB (N, 3) -> display RGB uint8 (H, W, 3): blur, exposure, tint, saturation..."""
    c = color.reshape(height, width, 3).astype(np.float32)
    if config.blur_sigma_px > 0:
        c = cv2.GaussianBlur(c, (0, 0), config.blur_sigma_px, borderType=cv2.BORDER_REFLECT)
    c = c.reshape(-1, 3) * (config.exposure * np.asarray(config.tint, np.float32))
    luma = 0.2126 * c[:, 0] + 0.7152 * c[:, 1] + 0.0722 * c[:, 2]
    c = luma[:, None] + config.saturation * (c - luma[:, None])
    c = np.clip(c, 0.0, None)
    c = 0.18 * (c / 0.18) ** config.contrast
    c = c / (1.0 + 0.25 * c)          # soft highlight roll-off
    c = np.clip(c, 0.0, 1.0) ** (1.0 / config.gamma)
    return np.round(c * 255.0).astype(np.uint8).reshape(height, width, 3)
