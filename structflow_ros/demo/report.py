"""The demo's report: per-frame metrics from the node's replies, latency tables, the video and
the sheet, metrics.json / latency.json / latency.md."""
import json
import math

import cv2
import numpy as np

from structflow_ros.progress import progress_bar
from structflow_ros.visual import (ERROR_RANGE, LABEL_HEIGHT, colorize_depth, colormap_limits,
                                   error_map, even, panel)

MAX_DEPTH_M = 80.0      # outdoor evaluation cap (design.md protocol)
SHEET_ROWS = 4
DISPLAY_MIN_HEIGHT = 192  # panels are scaled up by an integer factor to at least this height


def evaluate_frames(frames, client, published):
    """Decode the replies; per frame: depth, colored, latency and (with ground truth) metrics."""
    from structflow_ros.core.metrics import constant_depth_floor, depth_metrics
    from structflow_ros.ros.conversions import image_msg_to_array
    rows = []
    for stamp, position in published:
        hit = client.reply(stamp, 'depth')
        if hit is None:
            continue
        frame = frames[position]
        depth = image_msg_to_array(hit[1]).astype(np.float32)
        colored = client.reply(stamp, 'depth/colored')
        colored = (image_msg_to_array(colored[1]) if colored is not None
                   else colorize_depth(depth, colormap_limits(depth)))
        row = {'frame': frame, 'depth': depth, 'colored': colored, 'position': position,
               'latency_ms': (hit[0] - stamp) / 1e6, 'metrics': None, 'floor': None,
               'error': None}
        if frame.gt is not None:
            gt = frame.gt
            pred = depth if depth.shape == gt.shape else cv2.resize(
                depth, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
            valid = frame.gt_valid & np.isfinite(gt) & (gt > 1e-3) & (gt < MAX_DEPTH_M)
            pred = np.where(np.isfinite(pred) & (pred > 0), pred, 1e-3)
            row['metrics'] = depth_metrics(pred, gt, valid, max_depth=MAX_DEPTH_M)
            row['floor'] = constant_depth_floor(gt, valid, max_depth=MAX_DEPTH_M)
            ratio = row['metrics']['scale_ratio']
            with np.errstate(invalid='ignore', divide='ignore'):
                scaled = np.clip(pred * (ratio if math.isfinite(ratio) else 1.0), 1e-3,
                                 MAX_DEPTH_M)
                row['error'] = (np.where(valid, np.abs(scaled - gt) / gt, 0.0), valid)
        rows.append(row)
    return rows


def compose(row, scale, with_error):
    frame = row['frame']
    height, width = frame.rgb.shape[:2]
    colored = row['colored']
    if colored.shape[:2] != (height, width):
        colored = cv2.resize(colored, (width, height), interpolation=cv2.INTER_NEAREST)
    panels = [panel(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR),
                     f"camera #{frame.index}", scale),
              panel(colored, f"node depth, {row['latency_ms']:.0f} ms", scale)]
    if with_error:
        if row['error'] is not None:
            abs_rel, valid = row['error']
            if abs_rel.shape != (height, width):
                abs_rel = cv2.resize(abs_rel, (width, height), interpolation=cv2.INTER_NEAREST)
                valid = cv2.resize(valid.astype(np.uint8), (width, height),
                                   interpolation=cv2.INTER_NEAREST).astype(bool)
            label = (f"AbsRel {row['metrics']['abs_rel']:.3f} (0..{ERROR_RANGE} shown)")
            panels.append(panel(error_map(abs_rel, valid), label, scale))
        else:
            panels.append(panel(np.zeros((height, width, 3), np.uint8), 'no ground truth',
                                 scale))
    return np.hstack(panels)


def write_video(rows, path, fps, scale, with_error, bar=None):
    first = even(compose(rows[0], scale, with_error))
    size = (first.shape[1], first.shape[0])
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), float(fps), size)
    if not writer.isOpened():
        raise RuntimeError(f'OpenCV cannot write {path} with the mp4v codec')
    try:
        for row in rows:
            image = even(compose(row, scale, with_error))
            if (image.shape[1], image.shape[0]) != size:  # a source whose size changes
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            writer.write(image)
            if bar is not None:
                bar.update(1)
    finally:
        writer.release()


def write_sheet(rows, path, scale, with_error, title):
    picks = np.unique(np.linspace(0, len(rows) - 1, min(SHEET_ROWS, len(rows))).round()
                      .astype(int))
    images = [compose(rows[i], scale, with_error) for i in picks]
    width = max(image.shape[1] for image in images)
    images = [cv2.copyMakeBorder(image, 0, 4, 0, width - image.shape[1], cv2.BORDER_CONSTANT,
                                 value=0) for image in images]
    header = np.zeros((LABEL_HEIGHT + 6, width, 3), np.uint8)
    cv2.putText(header, title, (4, LABEL_HEIGHT - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), np.vstack([header] + images)):
        raise RuntimeError(f'OpenCV cannot write {path}')


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def metrics_report(rows):
    from structflow_ros.core.metrics import DEPTH_KEYS, aggregate_depth_metrics
    with_gt = [row for row in rows if row['metrics'] is not None]
    if not with_gt:
        return {'ground_truth': False,
                'note': 'the input has no ground-truth depth: no accuracy metrics (use the '
                        'synthetic drive, a `structflow render` folder or bag)'}
    model = aggregate_depth_metrics([row['metrics'] for row in with_gt])
    floor = aggregate_depth_metrics([row['floor'] for row in with_gt])
    return {
        'ground_truth': True,
        'protocol': 'Eigen metrics over valid ground-truth pixels (sky excluded), depth capped '
                    f'to [1e-3, {MAX_DEPTH_M:g}] m, each frame median-scaled '
                    '(median(gt)/median(pred)); the constant-depth floor is one depth '
                    'everywhere, median-scaled, on the same frames (design.md)',
        'frames_evaluated': len(with_gt),
        'model': model,
        'constant_depth_floor': {key: floor[key] for key in DEPTH_KEYS},
        'beats_floor_abs_rel': bool(model['abs_rel'] < floor['abs_rel']),
        'scale_ratio_spread': model['scale_ratio_spread'],
        'per_frame': [{'index': row['frame'].index, 'abs_rel': row['metrics']['abs_rel'],
                       'a1': row['metrics']['a1'], 'scale_ratio': row['metrics']['scale_ratio'],
                       'floor_abs_rel': row['floor']['abs_rel'],
                       'latency_ms': row['latency_ms']} for row in with_gt],
    }


