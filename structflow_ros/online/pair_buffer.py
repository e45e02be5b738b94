"""Frame pairs from the live camera for on-robot adaptation: bounded, diverse, held-out aware.

Fed from the per-frame path right after decode (`add_frame`, serving thread); read by the
adapter thread (`sample`, `holdout`). No ROS. What it keeps:
- consecutive frames become a pair (t-1, t) unless the camera barely moved (CoMoDA and CL-SLAM
  skip those: no flow signal, and a parked robot would otherwise fill the buffer with one view)
  or the frames are too far apart in time (the camera stopped, or frames were dropped);
- every `holdout_every`-th accepted pair goes to a held-out set that training never samples
  (the adapter's gate scores candidates on it), the rest to the training side;
- the training side is the newest `recent` pairs plus a reservoir of `reservoir` pairs kept
  diverse (CL-SLAM): when full, a new pair replaces the most redundant one (the pair closest
  to its nearest neighbour in a small grey thumbnail space) only if the new pair is less
  redundant than that one;
- frames are stored at the training size as uint8, so memory is bounded by the counts:
  `max_bytes()` says how much.
"""
import collections
import threading
from dataclasses import dataclass

import numpy as np
import torch

from structflow_ros.data.pairs import prepare_frame, static_difference


@dataclass
class PairBufferConfig:
    """Sizes and thresholds of the pair buffer (training size and the skip rules)."""

    height: int = 96  # frames are stored at the network's training size
    width: int = 320
    recent: int = 32  # newest training pairs kept
    reservoir: int = 100  # diverse older training pairs (CL-SLAM keeps about 100)
    holdout: int = 24  # held-out pairs kept (newest), never sampled for training
    holdout_every: int = 5  # every n-th accepted pair is held out
    # Mean |grey0 - grey1| (0-255) on 64-pixel-wide grey frames below which a pair is static
    # (the offline sampler's rule and threshold: a still camera with noise measures ~0.15).
    static_threshold: float = 1.0
    static_width: int = 64
    max_gap_s: float = 0.5  # frames further apart are not paired

    def __post_init__(self):
        for name in ('height', 'width', 'recent', 'reservoir', 'holdout', 'holdout_every',
                     'static_width'):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f'{name} must be an integer >= 1, got {getattr(self, name)!r}')
        if not self.static_threshold >= 0 or not self.max_gap_s > 0:
            raise ValueError('static_threshold must be >= 0 and max_gap_s > 0, got '
                             f'{self.static_threshold}, {self.max_gap_s}')


@dataclass
class _Pair:
    frame0: np.ndarray  # (H, W, 3) uint8 at the training size
    frame1: np.ndarray
    stamp_ns: int  # of frame1
    descriptor: np.ndarray  # small grey thumbnail of frame0, flattened, float32


