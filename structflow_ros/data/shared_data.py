"""Loaders for the real sample data in ../shared/data (read in place, never copied).

Each folder's SOURCE.txt gives origin and format; the scales used here are taken from there:
KITTI depth PNG value / 256, NYU / 1000, TUM / 5000 metres (0 = no reading); Middlebury
disparity PNG value / 4 (cones, teddy), / 8 (venus), / 16 (tsukuba), / 1 (aloe).

The folder is `root` when given, else $STRUCTFLOW_SHARED_DATA, else ../shared/data beside the
repository root. Every loader raises SharedDataError naming the folder it looked for.

Invalid ground truth is 0 in depth and disparity maps (as in the files); `valid` masks are
provided. Images are RGB uint8 (H, W, 3).
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import cv2
import numpy as np

from structflow_ros.data.sources import ImageFolderSource

PathLike = Union[str, Path]
REPO_ROOT = Path(__file__).resolve().parents[2]
FLO_TAG = 202021.25
FLO_UNKNOWN = 1e9  # |u| or |v| at or above this marks unknown flow (Middlebury convention)
DEPTH_SCALES = {'kitti': 256.0, 'nyu': 1000.0, 'tum': 5000.0}  # PNG value per metre
# Evaluation caps of the project protocol (design.md): outdoors 80 m, indoors 10 m.
MAX_DEPTH = {'kitti': 80.0, 'nyu': 10.0, 'tum': 10.0}
KITTI_CLIPS = ('KITTI_sequence_1', 'KITTI_sequence_2')
HANDHELD_CLIPS = ('VGA', '720p', '1080p')
STEREO_SCENES = {  # scene -> (left, right, left disparity, PNG value per pixel of disparity)
    'cones': ('im2.png', 'im6.png', 'disp2.png', 4.0),
    'teddy': ('im2.png', 'im6.png', 'disp2.png', 4.0),
    'venus': ('im2.png', 'im6.png', 'disp2.png', 8.0),
    'tsukuba': ('im2.png', 'im6.png', 'disp2.png', 16.0),
    'aloe_opencv_samples': ('aloeL.jpg', 'aloeR.jpg', 'aloeGT.png', 1.0),
}
TUM_FREIBURG2_K = np.array([[520.9, 0.0, 325.1], [0.0, 521.0, 249.7], [0.0, 0.0, 1.0]])


class SharedDataError(FileNotFoundError):
    """A shared-data folder or file is missing or malformed."""


def default_root() -> Path:
    """$STRUCTFLOW_SHARED_DATA, else ../shared/data beside the repository root."""
    return Path(os.environ.get('STRUCTFLOW_SHARED_DATA', REPO_ROOT.parent / 'shared' / 'data'))


def _folder(root: Optional[PathLike], *parts: str) -> Path:
    folder = Path(root) if root is not None else default_root()
    folder = folder.joinpath(*parts)
    if not folder.is_dir():
        raise SharedDataError(f'shared data folder {folder} is missing (expected the real sample '
                              'data of ../shared/data; set STRUCTFLOW_SHARED_DATA to its path)')
    return folder


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SharedDataError(f'cannot read image {path} (missing or not decodable)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_uint16(path: Path) -> np.ndarray:
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        raise SharedDataError(f'{path} is missing or not a single-channel uint16 PNG')
    return raw


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """3x3 pinhole intrinsics."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# --- KITTI odometry clips ------------------------------------------------------------------


