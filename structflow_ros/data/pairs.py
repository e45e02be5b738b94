"""Frame pairs from uncalibrated video for the self-supervised flow loss.

Geometric pretraining (Wang et al., ICRA 2020) learns flow between frames t and t + s of any
video; no intrinsics are needed. `FramePairDataset` turns many sources into a shuffled stream
of training pairs:

- per source, a sliding window of max(strides) + 1 resized frames (memory stays bounded, no
  video is loaded whole); each new frame becomes frame1 of one pair with a random stride;
- near-static pairs (a camera that does not move gives no flow signal, CoMoDA skips them too)
  are dropped by a cheap photometric test on small grey frames;
- several sources are read at once and pairs pass through a shuffle buffer, so a batch mixes
  files; DataLoader workers each take their share (by source, or by frame when there are fewer
  sources than workers);
- augmentations are applied identically to both frames of a pair (photometric jitter as
  monodepth2 uses it, horizontal flip), so correspondence is preserved.

Usage::

    dataset = FramePairDataset(['drive.mp4', 'bag_dir/'], PairSamplingConfig(height=96, width=320))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate)
    for epoch in range(n):
        dataset.set_epoch(epoch)
        for batch in loader:  # batch['frame0']: (B, 3, H, W) float32 in [0, 1]
            ...
"""
import collections
import math
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from structflow_ros.core.inference import network_frame_uint8
from structflow_ros.data.sources import SourceError, as_source

# ITU-R BT.601 luma weights (what cv2.COLOR_RGB2GRAY uses).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane, which keeps grey grey.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], dtype=np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclass
class PairSamplingConfig:
    """How training pairs are drawn and augmented."""

    height: int = 192  # model input size; 640x192 is the paper's/monodepth2's KITTI size
    width: int = 640
    strides: Tuple[int, ...] = (1, 2)  # frame gaps to draw from; 2 doubles the flow magnitude
    skip_static: bool = True
    # Mean |grey0 - grey1| (0-255 scale) on frames shrunk to static_width pixels wide, below
    # which a pair is static. Shrinking averages sensor noise away: measured at 640x192, a still
    # camera with noise sigma 3 gives 0.15, the hand-held corridor clip (slow walk) 3.4-3.8,
    # KITTI driving 12-22.
    static_threshold: float = 1.0
    static_width: int = 64
    augment: bool = True  # master switch for flip and jitter (off for evaluation)
    flip_prob: float = 0.5  # horizontal flip of both frames
    # Colour jitter as in monodepth2 (torchvision ColorJitter(0.2, 0.2, 0.2, 0.1), p = 0.5):
    # factors drawn from [1 - x, 1 + x]; hue as a fraction of a full turn, in [-hue, hue].
    jitter_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.1
    # Random crops at several network sizes ((h, w) pairs, multiples of 32): each pair draws a
    # size, cuts a window of that aspect (a `crop_scale` fraction of the largest that fits, at a
    # random place) from both full frames and resizes it, so the network learns every camera
    # shape it will be served at. Empty: the whole frame resized to height x width (serving's
    # and the live pair buffer's preprocessing).
    sizes: Tuple[Tuple[int, int], ...] = ()
    crop_scale: Tuple[float, float] = (0.6, 1.0)
    max_open_sources: int = 4  # sources read at once (interleaved); bounds open files/memory
    # Pairs held back for shuffling; each holds two uint8 frames (0.7 MB at 640x192).
    shuffle_buffer: int = 64
    seed: int = 0

    def __post_init__(self):
        if not self.strides or min(self.strides) < 1:
            raise ValueError(f'strides must be a non-empty tuple of ints >= 1, got '
                             f'{self.strides}')
        if self.height < 1 or self.width < 1:
            raise ValueError(f'height and width must be >= 1, got {self.height}x{self.width}')
        for name in ('flip_prob', 'jitter_prob'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'{name} must be in [0, 1], got {getattr(self, name)}')
        if self.max_open_sources < 1:
            raise ValueError(f'max_open_sources must be >= 1, got {self.max_open_sources}')
        self.strides = tuple(int(s) for s in self.strides)
        self.sizes = tuple((int(h), int(w)) for h, w in self.sizes)
        if any(h < 1 or w < 1 for h, w in self.sizes):
            raise ValueError(f'sizes must be (height, width) pairs >= 1, got {self.sizes}')
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f'crop_scale must satisfy 0 < low <= high <= 1, got '
                             f'{self.crop_scale}')


