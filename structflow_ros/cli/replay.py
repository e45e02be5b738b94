"""structflow replay BAG: measure depth on a recorded drive, with or without adaptation.

    structflow replay drive_bag --gt-depth-topic /lidar/depth --out reports/drive
    structflow replay drive.mcap --adapt both                  # adaptation off and on
    structflow replay drive_bag --compare a.pt b.pt            # one table, several weights

The bag (sqlite3 or MCAP; a folder with metadata.yaml or a bare .mcap/.db3) is read with
rosbags, each image goes through the node's own per-frame pipeline (the same DepthServer,
FramePipeline and, with --adapt, the same PairBuffer + OnlineAdapter thread built from the node's
adapt_* parameters; --params-file reads them from the node's YAML), as fast as the machine
allows or at the recorded rate (--realtime; the default with --adapt, so the adapter gets the
robot's share of time). Each frame is predicted before the adapter may learn from it.

Report folder (per variant when several): frames.csv (per-frame metrics, latency, version),
summary.json (Eigen metrics median-scaled, with one global scale and unscaled; beside them the
constant-depth floor and the image-independent prior floor (the geometric mean of this replay's
own predictions over the frames with ground truth, used for every frame) with the image gain,
1 - AbsRel / prior AbsRel; the scale ratio's stability; latency; versions served and swaps;
adaptation counters), abs_rel.png (over time, beside both floors, swaps marked),
error_hist.png, replay.mp4 (image | depth | error) and bag/ (MCAP: the original topics + depth,
depth/colored, depth/camera_info, depth/points). Ctrl-C writes all of it for the
frames processed so far, the bag closed and valid. Exit codes: 0 done, 2 bad input, 130
interrupted.
"""
import argparse
import csv
import datetime
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from structflow_ros.online.units import DEPTH_MODES
from structflow_ros.progress import progress_bar
from structflow_ros.replay.source import BagReplaySource, ReplayInputError
from structflow_ros.tools.run_summary import percentile

EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130
GLOBAL_SCALE_SAMPLES = 20000  # pixels kept per frame for the one-scale-per-drive metrics
TABLE_KEYS = ('abs_rel', 'sq_rel', 'rmse', 'a1')


def get_args_parser():
    parser = argparse.ArgumentParser(
        description='Replay a ROS 2 bag through the depth pipeline and measure it.')
    parser.add_argument('bag', help='rosbag2 folder (metadata.yaml) or a .mcap/.db3 file')
    parser.add_argument('--image-topic', default='', help='default: the one image topic')
    parser.add_argument('--camera-info-topic', default='',
                        help='default: the one CameraInfo topic, if exactly one')
    parser.add_argument('--gt-depth-topic', default='',
                        help='ground-truth depth (32FC1 m or 16UC1 mm, zeros = missing)')
    parser.add_argument('--gt-tolerance', type=float, default=0.02,
                        help='max |image stamp - ground-truth stamp| in seconds (0.02)')
    parser.add_argument('--weights', default='', help='checkpoint (default: the shipped model)')
    parser.add_argument('--compare', nargs='+', default=[], metavar='WEIGHTS',
                        help='replay each of these weights; one table')
    parser.add_argument('--adapt', choices=('off', 'on', 'both'), default='off',
                        help='online adaptation while replaying (both: a row each)')
    parser.add_argument('--params-file', default='',
                        help="node YAML whose adapt_* parameters configure --adapt "
                             "(default: config/structflow.yaml's values)")
    parser.add_argument('--realtime', choices=('auto', 'on', 'off'), default='auto',
                        help='pace at the recorded rate (auto: on with adaptation)')
    parser.add_argument('--backend', default='auto', help='serving backend, as the node')
    parser.add_argument('--network-aspect', default='auto', choices=('auto', 'keep', 'squash'),
                        help="the node's network_aspect: frames at their own aspect (keep), "
                        'squashed to the model size, or what the weights were trained for')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--max-frames', type=int, default=0, help='0: the whole bag')
    parser.add_argument('--max-depth', type=float, default=80.0,
                        help='evaluation cap in metres (80 outdoor, 10 indoor)')
    parser.add_argument('--frame-id', default='', help="output frame_id (default: the image's)")
    # The node's output parameters: the output bag holds what the node would publish.
    parser.add_argument('--depth-mode', default='relative', choices=DEPTH_MODES,
                        help="the node's depth_mode: unit of the written depth (metrics are "
                        "taken on the model's depth either way)")
    parser.add_argument('--depth-scale', type=float, default=1.0,
                        help="the node's depth_scale (metres per model unit, depth-mode scale)")
    parser.add_argument('--camera-height', type=float, default=1.0,
                        help="the node's camera_height in metres (depth-mode camera_height)")
    parser.add_argument('--points-decimation', type=int, default=2,
                        help="the node's points_decimation (every n-th pixel a point)")
    parser.add_argument('--out', default='', help='report folder (default reports/replay-TIME)')
    parser.add_argument('--no-video', action='store_true')
    parser.add_argument('--no-bag', action='store_true')
    parser.add_argument('--no-progress', action='store_true')
    return parser


