"""`structflow demo`: the real depth node on a synthetic drive or your video, with a report.

    structflow demo                                  # 100 frames of the held-out fog drive
    structflow demo --domain dusk --frames 200 --size 640x192 --rate 15
    structflow demo --source drive.mp4               # or DEMO_SOURCE=drive.mp4 (make demo)
    structflow demo --source /tmp/synth/fog          # a `structflow render` folder or bag: with
                                                     # ground truth, so with metrics
    structflow demo --weights runs/finetune/last.pt --out /tmp/demo

Three roles, two processes, real DDS: the node runs as its own process (what `ros2 run
structflow depth_node` starts); this process is the camera (frames and camera_info published
at --rate, stamped with the wall clock) and the viewer (depth, depth/colored and
depth/camera_info received and matched to their frame by header stamp). Every process gets
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, its own ROS_LOG_DIR under the report folder and one
ROS_DOMAIN_ID ($ROS_DOMAIN_ID, else a random one in 30..99, printed).

Report folder (--out, default reports/demo-<time>): demo.mp4 (camera | depth from the node |
AbsRel error where ground truth exists), sheet.png (a few frames), metrics.json (Eigen metrics
with median scaling beside the constant-depth floor, and the scale-ratio spread), latency.md and
latency.json (image stamp -> depth received p50/p95, output rate, frames dropped by the node and
lost), node.log and ros_logs/. Exit codes: 0 done, 2 bad input (source, weights, arguments, a
node that refuses them), 1 a failure while running, 130 interrupted (a partial report is written
when any depth came back).
"""
import argparse
import datetime
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from structflow_ros.visual import (ERROR_RANGE, LABEL_HEIGHT, colorize_depth,  # noqa: F401
                                   colormap_limits, error_map, even, panel)

DEFAULT_DOMAIN = 'fog'  # held out of the default model's training (scripts/train_default.sh)
DEFAULT_SEED = 24       # the fog drive `structflow evaluate` reports on
NAMESPACE = '/structflow_demo'
MAX_DEPTH_M = 80.0      # outdoor evaluation cap (design.md protocol)
SHEET_ROWS = 4
DISPLAY_MIN_HEIGHT = 192  # panels are scaled up by an integer factor to at least this height
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
INTERRUPT_DRAIN_S = 5.0  # after Ctrl-C, how long the replies to frames already sent may take


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


def parse_size(text):
    """'320x96' -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'--size must be WIDTHxHEIGHT such as 320x96 or '
                                         f'640x192, got {text!r}') from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f'--size must be at least 32x32, got {text!r}')
    return height, width


def get_args_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__.split('\n', 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--source', default=os.environ.get('DEMO_SOURCE', ''),
                        help='video file, image folder or ROS 2 bag instead of the synthetic '
                             'drive (default: $DEMO_SOURCE)')
    parser.add_argument('--topic', default=None, help='image topic of a bag with several')
    parser.add_argument('--domain', default=os.environ.get('DEMO_DOMAIN') or DEFAULT_DOMAIN,
                        help='synthetic domain (default: $DEMO_DOMAIN or fog, held out of '
                             'training)')
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED, help='synthetic drive seed')
    parser.add_argument('--size', type=parse_size, default=(96, 320),
                        help='synthetic camera WIDTHxHEIGHT (default 320x96)')
    parser.add_argument('--max-width', type=int, default=640,
                        help='source frames wider than this are scaled down (default 640: '
                             'frames too big for one DDS shared-memory segment arrive at a '
                             'fraction of the rate with best effort, see toolchain.md)')
    parser.add_argument('--frames', type=int, default=100,
                        help='frames to play (default 100; 0 = the whole source)')
    parser.add_argument('--rate', type=float, default=10.0, help='camera rate in Hz (10)')
    parser.add_argument('--weights', default='',
                        help='checkpoint to serve (default: the shipped model)')
    parser.add_argument('--params-file', default='',
                        help='node parameters YAML to start from (default: the node defaults)')
    parser.add_argument('--points', action='store_true',
                        help='also have the node publish depth/points (and receive them)')
    parser.add_argument('--threads', type=int, default=0, help='node torch threads (0: default)')
    parser.add_argument('--device', default='auto', help='node device: auto, cpu, cuda, cuda:N')
    parser.add_argument('--ros-domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID for every process (default: $ROS_DOMAIN_ID, else '
                             'random in 30..99)')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='seconds for the node to start and answer (120)')
    parser.add_argument('--out', default='',
                        help='report folder (default: reports/demo-<YYYYmmdd-HHMMSS>)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    return parser


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
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
        K = frame.K.copy()
        sx, sy = size[0] / width, size[1] / height
        K[0, 0], K[0, 1], K[1, 1] = K[0, 0] * sx, K[0, 1] * sx, K[1, 1] * sy
        K[0, 2], K[1, 2] = (K[0, 2] + 0.5) * sx - 0.5, (K[1, 2] + 0.5) * sy - 0.5
        frame.K = K
    return frame


class SyntheticInput:
    """The synthetic drive, rendered with exact depth (sky invalid)."""

    def __init__(self, domain, count, size, seed, fps):
        from structflow_ros.data.synthetic.render import Renderer
        try:
            self.renderer = Renderer(domain, count, size[0], size[1], seed, fps)
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
    bar = _bar(progress, demo_input.count, 'frames', 'frame')
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


class _NoBar:
    def update(self, *_, **__):
        pass

    def set_postfix_str(self, *_, **__):
        pass

    def close(self):
        pass


def _bar(progress, total, desc, unit):
    if not progress:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
class _Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum, frame):
    del frame
    raise _Interrupted(f'signal {signum}')


def node_failure_summary(log_tail):
    """The node's fatal/error lines (what to fix), else its last lines."""
    lines = [line for line in log_tail.splitlines() if 'FATAL' in line or 'ERROR' in line
             or 'Error' in line]
    return '\n'.join(lines[-5:] or log_tail.splitlines()[-10:])


