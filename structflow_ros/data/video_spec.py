"""Training video specs: a path plus what to cut away and which frames to keep.

Real dashcam clips carry dashboards, A-pillars and burned-in time stamps, and many repeat
frames (25 fps content in a 30 or 50 fps container, a frozen encoder). A spec says, per
source, what to do about it:

  PATH[#key=value,key=value...]
    crop=TOP:BOTTOM:LEFT:RIGHT   fractions of the height/width cut from each side
                                 (e.g. crop=0:0.2:0:0 drops a dashboard in the bottom 20 %)
    stride=N                     keep every N-th frame after duplicates are dropped (30 fps
                                 dashcams at stride 3 move about as far per pair as KITTI's 10 Hz)
    max=N                        stop after N kept frames
    dedupe=0|1                   drop a frame that repeats the previous kept one (default 1)
    calib=FILE                   camera_info YAML (`structflow calibrate`) or KITTI calib.txt:
                                 frames are undistorted and the source carries K (for
                                 self-supervised depth finetuning)

`PreparedSource` applies a spec to any `open_source` input, so pretraining, finetuning and
replay read the same frames. Duplicates are judged on small grey frames (the pair sampler's
static test, tighter): measured on the Montana clip at 64 px wide, repeated frames differ by
0.06-0.10 grey levels and consecutive distinct frames by 0.2-0.9.
"""
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np

from structflow_ros.data.pairs import small_grey
from structflow_ros.data.sources import Frame, SourceError, VideoSource, open_source

SPEC_KEYS = ('crop', 'stride', 'max', 'dedupe', 'calib')
# Mean |grey difference| (0-255) of two frames shrunk to 64 px wide below which the later one
# repeats the earlier (see the module docstring for the measurement).
DUPLICATE_THRESHOLD = 0.15
DUPLICATE_WIDTH = 64


@dataclass(frozen=True)
class VideoSpec:
    """One training source and its per-source preparation."""

    path: str
    # Fractions cut from (top, bottom, left, right).
    crop: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    stride: int = 1
    max_frames: Optional[int] = None
    dedupe: bool = True
    calib: Optional[str] = None
    text: str = field(default='', compare=False)

    def __post_init__(self):
        top, bottom, left, right = self.crop
        if min(self.crop) < 0 or top + bottom >= 0.9 or left + right >= 0.9:
            raise ValueError(f'crop {self.crop} of {self.path}: each fraction must be >= 0 and '
                             'top+bottom, left+right < 0.9 (crop=TOP:BOTTOM:LEFT:RIGHT)')
        if self.stride < 1:
            raise ValueError(f'stride must be >= 1, got {self.stride} ({self.path})')
        if self.max_frames is not None and self.max_frames < 2:
            raise ValueError(f'max must be >= 2, got {self.max_frames} ({self.path})')

    @classmethod
    def parse(cls, text: str) -> 'VideoSpec':
        path, _, options = str(text).partition('#')
        if not path:
            raise ValueError(f"bad data spec '{text}': no path before '#'")
        values = {}
        for item in filter(None, options.split(',')):
            key, equals, value = item.partition('=')
            if not equals or key not in SPEC_KEYS:
                raise ValueError(f"bad option '{item}' in data spec '{text}'; accepted: "
                                 f"{', '.join(k + '=...' for k in SPEC_KEYS)}")
            try:
                if key == 'crop':
                    parts = tuple(float(v) for v in value.split(':'))
                    if len(parts) != 4:
                        raise ValueError
                    values['crop'] = parts
                elif key == 'stride':
                    values['stride'] = int(value)
                elif key == 'max':
                    values['max_frames'] = int(value)
                elif key == 'dedupe':
                    if value not in ('0', '1'):
                        raise ValueError
                    values['dedupe'] = value == '1'
                else:
                    values['calib'] = value
            except ValueError:
                raise ValueError(f"bad value in '{item}' of data spec '{text}': crop=T:B:L:R "
                                 'fractions, stride/max integers, dedupe 0 or 1') from None
        return cls(path, text=str(text), **values)

    def __str__(self):
        return self.text or self.path