def prepare_frame(image: np.ndarray, height: int, width: int, static_width: int = 64
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """RGB uint8 frame -> (frame at height x width, preprocessed exactly as the served network
    sees it (core.inference.network_frame), small grey frame `static_width` pixels wide for the
    near-static test). Offline pairs and the live pair buffer use this one function."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SourceError(f'frames must be RGB uint8 (H, W, 3), got {image.dtype} '
                          f'{image.shape}')
    resized = network_frame_uint8(image, (height, width))
    small_height = max(1, round(static_width * height / width))
    grey = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (static_width, small_height), interpolation=cv2.INTER_AREA)
    return resized, small


def small_grey(image: np.ndarray, static_width: int = 64) -> np.ndarray:
    """The near-static test's small grey frame of a full-size RGB frame."""
    small_height = max(1, round(static_width * image.shape[0] / image.shape[1]))
    grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (static_width, small_height), interpolation=cv2.INTER_AREA)


def random_window(height: int, width: int, size: Tuple[int, int],
                  crop_scale: Tuple[float, float], rng: np.random.Generator
                  ) -> Tuple[int, int, int, int]:
    """(y0, x0, box_h, box_w): a random window of an image with the aspect of `size` (h, w),
    a `crop_scale` fraction of the largest such window, at a random place."""
    aspect = size[1] / size[0]
    if width / height > aspect:  # the largest window of that aspect: full height
        box_h, box_w = height, height * aspect
    else:
        box_h, box_w = width / aspect, width
    scale = rng.uniform(*crop_scale)
    box_h, box_w = max(2, int(box_h * scale)), max(2, int(box_w * scale))
    return (int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1)),
            box_h, box_w)