# ----------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------
def variants(args, default_weights):
    weights = [Path(w).expanduser() for w in args.compare] or [default_weights]
    adapt_modes = {'off': [False], 'on': [True], 'both': [False, True]}[args.adapt]
    several = len(weights) * len(adapt_modes) > 1
    result = []
    for path in weights:
        for adapt in adapt_modes:
            label = path.stem + (' +adapt' if adapt else '')
            folder = (path.stem + ('_adapt' if adapt else '')) if several else ''
            result.append((label, path, adapt, folder))
    return result


def node_adapt_parameters(params_file):
    """The adapt_* values of a node YAML (any node name), else config/structflow.yaml's."""
    import yaml
    from structflow_ros.paths import default_params_file
    path = Path(params_file) if params_file else default_params_file()
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ReplayInputError(f'cannot read --params-file {path}: {error}') from None
    values = {}
    for node in document.values():
        if isinstance(node, dict):
            values.update({k: v for k, v in (node.get('ros__parameters') or {}).items()
                           if k.startswith('adapt_')})
    return values


# ----------------------------------------------------------------------------------------------
# One variant
# ----------------------------------------------------------------------------------------------
def replay_one(source, settings, out, args, progress):
    """Replay the bag once; writes the report folder; returns (summary, interrupted)."""
    from structflow_ros.replay.outputs import OutputBag, SideBySideVideo
    from structflow_ros.replay.run import ReplayRun, colorize, side_by_side
    out.mkdir(parents=True, exist_ok=True)
    messages = []
    run = ReplayRun(settings, log=lambda level, text: messages.append(f'[{level}] {text}'))
    rows, samples = [], []
    bag = None if args.no_bag else OutputBag(out / 'bag')
    video = None if args.no_video else SideBySideVideo(out / 'replay.mp4', fps=10)
    total = source.counts.get(source.image_topic, 0)
    if args.max_frames:
        total = min(total, args.max_frames)
    bar = progress_bar(progress, total, f'replay {settings.label}')
    interrupted = False
    rng = np.random.default_rng(0)
    run.start()
    try:
        for frame in source.frames(passthrough=bag.passthrough if bag else None):
            row, result = run.process(frame)
            rows.append(row)
            if row.metrics is not None:
                samples.append(_global_scale_sample(result.model_depth, frame.gt,
                                                    args.max_depth, rng))
            published = result.depth if result.depth is not None else result.model_depth
            colored = colorize(published) if bag is not None or video is not None else None
            if bag is not None and result.depth is not None:  # the node publishes nothing else
                bag.write_frame(frame, result, colored,
                                args.frame_id or frame.frame_id or 'camera',
                                settings.points_decimation)
            if video is not None:
                video.write(side_by_side(frame, colored, row, result.model_depth,
                                         args.max_depth))
            bar.update(1)
            if row.metrics is not None:
                bar.set_postfix_str(f"AbsRel {row.metrics['abs_rel']:.3f} v{row.version}",
                                    refresh=False)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        adaptation = run.status()
        swaps = list(run.swaps)
        run.close()
        if bag is not None:
            bag.close()
        if video is not None:
            video.close()
    run.score_prior_floor()  # the bag (or what a Ctrl-C left of it) is the set
    summary = summarize(rows, samples, swaps, adaptation, source, settings, args)
    summary['interrupted'] = interrupted
    summary['log'] = messages[-50:]
    write_report(out, rows, summary, swaps, settings.label)
    return summary, interrupted


