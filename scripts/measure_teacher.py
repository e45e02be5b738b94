"""Measure the two-view geometry teacher (data/teacher.py) where the truth is known.

  .venv/bin/python scripts/measure_teacher.py --out reports/teacher       # about 4 minutes

1. Synthetic drives (exact depth): kept-pixel AbsRel after one median per frame, density, and
   AbsRel per confidence bin; with the true K and with the focal self-calibrated per drive.
2. The KITTI odometry clips (../shared/data/kitti_odometry_clips): reference depth triangulated
   from the same DIS flow with the ground-truth poses and the calibration. The reference shares
   the teacher's flow, so this measures what the teacher adds on top of the flow: its motion
   estimate, self-calibration and filters. Pixels the reference trusts: forward-backward
   consistent, under 1 px from the true epipolar line, over 3 px of true parallax.
3. Self-calibration: the focal found per clip next to the true one (KITTI, the Udacity dashcam
   with its chessboard calibration, synthetic drives).
Prints markdown tables and writes OUT/teacher.json.
"""
import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from structflow_ros.data import teacher as T  # noqa: E402

BINS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01))


def scaled_errors(label, truth, mask=None):
    keep = label.valid & np.isfinite(truth) & (truth > 0)
    if mask is not None:
        keep &= mask
    if keep.sum() < 10:
        return None, keep
    scale = np.median(truth[keep]) / np.median(label.depth[keep])
    return np.abs(label.depth[keep] * scale - truth[keep]) / truth[keep], keep


def synthetic_rows(domains, seeds, frames, size):
    from structflow_ros.data.synthetic import render_sequence
    rows = []
    for domain in domains:
        for calibration in ('true K', 'self-calibrated'):
            errors, confidences, densities, focals = [], [], [], []
            for seed in seeds:
                drive = list(render_sequence(domain, frames, *size, seed=seed))
                images = [f.rgb for f in drive]
                K = drive[0].K
                if calibration == 'self-calibrated':
                    focal, _ = T.self_calibrate(images)
                    K = T.intrinsics_from_focal(focal, *size)
                    focals.append(focal / drive[0].K[0, 0])
                for i in range(1, frames - 1):
                    label = T.label_frame(images, i, K, seed=i)
                    densities.append(label.stats['density'])
                    if label.stats.get('abstained'):
                        continue
                    truth = np.where(drive[i].depth_valid & (drive[i].depth < 80),
                                     drive[i].depth, np.nan)
                    error, keep = scaled_errors(label, truth)
                    if error is not None:
                        errors.append(error)
                        confidences.append(label.confidence[keep])
            error, confidence = np.concatenate(errors), np.concatenate(confidences)
            row = {'set': f'synthetic {domain}', 'intrinsics': calibration,
                   'abs_rel': float(error.mean()), 'density': float(np.mean(densities)),
                   'frames': len(densities),
                   'bins': [float(error[(confidence >= lo) & (confidence < hi)].mean())
                            if ((confidence >= lo) & (confidence < hi)).any() else None
                            for lo, hi in BINS],
                   'bin_share': [float(((confidence >= lo) & (confidence < hi)).mean())
                                 for lo, hi in BINS]}
            if focals:
                row['focal_ratio'] = [round(float(f), 3) for f in focals]
            rows.append(row)
            print(f"  {row['set']:<20} {calibration:<16} AbsRel {row['abs_rel']:.3f} density "
                  f"{row['density']:.3f}", flush=True)
    return rows


def kitti_poses(path):
    poses = []
    for line in Path(path).read_text().split('\n'):
        if line.strip():
            pose = np.eye(4)
            pose[:3] = np.asarray(line.split(), np.float64).reshape(3, 4)
            poses.append(pose)
    return poses


def kitti_rows(shared, config):
    rows, focal_rows = [], []
    for clip in (1, 2):
        folder = Path(shared) / 'kitti_odometry_clips' / f'KITTI_sequence_{clip}'
        spec = f'{folder}/image_l#calib={folder}/calib.txt'
        images, K = T.read_clip(spec, config.max_width)
        poses = kitti_poses(folder / 'poses.txt')
        focal, details = T.self_calibrate(images, config)
        focal_rows.append({'clip': f'KITTI {clip}', 'true_px': float(K[0, 0]),
                           'found_px': float(focal), 'prior': details['prior']})
        K_self = T.intrinsics_from_focal(focal, *images[0].shape[:2])
        for name, K_used in (('true K', K), ('self-calibrated', K_self)):
            errors, densities = [], []
            for i in range(1, len(images) - 1):
                label = T.label_frame(images, i, K_used, config, seed=i)
                densities.append(label.stats['density'])
                if label.stats.get('abstained'):
                    continue
                reference = reference_depth(images[i], images[i + 1], K, poses[i], poses[i + 1])
                error, _ = scaled_errors(label, reference)
                if error is not None:
                    errors.append(error)
            error = np.concatenate(errors) if errors else np.array([np.nan])
            rows.append({'set': f'KITTI odometry {clip}', 'intrinsics': name,
                         'abs_rel': float(np.mean(error)), 'density': float(np.mean(densities)),
                         'frames': len(densities), 'labelled': len(errors)})
            print(f'  KITTI {clip} {name:<16} AbsRel {rows[-1]["abs_rel"]:.3f} density '
                  f'{rows[-1]["density"]:.3f}', flush=True)
    return rows, focal_rows


