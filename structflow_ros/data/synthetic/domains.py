"""Named looks ("domains") of the synthetic world.

Each domain changes what a real domain shift changes between two robots or two days: texture
palette, lighting and colour, fog density, and the camera itself (focal length / field of view,
mounting height). The flow-pretraining story (Wang et al., ICRA 2020) and online adaptation are
both about such shifts, so the renderer makes them explicit and nameable.

Colours are linear RGB in [0, 1]; the renderer applies exposure, tint, saturation, contrast and a
gamma curve at the end.
"""
from dataclasses import dataclass
from typing import Dict, Tuple

RGB = Tuple[float, float, float]


@dataclass(frozen=True)
class DomainConfig:
    """Look and camera of one domain; every default is the 'day' value."""

    name: str = 'day'
    # What the camera moves through: 'street' (world.py, a car on a road) or 'room' (room.py,
    # a robot or a hand-held camera indoors; it draws its own field of view per room).
    scene: str = 'street'
    # How a room's camera moves (scene 'room' only): 'walk' loops around the room looking
    # where it goes; 'workspace' circles a work table at arm's length, looking at the table or
    # out at the furniture along the walls (a hand-held camera, a manipulator's wrist camera).
    room_camera: str = 'walk'
    # What furnishes a room (scene 'room' only): 'boxes' is furniture as solid blocks;
    # 'cluttered' is the same room (same seed, same blocks where they stay) made as messy as
    # real offices and homes: open shelves with gaps and uneven rows of books, people, office
    # chairs, desk partitions, desk clusters, piles of boxes and bags, and loose things on
    # every desk (room.py, RoomWorld._clutter_room).
    room_furnishing: str = 'boxes'
    # Camera. fx = fy = focal_x_frac * width: 0.58 is KITTI's ratio (fx 721 px at 1242 wide),
    # so 640x192 renders look like the monodepth2 input.
    focal_x_frac: float = 0.58
    principal_offset: Tuple[float, float] = (0.0, 0.0)  # (cx, cy) offset, fraction of (W, H)
    camera_height_m: float = 1.65     # KITTI's camera height above the road
    camera_pitch_deg: float = 1.0     # mean pitch, positive looks down
    pitch_amp_deg: float = 0.8        # suspension / road bumps
    roll_amp_deg: float = 0.6
    yaw_jitter_deg: float = 1.5       # steering wobble on top of the road's own curvature
    speed_mps: float = 9.0            # mean ego speed (about 32 km/h, urban)
    speed_variation: float = 0.45     # amplitude of the speed changes, fraction of the mean
    # Light: a sun (directional, Lambertian) plus a sky ambient term.
    sun_azimuth_deg: float = 35.0
    sun_elevation_deg: float = 40.0
    sun_color: RGB = (1.0, 0.95, 0.85)
    sun_intensity: float = 1.05
    ambient_color: RGB = (0.55, 0.65, 0.85)
    ambient_intensity: float = 0.45
    show_sun_disc: bool = True
    # Sky (direction only, so it moves with camera rotation alone, as a sky at infinity does).
    sky_zenith: RGB = (0.16, 0.33, 0.75)
    sky_horizon: RGB = (0.62, 0.74, 0.90)
    cloud_color: RGB = (0.95, 0.95, 0.97)
    cloud_cover: float = 0.45         # 0 clear .. 1 fully covered
    # Atmosphere: exponential fog / aerial haze, transmission exp(-density * distance).
    fog_color: RGB = (0.62, 0.72, 0.86)
    fog_density: float = 0.004        # 1/m; 0.004 leaves 20 % of the colour at the far plane
    # Palette.
    facade_palette: Tuple[RGB, ...] = (
        (0.55, 0.25, 0.16), (0.75, 0.62, 0.45), (0.80, 0.78, 0.72), (0.45, 0.30, 0.22),
        (0.70, 0.45, 0.30), (0.60, 0.62, 0.58), (0.85, 0.70, 0.50), (0.40, 0.42, 0.48))
    car_palette: Tuple[RGB, ...] = (
        (0.60, 0.05, 0.04), (0.05, 0.12, 0.40), (0.80, 0.80, 0.78), (0.06, 0.06, 0.07),
        (0.45, 0.46, 0.48), (0.10, 0.30, 0.12), (0.85, 0.60, 0.05), (0.25, 0.35, 0.55))
    asphalt_color: RGB = (0.16, 0.16, 0.17)
    sidewalk_color: RGB = (0.52, 0.50, 0.47)
    yard_color: RGB = (0.22, 0.30, 0.12)
    foliage_color: RGB = (0.12, 0.30, 0.07)
    trunk_color: RGB = (0.25, 0.17, 0.10)
    marking_color: RGB = (0.85, 0.85, 0.82)
    centre_line_color: RGB = (0.85, 0.65, 0.08)
    texture_contrast: float = 1.0     # scales every noise amplitude
    # Emitters (dusk/night).
    window_light_prob: float = 0.0    # fraction of windows lit
    window_light_color: RGB = (1.0, 0.75, 0.40)
    street_light_intensity: float = 0.0
    headlight_intensity: float = 0.0
    # Colour grading.
    exposure: float = 1.0
    tint: RGB = (1.0, 1.0, 1.0)
    saturation: float = 1.05
    contrast: float = 1.0
    gamma: float = 2.2
    # Optics and sensor blur (Gaussian sigma in pixels). Real images are band-limited; without it
    # one-sample-per-pixel edges alias and bilinear warping cannot reproduce them.
    blur_sigma_px: float = 0.6
    # Depth of the far plane; sky pixels get this depth and depth_valid False.
    far_m: float = 400.0