def _global_scale_sample(depth, gt, max_depth, rng):
    valid = np.isfinite(gt) & (gt > 1e-3) & (gt < max_depth)
    pred, truth = depth[valid], gt[valid]
    if truth.size > GLOBAL_SCALE_SAMPLES:
        keep = rng.choice(truth.size, GLOBAL_SCALE_SAMPLES, replace=False)
        pred, truth = pred[keep], truth[keep]
    return pred.astype(np.float32), truth.astype(np.float32)


def summarize(rows, samples, swaps, adaptation, source, settings, args):
    from structflow_ros.core.metrics import aggregate_depth_metrics, depth_metrics
    measured = [r for r in rows if r.metrics is not None]
    summary = {
        'bag': source.describe(), 'weights': str(settings.weights), 'label': settings.label,
        'adapt': settings.adapt, 'realtime': settings.realtime, 'backend': args.backend,
        'frames': len(rows), 'frames_with_ground_truth': len(measured),
        'source': vars(source.stats).copy(),
        'latency_ms_p50': percentile([r.latency_ms for r in rows], 50),
        'latency_ms_p95': percentile([r.latency_ms for r in rows], 95),
        'model_ms_p50': percentile([r.model_ms for r in rows], 50),
        'versions_served': {str(v): sum(1 for r in rows if r.version == v)
                            for v in sorted({r.version for r in rows})},
        'swaps': [{'frame': f, 'version': v} for f, v in swaps],
        'adaptation': {k: v for k, v in adaptation.items()
                       if isinstance(v, (int, float, str, bool))},
    }
    if source.gt_topic and not measured:
        summary['note'] = (f'no ground truth matched within {args.gt_tolerance} s of any image '
                           f'on {source.gt_topic}: no metrics (raise --gt-tolerance?)')
    if not measured:
        return summary
    summary['median_scaled'] = aggregate_depth_metrics([r.metrics for r in measured])
    summary['unscaled'] = aggregate_depth_metrics([r.raw_metrics for r in measured])
    summary['constant_depth_floor_abs_rel'] = float(np.mean([r.floor_abs_rel
                                                             for r in measured]))
    # The image-independent prior floor (the geometric mean of the replay's predictions over
    # the frames with ground truth, for every frame): its ordinal error is not 0.5, as the
    # constant's is, since the prior has a layout (a road-plane gradient).
    if all(r.prior_metrics is not None for r in measured):
        from structflow_ros.core.metrics import image_gain
        summary['prior_floor'] = aggregate_depth_metrics([r.prior_metrics for r in measured])
        summary['prior_floor_abs_rel'] = summary['prior_floor']['abs_rel']
        summary['image_gain'] = image_gain(summary['median_scaled']['abs_rel'],
                                           summary['prior_floor_abs_rel'])
    # One scale for the whole drive (what a robot with a fixed scale sees): the median of the
    # per-frame ratios, applied to every frame.
    ratios = np.array([r.metrics['scale_ratio'] for r in measured])
    global_ratio = float(np.median(ratios))
    pred = np.concatenate([p for p, _ in samples]) * global_ratio
    truth = np.concatenate([t for _, t in samples])
    summary['global_scale'] = depth_metrics(pred[None], truth[None],  # (1, N) maps
                                            max_depth=args.max_depth, median_scaling=False)
    summary['global_scale']['scale_ratio'] = global_ratio
    # Stability of the scale over time: spread, and drift of log(ratio) per 100 frames.
    index = np.array([r.index for r in measured], dtype=np.float64)
    drift = float(np.polyfit(index, np.log(ratios), 1)[0] * 100) if len(ratios) > 2 else 0.0
    summary['scale_ratio'] = {'median': global_ratio,
                              'spread': summary['median_scaled']['scale_ratio_spread'],
                              'log_drift_per_100_frames': drift}
    return summary


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def write_report(out, rows, summary, swaps, label):
    (out / 'summary.json').write_text(json.dumps(_clean(summary), indent=1))
    with open(out / 'frames.csv', 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['index', 'stamp_ns', 'version', 'latency_ms', 'model_ms', 'pair',
                         'width', 'height', 'gt_points', 'abs_rel', 'sq_rel', 'rmse',
                         'rmse_log', 'a1', 'scale_ratio', 'abs_rel_unscaled',
                         'floor_abs_rel', 'prior_abs_rel', 'ordinal_error',
                         'prior_ordinal_error'])
        for r in rows:
            m = r.metrics or {}
            writer.writerow([r.index, r.stamp_ns, r.version, f'{r.latency_ms:.2f}',
                             f'{r.model_ms:.2f}', r.pair, r.width, r.height, r.gt_points,
                             *(_fmt(m.get(k)) for k in ('abs_rel', 'sq_rel', 'rmse',
                                                        'rmse_log', 'a1', 'scale_ratio')),
                             _fmt((r.raw_metrics or {}).get('abs_rel')),
                             _fmt(r.floor_abs_rel if r.metrics else None),
                             _fmt((r.prior_metrics or {}).get('abs_rel')),
                             _fmt(m.get('ordinal_error')),
                             _fmt((r.prior_metrics or {}).get('ordinal_error'))])
    measured = [r for r in rows if r.metrics is not None]
    if measured:
        _plots(out, measured, swaps, label)