def reference_depth(image0, image1, K, pose0, pose1):
    """Depth of image0 triangulated from DIS flow with the true motion (NaN where not
    trusted)."""
    flow_fw, flow_bw = T.dis_flow_both_ways(image0, image1)
    fb_error, inside = T.forward_backward_error(flow_fw, flow_bw)
    relative = np.linalg.inv(pose1) @ pose0  # camera 0 -> camera 1
    z0, z1, parallax_px, epipolar = T.flow_geometry(flow_fw, K, relative[:3, :3],
                                                    relative[:3, 3])
    good = ((fb_error < 0.5) & inside & (epipolar < 1.0) & (parallax_px > 3) & (z0 > 0)
            & (z1 > 0))
    return np.where(good, z0, np.nan)


def udacity_focal(shared, config, calib):
    if not Path(calib).is_file():
        return None
    clip = Path(shared) / 'udacity_calibrated_video' / 'fork_subclips' / \
        'chenwade__short_project_video.mp4'
    images, K = T.read_clip(f'{clip}#calib={calib},crop=0:0.06:0:0,stride=3', config.max_width)
    focal, details = T.self_calibrate(images, config)
    return {'clip': 'Udacity dashcam', 'true_px': float(K[0, 0]), 'found_px': float(focal),
            'prior': details['prior']}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='reports/teacher')
    parser.add_argument('--shared-data', default=str(REPO.parent / 'shared' / 'data'))
    parser.add_argument('--udacity-calib', default='runs/real/udacity_camera.yaml',
                        help='camera_info YAML of the Udacity dashcam (`structflow calibrate`)')
    parser.add_argument('--domains', nargs='*', default=['day', 'dusk', 'overcast', 'fog'])
    parser.add_argument('--seeds', nargs='*', type=int, default=[5, 6])
    parser.add_argument('--frames', type=int, default=10)
    args = parser.parse_args()
    config = T.TeacherConfig()
    print('synthetic drives (384x192, exact depth):', flush=True)
    report = {'config': asdict(config),
              'synthetic': synthetic_rows(args.domains, args.seeds, args.frames, (192, 384))}
    report['kitti'], focals = [], []
    if Path(args.shared_data, 'kitti_odometry_clips').is_dir():
        print('KITTI odometry clips (reference: DIS flow triangulated with true poses):')
        report['kitti'], focals = kitti_rows(args.shared_data, config)
        udacity = udacity_focal(args.shared_data, config, args.udacity_calib)
        if udacity:
            focals.append(udacity)
    for row in report['synthetic']:
        if 'focal_ratio' in row:
            focals.append({'clip': row['set'], 'found_over_true': row['focal_ratio']})
    report['focals'] = focals
    print('\n| set | intrinsics | kept-pixel AbsRel | density | AbsRel by confidence '
          '(0-.25 / .25-.5 / .5-.75 / .75-1) |\n|---|---|---|---|---|')
    for row in report['synthetic'] + report['kitti']:
        bins = ' / '.join('-' if b is None else f'{b:.3f}' for b in row.get('bins', [])) or '-'
        print(f"| {row['set']} | {row['intrinsics']} | {row['abs_rel']:.3f} | "
              f"{row['density']:.3f} | {bins} |")
    print('\n| clip | true focal (px) | self-calibrated |\n|---|---|---|')
    for row in focals:
        if 'true_px' in row:
            note = ' (flat: prior)' if row['prior'] else ''
            print(f"| {row['clip']} | {row['true_px']:.1f} | {row['found_px']:.1f}{note} |")
        else:
            print(f"| {row['clip']} | (ratio) | {row['found_over_true']} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'teacher.json').write_text(json.dumps(report, indent=2, default=str))
    print(f'wrote {out / "teacher.json"}')


if __name__ == '__main__':
    main()
