"""The real depth evaluation sets of ../shared/data, one set per source and camera kind.

Each set has its protocol cap (80 m outdoors, 10 m indoors; design.md) and, for KITTI-shaped
images, the Garg crop. Conversions follow each folder's SOURCE.txt:
- real_depth_eval/mmdet3d_demo_nuscenes_kitti: LiDAR depth PNGs, value / 256 m (nuScenes, 6
  cameras of one sample; KITTI object 000008);
- real_depth_eval/argoverse_stereo_gt: ground-truth disparity / 256, depth = fx * B / disparity
  with the rectified fx = 3894.034 px and B = 0.29924 m of SOURCE.txt;
- real_depth_eval/sttr_kitti2015_stereo_gt: disparity / 256, depth = 721.5 px * 0.54 m / disp;
- real_depth_eval/slambook2_rgbd: NYU dining room (value / 1000 m, the Eigen NYU crop removes the
  registration border); its TUM fr1 desk pair is the same two frames as tum_rgbd_pair;
- real_depth_eval/open3d_rgbd_other_formats: the TUM fr3 frame (value / 5000 m). Left out: the
  raw NYU frame (Kinect output not registered to the colour image) and the SUN RGB-D frame
  (intrinsics unknown, bit-rotated depth).
Plus kitti_nyu_depth_frames (3 KITTI, 3 NYU) and tum_rgbd_pair, which the project used before,
and middlebury_stereo: five close-range indoor scenes (objects on a table, about arm's length),
depth = 1 / true disparity in units of each scene's median depth (no focal length and baseline
are given for these image sizes; AbsRel is median-scaled, so the unit does not change it).
"""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from structflow_ros.data.shared_data import (STEREO_SCENES, DepthFrame, PathLike,
                                             SharedDataError, _folder, _read_rgb, _read_uint16,
                                             intrinsics_matrix, load_depth_frames,
                                             load_middlebury_stereo, load_tum_pair)

OUTDOOR_CAP_M = 80.0
INDOOR_CAP_M = 10.0
ARGOVERSE_FX, ARGOVERSE_BASELINE_M = 3894.034, 0.29924
KITTI2015_FX, KITTI2015_BASELINE_M = 721.5, 0.54


VEHICLE_LABELS = {'nuscenes': {0: 'car', 1: 'truck', 2: 'trailer', 3: 'bus',
                              4: 'construction_vehicle'},
                  'kitti_object': {2: 'car'}}


@dataclass
class VehicleBox:
    """A labelled vehicle's 2D box (pixels) and its distance from the camera (metres)."""

    frame: str
    label: str
    box: tuple  # (x0, y0, x1, y1)
    depth_m: float


@dataclass
class RealSet:
    """One evaluation row: frames of one source, its cap and crop."""

    name: str
    frames: List[DepthFrame]
    max_depth: float
    garg_crop: bool
    outdoor: bool
    # (top, bottom, left, right) pixel rows/columns to drop from the evaluation (NYU border).
    border: Optional[tuple] = None
    vehicles: List[VehicleBox] = field(default_factory=list)


def _lidar_png(path: Path) -> np.ndarray:
    return _read_uint16(path).astype(np.float32) / np.float32(256.0)


def _disparity_depth(path: Path, fx: float, baseline: float) -> np.ndarray:
    disparity = _read_uint16(path).astype(np.float32) / np.float32(256.0)
    depth = np.zeros_like(disparity)
    valid = disparity > 0
    depth[valid] = fx * baseline / disparity[valid]
    return depth


def load_nuscenes(root=None) -> List[DepthFrame]:
    folder = _folder(root, 'real_depth_eval', 'mmdet3d_demo_nuscenes_kitti', 'nuscenes')
    infos = sorted(folder.glob('*.json'))
    if not infos:
        raise SharedDataError(f'{folder} has no info .json')
    cameras = json.loads(infos[0].read_text())['data_list'][0]['images']
    frames = []
    for camera, info in sorted(cameras.items()):
        image = folder / info['img_path']
        depth = folder / 'depth_lidar' / (image.stem + '.png')
        if not image.is_file() or not depth.is_file():
            continue
        frames.append(DepthFrame(camera, 'nuscenes', _read_rgb(image), _lidar_png(depth),
                                 np.asarray(info['cam2img'], np.float64)[:3, :3], OUTDOOR_CAP_M))
    if not frames:
        raise SharedDataError(f'{folder}: no camera image with a depth_lidar PNG')
    return frames