def _fmt(value):
    return '' if value is None or not math.isfinite(value) else f'{value:.5g}'


def _ordinal(model, prior):
    """'model (prior)' ordinal errors for the table; the constant depth's is 0.5."""
    if not _fmt(model):
        return '-'
    return f'{model:.3f} ({prior:.3f})' if _fmt(prior) else f'{model:.3f}'


def _plots(out, measured, swaps, label):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    index = [r.index for r in measured]
    figure, axis = plt.subplots(figsize=(8, 3.2))
    axis.plot(index, [r.metrics['abs_rel'] for r in measured], lw=1, label='model')
    axis.plot(index, [r.floor_abs_rel for r in measured], lw=1, color='grey', alpha=0.7,
              label='constant depth (floor)')
    if all(r.prior_metrics is not None for r in measured):
        axis.plot(index, [r.prior_metrics['abs_rel'] for r in measured], lw=1,
                  color='tab:orange', alpha=0.8, label='own mean prediction (prior floor)')
    for number, (frame, version) in enumerate(swaps):
        axis.axvline(frame, color='tab:green', ls='--', lw=1,
                     label='swap (adapted version)' if number == 0 else None)
    axis.set_xlabel('frame')
    axis.set_ylabel('AbsRel (median-scaled)')
    axis.set_title(label)
    axis.legend(loc='upper right', fontsize=8)
    figure.tight_layout()
    figure.savefig(out / 'abs_rel.png', dpi=110)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.hist([r.metrics['abs_rel'] for r in measured], bins=30)
    axis.set_xlabel('per-frame AbsRel')
    axis.set_ylabel('frames')
    axis.set_title(label)
    figure.tight_layout()
    figure.savefig(out / 'error_hist.png', dpi=110)
    plt.close(figure)


