"""The demo's inputs: the synthetic drive, a `structflow render` folder, or a video, image
folder or bag (`open_source`), each frame with its ground truth and intrinsics when it has any.
No ROS."""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from structflow_ros.progress import progress_bar
from structflow_ros.data.camera import resize_intrinsics


class DemoInputError(ValueError):
    """Bad input: a missing source or weights file, bad arguments (exit code 2)."""


@dataclass
class DemoFrame:
    """One camera frame with its ground truth when the input has any."""

    rgb: np.ndarray                       # (H, W, 3) uint8
    index: int                            # position in the input
    gt: Optional[np.ndarray] = None       # (H, W) float32 metres
    gt_valid: Optional[np.ndarray] = None  # (H, W) bool
    K: Optional[np.ndarray] = None        # (3, 3) intrinsics of rgb



def resolve_weights(value):
    from structflow_ros.paths import default_weights_path
    path = Path(value).expanduser() if value else default_weights_path()
    if not path.is_file():
        if value:
            raise DemoInputError(f'weights file {path} does not exist or is not a file; pass '
                                 '--weights with a structflow checkpoint (.pt)')
        raise DemoInputError(f'the shipped model {path} is not there yet (`make train-default` '
                             'makes it); pass --weights PATH to a structflow checkpoint')
    return path.resolve()


def _scale_to_width(frame, max_width):
    """Scale a frame (and its ground truth and K) down to `max_width`, keeping the aspect."""
    height, width = frame.rgb.shape[:2]
    if width <= max_width:
        return frame
    scale = max_width / width
    size = (max_width, max(1, round(height * scale)))  # cv2 takes (W, H)
    frame.rgb = cv2.resize(frame.rgb, size, interpolation=cv2.INTER_AREA)
    if frame.gt is not None:
        frame.gt = cv2.resize(frame.gt, size, interpolation=cv2.INTER_NEAREST)
        frame.gt_valid = cv2.resize(frame.gt_valid.astype(np.uint8), size,
                                    interpolation=cv2.INTER_NEAREST).astype(bool)
    if frame.K is not None:
        frame.K = resize_intrinsics(frame.K, (height, width), (size[1], size[0]))
    return frame


class SyntheticInput:
    """The synthetic drive, rendered with exact depth (sky invalid)."""

    def __init__(self, domain, count, size, seed, fps):
        from structflow_ros.data.synthetic.render import open_renderer
        try:
            self.renderer = open_renderer(domain, count, size[0], size[1], seed, fps)
        except ValueError as error:
            raise DemoInputError(str(error)) from None
        self.count = count
        self.description = {'kind': 'synthetic', 'domain': self.renderer.domain, 'seed': seed,
                            'size': f'{size[1]}x{size[0]}', 'ground_truth': True}

    def frames(self):
        for frame in self.renderer.frames():
            yield DemoFrame(frame.rgb, frame.index, frame.depth, frame.depth_valid, frame.K)


class RenderFolderInput:
    """A folder written by `structflow render` (rgb/, depth/, camera.json): with ground truth."""

    def __init__(self, path, count):
        from structflow_ros.data.render_folder import RenderFolderError, read_meta
        self.path = Path(path)
        try:
            self.meta = read_meta(self.path)
        except RenderFolderError as error:
            raise DemoInputError(str(error)) from None
        records = self.meta.get('frames', [])
        if not records:
            raise DemoInputError(f'{self.path}/camera.json lists no frames')
        self.count = min(count, len(records)) if count else len(records)
        self.description = {'kind': 'structflow render folder', 'path': str(self.path),
                            'domain': self.meta.get('domain'), 'ground_truth': True}

    def frames(self):
        from structflow_ros.data.render_folder import RenderFolderError, render_folder_frames
        try:
            for frame in render_folder_frames(self.path, self.count):
                yield DemoFrame(frame['rgb'], frame['index'], frame['depth'], frame['valid'],
                                frame['K'])
        except RenderFolderError as error:
            raise DemoInputError(str(error)) from None


class SourceInput:
    """A video, image folder or bag through `open_source`; a bag's `*depth_gt` topic (what
    `structflow render --format bag` writes) and CameraInfo are used when present."""

    def __init__(self, path, count, topic=None):
        from structflow_ros.data import bag_io
        from structflow_ros.data.sources import SourceError, open_source
        path = Path(path)
        self.gt_topic = self.info_topic = None
        is_bag = path.suffix in bag_io.BAG_FILE_SUFFIXES or (path.is_dir() and (
            (path / 'metadata.yaml').is_file()
            or any(p.suffix in bag_io.BAG_FILE_SUFFIXES for p in path.iterdir())))
        try:
            if is_bag and topic is None:
                topics = bag_io.list_topics(path)
                gt = [t for t, m in topics.items()
                      if m == bag_io.IMAGE_MSGTYPE and t.endswith('depth_gt')]
                images = [t for t, m in topics.items()
                          if m in bag_io.IMAGE_MSGTYPES and t not in gt]
                self.gt_topic = gt[0] if len(gt) == 1 else None
                topic = images[0] if len(images) == 1 else None
                infos = [t for t, m in topics.items() if m == bag_io.CAMERA_INFO_MSGTYPE]
                self.info_topic = infos[0] if len(infos) == 1 else None
            self.source = open_source(path, topic=topic, max_frames=count or None)
        except (SourceError, bag_io.BagError) as error:
            raise DemoInputError(str(error)) from None
        self.path = path
        self.count = self.source.num_frames
        self.description = {'kind': type(self.source).__name__, 'path': str(path),
                            'name': self.source.name, 'ground_truth': self.gt_topic is not None}

    def frames(self):
        from structflow_ros.data import bag_io
        gt_by_stamp, K = {}, None
        if self.gt_topic is not None:
            for _, _, msg in bag_io.read_messages(self.path, self.gt_topic):
                gt_by_stamp[bag_io.header_stamp_ns(msg)] = bag_io.decode_depth_msg(msg)
        if self.info_topic is not None:
            K = bag_io.read_camera_info(self.path, self.info_topic).K
        for frame in self.source:
            gt = gt_by_stamp.get(frame.stamp_ns)
            valid = None if gt is None else np.isfinite(gt) & (gt > 0)
            yield DemoFrame(frame.image, frame.index, gt, valid, K)


def open_input(args):
    if not args.source:
        return SyntheticInput(args.domain, args.frames, args.size, args.seed, args.rate)
    path = Path(args.source).expanduser()
    if not path.exists():
        raise DemoInputError(
            f'DEMO_SOURCE / --source {path} does not exist; give a video file (.mp4, .avi, '
            '...), a folder of images, a ROS 2 bag, or a `structflow render` folder')
    from structflow_ros.data.render_folder import is_render_folder
    if is_render_folder(path):
        return RenderFolderInput(path, args.frames)
    return SourceInput(path, args.frames, args.topic)


def load_frames(demo_input, max_width, progress):
    bar = progress_bar(progress, demo_input.count, 'frames', 'frame')
    frames = []
    try:
        for frame in demo_input.frames():
            frames.append(_scale_to_width(frame, max_width))
            bar.update(1)
    finally:
        bar.close()
    if not frames:
        raise DemoInputError('the input gave no frames')
    return frames
