"""`structflow bench node`: end-to-end latency and rate of the depth node over real DDS.

    structflow bench node                                   # 320x96 and 640x192, 10 and 30 Hz
    structflow bench node --sizes 640x192 --rates 30 --duration 20 --json node.json
    structflow bench node --weights runs/finetune/last.pt --points off

Before each case the bare model is timed in this process (the served depth path built from
the same checkpoint, the same torch threads, `DepthPredictor.predict` on the same frames, no
node running). Then, per case (size x camera rate x points off/on), a fresh
node process is started (so its statistics cover that case only; `ros2 run` starts the same
thing), fed synthetic frames + camera_info at the camera rate from this process, and its depth,
depth/colored, depth/camera_info (and depth/points) are received here and matched by stamp.

Columns: e2e = image stamp -> depth received in this process (two DDS hops, the wait for the
inference thread, the model, the node's own work); node model / overhead = the node's own
per-frame timings from /diagnostics (overhead = its work on a frame minus the model call:
decoding, units, colormap, messages, publishing; the issue's target is <= 3 ms with points
off); e2e - bare = what serving through the node costs beyond the model, transport included.
Compare numbers from one run only: the model, the node and this process share the CPU.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OVERHEAD_TARGET_MS = 3.0
FRAMES_PER_SIZE = 8  # distinct rendered frames, cycled (content changes like a drive)
COLUMNS = ('camera', 'Hz', 'points', 'sent', 'depth back', 'output Hz', 'e2e p50 ms',
           'e2e p95 ms', 'bare model p50 ms', 'node model p50 ms', 'node overhead p50 ms',
           'node overhead p95 ms', 'e2e - bare p50 ms', 'dropped by node', 'lost')


class BenchInputError(ValueError):
    """Bad arguments or weights (exit code 2)."""


def _csv(kind, text, parse, name):
    try:
        values = [parse(item.strip()) for item in text.split(',') if item.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f'--{name} must be a comma-separated list of {kind}, '
                                         f'got {text!r}')
    return values


def parse_sizes(text):
    """'320x96,640x192' -> [(96, 320), (192, 640)] as (H, W)."""
    def one(item):
        width, height = (int(v) for v in item.lower().split('x'))
        if width < 32 or height < 32:
            raise ValueError(item)
        return height, width
    return _csv('WIDTHxHEIGHT sizes (each >= 32x32)', text, one, 'sizes')


def parse_rates(text):
    def one(item):
        rate = float(item)
        if not 0 < rate <= 1000:
            raise ValueError(item)
        return rate
    return _csv('camera rates in Hz (0 < rate <= 1000)', text, one, 'rates')


def parse_points(text):
    def one(item):
        if item not in ('off', 'on'):
            raise ValueError(item)
        return item == 'on'
    return _csv("'off' and/or 'on'", text, one, 'points')


def get_args_parser(add_help=True):
    """The options; add_help=False lets `structflow bench` reuse them (argparse parents=)."""
    parser = argparse.ArgumentParser(
        prog='structflow bench node', description=__doc__.splitlines()[0],
        epilog=__doc__.split('\n', 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help)
    parser.add_argument('--sizes', type=parse_sizes, default=parse_sizes('320x96,640x192'),
                        help='camera image sizes WxH (default 320x96,640x192)')
    parser.add_argument('--rates', type=parse_rates, default=parse_rates('10,30'),
                        help='camera rates in Hz (default 10,30)')
    parser.add_argument('--points', type=parse_points, default=parse_points('off,on'),
                        help='point cloud off and/or on (default off,on)')
    parser.add_argument('--duration', type=float, default=10.0,
                        help='seconds of camera stream per case (default 10)')
    parser.add_argument('--weights', default='', help='checkpoint (default: the shipped model)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads for the bare model and the node (0: torch default '
                             'here, passed to the node as a number)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--backend', default='auto',
                        help='serving backend (auto, eager, bf16, fp16, onnxruntime, openvino, '
                             'tensorrt); what auto picks here is passed to the node by name')
    parser.add_argument('--model-repeats', type=int, default=30,
                        help='timed bare-model calls before each case (after 3 warm-up calls)')
    parser.add_argument('--startup-timeout', type=float, default=120.0,
                        help='seconds for each node process to start and answer')
    parser.add_argument('--ros-domain-id', type=int, default=None,
                        help='default: $ROS_DOMAIN_ID, else random in 30..99')
    parser.add_argument('--log-dir', default='',
                        help='ROS logs and node logs (default: a new temp dir)')
    parser.add_argument('--json', default='', help='also write the results to this file')
    parser.add_argument('--no-progress', action='store_true')
    return parser


# ----------------------------------------------------------------------------------------------
# The bare model
# ----------------------------------------------------------------------------------------------
def load_predictor(weights, device_name, backend='eager'):
    from structflow_ros.core.inference import resolve_device
    from structflow_ros.online.server import ServedModel, read_serving_checkpoint
    state_dict, meta = read_serving_checkpoint(weights)
    return ServedModel.from_state(state_dict, meta, 1, resolve_device(device_name),
                                  backend=backend).predictor


def time_model(predictor, frames, repeats, threads, warmup=3):
    """Per-call ms of DepthPredictor.predict on `frames` (cycled), as the node calls it.

    Like the node's inference thread: a thread of its own that sets the torch thread count
    first (OpenMP keeps a thread team per calling thread; on a busy machine the main thread's
    team and a worker's can differ by several times, so the place of the call matters).
    """
    import threading

    import torch

    from structflow_ros.core.backends import serving_torch_threads
    sync = torch.cuda.synchronize if predictor.device.type == 'cuda' else (lambda: None)
    predictor.output_size = frames[0].shape[:2]  # the node publishes depth at the image size
    times, errors = [], []

    def measure():
        try:
            torch.set_num_threads(serving_torch_threads(predictor.runner, threads))
            for i in range(warmup):
                predictor.predict(frames[i % len(frames)])
            sync()
            for i in range(repeats):
                start = time.perf_counter()
                predictor.predict(frames[i % len(frames)])
                sync()
                times.append((time.perf_counter() - start) * 1e3)
        except Exception as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)
    worker = threading.Thread(target=measure, name='structflow-bare-model')
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return {'p50': float(np.percentile(times, 50)), 'p95': float(np.percentile(times, 95)),
            'mean': float(np.mean(times)), 'repeats': repeats}


def render_frames(height, width, count=FRAMES_PER_SIZE):
    from structflow_ros.data.synthetic.render import render_sequence
    return [frame.rgb for frame in render_sequence('day', count, height, width, seed=0)]


# ----------------------------------------------------------------------------------------------
# One case: a fresh node process fed at camera rate
# ----------------------------------------------------------------------------------------------
def run_case(case, frames, K, args, weights, threads, domain_id, log_dir):
    from structflow_ros.ros.depth_client import DepthClient, camera_info_for
    from structflow_ros.tools.node_process import (NodeProcess, node_ros_args, ros_env,
                                                   write_params_file)
    from structflow_ros.tools.run_summary import summarize_run
    height, width = frames[0].shape[:2]
    name = f"{width}x{height}_{case['rate']:g}hz_points_{'on' if case['points'] else 'off'}"
    namespace = f"/structflow_bench_{case['number']}"
    params = write_params_file(log_dir / f'{name}.yaml', {
        'weights': str(weights), 'threads': threads, 'device': args.device,
        'backend': args.backend,
        'publish_points': case['points'], 'diagnostics_period': 0.1,
        # points are made from metric depth only (REP-118): the cost measured is the same
        'depth_mode': 'scale' if case['points'] else 'relative'})
    outputs = ('depth', 'depth/colored', 'depth/camera_info') + (
        ('depth/points',) if case['points'] else ())
    node = NodeProcess(node_ros_args(params, namespace), ros_env(domain_id, log_dir / name),
                       log_dir / f'{name}.log')
    client = None
    try:
        client = DepthClient(domain_id, namespace, outputs, node_name='structflow_bench_camera',
                             depth_mode='scale' if case['points'] else 'relative')
        client.wait_for_node(node, args.startup_timeout)
        info = camera_info_for(height, width, client.frame_id, K)
        messages = [client.make_image(rgb) for rgb in frames]
        warm = client.warm_up(messages[0], info, node, replies=2, timeout=args.startup_timeout)
        before = client.wait_settled(warm[-1], node)
        count = max(2, round(args.duration * case['rate']))
        items = ((messages[i % len(messages)], info) for i in range(count))
        published = client.stream(items, case['rate'])
        after = client.wait_settled(published[-1][0], node, timeout=10.0 + 5.0 / case['rate'])
        summary = summarize_run(client, published, before, after, expect=outputs)
    finally:
        node.stop()
        if client is not None:
            client.close()
    summary.pop('latencies_ms')
    summary['node_log'] = str(log_dir / f'{name}.log')
    return summary


def _fmt(value, digits=1):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return 'n/a'
    return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def table_row(row):
    return {
        'camera': row['camera'], 'Hz': f"{row['camera_hz']:g}",
        'points': 'on' if row['points'] else 'off', 'sent': row['frames_sent'],
        'depth back': row['depth_received'], 'output Hz': _fmt(row['output_rate_hz']),
        'e2e p50 ms': _fmt(row['e2e_ms_p50']), 'e2e p95 ms': _fmt(row['e2e_ms_p95']),
        'bare model p50 ms': _fmt(row['bare_model_ms_p50']),
        'node model p50 ms': _fmt(row['node_inference_ms_p50']),
        'node overhead p50 ms': _fmt(row['node_overhead_ms_p50'], 2),
        'node overhead p95 ms': _fmt(row['node_overhead_ms_p95'], 2),
        'e2e - bare p50 ms': _fmt(row['e2e_minus_bare_ms_p50']),
        'dropped by node': _fmt(row['dropped_by_node']), 'lost': _fmt(row['frames_lost'])}


def markdown_table(rows):
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for row in rows:
        cells = table_row(row)
        lines.append('| ' + ' | '.join(str(cells[c]) for c in COLUMNS) + ' |')
    return '\n'.join(lines)


def target_line(rows):
    off = [r for r in rows if not r['points'] and math.isfinite(r['node_overhead_ms_p50'])]
    if not off:
        return 'target (node overhead <= 3 ms per frame, points off): no points-off case run'
    met = [r for r in off if r['node_overhead_ms_p50'] <= OVERHEAD_TARGET_MS]
    worst = max(off, key=lambda r: r['node_overhead_ms_p50'])
    return (f'target (node overhead p50 <= {OVERHEAD_TARGET_MS:g} ms per frame, points off): '
            f"met in {len(met)} of {len(off)} cases; worst {worst['node_overhead_ms_p50']:.2f} ms "
            f"p50 / {_fmt(worst['node_overhead_ms_p95'], 2)} ms p95 "
            f"({worst['camera']} at {worst['camera_hz']:g} Hz)")


def main(args):
    import torch

    from structflow_ros.paths import default_weights_path
    from structflow_ros.tools.node_process import NodeStartError, pick_domain_id
    try:
        weights = Path(args.weights).expanduser() if args.weights else default_weights_path()
        if not weights.is_file():
            raise BenchInputError(f'weights {weights} do not exist; pass --weights PATH to a '
                                  'structflow checkpoint')
        if not args.duration > 0:
            raise BenchInputError(f'--duration must be > 0 seconds, got {args.duration}')
        if args.model_repeats < 1 or args.threads < 0:
            raise BenchInputError('--model-repeats must be >= 1 and --threads >= 0')
        domain_id, how = pick_domain_id(args.ros_domain_id)
        if args.threads:
            torch.set_num_threads(args.threads)
        threads = torch.get_num_threads()
        predictor = load_predictor(weights, args.device, args.backend)
        # The node serves what was chosen here (its own `auto` could time differently).
        args.backend = predictor.backend.name
    except (BenchInputError, ValueError) as error:  # CheckpointError is a ValueError
        print(f'structflow bench node: {error}', file=sys.stderr)
        return 2
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix='structflow_bench_node_')).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain_id),
                      ROS_LOG_DIR=str(log_dir / 'bench'))
    print(f'ROS_DOMAIN_ID={domain_id} ({how}); logs: {log_dir}; weights {weights}; '
          f'device {predictor.device}, backend {args.backend} ({predictor.backend.reason}), '
          f'torch threads {threads} (model and node)',
          file=sys.stderr)
    cases = [(size, rate, points) for size in args.sizes for rate in args.rates
             for points in args.points]
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cases), desc='bench node', unit='case', file=sys.stderr)
    rows, bare, rendered = [], {}, {}
    try:
        for number, (size, rate, points) in enumerate(cases):
            height, width = size
            camera = f'{width}x{height}'
            if camera not in rendered:
                from structflow_ros.data.synthetic.render import Renderer
                rendered[camera] = (render_frames(height, width),
                                    Renderer('day', 1, height, width).K)
            frames, K = rendered[camera]
            # The bare model right before the case, with no node running: the same load on
            # the machine as the node gets next (a busy machine drifts within minutes).
            model = time_model(predictor, frames, args.model_repeats, threads)
            bare.setdefault(camera, []).append(model)
            if bar is not None:
                bar.set_postfix_str(f"{camera} {rate:g} Hz points {'on' if points else 'off'}")
            case = {'number': number, 'rate': rate, 'points': points}
            summary = run_case(case, frames, K, args, weights, threads, domain_id, log_dir)
            row = {'camera': camera, 'camera_hz': rate, 'points': points, **summary,
                   'bare_model_ms_p50': model['p50'], 'bare_model_ms_p95': model['p95']}
            row['e2e_minus_bare_ms_p50'] = row['e2e_ms_p50'] - model['p50']
            rows.append(row)
            if bar is not None:
                bar.update(1)
    except NodeStartError as error:
        print(f'structflow bench node: {error}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('structflow bench node: interrupted', file=sys.stderr)
        return 130
    finally:
        if bar is not None:
            bar.close()
    table = markdown_table(rows)
    print(f'device {predictor.device}, backend {args.backend}, torch {torch.__version__}, '
          f'{threads} threads, '
          f'{args.duration:g} s per case, weights {weights.name}')
    print(table)
    print(target_line(rows))
    if args.json:
        result = {'device': str(predictor.device), 'backend': args.backend,
                  'torch': torch.__version__,
                  'threads': threads, 'weights': str(weights), 'duration_s': args.duration,
                  'ros_domain_id': domain_id, 'overhead_target_ms': OVERHEAD_TARGET_MS,
                  'bare_model_ms': bare,  # per camera size, one entry per case
                  'rows': [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                            for k, v in row.items()} for row in rows],
                  'table_markdown': table}
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f'wrote {args.json}')
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
