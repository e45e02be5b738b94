"""Frames of a recorded drive, read from a ROS 2 bag for replay: image, camera, ground truth.

No ROS: `rosbags` reads sqlite3 and MCAP bags (a folder with metadata.yaml, or a bare .db3 /
.mcap file). Topics are picked by type (or named); ground-truth depth (32FC1 metres or 16UC1
millimetres, sparse lidar with zeros as missing) is matched to each image by header stamp within
a tolerance. A bag that was cut mid-recording (an MCAP without its summary) is read up to where
it ends, and the report says so.
"""
import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from structflow_ros.data import bag_io, image_codec
from structflow_ros.online.camera import CameraModel


class ReplayInputError(ValueError):
    """The bag or a topic cannot be replayed; the message says what exists and what works."""


@dataclass
class ReplayFrame:
    index: int  # position among the replayed image messages
    stamp_ns: int  # the image's header stamp
    record_ns: int  # when the bag recorded it (pacing)
    rgb: np.ndarray  # (H, W, 3) uint8
    camera: Optional[CameraModel]  # the latest CameraInfo as recorded (any size), or None
    gt: Optional[np.ndarray]  # (H_gt, W_gt) float32 metres, NaN where missing
    gt_stamp_ns: Optional[int]
    frame_id: str = ''  # the image's header frame_id (the outputs keep it, as the node does)


@dataclass
class SourceStats:
    images: int = 0
    decode_errors: int = 0
    gt_matched: int = 0
    gt_unmatched: int = 0
    out_of_order: int = 0  # header stamps that went backwards
    size_changes: int = 0
    sizes: List[str] = field(default_factory=list)
    truncated: str = ''  # why reading stopped early ('' = the whole bag)
    first_decode_error: str = ''


def _topics_of(topics: Dict[str, str], msgtypes) -> List[str]:
    return sorted(t for t, m in topics.items() if m in msgtypes)


def _looks_like_depth(topic: str) -> bool:
    name = topic.lower()
    return 'depth' in name or name.endswith('/gt') or 'lidar' in name


