"""One interface for video: files (OpenCV), image folders, ROS 2 bags (rosbags), arrays.

Flow pretraining needs only pixel correspondence (Wang et al., ICRA 2020), so any uncalibrated
video is training data; these sources turn each kind into the same stream of `Frame`s.

Contract used by the other parts of the project (the synthetic renderer, pair sampling,
replay evaluation), stable from the first version of this file:
- `Frame(image, stamp_ns, index)`: image RGB uint8 (H, W, 3); stamp_ns int nanoseconds;
  index = position in the underlying stream (file frame number, sorted file position, message
  number on the topic), so it stays aligned with per-frame ground truth even when frames are
  strided or skipped.
- `VideoSource`: iterable of Frame (each `iter()` starts again from the first frame, reading
  lazily: never the whole video in memory), `name`, `num_frames` (int or None when unknown;
  `len()` raises TypeError then), `skipped` (corrupt frames skipped in the latest pass), `close()`
  and context manager. Subclasses implement `_read()`; the base class applies `stride` and
  `max_frames`.
- `open_source(path, topic=None, **kw)` picks the right kind for a path.

A corrupt frame in the middle of a stream is skipped with a warning and counted in `skipped`;
an input that cannot give any frame raises `SourceError` naming the input and what is accepted.
"""
import logging
import math
import re
import warnings
from fnmatch import fnmatch
from pathlib import Path
from typing import Dict, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import cv2
import numpy as np

from structflow_ros.data import bag_io, image_codec

LOGGER = logging.getLogger(__name__)

VIDEO_SUFFIXES = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
ACCEPTED_KINDS = (
    f'a video file ({", ".join(VIDEO_SUFFIXES)}), a folder of images '
    f'({", ".join(IMAGE_SUFFIXES)}), or a ROS 2 bag (a directory with metadata.yaml, or a '
    f'{"/".join(bag_io.BAG_FILE_SUFFIXES)} file)')
# A video that fails this many reads in a row before its announced end is treated as ended.
MAX_CONSECUTIVE_VIDEO_FAILURES = 16

PathLike = Union[str, Path]


class SourceError(ValueError):
    """A video source cannot be opened or gives no frames; the message says what is accepted."""


