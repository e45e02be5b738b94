"""Training and evaluation data for the offline commands.

Data specs on the command line:
  PATH[#OPTIONS]              a video file, an image folder, a ROS 2 bag, or a folder written by
                              `structflow render` (its rgb/ frames are used); OPTIONS crop,
                              stride, drop repeated frames or undistort (data/video_spec.py),
                              e.g. dash.mp4#crop=0:0.2:0:0,stride=3
  synthetic:DOMAIN[:N[:SEED]] N frames (default 200) of the synthetic world, rendered in memory
                              at the model size (ground-truth depth/flow available)
"""
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from structflow_ros.core.inference import network_frame
from structflow_ros.data.camera_artefacts import add_camera_artefacts
from structflow_ros.data.pairs import (FramePairDataset, PairSamplingConfig, bucket_batches,
                                       collate, jitter_tensors)
from structflow_ros.data.sources import ArraySource, Frame, SourceError

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
def render_synthetic(spec: SyntheticSpec, height: int, width: int, textures=None):
    """Render (and cache per process) a synthetic sequence at the model size; textures: a
    PhotoTextures bank for room scenes (finetune --photo-textures)."""
    from structflow_ros.data.synthetic import render_sequence
    return tuple(render_sequence(spec.domain, spec.frames, height, width, seed=spec.seed,
                                 textures=textures))


def resolve_path(path):
    """A folder written by `structflow render` trains on its rgb/ frames."""
    path = Path(path)
    if path.is_dir() and (path / 'camera.json').is_file() and (path / 'rgb').is_dir():
        return path / 'rgb'
    return path


def describe(spec):
    return str(spec)


# Synthetic frames for random-crop training are rendered this large, so that a crop of any
# training aspect is resized down (sharp), never up from the 320x96 model size.
CROP_RENDER_SIZE = (256, 512)
# Network sizes (h, w) that random-crop training draws from: the aspect_network_size picks for
# the camera shapes robots carry (KITTI-wide 3.3:1, 2:1, 16:9, 4:3, 6:5, portrait 9:16) at the
# 320x96 pixel budget.
TRAINING_SIZES = ((96, 320), (128, 256), (128, 224), (160, 224), (160, 192), (224, 128))
# Colour jitter of depth finetuning samples (`finetune --color-jitter`; every frame of a sample
# alike, half the samples). Contrast reaches down to 0.4x: indoor rooms teach that a plain,
# low-contrast view is a flat wall nearby, and without low-contrast streets in training a hazy
# street then came out flat (measured: held-out fog AbsRel 0.25 -> 0.73 after adding rooms;
# the same fog frames contrast-stretched: 0.20).
DEPTH_JITTER = PairSamplingConfig(height=1, width=1, jitter_prob=0.5, brightness=0.2,
                                  contrast=0.6, saturation=0.3, hue=0.05)


def video_source(spec, height, width):
    """A pair-sampling source for one data spec (validated now, read lazily later)."""
    from structflow_ros.data.video_spec import VideoSpec, open_spec
    if isinstance(spec, str) and spec.startswith(SYNTHETIC_PREFIX):
        parsed = SyntheticSpec.parse(spec)
        frames = render_synthetic(parsed, height, width)
        return ArraySource([Frame(f.rgb, f.stamp_ns, f.index) for f in frames],
                           name=str(parsed))
    parsed = VideoSpec.parse(spec)
    parsed = VideoSpec(str(resolve_path(parsed.path)), parsed.crop, parsed.stride,
                       parsed.max_frames, parsed.dedupe, parsed.calib, parsed.text)
    source = open_spec(parsed)  # raises SourceError naming the path and accepted kinds
    if source.num_frames == 0:
        raise SourceError(f'{spec}: no frames')
    return source


def pair_dataset(specs, height, width, seed=0, augment=True, strides=(1, 2), sizes=()):
    """Flow training pairs; `sizes` switches on random crops at those network sizes."""
    if not specs:
        raise ValueError('no training data given: pass --data with videos, image folders, '
                         'bags or synthetic:DOMAIN specs')
    render_hw = CROP_RENDER_SIZE if sizes else (height, width)
    sources = [video_source(spec, *render_hw) for spec in specs]
    config = PairSamplingConfig(height=height, width=width, seed=seed, augment=augment,
                                strides=tuple(strides), sizes=tuple(sizes))
    return FramePairDataset(sources, config)