@dataclass
class KittiOdometryClip:
    """51 consecutive grey KITTI frames (as RGB) with camera-to-world poses and calibration."""

    name: str
    frames: ImageFolderSource  # lazily read, 10 Hz stamps
    poses: np.ndarray  # (N, 4, 4) float64, camera-to-world, poses[0] = identity
    P0: np.ndarray  # (3, 4) projection matrix of the left camera
    image_size: Tuple[int, int]  # (height, width)

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsics of the left camera."""
        return self.P0[:, :3].copy()


def _read_matrix_rows(path: Path, columns: int) -> np.ndarray:
    """Lines of `columns` numbers (optionally prefixed 'P0:') -> (N, columns)."""
    if not path.is_file():
        raise SharedDataError(f'{path} is missing')
    rows = []
    for line in path.read_text().splitlines():
        values = line.split(':', 1)[-1].split()
        if values:
            rows.append([float(v) for v in values])
    matrix = np.array(rows)
    if matrix.ndim != 2 or matrix.shape[1] != columns:
        raise SharedDataError(f'{path}: expected lines of {columns} numbers, got shape '
                              f'{matrix.shape}')
    return matrix


def load_kitti_odometry_clip(name: str = 'KITTI_sequence_1',
                             root: Optional[PathLike] = None) -> KittiOdometryClip:
    """One KITTI odometry clip: frames (lazy), (N, 4, 4) poses and P0 from calib.txt."""
    if name not in KITTI_CLIPS:
        raise ValueError(f'unknown KITTI clip {name!r}; choose from {", ".join(KITTI_CLIPS)}')
    folder = _folder(root, 'kitti_odometry_clips', name)
    frames = ImageFolderSource(folder / 'image_l', fps=10.0)
    pose_rows = _read_matrix_rows(folder / 'poses.txt', 12)
    poses = np.tile(np.eye(4), (len(pose_rows), 1, 1))
    poses[:, :3, :] = pose_rows.reshape(-1, 3, 4)  # (N, 4, 4)
    P0 = _read_matrix_rows(folder / 'calib.txt', 12)[0].reshape(3, 4)
    first = cv2.imread(str(frames.files[0]), cv2.IMREAD_UNCHANGED)
    return KittiOdometryClip(name, frames, poses, P0, tuple(first.shape[:2]))


# --- Middlebury flow ---------------------------------------------------------------------


def read_flo(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read a Middlebury .flo file -> (flow (H, W, 2) float32 (u, v), valid (H, W) bool).

    Unknown vectors (|u| or |v| >= 1e9) are marked invalid and set to 0 in `flow`.
    """
    path = Path(path)
    if not path.is_file():
        raise SharedDataError(f'flow file {path} is missing')
    with open(path, 'rb') as handle:
        tag = np.fromfile(handle, np.float32, count=1)
        if tag.size != 1 or tag[0] != np.float32(FLO_TAG):
            raise SharedDataError(f'{path} is not a .flo file (tag {tag}, expected {FLO_TAG})')
        width, height = (int(v) for v in np.fromfile(handle, '<i4', count=2))
        data = np.fromfile(handle, '<f4', count=height * width * 2)
    if width <= 0 or height <= 0 or data.size != height * width * 2:
        raise SharedDataError(f'{path}: truncated .flo ({data.size} values for {width}x{height})')
    flow = data.reshape(height, width, 2).astype(np.float32)  # (H, W, 2)
    valid = np.all(np.abs(flow) < FLO_UNKNOWN, axis=2) & np.all(np.isfinite(flow), axis=2)
    flow[~valid] = 0.0
    return flow, valid


@dataclass
class FlowPair:
    """Two frames with ground-truth flow from frame0 to frame1."""

    name: str
    frame0: np.ndarray  # (H, W, 3) uint8 RGB
    frame1: np.ndarray
    flow: np.ndarray  # (H, W, 2) float32 pixels (u right, v down), 0 where invalid
    valid: np.ndarray  # (H, W) bool


def load_rubberwhale(root: Optional[PathLike] = None) -> FlowPair:
    """Middlebury RubberWhale (frame10 -> frame11, 584x388) with its .flo ground truth."""
    folder = _folder(root, 'middlebury_flow_rubberwhale')
    flow, valid = read_flo(folder / 'RubberWhale.flo')
    return FlowPair('RubberWhale', _read_rgb(folder / 'RubberWhale1.png'),
                    _read_rgb(folder / 'RubberWhale2.png'), flow, valid)


# --- Depth frames ------------------------------------------------------------------------


@dataclass
class DepthFrame:
    """One RGB image with metric depth ground truth and intrinsics."""

    name: str
    dataset: str  # 'kitti', 'nyu' or 'tum'
    image: np.ndarray  # (H, W, 3) uint8 RGB
    depth: np.ndarray  # (H, W) float32 metres, 0 = no reading
    K: np.ndarray  # (3, 3)
    max_depth: float = field(default=80.0)  # evaluation cap of the protocol for this data

    @property
    def valid(self) -> np.ndarray:
        """(H, W) bool, pixels with a depth reading."""
        return np.isfinite(self.depth) & (self.depth > 0)


def read_depth_png(path: PathLike, dataset: str) -> np.ndarray:
    """A uint16 depth PNG -> float32 metres with the dataset's scale (0 stays 0 = invalid)."""
    if dataset not in DEPTH_SCALES:
        raise ValueError(f'unknown depth dataset {dataset!r}; choose from '
                         f'{", ".join(DEPTH_SCALES)}')
    return _read_uint16(Path(path)).astype(np.float32) / np.float32(DEPTH_SCALES[dataset])