def table(summaries):
    header = ('| variant | frames | gt frames | AbsRel | SqRel | RMSE | a1 | floor AbsRel | '
              'prior AbsRel | image gain | ordinal (prior) | AbsRel (one scale) | '
              'scale spread | swaps | ms p50 |')
    lines = [header, '|' + '---|' * 15]
    for s in summaries:
        scaled = s.get('median_scaled', {})
        one = s.get('global_scale', {})
        cells = [s['label'], s['frames'], s['frames_with_ground_truth'],
                 *(_fmt(scaled.get(k)) or '-' for k in TABLE_KEYS),
                 _fmt(s.get('constant_depth_floor_abs_rel')) or '-',
                 _fmt(s.get('prior_floor_abs_rel')) or '-', _fmt(s.get('image_gain')) or '-',
                 _ordinal(scaled.get('ordinal_error'),
                          s.get('prior_floor', {}).get('ordinal_error')),
                 _fmt(one.get('abs_rel')) or '-',
                 _fmt(scaled.get('scale_ratio_spread')) or '-', len(s['swaps']),
                 _fmt(s['latency_ms_p50'])]
        lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(args):
    from structflow_ros.core.inference import resolve_device
    from structflow_ros.online.server import resolve_weights_path
    from structflow_ros.replay.run import ReplaySettings
    progress = not args.no_progress
    try:
        if args.max_frames < 0 or args.threads < 0 or not args.max_depth > 0:
            raise ReplayInputError('--max-frames and --threads must be >= 0, --max-depth > 0')
        source = BagReplaySource(args.bag, args.image_topic or None,
                                 args.camera_info_topic or None, args.gt_depth_topic or None,
                                 args.gt_tolerance, args.max_frames)
        default_weights = resolve_weights_path(args.weights)
        runs = variants(args, default_weights)
        for _, path, _, _ in runs:
            if not path.is_file():
                raise ReplayInputError(f'weights file {path} does not exist')
        adapt_parameters = (node_adapt_parameters(args.params_file)
                            if args.adapt != 'off' else {})
        device = str(resolve_device(args.device))
    except (ReplayInputError, ValueError) as error:
        print(f'structflow replay: {error}', file=sys.stderr)
        return EXIT_BAD_INPUT
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    out = Path(args.out or f'reports/replay-{stamp}').resolve()
    described = source.describe()
    print(f"replaying {described['bag']}: image {described['image_topic']}, camera_info "
          f"{described['camera_info_topic'] or '-'}, ground truth "
          f"{described['gt_depth_topic'] or '-'}; report: {out}")
    summaries, interrupted = [], False
    for label, weights, adapt, folder in runs:
        realtime = args.realtime == 'on' or (args.realtime == 'auto' and adapt)
        with tempfile.TemporaryDirectory(prefix='structflow-replay-state-') as state:
            settings = ReplaySettings(
                weights=weights, device=device, backend=args.backend, threads=args.threads,
                adapt=adapt, adapt_parameters=adapt_parameters,
                adapt_state_dir=Path(state) if adapt else None, realtime=realtime,
                max_depth=args.max_depth, label=label, network_aspect=args.network_aspect,
                depth_mode=args.depth_mode, depth_scale=args.depth_scale,
                camera_height=args.camera_height, points_decimation=args.points_decimation)
            try:
                summary, interrupted = replay_one(
                    BagReplaySource(args.bag, source.image_topic, source.camera_info_topic,
                                    source.gt_topic, args.gt_tolerance, args.max_frames),
                    settings, out / folder, args, progress)
            except (ReplayInputError, ValueError) as error:
                print(f'structflow replay: {error}', file=sys.stderr)
                return EXIT_BAD_INPUT
        summaries.append(summary)
        if summary.get('note'):
            print(f"note: {summary['note']}", file=sys.stderr)
        if summary['source'].get('truncated'):
            print(f"note: {summary['source']['truncated']}", file=sys.stderr)
        if interrupted:
            break
    result = table(summaries)
    (out / 'comparison.md').write_text(result + '\n')
    print(result)
    if interrupted:
        print(f'\ninterrupted: partial report in {out}')
        return EXIT_INTERRUPTED
    print(f'\nreport: {out}')
    return 0