def _fmt(value, digits=1):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return 'n/a'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def latency_markdown(summary, rate, outputs):
    s = summary
    lines = [
        '| quantity | value |',
        '|---|---|',
        f"| camera frames published | {s['frames_sent']} at {_fmt(s['camera_rate_hz'])} Hz "
        f'(asked {rate:g} Hz) |',
        f"| depth received | {s['depth_received']} at {_fmt(s['output_rate_hz'])} Hz |",
        f"| end-to-end latency, image stamp -> depth received, p50 / p95 / max | "
        f"{_fmt(s['e2e_ms_p50'])} / {_fmt(s['e2e_ms_p95'])} / {_fmt(s['e2e_ms_max'])} ms |",
        f"| image stamp -> last of {', '.join(outputs)} received, p50 / p95 | "
        f"{_fmt(s['e2e_all_outputs_ms_p50'])} / {_fmt(s['e2e_all_outputs_ms_p95'])} ms "
        f"({s['all_outputs_received']} frames with every output) |",
        f"| node: model inference p50 / p95 | {_fmt(s['node_inference_ms_p50'])} / "
        f"{_fmt(s['node_inference_ms_p95'])} ms |",
        f"| node: own overhead (its work - model), p50 / p95 | "
        f"{_fmt(s['node_overhead_ms_p50'], 2)} / {_fmt(s['node_overhead_ms_p95'], 2)} ms |",
        f"| node: wait for the inference thread, p50 / p95 | {_fmt(s['node_queue_ms_p50'])} / "
        f"{_fmt(s['node_queue_ms_p95'])} ms |",
        f"| frames dropped by the node (a newer frame arrived first) | "
        f"{_fmt(s['dropped_by_node'])} |",
        f"| frames lost (DDS, before / after the node) | {_fmt(s['frames_lost'])} "
        f"({_fmt(s['lost_before_node'])} / {_fmt(s['lost_after_node'])}) |",
    ]
    return '\n'.join(lines)


def write_report(out, args, frames, result, run_info, progress):
    client, published, summary = result['client'], result['published'], result['summary']
    rows = evaluate_frames(frames, client, published)
    outputs = ('depth', 'depth/colored', 'depth/camera_info') + (
        ('depth/points',) if args.points else ())
    files = {}
    if rows:
        with_error = any(row['metrics'] is not None for row in rows)
        scale = max(1, math.ceil(DISPLAY_MIN_HEIGHT / frames[0].rgb.shape[0]))
        bar = progress_bar(progress, len(rows), 'report video', 'frame')
        try:
            write_video(rows, out / 'demo.mp4', args.rate, scale, with_error, bar)
        finally:
            bar.close()
        name = run_info['input'].get('domain') or run_info['input'].get('name', '')
        title = (f'structflow demo: {name}, {len(rows)} frames, e2e p50 '
                 f"{_fmt(summary['e2e_ms_p50'])} ms")
        write_sheet(rows, out / 'sheet.png', scale, with_error, title)
        files.update(video=str(out / 'demo.mp4'), sheet=str(out / 'sheet.png'))
    metrics = metrics_report(rows)
    metrics['run'] = run_info
    (out / 'metrics.json').write_text(json.dumps(_clean(metrics), indent=1))
    table = latency_markdown(summary, args.rate, outputs)
    (out / 'latency.md').write_text(
        f"# structflow demo latency\n\n{run_info['started']}, ROS_DOMAIN_ID "
        f"{run_info['ros_domain_id']}, weights {run_info['weights']}\n\n{table}\n\n"
        'End-to-end latency is measured in one process (camera and viewer share the wall '
        'clock): publish stamp -> depth message received. Node timings come from its '
        '/diagnostics (its last 300 frames, the warm-up frames included).\n')
    latency = dict(summary)
    latency['run'] = run_info
    (out / 'latency.json').write_text(json.dumps(_clean(latency), indent=1))
    files.update(metrics=str(out / 'metrics.json'), latency=str(out / 'latency.md'))
    return rows, metrics, table, files


def print_metrics(metrics):
    if not metrics.get('ground_truth'):
        print(metrics['note'])
        return
    model, floor = metrics['model'], metrics['constant_depth_floor']
    keys = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3')
    print(f"\ndepth vs ground truth ({metrics['frames_evaluated']} frames, median-scaled, "
          f'capped at {MAX_DEPTH_M:g} m):')
    print('| | ' + ' | '.join(keys) + ' | scale spread |')
    print('|---' * (len(keys) + 2) + '|')
    print('| model | ' + ' | '.join(f'{model[k]:.3f}' for k in keys)
          + f" | {_fmt(model['scale_ratio_spread'], 3)} |")
    print('| constant-depth floor | ' + ' | '.join(f'{floor[k]:.3f}' for k in keys) + ' | |')
