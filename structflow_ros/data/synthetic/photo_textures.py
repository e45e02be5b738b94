"""Real photographs as surface textures of the synthetic rooms (`finetune --photo-textures`).

Why: the synthetic rooms are learned almost perfectly (ordinal error 0.08 on a held-out room)
while real rooms stay hard (0.27): the gap is in what the surfaces show, not in how a camera
records them (camera artefacts on the renders changed nothing). Procedural paint, wood and
fabric are smooth and few, so a network can read depth off the material (a plain bright patch
is a wall nearby). Covering surfaces with crops of real photographs, as FlyingThings3D does for
flow (Mayer et al., CVPR 2016), takes that shortcut away: a texture carries edges, shading and
clutter that say nothing about depth, and only the geometry does (occlusion, perspective,
contact with the floor).

A PhotoTextures bank holds square crops of real frames (linear RGB, with a mip pyramid against
aliasing when a surface is seen from afar). The room shader maps one onto
a surface by its surface coordinates in metres (mirrored tiling, so no seams), so a texture is
fixed to the surface and moves with it: flow and depth stay exact.
"""
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

TEXTURE_SIZE = 128
# Share of the room's objects (furniture, boxes, things on tables) and of its walls that get
# a photograph instead of their procedural material. Floors, lamps, windows and screens keep
# theirs: a floor's tiles and planks are real cues of a receding plane, the others emit light.
OBJECT_SHARE = 0.5
WALL_SHARE = 0.25
MIP_LEVELS = 4             # 128, 64, 32 and 16 texels a side


@dataclass(eq=False)   # compared and hashed by identity: a bank keys the render cache
class PhotoTextures:
    """Square photo crops for the room shader. textures: (N, S, S, 3) float32 linear RGB;
    sources: the specs they came from (for the checkpoint)."""

    textures: np.ndarray
    sources: tuple = ()

    def __post_init__(self):
        if self.textures.ndim != 4 or self.textures.shape[-1] != 3 or \
                self.textures.shape[1] != self.textures.shape[2] or len(self.textures) == 0 \
                or self.textures.shape[1] < 2 ** MIP_LEVELS:
            raise ValueError(f'PhotoTextures needs (N, S, S, 3) textures with N >= 1 and S >= '
                             f'{2 ** MIP_LEVELS}, got shape {self.textures.shape}')
        # Mip pyramid: level k is 2^k times smaller, each texel the mean of the finer level's.
        self.levels = [np.asarray(self.textures, np.float32)]
        for _ in range(1, MIP_LEVELS):
            finer = self.levels[-1]
            self.levels.append(0.25 * (finer[:, 0::2, 0::2] + finer[:, 1::2, 0::2]
                                       + finer[:, 0::2, 1::2] + finer[:, 1::2, 1::2]))

    def __len__(self):
        return len(self.textures)

    @classmethod
    def from_images(cls, images: Sequence[np.ndarray], crops_per_image: int = 2, seed: int = 0,
                    sources=()) -> 'PhotoTextures':
        """Random square crops (a quarter to two thirds of the short side) of uint8 RGB images,
        resized to TEXTURE_SIZE and converted from sRGB to linear."""
        rng = np.random.default_rng(seed)
        crops = []
        for image in images:
            image = np.asarray(image)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f'photo textures need uint8 RGB images (H, W, 3), got '
                                 f'{image.dtype} {image.shape}')
            height, width = image.shape[:2]
            for _ in range(crops_per_image):
                side = int(min(height, width) * rng.uniform(0.25, 0.67))
                if side < 8:
                    raise ValueError(f'image of {width}x{height} is too small for a texture')
                top = int(rng.integers(0, height - side + 1))
                left = int(rng.integers(0, width - side + 1))
                crop = cv2.resize(image[top:top + side, left:left + side],
                                  (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_AREA)
                crops.append((crop.astype(np.float32) / 255.0) ** 2.2)
        if not crops:
            raise ValueError('photo textures: no image given')
        return cls(np.stack(crops), tuple(sources))

    @classmethod
    def from_specs(cls, specs: Sequence[str], frames_per_source: int = 12, seed: int = 0
                   ) -> 'PhotoTextures':
        """Frames spread evenly over each video / image folder / bag spec (crop and stride
        options apply, data/video_spec.py), two crops each."""
        from structflow_ros.data.video_spec import open_spec
        images = []
        for spec in specs:
            source = open_spec(spec)   # raises SourceError naming the path and accepted kinds
            # A source that cannot tell its length in advance is counted in a first pass.
            count = source.num_frames or sum(1 for _ in source)
            step = max(1, count // frames_per_source)
            taken = [frame.image for i, frame in enumerate(source) if i % step == 0]
            source.close()
            if not taken:
                raise ValueError(f'photo texture source {spec} gave no frame')
            images += taken[:frames_per_source]
        return cls.from_images(images, seed=seed, sources=tuple(specs))

    def sample(self, index, u, v, tile_m, footprint_m) -> np.ndarray:
        """Linear RGB (n, 3) of texture `index` (n,) at surface coordinates u, v (metres),
        one texture tile per `tile_m` metres, mirrored at its edges (no seams), bilinear on
        the mip level whose texel best matches a pixel (footprint_m: a pixel's size on the
        surface)."""
        size = self.textures.shape[1]
        index = np.asarray(index, np.int64) % len(self)
        tile_m = np.broadcast_to(np.asarray(tile_m, np.float64), index.shape)
        texels_per_pixel = np.asarray(footprint_m, np.float64) * size / tile_m
        level_of = np.clip(np.floor(np.log2(np.maximum(texels_per_pixel, 1e-6))), 0,
                           MIP_LEVELS - 1).astype(np.int64)
        out = np.empty((index.size, 3), np.float32)
        for level in np.unique(level_of):
            k = np.flatnonzero(level_of == level)
            out[k] = _bilinear_mirrored(self.levels[level], index[k], np.asarray(u)[k],
                                        np.asarray(v)[k], tile_m[k])
        return out


def _bilinear_mirrored(level, index, u, v, tile_m):
    size = level.shape[1]

    def texel(coord):
        phase = np.mod(coord / tile_m, 2.0)               # 0..1 forward, 1..2 mirrored back
        return np.where(phase > 1.0, 2.0 - phase, phase) * (size - 1)

    x, y = texel(np.asarray(u, np.float64)), texel(np.asarray(v, np.float64))
    x0 = np.clip(np.floor(x).astype(np.int64), 0, size - 2)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, size - 2)
    fx = (x - x0).astype(np.float32)[:, None]
    fy = (y - y0).astype(np.float32)[:, None]
    top = level[index, y0, x0] * (1 - fx) + level[index, y0, x0 + 1] * fx
    bottom = level[index, y0 + 1, x0] * (1 - fx) + level[index, y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy
