"""Camera calibration from chessboard views, and the ROS camera_info YAML that holds it.

The file format is the one ROS's camera_calibration writes and camera_info_manager reads
(image_width, image_height, camera_name, camera_matrix, distortion_model,
distortion_coefficients, rectification_matrix, projection_matrix). As camera_calibration does
for a monocular camera, the projection matrix is the undistorted camera of
cv2.getOptimalNewCameraMatrix with alpha 0 (every output pixel valid, no black border): the
intrinsics of undistorted frames.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

DISTORTION_MODELS = {5: 'plumb_bob', 8: 'rational_polynomial'}
MIN_VIEWS = 4


class CalibrationError(ValueError):
    """The views cannot calibrate a camera, or a calibration file is invalid."""


@dataclass
class CameraCalibration:
    """Intrinsics and distortion of one camera at one image size."""

    width: int
    height: int
    K: np.ndarray            # (3, 3) of the distorted camera
    D: np.ndarray            # (5,) plumb_bob or (8,) rational_polynomial
    P: np.ndarray            # (3, 4): the undistorted camera (alpha 0)
    camera_name: str = 'camera'
    rms_px: Optional[float] = None
    per_view_rms_px: Dict[str, float] = field(default_factory=dict)

    @property
    def distortion_model(self) -> str:
        return DISTORTION_MODELS[len(self.D)]

    @property
    def undistorted_K(self) -> np.ndarray:
        return np.asarray(self.P, np.float64)[:, :3]

    def undistort_maps(self):
        """cv2.remap maps from the distorted image to the undistorted camera P."""
        return cv2.initUndistortRectifyMap(self.K, self.D, np.eye(3), self.undistorted_K,
                                           (self.width, self.height), cv2.CV_32FC1)

    def to_yaml(self) -> str:
        def matrix(name, values, rows, cols):
            data = ', '.join(f'{float(v):.10g}' for v in np.asarray(values).ravel())
            return f'{name}:\n  rows: {rows}\n  cols: {cols}\n  data: [{data}]\n'
        text = (f'image_width: {self.width}\nimage_height: {self.height}\n'
                f'camera_name: {self.camera_name}\n'
                + matrix('camera_matrix', self.K, 3, 3)
                + f'distortion_model: {self.distortion_model}\n'
                + matrix('distortion_coefficients', self.D, 1, len(self.D))
                + matrix('rectification_matrix', np.eye(3), 3, 3)
                + matrix('projection_matrix', self.P, 3, 4))
        if self.rms_px is not None:
            text = f'# reprojection RMS {self.rms_px:.3f} px over {len(self.per_view_rms_px)} ' \
                   f'views (structflow calibrate)\n' + text
        return text

    def save(self, path) -> Path:
        """Write the YAML atomically (a crash never leaves half a calibration)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'.{path.name}.tmp')
        tmp.write_text(self.to_yaml())
        os.replace(tmp, path)
        return path


def _matrix(doc, key, rows, cols, path):
    entry = doc.get(key)
    try:
        data = np.asarray(entry['data'], np.float64)
        if int(entry['rows']) != rows or (cols and int(entry['cols']) != cols) \
                or data.size != rows * int(entry['cols']):
            raise ValueError
    except (TypeError, KeyError, ValueError):
        raise CalibrationError(f'{path}: {key} must be {{rows: {rows}, cols: '
                               f'{cols or "N"}, data: [...]}} with rows*cols numbers') from None
    if not np.isfinite(data).all():
        raise CalibrationError(f'{path}: {key} has non-finite values')
    return data.reshape(rows, -1)


def load_camera_info_yaml(path) -> CameraCalibration:
    """Read a camera_calibration / camera_info_manager YAML file, with checks that say what is
    wrong."""
    import yaml
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as error:
        raise CalibrationError(f'cannot read calibration {path}: {error}') from None
    except yaml.YAMLError as error:
        raise CalibrationError(f'{path} is not valid YAML: {error}') from None
    if not isinstance(doc, dict):
        raise CalibrationError(f'{path} is not a camera_info YAML (expected a mapping with '
                               'image_width, image_height, camera_matrix, ...)')
    try:
        width, height = int(doc['image_width']), int(doc['image_height'])
    except (KeyError, TypeError, ValueError):
        raise CalibrationError(f'{path}: image_width and image_height are required integers') \
            from None
    K = _matrix(doc, 'camera_matrix', 3, 3, path)
    D = _matrix(doc, 'distortion_coefficients', 1, 0, path).ravel()
    if len(D) not in DISTORTION_MODELS:
        raise CalibrationError(f'{path}: {len(D)} distortion coefficients; accepted: 5 '
                               '(plumb_bob) or 8 (rational_polynomial)')
    model = doc.get('distortion_model', DISTORTION_MODELS[len(D)])
    if model != DISTORTION_MODELS[len(D)]:
        raise CalibrationError(f'{path}: distortion_model {model!r} does not match {len(D)} '
                               f'coefficients (expected {DISTORTION_MODELS[len(D)]})')
    if 'projection_matrix' in doc:
        P = _matrix(doc, 'projection_matrix', 3, 4, path)
    else:
        P = np.hstack([undistorted_camera(K, D, (width, height)), np.zeros((3, 1))])
    if width < 1 or height < 1 or K[0, 0] <= 0 or K[1, 1] <= 0 or P[0, 0] <= 0 or P[1, 1] <= 0:
        raise CalibrationError(f'{path}: need a positive image size and focal lengths')
    return CameraCalibration(width, height, K, D, P, str(doc.get('camera_name', 'camera')))


