"""The replay showcase in the README: three bags, each replayed with adaptation off and on.

    .venv/bin/python scripts/replay_showcase.py [--out reports/replay_showcase]

Bags (built under --out from ../shared/data and the synthetic world; nothing is copied into the
repository):
- kitti: KITTI odometry sequence 1 (51 real grey frames, 10 Hz) with camera_info from its P0;
- dashcam: the first FRAMES frames of a real dashcam clip (no intrinsics, no ground truth);
- fog: a held-out synthetic fog drive (the domain kept out of training) with exact depth.
Each goes through `structflow replay --adapt both` (the shipped model; adaptation paced at the
recorded rate, as on a robot). Writes showcase.md (one table) and showcase.png (AbsRel over
time on the fog drive, with and without adaptation, swaps marked); docs/replay.md holds them.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared' / 'data'


def kitti_camera_yaml(sequence, path):
    P0 = np.array(next(l for l in (sequence / 'calib.txt').read_text().splitlines()
                       if l.strip()).split()[-12:], dtype=np.float64).reshape(3, 4)
    first = sorted((sequence / 'image_l').iterdir())[0]
    import cv2
    height, width = cv2.imread(str(first), cv2.IMREAD_GRAYSCALE).shape
    import yaml
    path.write_text(yaml.safe_dump({
        'image_width': width, 'image_height': height, 'camera_name': 'kitti_cam0',
        'camera_matrix': {'rows': 3, 'cols': 3, 'data': P0[:, :3].reshape(-1).tolist()},
        'distortion_model': 'plumb_bob',
        'distortion_coefficients': {'rows': 1, 'cols': 5, 'data': [0.0] * 5}}))
    return path


def structflow(*argv):
    command = [sys.executable, '-m', 'structflow_ros.cli', *map(str, argv)]
    print('$', ' '.join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def fog_bag(path, frames, seed):
    from structflow_ros.data.bag_io import BagWriter
    from structflow_ros.data.synthetic.render import render_sequence
    with BagWriter(path, storage='mcap') as writer:
        for frame in render_sequence('fog', frames, 192, 640, seed=seed):
            writer.write_image('/camera/image_raw', frame.stamp_ns, frame.rgb)
            writer.write_camera_info('/camera/camera_info', frame.stamp_ns, frame.K, 640, 192)
            writer.write_image('/camera/depth_gt', frame.stamp_ns,
                               np.where(frame.depth_valid, frame.depth, 0.0).astype(np.float32),
                               '32FC1')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='reports/replay_showcase')
    parser.add_argument('--dashcam', default='real_driving_video/dashcam_eu_motorway/highway.mp4')
    parser.add_argument('--dashcam-frames', type=int, default=300)
    parser.add_argument('--fog-frames', type=int, default=300)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    bags = out / 'bags'
    bags.mkdir(parents=True, exist_ok=True)
    kitti = SHARED / 'kitti_odometry_clips' / 'KITTI_sequence_1'
    if not (bags / 'kitti').exists():
        structflow('bag', 'from-video', kitti / 'image_l', '--out', bags / 'kitti', '--rate', 10,
                   '--camera-info', kitti_camera_yaml(kitti, out / 'kitti_cam0.yaml'),
                   '--no-progress')
    if not (bags / 'dashcam').exists():
        structflow('bag', 'from-video', SHARED / args.dashcam, '--out', bags / 'dashcam',
                   '--rate', 10, '--max-frames', args.dashcam_frames, '--max-width', 640,
                   '--no-progress')
    if not (bags / 'fog').exists():
        fog_bag(bags / 'fog', args.fog_frames, seed=903)
    rows = []
    for name, extra in (('kitti', []), ('dashcam', []),
                        ('fog', ['--gt-depth-topic', '/camera/depth_gt'])):
        structflow('replay', bags / name, '--adapt', 'both', '--out', out / name,
                   '--no-progress', *extra)
        for variant in ('structflow_default', 'structflow_default_adapt'):
            summary = json.loads((out / name / variant / 'summary.json').read_text())
            rows.append((name, summary))
    lines = ['| bag | adaptation | frames | AbsRel | floor | AbsRel one scale | swaps | '
             'steps | accepted / refused | ms p50 |', '|' + '---|' * 10]
    for name, s in rows:
        scaled, one = s.get('median_scaled', {}), s.get('global_scale', {})
        adaptation = s.get('adaptation', {})

        def number(value, digits=3):
            return '-' if value is None else f'{value:.{digits}f}'
        lines.append(' | '.join([
            f'| {name}', 'on' if s['adapt'] else 'off', str(s['frames']),
            number(scaled.get('abs_rel')), number(s.get('constant_depth_floor_abs_rel')),
            number(one.get('abs_rel')), str(len(s['swaps'])),
            str(adaptation.get('adaptation_steps', '-')),
            f"{adaptation.get('adaptation_candidates_accepted', '-')} / "
            f"{adaptation.get('adaptation_candidates_refused', '-')}",
            number(s['latency_ms_p50'], 1)]) + ' |')
    (out / 'showcase.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    plot(out / 'fog', out / 'showcase.png')


def plot(fog, path):
    import csv
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(8, 3.2))
    for variant, label in (('structflow_default', 'adaptation off'),
                           ('structflow_default_adapt', 'adaptation on')):
        with open(fog / variant / 'frames.csv') as handle:
            frames = [r for r in csv.DictReader(handle) if r['abs_rel']]
        axis.plot([int(r['index']) for r in frames], [float(r['abs_rel']) for r in frames],
                  lw=1, label=label)
        summary = json.loads((fog / variant / 'summary.json').read_text())
        for number, swap in enumerate(summary['swaps']):
            axis.axvline(swap['frame'], color='tab:green', ls='--', lw=1,
                         label='swap (accepted version)' if number == 0 else None)
    axis.set_xlabel('frame (10 Hz)')
    axis.set_ylabel('AbsRel (median-scaled)')
    axis.set_title('held-out synthetic fog drive, shipped model, replayed')
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f'plot: {path}')


if __name__ == '__main__':
    main()
