"""Training and evaluation data for the offline commands.

Data specs on the command line:
  PATH                        a video file, an image folder, a ROS 2 bag, or a folder written by
                              `structflow render` (its rgb/ frames are used)
  synthetic:DOMAIN[:N[:SEED]] N frames (default 200) of the synthetic world, rendered in memory
                              at the model size (ground-truth depth/flow available)
"""
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from structflow_ros.core.inference import network_frame
from structflow_ros.data.pairs import FramePairDataset, PairSamplingConfig, collate
from structflow_ros.data.sources import ArraySource, Frame, SourceError, open_source

SYNTHETIC_PREFIX = 'synthetic:'
DEFAULT_SYNTHETIC_FRAMES = 200


@dataclass(frozen=True)
class SyntheticSpec:
    domain: str
    frames: int = DEFAULT_SYNTHETIC_FRAMES
    seed: int = 0

    @classmethod
    def parse(cls, text):
        parts = text[len(SYNTHETIC_PREFIX):].split(':')
        try:
            frames = int(parts[1]) if len(parts) > 1 and parts[1] else DEFAULT_SYNTHETIC_FRAMES
            seed = int(parts[2]) if len(parts) > 2 else 0
        except ValueError:
            raise ValueError(f"bad data spec '{text}': expected synthetic:DOMAIN[:FRAMES[:SEED]], "
                             'e.g. synthetic:day:200:1') from None
        if len(parts) > 3 or not parts[0] or frames < 2:
            raise ValueError(f"bad data spec '{text}': expected synthetic:DOMAIN[:FRAMES[:SEED]] "
                             'with FRAMES >= 2')
        return cls(parts[0], frames, seed)

    def __str__(self):
        return f'{SYNTHETIC_PREFIX}{self.domain}:{self.frames}:{self.seed}'


@functools.lru_cache(maxsize=16)
def render_synthetic(spec: SyntheticSpec, height: int, width: int):
    """Render (and cache per process) a synthetic sequence at the model size."""
    from structflow_ros.data.synthetic import render_sequence
    return tuple(render_sequence(spec.domain, spec.frames, height, width, seed=spec.seed))


def resolve_path(path):
    """A folder written by `structflow render` trains on its rgb/ frames."""
    path = Path(path)
    if path.is_dir() and (path / 'camera.json').is_file() and (path / 'rgb').is_dir():
        return path / 'rgb'
    return path


def describe(spec):
    return str(spec)


def video_source(spec, height, width):
    """A pair-sampling source for one data spec (validated now, read lazily later)."""
    if isinstance(spec, str) and spec.startswith(SYNTHETIC_PREFIX):
        parsed = SyntheticSpec.parse(spec)
        frames = render_synthetic(parsed, height, width)
        return ArraySource([Frame(f.rgb, f.stamp_ns, f.index) for f in frames],
                           name=str(parsed))
    path = resolve_path(spec)
    source = open_source(path)  # raises SourceError naming the path and accepted kinds
    if source.num_frames == 0:
        raise SourceError(f'{spec}: no frames')
    return source


def pair_dataset(specs, height, width, seed=0, augment=True, strides=(1, 2)):
    if not specs:
        raise ValueError('no training data given: pass --data with videos, image folders, '
                         'bags or synthetic:DOMAIN specs')
    sources = [video_source(spec, height, width) for spec in specs]
    config = PairSamplingConfig(height=height, width=width, seed=seed, augment=augment,
                                strides=tuple(strides))
    return FramePairDataset(sources, config)


def infinite_batches(dataset, batch_size, seed=0, rank=0, world_size=1):
    """Endless batches; each rank draws its own stream (seed + rank), epochs reshuffle."""
    if hasattr(dataset, 'config') and hasattr(dataset.config, 'seed'):
        dataset.config.seed = seed + 1000 * rank
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=collate,
                        drop_last=True)
    for epoch in itertools.count():
        if hasattr(dataset, 'set_epoch'):
            dataset.set_epoch(epoch)
        produced = 0
        for batch in loader:
            produced += 1
            yield {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if produced == 0:
            raise ValueError(f'the training data gave no batch of {batch_size} pairs; give more '
                             'frames or a smaller --batch-size')


class DepthPairDataset(IterableDataset):
    """Consecutive synthetic frames with ground truth for finetuning.

    Yields frame0, frame1 (for the flow loss and self-supervised depth), K and, for frames in
    the labelled subset, depth_gt/depth_valid (others get an all-false mask, so one batch can
    mix labelled and unlabelled pairs). Horizontal flips keep K consistent.
    """

    def __init__(self, sequences, labelled_per_sequence=None, seed=0, flip=True,
                 max_depth=80.0):
        self.sequences = [list(seq) for seq in sequences]
        if not self.sequences or min(len(s) for s in self.sequences) < 2:
            raise ValueError('DepthPairDataset needs sequences of at least 2 frames')
        self.seed, self.flip, self.max_depth = seed, flip, max_depth
        self.labelled = []
        rng = np.random.default_rng(seed)
        for seq in self.sequences:
            count = len(seq) - 1
            keep = count if labelled_per_sequence is None else min(labelled_per_sequence, count)
            self.labelled.append(set(rng.choice(count, size=keep, replace=False).tolist()))
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng(self.seed + 7919 * self.epoch)
        items = [(s, i) for s, seq in enumerate(self.sequences) for i in range(len(seq) - 1)]
        for s, i in (items[j] for j in rng.permutation(len(items))):
            first, second = self.sequences[s][i], self.sequences[s][i + 1]
            yield self._sample(first, second, i in self.labelled[s], rng)

    def _sample(self, first, second, labelled, rng):
        # The served preprocessing (rendered at the network size: no resize happens).
        frame0 = network_frame(first.rgb, first.rgb.shape[:2])[0]  # (3, H, W)
        frame1 = network_frame(second.rgb, second.rgb.shape[:2])[0]
        depth = torch.from_numpy(np.ascontiguousarray(first.depth, np.float32))[None]
        valid = torch.from_numpy(first.depth_valid.astype(bool))[None] & (depth < self.max_depth)
        if not labelled:
            valid = torch.zeros_like(valid)
        K = torch.as_tensor(np.asarray(first.K, dtype=np.float32))
        if self.flip and rng.random() < 0.5:
            frame0, frame1, depth, valid = (t.flip(-1) for t in (frame0, frame1, depth, valid))
            K = K.clone()
            K[0, 2] = frame0.shape[-1] - 1 - K[0, 2]
        return {'frame0': frame0, 'frame1': frame1, 'depth_gt': depth, 'depth_valid': valid,
                'K': K}


def depth_collate(samples):
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def depth_batches(dataset, batch_size, seed=0, rank=0, world_size=1):
    dataset.seed = seed + 1000 * rank
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=depth_collate,
                        drop_last=True)
    for epoch in itertools.count():
        dataset.set_epoch(epoch)
        yield from loader


def load_rendered_folder(path):
    """Frames of a folder written by `structflow render` (rgb, depth, K) for evaluation."""
    from structflow_ros.data.render_folder import RenderFolderError, render_folder_frames
    try:
        return list(render_folder_frames(path))
    except RenderFolderError as error:
        raise SourceError(str(error)) from None