def infinite_batches(dataset, batch_size, seed=0, rank=0, world_size=1):
    """Endless batches; each rank draws its own stream (seed + rank), epochs reshuffle."""
    if hasattr(dataset, 'config') and hasattr(dataset.config, 'seed'):
        dataset.config.seed = seed + 1000 * rank
    if getattr(getattr(dataset, 'config', None), 'sizes', ()):
        # Pairs come at several sizes: one tensor per size, so batch within each size; a size's
        # leftovers wait for the next epoch.
        yield from map(_tensors_only, map(collate, bucket_batches(
            epochs(dataset, 'the training data gave no pair'), batch_size)))
        return
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=collate,
                        drop_last=True)
    for epoch in itertools.count():
        if hasattr(dataset, 'set_epoch'):
            dataset.set_epoch(epoch)
        produced = 0
        for batch in loader:
            produced += 1
            yield _tensors_only(batch)
        if produced == 0:
            raise ValueError(f'the training data gave no batch of {batch_size} pairs; give more '
                             'frames or a smaller --batch-size')


def _tensors_only(batch):
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def epochs(dataset, empty_message):
    """The items of every epoch, one after the other (set_epoch between passes); raises
    ValueError(empty_message) when a whole pass gives nothing, instead of looping forever."""
    for epoch in itertools.count():
        if hasattr(dataset, 'set_epoch'):
            dataset.set_epoch(epoch)
        produced = 0
        for item in dataset:
            produced += 1
            yield item
        if produced == 0:
            raise ValueError(f'{empty_message}; give more frames')


class DepthPairDataset(IterableDataset):
    """Consecutive synthetic frames with ground truth for finetuning.

    Yields frame0, frame1 (for the flow loss and self-supervised depth), K and, for frames in
    the labelled subset, depth_gt/depth_valid (others get an all-false mask, so one batch can
    mix labelled and unlabelled pairs). Horizontal flips keep K consistent.
    """

    def __init__(self, sequences, labelled_per_sequence=None, seed=0, flip=True,
                 max_depth=80.0, jitter=None, camera_artefacts=None):
        self.sequences = [list(seq) for seq in sequences]
        if not self.sequences or min(len(s) for s in self.sequences) < 2:
            raise ValueError('DepthPairDataset needs sequences of at least 2 frames')
        self.seed, self.flip, self.max_depth = seed, flip, max_depth
        self.jitter = jitter  # a PairSamplingConfig's colour jitter (e.g. DEPTH_JITTER) or None
        # data.camera_artefacts.CameraArtefacts drawn onto the rendered frames, or None
        self.camera_artefacts = camera_artefacts
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
        if self.jitter is not None and rng is not None and rng.random() < self.jitter.jitter_prob:
            frame0, frame1 = jitter_tensors([frame0, frame1], rng, self.jitter)
        if self.camera_artefacts is not None and rng is not None and \
                rng.random() < self.camera_artefacts.prob:
            frame0, frame1 = add_camera_artefacts([frame0, frame1], rng, self.camera_artefacts)
        return {'frame0': frame0, 'frame1': frame1, 'depth_gt': depth, 'depth_valid': valid,
                'K': K}


def depth_collate(samples):
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def depth_batches(dataset, batch_size, seed=0, rank=0, world_size=1):
    """Endless batches of DepthPairDataset samples; sequences rendered at several sizes are
    batched within each size."""
    dataset.seed = seed + 1000 * rank
    yield from map(depth_collate, bucket_batches(
        epochs(dataset, 'the synthetic depth data gave no pair'), batch_size))


def load_rendered_folder(path):
    """Frames of a folder written by `structflow render` (rgb, depth, K) for evaluation."""
    from structflow_ros.data.render_folder import RenderFolderError, render_folder_frames
    try:
        return list(render_folder_frames(path))
    except RenderFolderError as error:
        raise SourceError(str(error)) from None