def load_depth_frames(dataset: str = 'kitti',
                      root: Optional[PathLike] = None) -> List[DepthFrame]:
    """The 3 KITTI or 3 NYU demo frames with depth and the intrinsics of test_annotations.json."""
    if dataset not in ('kitti', 'nyu'):
        raise ValueError(f'unknown dataset {dataset!r}; choose from kitti, nyu (tum: '
                         'load_tum_pair)')
    folder = _folder(root, 'kitti_nyu_depth_frames', f'{dataset}_demo')
    annotations = folder / 'test_annotations.json'
    if not annotations.is_file():
        raise SharedDataError(f'{annotations} is missing')
    frames = []
    for entry in json.loads(annotations.read_text())['files']:
        # Paths in the file start with 'data/<dataset>_demo/'; keep the part inside the folder.
        rgb_path = folder / Path(entry['rgb']).relative_to(f'data/{dataset}_demo')
        depth_path = folder / Path(entry['depth']).relative_to(f'data/{dataset}_demo')
        scale = float(entry['depth_scale'])
        if scale != DEPTH_SCALES[dataset]:
            raise SharedDataError(f'{annotations}: depth_scale {scale} differs from the '
                                  f'documented {DEPTH_SCALES[dataset]}')
        depth = _read_uint16(depth_path).astype(np.float32) / np.float32(scale)
        frames.append(DepthFrame(rgb_path.stem, dataset, _read_rgb(rgb_path), depth,
                                 intrinsics_matrix(*entry['cam_in']), MAX_DEPTH[dataset]))
    frames.sort(key=lambda frame: frame.name)
    return frames


def load_tum_pair(root: Optional[PathLike] = None) -> List[DepthFrame]:
    """The two TUM RGB-D freiburg2 frames (camera moved between them) with Kinect depth."""
    folder = _folder(root, 'tum_rgbd_pair')
    return [DepthFrame(str(i), 'tum', _read_rgb(folder / f'{i}.png'),
                       read_depth_png(folder / f'{i}_depth.png', 'tum'),
                       TUM_FREIBURG2_K.copy(), MAX_DEPTH['tum'])
            for i in (1, 2)]


# --- Hand-held clips and stereo ---------------------------------------------------------


def load_handheld_clip(name: str = 'VGA', root: Optional[PathLike] = None,
                       include_wide_baseline: bool = False) -> ImageFolderSource:
    """One hand-held clip as a VideoSource (5 consecutive frames, intrinsics unknown).

    720p_05 is a much later frame (wide baseline); it is left out unless asked for.
    """
    if name not in HANDHELD_CLIPS:
        raise ValueError(f'unknown hand-held clip {name!r}; choose from '
                         f'{", ".join(HANDHELD_CLIPS)}')
    pattern = f'{name}_*.png' if include_wide_baseline else f'{name}_0[0-4].png'
    return ImageFolderSource(_folder(root, 'handheld_clips'), fps=10.0, pattern=pattern)


@dataclass
class StereoPair:
    """A rectified stereo pair with the left image's disparity in pixels (0 = unknown)."""

    name: str
    left: np.ndarray  # (H, W, 3) uint8 RGB
    right: np.ndarray
    disparity: np.ndarray  # (H, W) float32 pixels

    @property
    def valid(self) -> np.ndarray:
        """(H, W) bool, pixels with known disparity."""
        return self.disparity > 0


def load_middlebury_stereo(name: str = 'cones', root: Optional[PathLike] = None) -> StereoPair:
    """One Middlebury stereo scene; disparity scaled to pixels per SOURCE.txt."""
    if name not in STEREO_SCENES:
        raise ValueError(f'unknown stereo scene {name!r}; choose from '
                         f'{", ".join(STEREO_SCENES)}')
    left_name, right_name, disparity_name, scale = STEREO_SCENES[name]
    folder = _folder(root, 'middlebury_stereo', name)
    raw = cv2.imread(str(folder / disparity_name), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise SharedDataError(f'cannot read disparity {folder / disparity_name}')
    if raw.ndim == 3:  # 3 identical channels in the 2001/2003 files
        raw = raw[..., 0]
    return StereoPair(name, _read_rgb(folder / left_name), _read_rgb(folder / right_name),
                      raw.astype(np.float32) / np.float32(scale))