def crop_box(height: int, width: int, crop) -> Tuple[int, int, int, int]:
    """(y0, y1, x0, x1) pixel box left after cutting the crop fractions from each side."""
    top, bottom, left, right = crop
    y0, y1 = int(round(top * height)), height - int(round(bottom * height))
    x0, x1 = int(round(left * width)), width - int(round(right * width))
    return y0, y1, x0, x1


class PreparedSource(VideoSource):
    """A source read through a VideoSpec: undistort (calib), crop, drop duplicates, stride.

    `K` is the intrinsics of the yielded frames (after undistortion and the crop), or None
    without calib. `duplicates` counts the frames dropped as repeats in the latest pass.
    """

    def __init__(self, spec: VideoSpec):
        self.spec = spec
        path = Path(spec.path)
        self._raw = open_source(path)  # raises SourceError naming what is accepted
        self.calibration = None
        self._undistort_maps = None
        self.duplicates = 0
        raw_count = self._raw.num_frames
        options = str(spec).partition('#')[2]
        super().__init__(f'{self._raw.name}#{options}' if options else self._raw.name,
                         raw_count, stride=1, max_frames=spec.max_frames)
        self.K = None
        if spec.calib:
            from structflow_ros.data.calibration import load_calibration
            first = next(iter(self._raw)).image
            self.calibration = load_calibration(spec.calib, first.shape[:2])
            self.K = self._intrinsics(first.shape[:2])

    @property
    def num_frames(self):
        """Unknown in advance: duplicates are found while reading."""
        return None

    def _intrinsics(self, image_hw) -> np.ndarray:
        calib = self.calibration
        if tuple(image_hw) != (calib.height, calib.width):
            raise SourceError(f'{self.spec.path}: frames are {image_hw[1]}x{image_hw[0]} but '
                              f'{self.spec.calib} calibrates {calib.width}x{calib.height}')
        y0, _, x0, _ = crop_box(calib.height, calib.width, self.spec.crop)
        K = calib.undistorted_K.astype(np.float64).copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        return K

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        if self.calibration is not None:
            if self._undistort_maps is None:
                self._intrinsics(image.shape[:2])  # size check with a clear message
                self._undistort_maps = (self.calibration.undistort_maps()
                                        if np.any(self.calibration.D) else ())
            if self._undistort_maps:
                image = cv2.remap(image, *self._undistort_maps, interpolation=cv2.INTER_LINEAR)
        y0, y1, x0, x1 = crop_box(image.shape[0], image.shape[1], self.spec.crop)
        return np.ascontiguousarray(image[y0:y1, x0:x1])

    def _read(self) -> Iterator[Frame]:
        self.duplicates = 0
        last_small = None
        kept = 0
        for frame in self._raw:
            image = self._prepare(frame.image)
            if self.spec.dedupe:
                small = small_grey(image, DUPLICATE_WIDTH).astype(np.float32)
                if last_small is not None and last_small.shape == small.shape and float(
                        np.abs(small - last_small).mean()) < DUPLICATE_THRESHOLD:
                    self.duplicates += 1
                    continue
                last_small = small
            if kept % self.spec.stride == 0:
                # The index stays the raw stream's, so per-frame ground truth still lines up.
                yield Frame(image, frame.stamp_ns, frame.index)
            kept += 1
        self.skipped = self._raw.skipped

    def __iter__(self) -> Iterator[Frame]:
        # The base class strides by Frame.index; here the stride counts kept (non-duplicate)
        # frames, so only max_frames is left to it.
        kept = 0
        for frame in self._read():
            yield frame
            kept += 1
            if self.max_frames is not None and kept >= self.max_frames:
                return

    def close(self) -> None:
        self._raw.close()


def open_spec(text) -> VideoSource:
    """A source for a data spec string (with or without #options)."""
    spec = text if isinstance(text, VideoSpec) else VideoSpec.parse(text)
    if math.isclose(sum(spec.crop), 0.0) and spec.stride == 1 and spec.max_frames is None \
            and not spec.dedupe and not spec.calib:
        return open_source(spec.path)
    return PreparedSource(spec)