def load_vehicles(root=None) -> Dict[str, List[VehicleBox]]:
    """Labelled vehicles of the nuScenes and KITTI object frames (mmdet3d's info files)."""
    base = _folder(root, 'real_depth_eval', 'mmdet3d_demo_nuscenes_kitti')
    vehicles = {'nuscenes': [], 'kitti_object': []}
    info = json.loads(next((base / 'nuscenes').glob('*.json')).read_text())['data_list'][0]
    for camera, instances in sorted(info.get('cam_instances', {}).items()):
        for item in instances:
            label = VEHICLE_LABELS['nuscenes'].get(item.get('bbox_label'))
            if label:
                vehicles['nuscenes'].append(VehicleBox(camera, label, tuple(item['bbox']),
                                                       float(item['depth'])))
    info = json.loads((base / 'kitti' / '000008.json').read_text())['data_list'][0]
    for item in info.get('instances', []):
        label = VEHICLE_LABELS['kitti_object'].get(item.get('bbox_label'))
        if label:
            vehicles['kitti_object'].append(VehicleBox('000008', label, tuple(item['bbox']),
                                                       float(item['depth'])))
    return vehicles


def load_kitti_object(root=None) -> List[DepthFrame]:
    folder = _folder(root, 'real_depth_eval', 'mmdet3d_demo_nuscenes_kitti', 'kitti')
    P2 = np.asarray((folder / '000008.txt').read_text().split()[:12], np.float64).reshape(3, 4)
    return [DepthFrame('000008', 'kitti_object', _read_rgb(folder / '000008.png'),
                       _lidar_png(folder / 'depth_lidar' / '000008.png'), P2[:, :3],
                       OUTDOOR_CAP_M)]


def load_argoverse(root=None) -> List[DepthFrame]:
    folder = _folder(root, 'real_depth_eval', 'argoverse_stereo_gt')
    image = folder / 'rectified_stereo_images_v1.1/test/1/stereo_front_left_rect/' \
        'stereo_front_left_rect_1.jpg'
    disparity = folder / 'disparity_maps_v1.1/test/1/stereo_front_left_rect_disparity/' \
        'disparity_1.png'
    return [DepthFrame('stereo_front_left_1', 'argoverse', _read_rgb(image),
                       _disparity_depth(disparity, ARGOVERSE_FX, ARGOVERSE_BASELINE_M),
                       intrinsics_matrix(ARGOVERSE_FX, ARGOVERSE_FX, 937.570, 1063.199),
                       OUTDOOR_CAP_M)]


def load_kitti2015(root=None) -> List[DepthFrame]:
    folder = _folder(root, 'real_depth_eval', 'sttr_kitti2015_stereo_gt', 'KITTI_2015',
                     'training')
    image = _read_rgb(folder / 'image_2' / '000046_10.png')
    depth = _disparity_depth(folder / 'disp_occ_0' / '000046_10.png', KITTI2015_FX,
                             KITTI2015_BASELINE_M)
    K = intrinsics_matrix(KITTI2015_FX, KITTI2015_FX, image.shape[1] / 2, image.shape[0] / 2)
    return [DepthFrame('000046_10', 'kitti2015', image, depth, K, OUTDOOR_CAP_M)]


def load_nyu_diningroom(root=None) -> List[DepthFrame]:
    folder = _folder(root, 'real_depth_eval', 'slambook2_rgbd', 'nyu_diningroom')
    K = intrinsics_matrix(518.0, 519.0, 325.5, 253.5)
    return [DepthFrame(str(i), 'nyu_diningroom', _read_rgb(folder / 'color' / f'{i}.png'),
                       _read_uint16(folder / 'depth' / f'{i}.pgm').astype(np.float32) / 1000.0,
                       K, INDOOR_CAP_M) for i in range(1, 6)]


def load_tum_fr3(root=None) -> List[DepthFrame]:
    """The TUM fr3 office frame (slambook2's fr1 desk pair is tum_rgbd_pair, loaded already)."""
    folder = _folder(root, 'real_depth_eval', 'open3d_rgbd_other_formats')
    return [DepthFrame('fr3_office', 'tum', _read_rgb(folder / 'TUM_color.png'),
                       _read_uint16(folder / 'TUM_depth.png').astype(np.float32) / 5000.0,
                       intrinsics_matrix(535.4, 539.2, 320.1, 247.6), INDOOR_CAP_M)]


# Middlebury depth is relative (units of the scene's median depth); the cap, 10 medians, stands
# where the indoor sets' 10 m does: far beyond anything on a table top.
MIDDLEBURY_CAP = 10.0


def load_middlebury(root=None) -> List[DepthFrame]:
    """Middlebury stereo's scenes as depth frames: depth = 1 / disparity of the left image,
    divided by its median (relative units; 0 where the disparity is unknown). K is unknown
    (NaN): these sizes come without the focal length, and evaluation never needs it."""
    frames = []
    for name in STEREO_SCENES:
        pair = load_middlebury_stereo(name, root)
        valid = pair.valid
        if not valid.any():
            raise SharedDataError(f'middlebury_stereo/{name}: no pixel has a disparity')
        inverse = np.where(valid, 1.0 / np.where(valid, pair.disparity, 1.0), 0.0)
        depth = (inverse / np.median(inverse[valid])).astype(np.float32)
        frames.append(DepthFrame(name, 'middlebury', pair.left, depth, np.full((3, 3), np.nan),
                                 MIDDLEBURY_CAP))
    return frames