class Frame(NamedTuple):
    """One video frame."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    stamp_ns: int      # nanoseconds (header stamp for bags, position/fps for files)
    index: int         # position in the underlying stream


class VideoSource:
    """Base class: a re-iterable, lazily read stream of Frames.

    stride: keep every stride-th frame of the underlying stream (1 = all).
    max_frames: stop after this many kept frames (None = all).
    """

    def __init__(self, name: str, num_frames: Optional[int] = None, stride: int = 1,
                 max_frames: Optional[int] = None):
        if int(stride) < 1:
            raise SourceError(f'stride must be >= 1, got {stride}')
        if max_frames is not None and int(max_frames) < 1:
            raise SourceError(f'max_frames must be >= 1 or None, got {max_frames}')
        self.name = name
        self.stride = int(stride)
        self.max_frames = None if max_frames is None else int(max_frames)
        self._raw_num_frames = num_frames
        self.skipped = 0

    @property
    def num_frames(self) -> Optional[int]:
        """Frames one pass yields (after stride/max_frames), None when unknown.

        An upper bound when corrupt frames get skipped.
        """
        if self._raw_num_frames is None:
            return None
        count = math.ceil(self._raw_num_frames / self.stride)
        return count if self.max_frames is None else min(count, self.max_frames)

    def __len__(self) -> int:
        count = self.num_frames
        if count is None:
            raise TypeError(f'the number of frames of {self.name} is not known in advance')
        return count

    def _read(self) -> Iterator[Frame]:
        """Yield every decodable frame of the underlying stream (subclasses)."""
        raise NotImplementedError

    def _skip(self, index: int, reason: str) -> None:
        """Count and report a corrupt frame that the stream goes on without."""
        self.skipped += 1
        message = f'{self.name}: skipped corrupt frame {index}: {reason}'
        LOGGER.warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def __iter__(self) -> Iterator[Frame]:
        self.skipped = 0
        kept = 0
        for frame in self._read():
            if frame.index % self.stride:
                continue
            yield frame
            kept += 1
            if self.max_frames is not None and kept >= self.max_frames:
                return
        if kept == 0 and self.skipped:
            raise SourceError(f'{self.name}: no decodable frame ({self.skipped} corrupt frames '
                              'skipped)')

    def close(self) -> None:
        """Release resources (sources open their readers per pass, so nothing by default)."""

    def __enter__(self) -> 'VideoSource':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.name!r}, num_frames={self.num_frames})'


class ArraySource(VideoSource):
    """Frames held in memory (tests, the synthetic renderer): RGB uint8 arrays or Frames.

    Stamps are index / fps unless Frames are given.
    """

    def __init__(self, images: Sequence, fps: float = 10.0, name: str = 'memory', **kwargs):
        self._items = list(images)
        if not self._items:
            raise SourceError(f'{name}: ArraySource needs at least one image')
        if fps <= 0:
            raise SourceError(f'fps must be > 0, got {fps}')
        self.fps = float(fps)
        super().__init__(name, len(self._items), **kwargs)

    def _read(self) -> Iterator[Frame]:
        for index, item in enumerate(self._items):
            if isinstance(item, Frame):
                yield item
            else:
                yield Frame(np.asarray(item), round(index * 1e9 / self.fps), index)


class VideoFileSource(VideoSource):
    """A video file read with OpenCV (mp4, avi, mkv, ...).

    Stamps come from the container (CAP_PROP_POS_MSEC) when the backend provides increasing
    values, else from index / fps (fps from the file, or `fps` when the file has none).
    A failed read before the announced frame count is a corrupt frame (skipped, counted); the
    index is the count of reads, which can drift from the container's numbering when damage
    swallows more than one frame.
    """

    def __init__(self, path: PathLike, fps: float = 30.0, **kwargs):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f'video file {self.path} does not exist; accepted: {ACCEPTED_KINDS}')
        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise SourceError(f'OpenCV cannot open {self.path} as a video; accepted: '
                                  f'{ACCEPTED_KINDS}')
            ok, first = capture.read()
            if not ok or first is None:
                raise SourceError(f'video file {self.path} has no readable frame (0 frames); '
                                  f'accepted: {ACCEPTED_KINDS}')
            file_fps = capture.get(cv2.CAP_PROP_FPS)
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            capture.release()
        self.fps = file_fps if math.isfinite(file_fps) and file_fps > 0 else float(fps)
        super().__init__(self.path.name, count if count > 0 else None, **kwargs)

    def _read(self) -> Iterator[Frame]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            index = 0
            failures = 0
            last_stamp = -1
            while True:
                ok, bgr = capture.read()
                if not ok or bgr is None:
                    announced = self._raw_num_frames
                    if announced is None or index >= announced:
                        return
                    failures += 1
                    self._skip(index, 'OpenCV could not decode it')
                    index += 1
                    if failures >= MAX_CONSECUTIVE_VIDEO_FAILURES:
                        return
                    continue
                failures = 0
                stamp = round(capture.get(cv2.CAP_PROP_POS_MSEC) * 1e6)
                if stamp <= last_stamp:  # backend gave no usable timestamps
                    stamp = round(index * 1e9 / self.fps)
                last_stamp = stamp
                yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), stamp, index)
                index += 1
        finally:
            capture.release()


def natural_sort_key(name: str):
    """Key that orders 'frame2' before 'frame10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r'(\d+)', name)]


class ImageFolderSource(VideoSource):
    """A folder of png/jpg/jpeg frames in natural order (frame2 < frame10); stamp = index / fps.

    pattern: optional glob on file names (e.g. 'VGA_*.png') to pick one clip out of a folder.
    """

    def __init__(self, path: PathLike, fps: float = 10.0, pattern: Optional[str] = None,
                 **kwargs):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f'image folder {self.path} does not exist; accepted: '
                              f'{ACCEPTED_KINDS}')
        if fps <= 0:
            raise SourceError(f'fps must be > 0, got {fps}')
        self.fps = float(fps)
        self.files = sorted(
            (p for p in self.path.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and (pattern is None or fnmatch(p.name, pattern))),
            key=lambda p: natural_sort_key(p.name))
        if not self.files:
            raise SourceError(
                f'image folder {self.path} has no image files'
                f'{"" if pattern is None else f" matching {pattern!r}"}; accepted: '
                f'{", ".join(IMAGE_SUFFIXES)}')
        name = self.path.name if pattern is None else f'{self.path.name}/{pattern}'
        super().__init__(name, len(self.files), **kwargs)

    def _read(self) -> Iterator[Frame]:
        for index, file in enumerate(self.files):
            if index % self.stride:  # do not decode frames the stride drops
                continue
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                self._skip(index, f'OpenCV cannot decode {file.name}')
                continue
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), round(index * 1e9 / self.fps),
                        index)


def list_image_topics(bag_path: PathLike) -> Dict[str, str]:
    """Image and CompressedImage topics of a bag: topic -> message type."""
    try:
        topics = bag_io.list_topics(bag_path)
    except bag_io.BagError as error:
        raise SourceError(str(error)) from error
    return {t: m for t, m in topics.items() if m in bag_io.IMAGE_MSGTYPES}