class CalibratedVideoDataset(IterableDataset):
    """Triplets of calibrated real video for monodepth2's self-supervised depth loss.

    specs: data specs with calib=FILE (undistorted, cropped by data/video_spec.py), each with K.
    Yields frame_prev, frame0 (the target), frame1 as (3, H, W) float tensors in [0, 1] and K
    for the network-size image: a random window of the aspect of one of `sizes` (the same for
    the three frames; K shifted by the window and scaled with the pixel-centre rule), flipped
    half the time (cx mirrored). Triplets where the camera barely moved (the pair sampler's
    static test on both gaps) are skipped: they teach the loss nothing. Frames are held in
    memory at most `max_width` pixels wide (K follows).
    """

    def __init__(self, specs, sizes, seed=0, crop_scale=(0.7, 1.0), flip=True,
                 max_width=640, static_threshold=1.0, jitter=None):
        from structflow_ros.data.camera import resize_intrinsics
        from structflow_ros.data.pairs import small_grey
        from structflow_ros.data.video_spec import VideoSpec, open_spec
        if not specs:
            raise ValueError('CalibratedVideoDataset needs at least one calibrated video spec')
        self.sizes = tuple(tuple(s) for s in sizes)
        self.seed, self.crop_scale, self.flip = seed, crop_scale, flip
        self.static_threshold = static_threshold
        self.jitter = jitter  # colour jitter config (DEPTH_JITTER) or None
        self.clips = []
        for text in specs:
            spec = VideoSpec.parse(text)
            if not spec.calib:
                raise ValueError(f"'{text}' has no calib=FILE: self-supervised depth needs the "
                                 'camera intrinsics (write them with `structflow calibrate`)')
            source = open_spec(spec)
            frames, smalls, K = [], [], None
            for frame in source:
                image = frame.image
                if K is None:
                    K = np.asarray(source.K, np.float64)
                if image.shape[1] > max_width:
                    size = (round(image.shape[0] * max_width / image.shape[1]), max_width)
                    K_small = resize_intrinsics(source.K, image.shape[:2], size)
                    image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
                    K = K_small
                frames.append(image)
                smalls.append(small_grey(image))
            source.close()
            if len(frames) < 3:
                raise ValueError(f'{text}: {len(frames)} frames after preparation; need 3')
            self.clips.append((str(spec), frames, smalls, K))
        self.epoch = 0
        self.stats = {'triplets': 0, 'static_skipped': 0}

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        from structflow_ros.data.pairs import static_difference
        rng = np.random.default_rng([self.seed, self.epoch])
        items = [(c, i) for c, clip in enumerate(self.clips) for i in range(1, len(clip[1]) - 1)]
        for c, i in (items[j] for j in rng.permutation(len(items))):
            _, frames, smalls, K = self.clips[c]
            if max(static_difference(smalls[i - 1], smalls[i]),
                   static_difference(smalls[i], smalls[i + 1])) < self.static_threshold:
                self.stats['static_skipped'] += 1
                continue
            self.stats['triplets'] += 1
            yield self._sample(frames[i - 1:i + 2], K, rng)

    def _sample(self, images, K, rng):
        from structflow_ros.data.camera import resize_intrinsics
        from structflow_ros.data.pairs import random_window
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        y0, x0, box_h, box_w = random_window(*images[0].shape[:2], size, self.crop_scale, rng)
        K = np.array(K, np.float64)
        K[0, 2] -= x0
        K[1, 2] -= y0
        K = resize_intrinsics(K, (box_h, box_w), size)
        tensors = [network_frame(np.ascontiguousarray(img[y0:y0 + box_h, x0:x0 + box_w]),
                                 size)[0] for img in images]  # (3, h, w) each
        if self.flip and rng.random() < 0.5:
            tensors = [t.flip(-1) for t in tensors]
            K[0, 2] = size[1] - 1 - K[0, 2]
        if self.jitter is not None and rng.random() < self.jitter.jitter_prob:
            tensors = jitter_tensors(tensors, rng, self.jitter)
        return {'frame_prev': tensors[0], 'frame0': tensors[1], 'frame1': tensors[2],
                'K': torch.as_tensor(K, dtype=torch.float32)}


def video_depth_batches(dataset, batch_size, seed=0, rank=0, world_size=1):
    """Endless batches of CalibratedVideoDataset triplets, one size per batch."""
    dataset.seed = seed + 1000 * rank
    yield from map(depth_collate, bucket_batches(
        epochs(dataset, 'the calibrated video gave no moving triplet'), batch_size))


def alternate(*streams):
    """Round-robin over endless batch streams (one optimiser step each)."""
    for batches in zip(*streams):
        yield from batches