def run(args, load_frames_fn, weights, out, domain_id, progress):
    """Start the node, load the frames meanwhile, stream them, collect the replies.

    Returns a dict: frames, published [(stamp, position)], the client (its replies), summary,
    interrupted. The node is stopped (SIGINT, wait, kill) on every way out of here.
    """
    from structflow_ros.ros.depth_client import (DepthClient, NodeProcess, NodeStartError,
                                                 camera_info_for, node_ros_args, ros_env,
                                                 summarize_run, write_params_file)
    parameters = {'weights': str(weights), 'publish_points': bool(args.points),
                  'threads': int(args.threads), 'device': args.device,
                  'diagnostics_period': 0.2}
    params_file = write_params_file(out / 'node_params.yaml', parameters,
                                    args.params_file or None)
    env = ros_env(domain_id, out / 'ros_logs' / 'node')
    outputs = ('depth', 'depth/colored', 'depth/camera_info') + (
        ('depth/points',) if args.points else ())
    result = {'published': [], 'interrupted': False, 'client': None, 'summary': None,
              'frames': None}
    # The node first (before any thread exists here: it is forked), the frames while it
    # imports torch and starts.
    node = NodeProcess(node_ros_args(params_file, NAMESPACE), env, out / 'node.log')
    result['node_command'] = ' '.join(node.command)
    client, before = None, None
    try:
        frames = result['frames'] = load_frames_fn()
        client = DepthClient(domain_id, NAMESPACE, outputs, node_name='structflow_demo_camera')
        result['client'] = client
        print(f'waiting for the depth node (log: {node.log_path}) ...', file=sys.stderr)
        client.wait_for_node(node, args.startup_timeout)
        first = frames[0]
        warm_image = client.make_image(first.rgb)
        warm_info = camera_info_for(*first.rgb.shape[:2], client.frame_id, first.K)
        warm = client.warm_up(warm_image, warm_info, node, replies=2,
                              timeout=args.startup_timeout)
        before = client.wait_settled(warm[-1], node)

        def items():
            for frame in frames:
                yield (client.make_image(frame.rgb),
                       camera_info_for(*frame.rgb.shape[:2], client.frame_id, frame.K))
        bar = _bar(progress, len(frames), 'camera -> node -> viewer', 'frame')

        def on_published(position, stamp):
            result['published'].append((stamp, position))
            bar.update(1)
            warm_back = sum(1 for s in warm if client.reply(s, 'depth'))
            bar.set_postfix_str(f'depth back {client.received() - warm_back}', refresh=False)
        try:
            client.stream(items(), args.rate, on_published)
        finally:
            bar.close()
        last = result['published'][-1][0]
        after = client.wait_settled(last, node, timeout=10.0 + 5.0 / args.rate)
        result['summary'] = summarize_run(client, result['published'], before, after,
                                          expect=outputs)
        result['node_diagnostics'] = after
        if not node.alive:
            raise NodeStartError(f'the depth node exited with code {node.returncode} during '
                                 f'the run; its log ({node.log_path}):\n{node.log_tail()}')
    except KeyboardInterrupt:
        result['interrupted'] = True
        settled = None
        if client is not None and result['published'] and node.alive:
            # The frames already sent are still in flight: give the node a moment to answer
            # them (a second Ctrl-C skips the wait), so the partial report holds what the
            # node did, not what happened to have arrived at the instant of the Ctrl-C.
            print('interrupted: collecting the replies to the frames already sent '
                  f'(at most {INTERRUPT_DRAIN_S:g} s; Ctrl-C again to skip)', file=sys.stderr)
            try:
                settled = client.wait_settled(result['published'][-1][0], node,
                                              timeout=INTERRUPT_DRAIN_S)
            except KeyboardInterrupt:
                pass
        result['node_diagnostics'] = settled
    finally:
        result['node_exit_code'] = node.stop()
        if result['interrupted'] and client is not None and result['published']:
            # What came back before the stop, with the node's last report for the counters.
            result['summary'] = summarize_run(
                client, result['published'], before,
                result.get('node_diagnostics') or client.latest_diagnostics(), expect=outputs)
        if client is not None:
            client.close()
    return result


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------
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
        bar = _bar(progress, len(rows), 'report video', 'frame')
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


