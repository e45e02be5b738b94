"""Real-camera artefacts drawn onto rendered frames, to narrow the synthetic-to-real gap.

Why: the renderer's frames are noise-free, perfectly focused, evenly exposed and never
compressed. A depth network trained on them can lean on that cleanliness (crisp procedural
texture means 'near wall') and then meets a real camera's blur, sensor noise, vignetting, tone
curve and JPEG blocks for the first time at serving. Measured before this existed, with the
shipped model: ordinal error 0.080 on synthetic rooms against 0.265 on real indoor frames
(docs/real_camera.md). Drawing those artefacts onto the synthetic frames (domain
randomisation, Tobin et al. 2017) is meant to teach the network that they carry no depth.
Measured: it does not close the indoor gap (docs/real_camera.md, "Real-camera artefacts on the
renders"), so the recipe leaves it off.

The artefacts follow a camera's order: optics (vignetting, blur), sensor (shot + read noise),
tone curve (gamma), compression (JPEG). Every frame of one sample gets the same optics, tone
and quality, as one camera would give them; the noise is drawn per frame, as a sensor does.
"""
from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np
import torch

from structflow_ros.data.image_codec import jpeg_round_trip


@dataclass(frozen=True)
class CameraArtefacts:
    """Ranges the artefacts are drawn from, uniformly; `prob`: share of samples that get any."""

    prob: float = 0.5
    # Radial brightness loss at the image corners (cos^4-like falloff of cheap lenses).
    vignetting: Tuple[float, float] = (0.0, 0.4)
    # Gaussian blur sigma in pixels at the network size: focus, lens and the camera's resampling.
    blur_sigma: Tuple[float, float] = (0.0, 1.0)
    # Noise standard deviation at mid-grey, a fraction of full scale (0.03: a dim indoor frame).
    noise: Tuple[float, float] = (0.0, 0.03)
    # Exponent of the tone curve applied to [0, 1] values.
    gamma: Tuple[float, float] = (0.8, 1.25)
    # JPEG quality; a webcam stream or a compressed bag is often 50-80.
    jpeg_quality: Tuple[int, int] = (30, 95)

    def __post_init__(self):
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f'CameraArtefacts.prob must be in [0, 1], got {self.prob}')
        for name in ('vignetting', 'blur_sigma', 'noise', 'gamma', 'jpeg_quality'):
            low, high = getattr(self, name)
            if low > high or low < 0:
                raise ValueError(f'CameraArtefacts.{name} must be a range 0 <= low <= high, '
                                 f'got ({low}, {high})')
        if self.gamma[0] <= 0 or not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ValueError('CameraArtefacts.gamma must be positive and jpeg_quality within '
                             f'1-100, got {self.gamma} and {self.jpeg_quality}')


# The artefacts `finetune --camera-artefacts` draws onto its synthetic frames.
SYNTHETIC_CAMERA_ARTEFACTS = CameraArtefacts()


def _vignetting_gain(height, width, strength):
    """(H, W) gain: 1 at the centre, 1 - strength in the corners, falling with radius^2."""
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height * 2 - 1
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width * 2 - 1
    radius2 = (ys[:, None] ** 2 + xs[None, :] ** 2) / 2.0  # 1 in the corners
    return 1.0 - strength * radius2


def add_camera_artefacts(frames: List[torch.Tensor], rng: np.random.Generator,
                         config: CameraArtefacts = SYNTHETIC_CAMERA_ARTEFACTS
                         ) -> List[torch.Tensor]:
    """One camera's artefacts drawn from `config` onto every frame of a pair or triplet:
    (3, H, W) float tensors in [0, 1] in, the same shape and range out. Shared by the frames:
    vignetting, blur, tone curve and JPEG quality; drawn per frame: sensor noise."""
    vignetting = rng.uniform(*config.vignetting)
    sigma = rng.uniform(*config.blur_sigma)
    noise = rng.uniform(*config.noise)
    gamma = rng.uniform(*config.gamma)
    quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
    out = []
    for frame in frames:
        image = frame.float().permute(1, 2, 0).numpy().copy()  # (H, W, 3)
        image *= _vignetting_gain(image.shape[0], image.shape[1], vignetting)[..., None]
        if sigma > 0.05:
            image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma,
                                     borderType=cv2.BORDER_REFLECT)
        if noise > 0:
            # Shot noise grows with the signal, read noise does not; `noise` is the std at 0.5.
            std = noise * np.sqrt((0.25 + np.clip(image, 0, 1)) / 0.75)
            image = image + std * rng.standard_normal(image.shape).astype(np.float32)
        image = np.clip(image, 0.0, 1.0) ** gamma
        image = jpeg_round_trip(np.round(image * 255).astype(np.uint8), quality)
        image = image.astype(np.float32) / 255.0
        out.append(torch.from_numpy(image).permute(2, 0, 1).contiguous())  # (3, H, W)
    return out