def downsample_labels(depth: np.ndarray, valid: np.ndarray, size) -> tuple:
    """Sparse labels (H, W) -> (depth, valid) at `size` (h, w): the mean log depth of the
    labelled pixels under each output pixel (area-weighted); an output pixel is labelled when
    at least half its area was. Nearest-neighbour would alias thin structures; a plain average
    of depth would mix a labelled pixel with the zeros around it."""
    weight = valid.astype(np.float32)
    log_depth = np.where(valid, np.log(np.maximum(depth, 1e-6)), 0.0).astype(np.float32)
    target = (int(size[1]), int(size[0]))
    area = cv2.resize(weight, target, interpolation=cv2.INTER_AREA)
    total = cv2.resize(log_depth, target, interpolation=cv2.INTER_AREA)
    keep = area >= 0.5
    out = np.where(keep, np.exp(total / np.maximum(area, 1e-6)), 0.0).astype(np.float32)
    return out, keep


class TeacherDepthDataset(IterableDataset):
    """Real frames with the two-view geometry teacher's labels (data/teacher.py caches).

    Yields frame0 (a labelled frame), frame1 (its pair partner, for the flow loss) as (3, h, w)
    float tensors in [0, 1], teacher_depth (1, h, w) (up to scale; 0 where unlabelled) and
    teacher_valid (1, h, w): a random window of the aspect of one of `sizes` (the same for
    both frames and the labels), flipped half the time. Samples with fewer than
    `min_pixels` labelled network pixels are skipped.
    """

    def __init__(self, paths, sizes, seed=0, crop_scale=(0.7, 1.0), flip=True, jitter=None,
                 min_pixels=64):
        from structflow_ros.data.teacher import cache_files, read_cache
        self.clips = [read_cache(path) for path in cache_files(paths)]
        self.clips = [clip for clip in self.clips if len(clip.index)]
        if not self.clips:
            raise ValueError(f'the teacher caches {list(map(str, paths))} hold no labelled '
                             'frame (every clip abstained: static or too short)')
        self.sizes = tuple(tuple(s) for s in sizes)
        self.seed, self.crop_scale, self.flip = seed, crop_scale, flip
        self.jitter, self.min_pixels = jitter, min_pixels
        self.epoch = 0

    @property
    def labelled_frames(self):
        return sum(len(clip.index) for clip in self.clips)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        items = [(c, k) for c, clip in enumerate(self.clips) for k in range(len(clip.index))]
        for c, k in (items[j] for j in rng.permutation(len(items))):
            sample = self._sample(self.clips[c], k, rng)
            if sample is not None:
                yield sample

    def _sample(self, clip, k, rng):
        from structflow_ros.data.pairs import random_window
        size = self.sizes[int(rng.integers(len(self.sizes)))]
        first, second = clip.images[clip.index[k]], clip.images[clip.partner[k]]
        y0, x0, box_h, box_w = random_window(*first.shape[:2], size, self.crop_scale, rng)
        window = (slice(y0, y0 + box_h), slice(x0, x0 + box_w))
        labels = clip.depth[k][window].astype(np.float32)
        depth, valid = downsample_labels(labels, labels > 0, size)
        if valid.sum() < self.min_pixels:
            return None
        frames = [network_frame(np.ascontiguousarray(image[window]), size)[0]
                  for image in (first, second)]  # (3, h, w) each
        depth = torch.from_numpy(depth)[None]
        valid = torch.from_numpy(valid)[None]
        if self.flip and rng.random() < 0.5:
            frames = [t.flip(-1) for t in frames]
            depth, valid = depth.flip(-1), valid.flip(-1)
        if self.jitter is not None and rng.random() < self.jitter.jitter_prob:
            frames = jitter_tensors(frames, rng, self.jitter)
        return {'frame0': frames[0], 'frame1': frames[1], 'teacher_depth': depth,
                'teacher_valid': valid}


def teacher_depth_batches(dataset, batch_size, seed=0, rank=0, world_size=1):
    """Endless batches of TeacherDepthDataset samples, one size per batch."""
    dataset.seed = seed + 1000 * rank
    yield from map(depth_collate, bucket_batches(
        epochs(dataset, 'the teacher caches gave no labelled sample'), batch_size))
