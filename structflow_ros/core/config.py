"""Model configuration: one dataclass that a checkpoint stores and rebuilds the model from."""
import math
from dataclasses import asdict, dataclass, fields

ENCODERS = ('resnet18', 'resnet50')
INPUT_NORMS = ('imagenet', 'per_image')
# The ResNet stem and four stages halve the resolution five times.
SIZE_MULTIPLE = 32
# The decoders' reflection padding needs a bottleneck of at least 2x2 cells.
MIN_SIZE = 64


@dataclass
class ModelConfig:
    """Architecture of the Y-shaped network (structure encoder + depth and flow branches)."""

    encoder: str = 'resnet18'
    # Network input size. The paper used 640x192 (ResNet-18); 320x96 fits a 2-core CPU at
    # camera rate. Any size works at inference (padded to a multiple of 32, cropped back).
    height: int = 96
    width: int = 320
    # Width of the motion bottleneck. Narrow on purpose: it forces scene structure into the
    # structure encoder's skip features instead of the motion path (Wang et al., ICRA 2020).
    motion_dim: int = 128
    num_scales: int = 4
    # Disparity range of the depth decoder's sigmoid, in the model's (relative) depth units.
    min_depth: float = 0.1
    max_depth: float = 100.0
    # Keep the flow branch (motion encoder + flow decoder) beside the depth decoder. Needed for
    # online adaptation; False reproduces the paper's encoder-only finetuning.
    flow_branch: bool = True
    # Pose network for monodepth2-style self-supervised depth with known intrinsics.
    pose_branch: bool = True
    # How the structure encoder normalises its input: 'imagenet' (fixed ImageNet statistics,
    # monodepth2) or 'per_image' (each frame's own brightness and contrast taken out first:
    # haze, glare and exposure change them without changing the scene).
    input_norm: str = 'imagenet'

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown encoder '{self.encoder}'; choose from "
                             f"{', '.join(ENCODERS)}")
        for name in ('height', 'width'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < MIN_SIZE or value % SIZE_MULTIPLE:
                raise ValueError(f'{name} must be a multiple of {SIZE_MULTIPLE} and >= {MIN_SIZE}'
                                 f', got {value!r}')
        if not 1 <= self.num_scales <= 4:
            raise ValueError(f'num_scales must be in 1..4, got {self.num_scales}')
        if self.motion_dim < 1:
            raise ValueError(f'motion_dim must be positive, got {self.motion_dim}')
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm '{self.input_norm}'; choose from "
                             f"{', '.join(INPUT_NORMS)}")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f'need 0 < min_depth < max_depth, got {self.min_depth}, '
                             f'{self.max_depth}')

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Rebuild from a checkpoint's dict; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown ModelConfig keys {unknown}; known keys: {sorted(known)}')
        return cls(**values)


def aspect_network_size(height, width, pixels, multiple=SIZE_MULTIPLE, min_size=MIN_SIZE):
    """(h, w), multiples of `multiple`, with about `pixels` pixels and the aspect of a
    `height` x `width` image: the network size that serves a camera without squashing it.

    Candidates within 0.75-1.35x the pixel budget are ranked by aspect error first (log ratio),
    then by distance to the budget. Measured picks for a 320x96 budget: 1242x375 (KITTI) ->
    96x320, 1600x900 (16:9) -> 128x224, 640x480 (4:3) -> 160x224, 480x848 (portrait) -> 224x128.
    """
    if height <= 0 or width <= 0 or pixels <= 0:
        raise ValueError(f'need a positive image size and pixel budget, got {height}x{width}, '
                         f'{pixels}')
    aspect = width / height
    best, best_score = None, None
    for h in range(min_size, 8 * min_size + 1, multiple):
        for w in range(min_size, 16 * min_size + 1, multiple):
            area = h * w
            if not 0.75 * pixels <= area <= 1.35 * pixels:
                continue
            score = (round(abs(math.log(w / h / aspect)), 2), abs(math.log(area / pixels)))
            if best_score is None or score < best_score:
                best, best_score = (h, w), score
    if best is None:  # a budget below the smallest network: the smallest that keeps the aspect
        best = (min_size, max(min_size, round(min_size * aspect / multiple) * multiple))
    return best