DOMAINS: Dict[str, DomainConfig] = {
    'day': DomainConfig(),
    'dusk': DomainConfig(
        name='dusk', focal_x_frac=0.50, camera_height_m=1.50, camera_pitch_deg=0.0,
        speed_mps=8.0, sun_azimuth_deg=-70.0, sun_elevation_deg=5.0,
        sun_color=(1.0, 0.55, 0.25), sun_intensity=0.75, ambient_color=(0.45, 0.40, 0.65),
        ambient_intensity=0.35, sky_zenith=(0.10, 0.10, 0.32), sky_horizon=(0.95, 0.50, 0.30),
        cloud_color=(0.90, 0.45, 0.40), cloud_cover=0.55, fog_color=(0.70, 0.45, 0.40),
        fog_density=0.006,
        facade_palette=((0.60, 0.50, 0.45), (0.50, 0.35, 0.30), (0.75, 0.70, 0.65),
                        (0.35, 0.30, 0.35), (0.65, 0.55, 0.40), (0.45, 0.45, 0.55)),
        asphalt_color=(0.14, 0.13, 0.15), sidewalk_color=(0.45, 0.42, 0.42),
        yard_color=(0.20, 0.22, 0.12), window_light_prob=0.35, street_light_intensity=0.25,
        exposure=1.15, tint=(1.05, 0.95, 0.92), saturation=1.1, contrast=1.05),
    'fog': DomainConfig(
        name='fog', focal_x_frac=0.66, camera_height_m=1.40, camera_pitch_deg=1.5,
        speed_mps=6.5, sun_elevation_deg=30.0, sun_color=(0.9, 0.9, 0.9), sun_intensity=0.25,
        ambient_color=(0.80, 0.82, 0.85), ambient_intensity=0.80, show_sun_disc=False,
        sky_zenith=(0.70, 0.72, 0.75), sky_horizon=(0.78, 0.80, 0.82),
        cloud_color=(0.82, 0.83, 0.85), cloud_cover=0.9, fog_color=(0.74, 0.76, 0.78),
        fog_density=0.035,
        facade_palette=((0.50, 0.45, 0.40), (0.60, 0.58, 0.55), (0.40, 0.35, 0.32),
                        (0.70, 0.68, 0.62), (0.45, 0.48, 0.50)),
        car_palette=((0.50, 0.10, 0.08), (0.30, 0.32, 0.36), (0.75, 0.75, 0.75),
                     (0.08, 0.08, 0.10), (0.15, 0.25, 0.45)),
        texture_contrast=0.9, saturation=0.7, contrast=0.95, exposure=1.0),
    'overcast': DomainConfig(
        name='overcast', focal_x_frac=0.52, camera_height_m=2.0, camera_pitch_deg=2.0,
        pitch_amp_deg=1.2, roll_amp_deg=0.9, speed_mps=10.0, sun_elevation_deg=60.0,
        sun_color=(0.9, 0.92, 0.95), sun_intensity=0.2, ambient_color=(0.85, 0.88, 0.92),
        ambient_intensity=0.85, show_sun_disc=False, sky_zenith=(0.55, 0.58, 0.63),
        sky_horizon=(0.80, 0.82, 0.85), cloud_color=(0.70, 0.72, 0.75), cloud_cover=0.85,
        fog_color=(0.72, 0.75, 0.80), fog_density=0.007,
        facade_palette=((0.45, 0.47, 0.50), (0.60, 0.55, 0.48), (0.35, 0.38, 0.42),
                        (0.70, 0.70, 0.68), (0.50, 0.40, 0.35), (0.30, 0.32, 0.30)),
        asphalt_color=(0.13, 0.135, 0.14), sidewalk_color=(0.42, 0.43, 0.44),
        yard_color=(0.18, 0.24, 0.14), foliage_color=(0.10, 0.22, 0.10),
        centre_line_color=(0.85, 0.85, 0.82), saturation=0.85, tint=(0.96, 1.0, 1.05)),
    'night': DomainConfig(
        name='night', focal_x_frac=0.58, camera_height_m=1.25, camera_pitch_deg=0.5,
        speed_mps=7.0, sun_elevation_deg=50.0, sun_color=(0.5, 0.6, 1.0), sun_intensity=0.03,
        ambient_color=(0.35, 0.40, 0.70), ambient_intensity=0.08, show_sun_disc=False,
        sky_zenith=(0.01, 0.015, 0.05), sky_horizon=(0.08, 0.07, 0.12),
        cloud_color=(0.10, 0.09, 0.12), cloud_cover=0.4, fog_color=(0.06, 0.06, 0.09),
        fog_density=0.008, window_light_prob=0.45, window_light_color=(1.0, 0.78, 0.45),
        street_light_intensity=1.0, headlight_intensity=0.8, exposure=1.3,
        saturation=1.0, contrast=1.05),
    # Indoors: lamps, windows and a ceiling instead of sun and sky (room.py draws per room the
    # size, furniture, materials, lights, camera height 0.3-1.7 m and field of view).
    'room': DomainConfig(
        name='room', scene='room', camera_height_m=1.0, camera_pitch_deg=10.0,
        speed_mps=0.5, fog_density=0.0, saturation=0.95, contrast=1.0, exposure=1.1),
    # The same rooms seen up close: the camera circles a cluttered table in the room's middle,
    # 0.9-1.7 m high, looking down at it or out at the walls' desks and shelves 1-3 m away.
    'desk': DomainConfig(
        name='desk', scene='room', room_camera='workspace', camera_height_m=1.3,
        camera_pitch_deg=30.0, speed_mps=0.3, fog_density=0.0, saturation=0.95, contrast=1.0,
        exposure=1.1),
    # The same two cameras in cluttered rooms (room_furnishing above): real indoor scenes are
    # not boxes in a box, and a model that learned only blocks flattens real clutter (TUM).
    'cluttered_room': DomainConfig(
        name='cluttered_room', scene='room', room_furnishing='cluttered', camera_height_m=1.0,
        camera_pitch_deg=10.0, speed_mps=0.5, fog_density=0.0, saturation=0.95, contrast=1.0,
        exposure=1.1),
    'cluttered_desk': DomainConfig(
        name='cluttered_desk', scene='room', room_camera='workspace',
        room_furnishing='cluttered', camera_height_m=1.3, camera_pitch_deg=30.0,
        speed_mps=0.3, fog_density=0.0, saturation=0.95, contrast=1.0, exposure=1.1),
}


def get_domain(name: str) -> DomainConfig:
    """The DomainConfig registered under `name`; ValueError lists the valid names."""
    if isinstance(name, DomainConfig):
        return name
    try:
        return DOMAINS[name]
    except KeyError:
        raise ValueError(f'unknown synthetic domain {name!r}; valid domains: '
                         f'{", ".join(DOMAINS)}') from None


def room_domains() -> list:
    """Names of the domains whose scene is a room (photo textures apply to them only)."""
    return [name for name, config in DOMAINS.items() if config.scene == 'room']


def parse_domains(spec) -> list:
    """'all', 'day', 'day,fog' or a list of names -> list of valid domain names."""
    if isinstance(spec, str):
        names = [part.strip() for part in spec.split(',') if part.strip()]
    else:
        names = [str(part) for part in spec]
    if not names:
        raise ValueError(f'no domain given; valid domains: all, {", ".join(DOMAINS)}')
    if 'all' in names:
        return list(DOMAINS)
    for name in names:
        get_domain(name)
    return list(dict.fromkeys(names))
