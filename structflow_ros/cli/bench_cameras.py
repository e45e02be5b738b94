"""`structflow bench cameras`: N cameras in one node process against N node processes.

    structflow bench cameras                       # 1, 2 and 4 cameras, 640x480 at 5 Hz each
    structflow bench cameras --counts 4 --rate 10 --duration 30 --json cameras.json

For each camera count N: one node with `cameras: [cam0 .. camN-1]` (one model, frames that
arrive together batched), then N separate nodes (one camera each, as one launch per camera
runs them). This process is every camera: it publishes a rendered drive, the same frames to
each camera at --rate Hz with the same stamps (cameras of one robot fire together), and counts
the depth that comes back per camera. Memory is read from /proc after the stream: RSS (what
`top` shows; shared library pages count once per process) and PSS (shared pages split between
the processes that map them: the fairer sum). All cases share this machine's cores, so compare
rows of one run only.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

STREAM_SEC = 1000  # stamps of the measured stream start here (warm-up frames: second 1)
COLUMNS = ('cameras', 'layout', 'processes', 'RSS MB', 'PSS MB', 'RSS / N nodes',
           'per-camera Hz (min)', 'per-camera Hz (mean)', 'sent per camera')


def get_args_parser(add_help=True):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=add_help,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--counts', default='1,2,4', help='camera counts to run (default '
                        '1,2,4)')
    parser.add_argument('--rate', type=float, default=5.0, help='frames per second per camera')
    parser.add_argument('--size', default='640x480', help='camera image WIDTHxHEIGHT')
    parser.add_argument('--duration', type=float, default=20.0,
                        help='seconds of stream per case (after a warm-up)')
    parser.add_argument('--weights', default='', help='checkpoint (default: the shipped model)')
    parser.add_argument('--backend', default='auto')
    parser.add_argument('--threads', type=int, default=0,
                        help="each node's torch threads (0: torch's default)")
    parser.add_argument('--startup-timeout', type=float, default=180.0)
    parser.add_argument('--ros-domain-id', type=int, default=None)
    parser.add_argument('--log-dir', default='', help='node logs (default: a temporary dir)')
    parser.add_argument('--json', default='', help='write the rows to this file')
    return parser


def memory_mb(pid):
    """(RSS, PSS) of a process in MB, from /proc."""
    values = {}
    with open(f'/proc/{pid}/smaps_rollup') as handle:
        for line in handle:
            key, _, rest = line.partition(':')
            if key in ('Rss', 'Pss'):
                values[key] = int(rest.split()[0]) / 1024
    return values['Rss'], values['Pss']


def run_case(count, layout, args, frames, domain_id, log_dir, weights):
    """One row: `count` cameras as one node ('one process') or `count` nodes."""
    from structflow_ros.ros.depth_client import CameraFleet
    from structflow_ros.tools.node_process import (NodeProcess, NodeStartError, node_ros_args,
                                                   ros_env, write_params_file)
    names = [f'cam{i}' for i in range(count)]
    # reliable: what the README asks for large frames (a best-effort 640x480 stream loses most
    # frames to fragment loss whatever the layout: `structflow bench node` shows it too)
    base = {'weights': str(weights), 'backend': args.backend, 'threads': args.threads,
            'device': 'cpu', 'diagnostics_period': 1.0, 'qos_reliability': 'reliable'}
    tag = f'{layout.replace(" ", "_")}_{count}'
    env = ros_env(domain_id, log_dir / tag)
    processes, topics = [], {}
    if layout == 'one process':
        namespace = f'/bench_{tag}'
        params = write_params_file(log_dir / f'{tag}.yaml', {**base, 'cameras': names})
        processes.append(NodeProcess(node_ros_args(params, namespace), env,
                                     log_dir / f'{tag}.log'))
        topics = {n: (f'{namespace}/{n}/image', f'{namespace}/{n}/depth/relative')
                  for n in names}
    else:
        params = write_params_file(log_dir / f'{tag}.yaml', base)
        for name in names:
            namespace = f'/bench_{tag}/{name}'
            processes.append(NodeProcess(node_ros_args(params, namespace), env,
                                         log_dir / f'{tag}_{name}.log'))
            topics[name] = (f'{namespace}/image', f'{namespace}/depth/relative')
    cameras = CameraFleet(domain_id, topics)
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not cameras.matched():
            if time.monotonic() > deadline or not all(p.alive for p in processes):
                raise NodeStartError(f'{layout} x{count}: the node(s) did not start; log: '
                                     f'{processes[0].log_tail()}')
            time.sleep(0.2)
        # warm-up: until every camera got depth back (first calls are slow)
        index = 0
        while not all(cameras.received.values()):
            if time.monotonic() > deadline:
                raise NodeStartError(f'{layout} x{count}: no depth within the start-up time')
            cameras.publish(frames[index % len(frames)], (1, index))
            index += 1
            time.sleep(1.0 / args.rate)
        period, sent = 1.0 / args.rate, 0
        start = time.monotonic()
        while time.monotonic() - start < args.duration:
            stamp = (STREAM_SEC + sent // 100, (sent % 100) * 10_000_000)
            cameras.publish(frames[sent % len(frames)], stamp)
            sent += 1
            delay = start + sent * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        time.sleep(1.0)  # the last replies in flight
        elapsed = sent * period
        # only the measured stream's stamps (a warm-up reply may land after the clear)
        rates = [sum(1 for stamp in cameras.received[n] if stamp[0] >= STREAM_SEC) / elapsed
                 for n in names]
        memory = [memory_mb(p.popen.pid) for p in processes]
        return {'cameras': count, 'layout': layout, 'processes': len(processes),
                'rss_mb': sum(m[0] for m in memory), 'pss_mb': sum(m[1] for m in memory),
                'rate_min_hz': min(rates), 'rate_mean_hz': sum(rates) / len(rates),
                'sent_per_camera': sent}
    finally:
        cameras.close()
        for process in processes:
            process.stop()


def markdown(rows):
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    nodes = {r['cameras']: r['rss_mb'] for r in rows if r['layout'] == 'separate nodes'}
    for r in rows:
        ratio = r['rss_mb'] / nodes[r['cameras']] if r['cameras'] in nodes else float('nan')
        lines.append(f"| {r['cameras']} | {r['layout']} | {r['processes']} | "
                     f"{r['rss_mb']:.0f} | {r['pss_mb']:.0f} | {ratio:.2f} | "
                     f"{r['rate_min_hz']:.2f} | {r['rate_mean_hz']:.2f} | "
                     f"{r['sent_per_camera']} |")
    return '\n'.join(lines)


def main(args):
    from structflow_ros.cli.arguments import parse_size
    from structflow_ros.core.backends import cpu_class
    from structflow_ros.data.synthetic.render import render_sequence
    from structflow_ros.paths import default_weights_path
    from structflow_ros.tools.node_process import pick_domain_id
    counts = [int(c) for c in str(args.counts).split(',') if c.strip()]
    if not counts or min(counts) < 1 or not args.rate > 0 or not args.duration > 0:
        print('--counts must list positive integers; --rate and --duration must be > 0',
              file=sys.stderr)
        return 2
    weights = Path(args.weights).expanduser() if args.weights else default_weights_path()
    height, width = parse_size(args.size)
    frames = [f.rgb for f in render_sequence('day', 8, height, width, seed=3)]
    domain_id, _ = pick_domain_id(args.ros_domain_id)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix='structflow_bench_cameras_'))
    log_dir.mkdir(parents=True, exist_ok=True)
    # This process is every camera: its DDS stays on this machine too, in the nodes' domain.
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain_id),
                      ROS_LOG_DIR=str(log_dir / 'bench'))
    rows = []
    for count in counts:
        for layout in ('one process', 'separate nodes'):
            print(f'{layout}, {count} camera(s) ...', file=sys.stderr, flush=True)
            rows.append(run_case(count, layout, args, frames, domain_id, log_dir, weights))
    isa = cpu_class()
    print(f'\n{width}x{height} at {args.rate:g} Hz per camera, {args.duration:g} s, backend '
          f'{args.backend}, CPU class {isa}, logs in {log_dir}\n')
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({'rows': rows, 'cpu_class': isa,
                                               'size': args.size, 'rate': args.rate}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