# Eigen et al.'s NYU evaluation crop (rows 45-471, columns 41-601 of 480x640): removes the white
# border that registration leaves.
NYU_BORDER = (45, 480 - 471, 41, 640 - 601)

# name -> (loader, cap, Garg crop, outdoor, border)
REAL_SETS: Dict[str, tuple] = {
    'kitti_depth': (lambda root: load_depth_frames('kitti', root), OUTDOOR_CAP_M, True, True,
                    None),
    'kitti_object': (load_kitti_object, OUTDOOR_CAP_M, True, True, None),
    'kitti2015': (load_kitti2015, OUTDOOR_CAP_M, True, True, None),
    'nuscenes': (load_nuscenes, OUTDOOR_CAP_M, False, True, None),
    'argoverse': (load_argoverse, OUTDOOR_CAP_M, False, True, None),
    'nyu_depth': (lambda root: load_depth_frames('nyu', root), INDOOR_CAP_M, False, False,
                  NYU_BORDER),
    'nyu_diningroom': (load_nyu_diningroom, INDOOR_CAP_M, False, False, NYU_BORDER),
    'tum': (lambda root: load_tum_pair(root) + load_tum_fr3(root), INDOOR_CAP_M, False, False,
            None),
    'middlebury': (load_middlebury, MIDDLEBURY_CAP, False, False, None),
}


def near_vehicle_checks(vehicles: List[VehicleBox], frame_name: str, pred: np.ndarray,
                        gt: np.ndarray, near_m: float = 15.0) -> List[dict]:
    """For each labelled vehicle within `near_m`: is the predicted depth inside its box nearer
    than the predicted depth of what lies behind it? "Behind" = pixels in the box's columns,
    up to one box height above it, whose ground truth is at least 1.5x the vehicle's distance
    (the road and whatever stands further on). Needs 10 such ground-truth pixels."""
    checks = []
    for vehicle in vehicles:
        if vehicle.frame != frame_name or not 0 < vehicle.depth_m <= near_m:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in vehicle.box)
        x0, x1 = max(0, x0), min(pred.shape[1], x1)
        y0, y1 = max(0, y0), min(pred.shape[0], y1)
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        # The inner half of the box: its edges often show the road beside the vehicle.
        inner = pred[y0 + (y1 - y0) // 4:y1 - (y1 - y0) // 4, x0 + (x1 - x0) // 4:
                     x1 - (x1 - x0) // 4]
        top = max(0, y0 - (y1 - y0))
        band_gt, band_pred = gt[top:y1, x0:x1], pred[top:y1, x0:x1]
        behind = band_gt > 1.5 * vehicle.depth_m
        if behind.sum() < 10 or inner.size == 0:
            continue
        vehicle_pred, behind_pred = float(np.median(inner)), float(np.median(band_pred[behind]))
        checks.append({'frame': frame_name, 'label': vehicle.label,
                       'depth_m': round(vehicle.depth_m, 2),
                       'behind_gt_m': round(float(np.median(band_gt[behind])), 2),
                       'pred_ratio_behind_over_vehicle': behind_pred / max(vehicle_pred, 1e-6),
                       'nearer': vehicle_pred < behind_pred})
    return checks


def border_mask(shape, border) -> np.ndarray:
    top, bottom, left, right = border
    mask = np.zeros(shape, bool)
    mask[top:shape[0] - bottom, left:shape[1] - right] = True
    return mask


def load_real_sets(root: Optional[PathLike] = None,
                   names: Optional[List[str]] = None) -> List[RealSet]:
    """Every real depth set (or `names`), each a row of `structflow evaluate --real`."""
    unknown = sorted(set(names or ()) - set(REAL_SETS))
    if unknown:
        raise ValueError(f'unknown real sets {unknown}; choose from {", ".join(REAL_SETS)}')
    sets = []
    for name, (loader, cap, garg, outdoor, border) in REAL_SETS.items():
        if names and name not in names:
            continue
        frames = loader(root)
        if border is not None:  # pixels outside the border carry no usable depth
            for frame in frames:
                frame.depth = np.where(border_mask(frame.depth.shape, border), frame.depth,
                                       np.float32(0.0)).astype(np.float32)
        sets.append(RealSet(name, frames, cap, garg, outdoor, border))
    wanted = [real for real in sets if real.name in VEHICLE_LABELS]
    if wanted:
        vehicles = load_vehicles(root)
        for real in wanted:
            real.vehicles = vehicles[real.name]
    return sets