# ----------------------------------------------------------------------------------------------
# Entry
# ----------------------------------------------------------------------------------------------
def _check_args(args):
    if not args.rate > 0 or not math.isfinite(args.rate):
        raise DemoInputError(f'--rate must be a positive number of Hz, got {args.rate}')
    if args.frames < 0 or (args.frames == 0 and not args.source):
        raise DemoInputError(f'--frames must be >= 1 (0 = a whole source), got {args.frames}')
    if args.max_width < 32:
        raise DemoInputError(f'--max-width must be >= 32 pixels, got {args.max_width}')
    if args.params_file and not Path(args.params_file).is_file():
        raise DemoInputError(f'--params-file {args.params_file} does not exist')
    if args.ros_domain_id is not None and not 0 <= args.ros_domain_id <= 232:
        raise DemoInputError(f'--ros-domain-id must be in 0..232 (0..101 portable), got '
                             f'{args.ros_domain_id}')


def main(args):
    progress = not args.no_progress
    try:
        _check_args(args)
        weights = resolve_weights(args.weights)
        demo_input = open_input(args)
        from structflow_ros.ros.depth_client import pick_domain_id
        domain_id, how = pick_domain_id(args.ros_domain_id)
    except (DemoInputError, ValueError) as error:
        print(f'structflow demo: {error}', file=sys.stderr)
        return EXIT_BAD_INPUT
    started = datetime.datetime.now()
    out = Path(args.out or f"reports/demo-{started.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    # This process is the camera and the viewer: the same DDS rules as the node's.
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain_id),
                      ROS_LOG_DIR=str(out / 'ros_logs' / 'demo'))
    (out / 'ros_logs' / 'demo').mkdir(parents=True, exist_ok=True)
    print(f'ROS_DOMAIN_ID={domain_id} ({how}); discovery LOCALHOST; report: {out}')
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    run_info = {'started': started.isoformat(timespec='seconds'), 'ros_domain_id': domain_id,
                'weights': str(weights), 'input': demo_input.description,
                'rate_hz': args.rate, 'frames_requested': args.frames,
                'points': bool(args.points), 'threads': args.threads, 'device': args.device}
    try:
        from structflow_ros.ros.depth_client import NodeStartError
        try:
            start = time.monotonic()
            result = run(args, lambda: load_frames(demo_input, args.max_width, progress),
                         weights, out, domain_id, progress)
            frames = result['frames']
            if frames:
                run_info['frame_size'] = 'x'.join(map(str, frames[0].rgb.shape[1::-1]))
            run_info['node_command'] = result.get('node_command')
            run_info['seconds'] = round(time.monotonic() - start, 1)
        except DemoInputError as error:
            print(f'structflow demo: {error}', file=sys.stderr)
            return EXIT_BAD_INPUT
        except NodeStartError as error:
            text = str(error)
            print(f'structflow demo: {text.splitlines()[0]}\n'
                  f'{node_failure_summary(text)}', file=sys.stderr)
            started_ok = 'before it served anything' not in text
            return EXIT_FAILED if started_ok else EXIT_BAD_INPUT
        if frames is None or result['summary'] is None or (
                result['summary']['depth_received'] == 0):
            print(f"structflow demo: {'interrupted; ' if result['interrupted'] else ''}no "
                  f'depth came back from the node; its log: {out / "node.log"}',
                  file=sys.stderr)
            return EXIT_INTERRUPTED if result['interrupted'] else EXIT_FAILED
        _, metrics, table, files = write_report(out, args, frames, result, run_info, progress)
        print(f'\nlatency and rate ({run_info["frame_size"]} at {args.rate:g} Hz):\n{table}')
        print_metrics(metrics)
        if result['interrupted']:
            print(f'\ninterrupted: partial report in {out}')
            return EXIT_INTERRUPTED
        print(f"\nreport: {out}\n  video {files.get('video', '-')}\n  sheet "
              f"{files.get('sheet', '-')}\n  metrics {files['metrics']}\n  latency "
              f"{files['latency']}")
        return 0
    except KeyboardInterrupt:
        print('\nstructflow demo: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
