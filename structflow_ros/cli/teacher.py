"""Two-view geometry teacher labels for real video, computed once per clip into a cache.

Each SOURCE is a data spec as in `structflow pretrain` (PATH[#crop=...,stride=N,calib=FILE]).
With calib= the clip's intrinsics are used; without, the focal is self-calibrated from the
clip's flow (data/teacher.py). Every frame is labelled from its pairs with the frames before
and after it (DIS flow both ways, essential matrix, triangulation, four-cue confidence, the two
pairs must agree); static stretches and moving objects get no labels. One file per clip:
OUT/<clip>.teacher.npz, read by `structflow finetune --teacher OUT`.

  structflow teacher ../shared/data/real_driving_video/dashcam_forest_road/road.mp4#stride=3 \
      --out runs/teacher
  structflow teacher $(grep -v '^#' scripts/real_video_specs.txt | sed 's|^|../shared/data/|') \
      --out runs/teacher            # every pretraining clip (about 10 minutes on 2 cores)

A clip whose cache exists is skipped unless --overwrite. --sheet writes OUT/<clip>.png (frames
beside their labels) to look at.
"""
import argparse
import json
import sys
from pathlib import Path


def get_args_parser():
    from structflow_ros.data.teacher import TeacherConfig
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=__doc__.split('\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('sources', nargs='+', metavar='SOURCE',
                        help='data specs: video, image folder or bag [#crop=,stride=,calib=]')
    parser.add_argument('--out', required=True, help='cache folder')
    defaults = TeacherConfig()
    parser.add_argument('--max-width', type=int, default=defaults.max_width,
                        help='frames are labelled and cached at most this wide')
    parser.add_argument('--gap', type=int, default=defaults.gap,
                        help='partners this many frames before and after each frame')
    parser.add_argument('--min-parallax-px', type=float, default=defaults.min_parallax_px)
    parser.add_argument('--focal', type=float, default=None,
                        help='focal in pixels at the cached size for clips without calib= '
                        '(default: self-calibrated per clip)')
    parser.add_argument('--overwrite', action='store_true', help='relabel clips already cached')
    parser.add_argument('--sheet', action='store_true', help='write OUT/<clip>.png as well')
    parser.add_argument('--no-progress', action='store_true')
    return parser


def write_sheet(path, clip, rows=6, height=120):
    """PNG: a few labelled frames, each as frame | labels (near bright, far dark)."""
    import cv2
    import numpy as np

    from structflow_ros.data.synthetic.preview import depth_to_color
    picks = np.linspace(0, len(clip.index) - 1, min(rows, len(clip.index))).round().astype(int)
    lines = []
    for k in picks:
        image = clip.images[clip.index[k]]
        depth = clip.depth[k].astype(np.float32)
        valid = depth > 0
        color = depth_to_color(depth, valid, float(np.percentile(depth[valid], 5)))
        color[~valid] = 0
        row = np.concatenate([image, color], 1)
        row = cv2.resize(row, (int(row.shape[1] * height / row.shape[0]), height),
                         interpolation=cv2.INTER_AREA)
        lines.append(cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(path), np.concatenate(lines, 0))
    return path


def _stale(path, spec, config, focal):
    """Why the cache at `path` was not made by this request (None: it was). Two specs may share
    a file name (calib= is named by its file's stem), and settings may change between runs."""
    from dataclasses import asdict

    from structflow_ros.data.teacher import TeacherCacheError, read_cache_meta
    try:
        meta = read_cache_meta(path)
    except TeacherCacheError as error:
        return str(error)
    if meta.get('spec') != str(spec):
        return f"it holds {meta.get('spec')}"
    if meta.get('config') != asdict(config) or meta.get('focal_argument') != focal:
        return 'it was labelled with other settings'
    return None


def main(args):
    import cv2
    from tqdm import tqdm

    from structflow_ros.data.teacher import (TeacherConfig, cache_name, intrinsics_from_focal,
                                             label_clip, read_cache, read_clip, write_cache)
    try:
        config = TeacherConfig(max_width=args.max_width, gap=args.gap,
                               min_parallax_px=args.min_parallax_px)
        if args.focal is not None and not args.focal > 0:
            raise ValueError(f'--focal must be a positive number of pixels, got {args.focal}')
    except ValueError as error:
        print(f'structflow teacher: {error}', file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary, failed = [], 0
    for spec in args.sources:
        path = out / cache_name(spec)
        if path.exists() and not args.overwrite:
            reason = _stale(path, spec, config, args.focal)
            if reason is None:
                print(f'{spec}: cached in {path} (--overwrite relabels)')
                continue
            print(f'{spec}: relabelling {path}: {reason}')
        try:
            frames, K = read_clip(spec, config.max_width)
            if not frames:
                raise ValueError('no frames after preparation (crop, stride, duplicates)')
            given = K is None and args.focal is not None
            if given:
                K = intrinsics_from_focal(args.focal, *frames[0].shape[:2])
            with tqdm(total=len(frames), desc=Path(spec.partition('#')[0]).name, unit='frame',
                      disable=args.no_progress, dynamic_ncols=True) as progress:
                labels, K, description = label_clip(frames, K, config, progress)
            if given:
                description['intrinsics'] = 'given (--focal)'
            description['focal_argument'] = args.focal
            write_cache(path, spec, frames, labels, K, config, description)
        except (ValueError, OSError, cv2.error) as error:  # SourceError is a ValueError
            print(f'structflow teacher: {spec}: {error}', file=sys.stderr)
            failed += 1
            continue
        line = {'spec': spec, 'cache': str(path), 'frames': description['frames'],
                'labelled': description['labelled'], 'abstained': description['abstained'],
                'mean_density': round(description['mean_density'], 4),
                'intrinsics': description['intrinsics'], 'focal_px': round(float(K[0, 0]), 1)}
        summary.append(line)
        print(json.dumps(line))
        if args.sheet and labels:
            write_sheet(path.with_suffix('').with_suffix('.png'), read_cache(path))
    return 1 if failed else 0