class BagReplaySource:
    """Open a bag, choose its topics; iterate ReplayFrames in record order."""

    def __init__(self, bag, image_topic=None, camera_info_topic=None, gt_topic=None,
                 gt_tolerance_s=0.02, max_frames=0, max_pixels=image_codec.DEFAULT_MAX_PIXELS):
        self.path = Path(bag)
        try:
            self.bag_path = bag_io.resolve_bag_path(self.path)
            self.topics = bag_io.list_topics(self.bag_path)
            self.counts = bag_io.message_counts(self.bag_path)
        except bag_io.BagError as error:
            raise ReplayInputError(str(error)) from None
        listing = ', '.join(f'{t} ({m})' for t, m in sorted(self.topics.items())) or 'none'
        images = _topics_of(self.topics, bag_io.IMAGE_MSGTYPES)
        self.image_topic = self._pick(image_topic, images, 'image', listing, prefer=[
            t for t in images if not _looks_like_depth(t)])
        infos = _topics_of(self.topics, (bag_io.CAMERA_INFO_MSGTYPE,))
        self.camera_info_topic = self._pick(camera_info_topic, infos, 'camera_info', listing,
                                            required=False)
        self.gt_topic = None
        if gt_topic:
            if gt_topic not in self.topics:
                raise ReplayInputError(f'bag {self.path} has no topic {gt_topic}; topics: '
                                       f'{listing}')
            if self.topics[gt_topic] != bag_io.IMAGE_MSGTYPE:
                raise ReplayInputError(f'--gt-depth-topic {gt_topic} is {self.topics[gt_topic]};'
                                       ' ground truth must be a sensor_msgs/msg/Image (32FC1 '
                                       'metres or 16UC1 millimetres)')
            self.gt_topic = gt_topic
        if gt_tolerance_s < 0:
            raise ReplayInputError(f'--gt-tolerance must be >= 0 s, got {gt_tolerance_s}')
        self.gt_tolerance_ns = int(round(gt_tolerance_s * 1e9))
        self.max_frames = int(max_frames)
        self.max_pixels = max_pixels
        self.stats = SourceStats()
        self._gt_stamps: List[int] = []
        self._gt: Dict[int, object] = {}

    def _pick(self, asked, candidates, kind, listing, prefer=None, required=True):
        if asked:
            if asked not in self.topics:
                raise ReplayInputError(f'bag {self.path} has no topic {asked}; topics: {listing}')
            if asked not in candidates:
                raise ReplayInputError(f'topic {asked} is {self.topics[asked]}, not a {kind} '
                                       f'topic; {kind} topics: {", ".join(candidates) or "none"}')
            return asked
        choices = prefer if prefer else candidates
        if len(choices) == 1:
            return choices[0]
        if not choices:
            if required:
                raise ReplayInputError(f'bag {self.path} has no {kind} topic (sensor_msgs '
                                       f'Image or CompressedImage); topics: {listing}')
            return None
        if required:
            raise ReplayInputError(f'bag {self.path} has several {kind} topics: '
                                   f'{", ".join(choices)}; choose one with --{kind}-topic')
        return None  # several camera_info topics and none named: use none, say so

    def describe(self):
        return {'bag': str(self.path), 'image_topic': self.image_topic,
                'camera_info_topic': self.camera_info_topic, 'gt_depth_topic': self.gt_topic,
                'gt_tolerance_s': self.gt_tolerance_ns / 1e9, 'topics': self.topics}

    # -- ground truth -----------------------------------------------------------------------
    def _index_ground_truth(self):
        """Header stamp -> message for every ground-truth depth (kept serialised-small: the
        messages as read; a 375x1242 16UC1 lidar frame is 0.9 MB)."""
        if self.gt_topic is None:
            return
        for _, _, msg in self._read([self.gt_topic]):
            self._gt[bag_io.header_stamp_ns(msg)] = msg
        self._gt_stamps = sorted(self._gt)

    def _match_gt(self, stamp_ns):
        if not self._gt_stamps:
            return None, None
        position = bisect.bisect_left(self._gt_stamps, stamp_ns)
        nearest = [self._gt_stamps[i] for i in (position - 1, position)
                   if 0 <= i < len(self._gt_stamps)]
        best = min(nearest, key=lambda s: abs(s - stamp_ns))
        if abs(best - stamp_ns) > self.gt_tolerance_ns:
            return None, None
        msg = self._gt[best]
        try:
            depth = bag_io.decode_depth_msg(msg, self.max_pixels)
        except image_codec.ImageDecodeError:
            return None, None
        # Sparse lidar depth: zeros (16UC1 gives NaN already) are missing, not 0 m.
        depth = np.where(depth > 0, depth, np.nan).astype(np.float32)
        return depth, best

    # -- reading ----------------------------------------------------------------------------
    def _read(self, topics):
        """bag_io.read_messages, but a bag cut mid-recording ends the stream with a note."""
        try:
            yield from bag_io.read_messages(self.bag_path, topics)
        except bag_io.BagError as error:
            raise ReplayInputError(str(error)) from None
        except Exception as error:  # noqa: BLE001 - rosbags raises many types for damage
            self.stats.truncated = (f'the bag ends early ({type(error).__name__}: {error}); '
                                    'replayed what was readable')

    def frames(self, passthrough=None) -> Iterator[ReplayFrame]:
        """ReplayFrames in record order. `passthrough(record_ns, topic, msgtype, msg)`, when
        given, receives every message of every topic as recorded (for the output bag), up to
        the last replayed image."""
        self._index_ground_truth()
        topics = [self.image_topic] + ([self.camera_info_topic] if self.camera_info_topic
                                       else [])
        if passthrough is not None:
            topics = sorted(self.topics)
        camera, last_stamp, last_size = None, None, None
        index = 0
        for record_ns, topic, msg in self._read(topics):
            if self.max_frames and index >= self.max_frames:
                break
            if passthrough is not None:
                passthrough(record_ns, topic, self.topics[topic], msg)
            if topic == self.camera_info_topic:
                camera = CameraModel.from_fields(msg)  # checked per frame, as the node does
                continue
            if topic != self.image_topic:
                continue
            stamp_ns = bag_io.header_stamp_ns(msg)
            try:
                rgb = image_codec.decode_image_msg(msg, self.max_pixels)
            except image_codec.ImageDecodeError as error:
                self.stats.decode_errors += 1
                self.stats.first_decode_error = self.stats.first_decode_error or str(error)
                continue
            self.stats.images += 1
            if last_stamp is not None and stamp_ns <= last_stamp:
                self.stats.out_of_order += 1
            last_stamp = stamp_ns
            size = rgb.shape[:2]
            if size != last_size:
                if last_size is not None:
                    self.stats.size_changes += 1
                self.stats.sizes.append(f'{size[1]}x{size[0]}')
                last_size = size
            gt, gt_stamp = self._match_gt(stamp_ns)
            if self.gt_topic is not None:
                if gt is None:
                    self.stats.gt_unmatched += 1
                else:
                    self.stats.gt_matched += 1
            yield ReplayFrame(index, stamp_ns, int(record_ns), rgb, camera, gt, gt_stamp,
                              str(getattr(msg.header, 'frame_id', '')))
            index += 1