class PairBuffer:
    """Thread-safe store of live frame pairs; see the module docstring."""

    def __init__(self, config=None, seed=0):
        self.config = config or PairBufferConfig()
        self._lock = threading.Lock()
        self._previous = None  # (resized, small grey, stamp_ns, source (H, W)) of the last frame
        self._recent = collections.deque(maxlen=self.config.recent)
        self._reservoir = []
        self._holdout = collections.deque(maxlen=self.config.holdout)
        self._rng = np.random.default_rng(seed)
        self.counts = collections.Counter()

    def add_frame(self, rgb, stamp_ns):
        """Offer a decoded RGB uint8 frame (any size) with its stamp; returns what happened:
        'first', 'paired', 'held_out', 'static', 'gap', 'out_of_order' or 'size_change'
        (the camera changed resolution: two frames of different fields of view are no pair)."""
        resized, small = prepare_frame(rgb, self.config.height, self.config.width,
                                       self.config.static_width)
        with self._lock:
            previous = self._previous
            self._previous = (resized, small, int(stamp_ns), rgb.shape[:2])
            outcome = self._pair_with(previous, resized, small, int(stamp_ns), rgb.shape[:2])
            self.counts[outcome] += 1
            return outcome

    def _pair_with(self, previous, resized, small, stamp_ns, source_size):
        if previous is None:
            return 'first'
        frame0, small0, stamp0, source_size0 = previous
        if source_size0 != source_size:
            return 'size_change'
        gap_s = (stamp_ns - stamp0) * 1e-9
        if gap_s <= 0:
            return 'out_of_order'
        if gap_s > self.config.max_gap_s:
            return 'gap'
        if static_difference(small0, small) < self.config.static_threshold:
            return 'static'
        pair = _Pair(frame0, resized, stamp_ns, small0.astype(np.float32).ravel() / 255.0)
        accepted = self.counts['paired'] + self.counts['held_out']
        if accepted % self.config.holdout_every == self.config.holdout_every - 1:
            self._holdout.append(pair)
            return 'held_out'
        if len(self._recent) == self._recent.maxlen:
            self._keep_diverse(self._recent[0])  # the oldest recent pair leaves for the reservoir
        self._recent.append(pair)
        return 'paired'

    def _keep_diverse(self, pair):
        if len(self._reservoir) < self.config.reservoir:
            self._reservoir.append(pair)
            return
        members = np.stack([p.descriptor for p in self._reservoir])  # (N, D)
        squared = (members ** 2).sum(1)  # (N,)
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: an (N, N) matrix, never an (N, N, D) one.
        distances = squared[:, None] + squared[None, :] - 2.0 * members @ members.T  # (N, N)
        np.fill_diagonal(distances, np.inf)
        nearest = distances.min(1)  # each member's distance to its nearest neighbour
        most_redundant = int(nearest.argmin())
        candidate = ((members - pair.descriptor) ** 2).sum(-1)  # (N,)
        candidate[most_redundant] = np.inf  # it would leave: not a neighbour any more
        if candidate.min() > nearest[most_redundant]:
            self._reservoir[most_redundant] = pair
            self.counts['reservoir_replaced'] += 1

    def __len__(self):
        with self._lock:
            return len(self._recent) + len(self._reservoir)

    def sample(self, batch_size, recent_fraction=0.5):
        """A training batch {'frame0', 'frame1'} of uint8 (B, 3, H, W) tensors: about
        `recent_fraction` from the newest pairs, the rest from the reservoir. None when the
        training side is empty. Held-out pairs are never returned."""
        with self._lock:
            recent, reservoir = list(self._recent), list(self._reservoir)
        if not recent and not reservoir:
            return None
        from_recent = int(round(batch_size * recent_fraction)) if reservoir else batch_size
        from_recent = min(from_recent, batch_size) if recent else 0
        chosen = [recent[i] for i in self._rng.integers(0, len(recent), from_recent)] \
            if from_recent else []
        rest = batch_size - len(chosen)
        pool = reservoir or recent
        chosen += [pool[i] for i in self._rng.integers(0, len(pool), rest)]
        return _batch(chosen)

    def holdout(self):
        """The held-out pairs as one batch (or None): what a gate scores candidates on."""
        with self._lock:
            pairs = list(self._holdout)
        return _batch(pairs) if pairs else None

    def max_bytes(self):
        """Upper bound of the frame memory this buffer can hold."""
        config = self.config
        frame = config.height * config.width * 3
        pairs = config.recent + config.reservoir + config.holdout
        return pairs * 2 * frame + (pairs + 1) * frame  # + descriptors and the last frame

    def nbytes(self):
        with self._lock:
            pairs = list(self._recent) + self._reservoir + list(self._holdout)
        return sum(p.frame0.nbytes + p.frame1.nbytes + p.descriptor.nbytes for p in pairs)

    def stats(self):
        with self._lock:
            return {'recent': len(self._recent), 'reservoir': len(self._reservoir),
                    'holdout': len(self._holdout), **dict(self.counts)}


def _batch(pairs):
    def stack(frames):
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W)
    return {'frame0': stack([p.frame0 for p in pairs]),
            'frame1': stack([p.frame1 for p in pairs])}