def undistorted_camera(K, D, size_wh) -> np.ndarray:
    new_K, _ = cv2.getOptimalNewCameraMatrix(K, D, tuple(size_wh), 0.0, tuple(size_wh))
    return new_K


def board_points(pattern: Tuple[int, int], square: float) -> np.ndarray:
    cols, rows = pattern
    grid = np.zeros((rows * cols, 3), np.float32)
    grid[:, :2] = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2) * square
    return grid


def find_corners(grey: np.ndarray, pattern: Tuple[int, int]) -> Optional[np.ndarray]:
    found, corners = cv2.findChessboardCorners(
        grey, pattern, flags=cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE)
    if not found:
        return None
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 1e-3)
    return cv2.cornerSubPix(grey, corners, (11, 11), (-1, -1), criteria)


def calibrate(views: Sequence[Tuple[str, np.ndarray]], pattern: Tuple[int, int],
              square: float = 1.0, camera_name: str = 'camera', log=print
              ) -> CameraCalibration:
    """Calibrate from (name, RGB or grey image) views of a chessboard with `pattern` inner
    corners (columns, rows). Views of another size than the most common one, and views where
    the board is not found, are left out and reported through `log`."""
    sizes = [image.shape[:2] for _, image in views]
    if not sizes:
        raise CalibrationError('no images given')
    size = max(set(sizes), key=sizes.count)  # (H, W)
    object_points, image_points, names = [], [], []
    for name, image in views:
        if image.shape[:2] != size:
            log(f'skipped {name}: {image.shape[1]}x{image.shape[0]}, the other views are '
                f'{size[1]}x{size[0]}')
            continue
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        corners = find_corners(grey, pattern)
        if corners is None:
            log(f'skipped {name}: no {pattern[0]}x{pattern[1]} chessboard found')
            continue
        object_points.append(board_points(pattern, square))
        image_points.append(corners)
        names.append(name)
    if len(names) < MIN_VIEWS:
        raise CalibrationError(
            f'the chessboard ({pattern[0]}x{pattern[1]} inner corners) was found in '
            f'{len(names)} of {len(views)} views; at least {MIN_VIEWS} are needed. Check '
            '--pattern (inner corners, columns x rows) and that the whole board is visible')
    height, width = size
    rms, K, D, rvecs, tvecs = cv2.calibrateCamera(object_points, image_points, (width, height),
                                                  None, None)
    per_view = {}
    for name, obj, img, rvec, tvec in zip(names, object_points, image_points, rvecs, tvecs):
        projected, _ = cv2.projectPoints(obj, rvec, tvec, K, D)
        residual = projected.reshape(-1, 2) - img.reshape(-1, 2)  # (N, 2) in pixels
        per_view[name] = float(np.sqrt(np.mean(np.sum(residual ** 2, axis=-1))))
    D = np.asarray(D, np.float64).ravel()[:5]
    P = np.hstack([undistorted_camera(K, D, (width, height)), np.zeros((3, 1))])
    return CameraCalibration(width, height, np.asarray(K, np.float64), D, P, camera_name,
                             float(rms), per_view)


def read_views(paths: Sequence, video_every: int = 15) -> List[Tuple[str, np.ndarray]]:
    """(name, RGB image) views from image files, folders of images, or videos (every
    `video_every`-th frame)."""
    from structflow_ros.data.sources import IMAGE_SUFFIXES, natural_sort_key, open_source
    views = []
    for item in paths:
        item = Path(item)
        if item.is_file() and item.suffix.lower() in IMAGE_SUFFIXES:
            bgr = cv2.imread(str(item), cv2.IMREAD_COLOR)
            if bgr is None:
                raise CalibrationError(f'cannot decode image {item}')
            views.append((item.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        elif item.is_dir() and not any(item.glob('metadata.yaml')):
            files = sorted((p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                           key=lambda p: natural_sort_key(p.name))
            if not files:
                raise CalibrationError(f'{item} has no {", ".join(IMAGE_SUFFIXES)} images')
            views += read_views(files)
        else:
            source = open_source(item, stride=video_every)  # SourceError names what works
            views += [(f'{item.name}@{frame.index}', frame.image) for frame in source]
    return views


def load_kitti_calib(path, image_hw) -> CameraCalibration:
    """KITTI odometry calib.txt (first row: P0, 12 numbers, optionally after 'P0:') for frames
    of `image_hw` (H, W); KITTI images are rectified, so there is no distortion."""
    path = Path(path)
    try:
        first = path.read_text().splitlines()[0].split()
    except (OSError, IndexError) as error:
        raise CalibrationError(f'cannot read KITTI calibration {path}: {error}') from None
    if first and first[0].endswith(':'):
        first = first[1:]
    try:
        P = np.asarray([float(v) for v in first[:12]], np.float64).reshape(3, 4)
    except ValueError:
        raise CalibrationError(f'{path}: the first row must hold P0 (12 numbers)') from None
    height, width = int(image_hw[0]), int(image_hw[1])
    return CameraCalibration(width, height, P[:, :3].copy(), np.zeros(5), P,
                             camera_name=path.parent.name)


def load_calibration(path, image_hw) -> CameraCalibration:
    """A camera_info YAML (`structflow calibrate`, camera_calibration) or a KITTI calib.txt."""
    if Path(path).suffix.lower() == '.txt':
        return load_kitti_calib(path, image_hw)
    return load_camera_info_yaml(path)