def random_crop_pair(image0: np.ndarray, image1: np.ndarray, size: Tuple[int, int],
                     crop_scale: Tuple[float, float], rng: np.random.Generator
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """The same random window of both frames, resized to `size` with the served
    preprocessing."""
    y0, x0, box_h, box_w = random_window(image0.shape[0], image0.shape[1], size, crop_scale,
                                         rng)
    return tuple(network_frame_uint8(np.ascontiguousarray(img[y0:y0 + box_h, x0:x0 + box_w]),
                                     size) for img in (image0, image1))


def static_difference(grey0: np.ndarray, grey1: np.ndarray) -> float:
    """Mean absolute grey difference (0-255 scale) of two small grey frames."""
    return float(np.abs(grey0.astype(np.float32) - grey1.astype(np.float32)).mean())


def jitter_transform(rng: np.random.Generator, config: PairSamplingConfig,
                     mean_grey: float) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one colour jitter as an affine map rgb -> A @ rgb + offset (for both frames).

    Brightness, contrast (around `mean_grey`, frame0's mean), saturation and hue compose into
    one 3x3 matrix, so the same transform hits every pixel of both frames and clipping happens
    once at the end.
    """
    brightness = rng.uniform(1 - config.brightness, 1 + config.brightness)
    contrast = rng.uniform(1 - config.contrast, 1 + config.contrast)
    saturation = rng.uniform(1 - config.saturation, 1 + config.saturation)
    angle = rng.uniform(-config.hue, config.hue) * 2 * math.pi
    desaturate = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), _LUMA)
    rotation = np.array([[1, 0, 0],
                         [0, math.cos(angle), -math.sin(angle)],
                         [0, math.sin(angle), math.cos(angle)]])
    hue_shift = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ
    matrix = contrast * brightness * (hue_shift @ desaturate)
    # Desaturation and hue rotation keep grey (1, 1, 1) fixed, so the contrast pivot stays grey.
    offset = np.full(3, (1 - contrast) * brightness * mean_grey)
    return matrix.astype(np.float32), offset.astype(np.float32)


def jitter_tensors(frames, rng: np.random.Generator, config: PairSamplingConfig):
    """One colour jitter (`jitter_transform`, drawn from `config`) applied alike to every frame
    of a pair or triplet: (3, H, W) float tensors in [0, 1]; the first frame's mean grey is the
    contrast pivot. The same map on every frame keeps the photometric losses between them
    meaningful."""
    mean_grey = float(frames[0].reshape(3, -1).mean(1).numpy() @ _LUMA)
    matrix, offset = jitter_transform(rng, config, mean_grey)
    matrix, offset = torch.from_numpy(matrix), torch.from_numpy(offset)
    # (3, H, W): out[c] = sum_k matrix[c, k] * frame[k] + offset[c]
    return [(torch.einsum('ck,khw->chw', matrix, frame.float()) + offset[:, None, None])
            .clamp_(0.0, 1.0) for frame in frames]


class FramePairDataset(IterableDataset):
    """Shuffled training pairs {'frame0', 'frame1', 'source', 'index', 'stride', 'flipped'}.

    sources: paths (opened with open_source), VideoSource objects, callables returning a source
    (opened lazily, e.g. in each worker), lists of RGB uint8 arrays, or re-iterable sequences
    of Frame. Generators are single-use: pass a factory instead.
    Frames are (3, H, W) float32 tensors in [0, 1]; 'index' is frame0's Frame.index.

    Deterministic for a given seed, epoch (`set_epoch`) and number of DataLoader workers.
    `stats` counts pairs, static pairs skipped and frames read in the latest pass of this
    process (each DataLoader worker keeps its own copy).
    """

    def __init__(self, sources: Sequence, config: Optional[PairSamplingConfig] = None):
        super().__init__()
        if isinstance(sources, (str, bytes)) or not hasattr(sources, '__len__'):
            raise ValueError('sources must be a list of paths, VideoSources, callables or '
                             f'frame sequences, got {type(sources).__name__}')
        if len(sources) == 0:
            raise ValueError('FramePairDataset needs at least one source')
        self.sources = list(sources)
        self.config = config or PairSamplingConfig()
        self.epoch = 0
        self.stats = {'pairs': 0, 'static_skipped': 0, 'frames': 0}

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffling and augmentation of the next pass (deterministically)."""
        self.epoch = int(epoch)

    def _prepare(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        config = self.config
        return prepare_frame(image, config.height, config.width, config.static_width)

    def _pairs_of(self, position: int, item, rng: np.random.Generator,
                  shard: Optional[Tuple[int, int]]) -> Iterator[Dict]:
        """Pairs of one source: each frame (of this worker's share) becomes one frame1."""
        config = self.config
        source = as_source(item, name=f'source{position}')
        name = getattr(source, 'name', None) or f'source{position}'
        window = collections.deque(maxlen=max(config.strides) + 1)  # (resized, small, index)
        try:
            for frame_position, frame in enumerate(source):
                if config.sizes:  # random crops need the full frame
                    resized = np.asarray(frame.image)
                    small = small_grey(resized, config.static_width)
                else:
                    resized, small = self._prepare(frame.image)
                window.append((resized, small, int(frame.index)))
                self.stats['frames'] += 1
                if shard is not None and frame_position % shard[1] != shard[0]:
                    continue
                usable = [s for s in config.strides if s < len(window)]
                if not usable:
                    continue
                stride = int(usable[rng.integers(len(usable))])
                first, last = window[-1 - stride], window[-1]
                if first[1].shape != last[1].shape:  # a resolution change: no pair across it
                    continue
                if (config.skip_static
                        and static_difference(first[1], last[1]) < config.static_threshold):
                    self.stats['static_skipped'] += 1
                    continue
                frame0, frame1 = first[0], last[0]
                if config.sizes:
                    size = config.sizes[int(rng.integers(len(config.sizes)))]
                    frame0, frame1 = random_crop_pair(frame0, frame1, size, config.crop_scale,
                                                      rng)
                yield {'frame0': frame0, 'frame1': frame1, 'source': name,
                       'index': first[2], 'stride': stride}
        finally:
            close = getattr(source, 'close', None)
            if close is not None and source is not item:
                close()

    def _finalize(self, pair: Dict, rng: np.random.Generator) -> Dict:
        """Augment identically and convert both frames to (3, H, W) float32 tensors."""
        config = self.config
        frame0 = pair['frame0'].astype(np.float32) * np.float32(1 / 255)  # (H, W, 3)
        frame1 = pair['frame1'].astype(np.float32) * np.float32(1 / 255)
        flipped = False
        if config.augment:
            if rng.random() < config.flip_prob:
                frame0, frame1 = frame0[:, ::-1], frame1[:, ::-1]
                flipped = True
            if rng.random() < config.jitter_prob:
                mean_grey = float(frame0.reshape(-1, 3).mean(axis=0) @ _LUMA)
                matrix, offset = jitter_transform(rng, config, mean_grey)
                frame0 = np.clip(frame0 @ matrix.T + offset, 0.0, 1.0)
                frame1 = np.clip(frame1 @ matrix.T + offset, 0.0, 1.0)
        return {
            'frame0': torch.from_numpy(np.ascontiguousarray(frame0.transpose(2, 0, 1))),
            'frame1': torch.from_numpy(np.ascontiguousarray(frame1.transpose(2, 0, 1))),
            'source': pair['source'], 'index': pair['index'], 'stride': pair['stride'],
            'flipped': flipped,
        }

    def __iter__(self) -> Iterator[Dict]:
        config = self.config
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        self.stats = {'pairs': 0, 'static_skipped': 0, 'frames': 0}
        # The source order is the same in every worker; everything else is per worker.
        order = np.random.default_rng([config.seed, self.epoch]).permutation(len(self.sources))
        rng = np.random.default_rng([config.seed, self.epoch, worker_id, num_workers])
        if len(self.sources) >= num_workers:
            pending = collections.deque(int(i) for i in order[worker_id::num_workers])
            shard = None
        else:  # fewer sources than workers: every worker reads all, keeps its share of frames
            pending = collections.deque(int(i) for i in order)
            shard = (worker_id, num_workers) if num_workers > 1 else None
        active: List[Iterator[Dict]] = []
        buffer: List[Dict] = []
        while active or pending:
            while pending and len(active) < config.max_open_sources:
                position = pending.popleft()
                active.append(self._pairs_of(position, self.sources[position], rng, shard))
            chosen = int(rng.integers(len(active)))
            try:
                pair = next(active[chosen])
            except StopIteration:
                active.pop(chosen)
                continue
            buffer.append(pair)
            if len(buffer) >= max(1, config.shuffle_buffer):
                yield self._pop_random(buffer, rng)
        while buffer:
            yield self._pop_random(buffer, rng)

    def _pop_random(self, buffer: List[Dict], rng: np.random.Generator) -> Dict:
        """Remove a random pair from the buffer (swap with the last) and finalise it."""
        chosen = int(rng.integers(len(buffer)))
        buffer[chosen], buffer[-1] = buffer[-1], buffer[chosen]
        self.stats['pairs'] += 1
        return self._finalize(buffer.pop(), rng)


def bucket_batches(items: Iterable[Dict], batch_size: int) -> Iterator[List[Dict]]:
    """Group pairs of equal frame size into lists of `batch_size` (pairs drawn at several
    sizes cannot share a tensor); each size's leftovers at the end are dropped."""
    pending: Dict[Tuple[int, ...], List[Dict]] = {}
    for item in items:
        bucket = pending.setdefault(tuple(item['frame0'].shape), [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield bucket
            pending[tuple(item['frame0'].shape)] = []


def collate(batch: Sequence[Dict]) -> Dict:
    """Stack pairs into a batch: frames (B, 3, H, W), index/stride/flipped tensors, names list."""
    if not batch:
        raise ValueError('cannot collate an empty batch')
    return {
        'frame0': torch.stack([item['frame0'] for item in batch]),  # (B, 3, H, W)
        'frame1': torch.stack([item['frame1'] for item in batch]),  # (B, 3, H, W)
        'source': [item['source'] for item in batch],
        'index': torch.tensor([item['index'] for item in batch], dtype=torch.long),
        'stride': torch.tensor([item['stride'] for item in batch], dtype=torch.long),
        'flipped': torch.tensor([item['flipped'] for item in batch], dtype=torch.bool),
    }