class BagSource(VideoSource):
    """Images from one topic of a ROS 2 bag (sqlite3 or MCAP), read with rosbags.

    Accepts sensor_msgs/msg/Image (image_codec.SUPPORTED_ENCODINGS) and CompressedImage
    (jpeg/png). Stamps are the header stamps, or the record time when a header stamp is 0.
    `topic` may be omitted when the bag has exactly one image topic.
    """

    def __init__(self, path: PathLike, topic: Optional[str] = None,
                 max_pixels: int = image_codec.DEFAULT_MAX_PIXELS, **kwargs):
        self.path = Path(path)
        try:
            topics = bag_io.list_topics(self.path)
        except bag_io.BagError as error:
            raise SourceError(f'{error}; accepted: {ACCEPTED_KINDS}') from error
        image_topics = {t: m for t, m in topics.items() if m in bag_io.IMAGE_MSGTYPES}
        if not image_topics:
            listing = ', '.join(f'{t} ({m})' for t, m in sorted(topics.items())) or 'none'
            raise SourceError(f'bag {self.path} has no sensor_msgs/msg/Image or CompressedImage '
                              f'topic; its topics: {listing}')
        if topic is None:
            if len(image_topics) > 1:
                raise SourceError(f'bag {self.path} has {len(image_topics)} image topics; choose '
                                  f'one with topic=...: {", ".join(sorted(image_topics))}')
            topic = next(iter(image_topics))
        elif topic not in image_topics:
            raise SourceError(f'bag {self.path} has no image topic {topic!r}; image topics: '
                              f'{", ".join(sorted(image_topics))}')
        self.topic = topic
        self.msgtype = image_topics[topic]
        self.max_pixels = max_pixels
        reader = bag_io.open_reader(self.path)
        try:
            count = sum(c.msgcount for c in reader.connections if c.topic == topic)
        finally:
            reader.close()
        if count == 0:
            raise SourceError(f'topic {topic} of bag {self.path} has no messages (0 frames)')
        super().__init__(f'{self.path.name}:{topic}', count, **kwargs)

    def _read(self) -> Iterator[Frame]:
        reader = bag_io.open_reader(self.path)
        try:
            connections = [c for c in reader.connections if c.topic == self.topic]
            for index, (connection, record_ns, raw) in enumerate(
                    reader.messages(connections=connections)):
                if index % self.stride:  # do not decode frames the stride drops
                    continue
                try:
                    msg = reader.deserialize(raw, connection.msgtype)
                    image = image_codec.decode_image_msg(msg, max_pixels=self.max_pixels)
                except image_codec.UnsupportedEncodingError as error:
                    # A wrong topic or encoding is a setup problem, not a corrupt frame.
                    raise SourceError(f'{self.name}: {error}') from error
                except image_codec.ImageDecodeError as error:
                    self._skip(index, str(error))
                    continue
                except Exception as error:  # CDR deserialisation errors from rosbags
                    self._skip(index, f'cannot deserialise message: {error}')
                    continue
                stamp = bag_io.header_stamp_ns(msg) or int(record_ns)
                yield Frame(image, stamp, index)
        finally:
            reader.close()


def _looks_like_bag_dir(path: Path) -> bool:
    if (path / 'metadata.yaml').is_file():
        return True
    return any(p.suffix in bag_io.BAG_FILE_SUFFIXES for p in path.iterdir())


def open_source(path: PathLike, topic: Optional[str] = None, **kwargs) -> VideoSource:
    """Open any supported video input by what `path` is.

    A directory with metadata.yaml (or a .db3/.mcap file) -> BagSource; a directory of images
    -> ImageFolderSource; a video file -> VideoFileSource. Extra keyword arguments (fps,
    stride, max_frames, pattern, ...) go to the chosen source.
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f'{path} does not exist; accepted: {ACCEPTED_KINDS}')
    if path.is_dir():
        if _looks_like_bag_dir(path):
            return BagSource(path, topic=topic, **kwargs)
        kind = ImageFolderSource
    elif path.suffix in bag_io.BAG_FILE_SUFFIXES or path.name == 'metadata.yaml':
        return BagSource(path, topic=topic, **kwargs)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        kind = VideoFileSource
    else:
        raise SourceError(f'{path} is not a supported video input; accepted: {ACCEPTED_KINDS}')
    if topic is not None:
        raise SourceError(f'topic={topic!r} applies only to ROS 2 bags, and {path} is not a bag')
    return kind(path, **kwargs)


def as_source(item: Union[PathLike, VideoSource, Iterable], name: str = 'memory'):
    """A VideoSource or re-iterable of Frames from a path, a source, a callable or frames.

    Callables are called (a factory that opens its source lazily, e.g. in a DataLoader worker);
    a list or tuple of RGB arrays becomes an ArraySource called `name`.
    """
    if isinstance(item, (str, Path)):
        return open_source(item)
    if callable(item) and not isinstance(item, VideoSource):
        return item()
    if isinstance(item, (list, tuple)) and item and not isinstance(item[0], Frame):
        return ArraySource(item, name=name)
    return item
