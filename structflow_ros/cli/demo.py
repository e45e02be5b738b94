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
import math
import os
import signal
import sys
import time
from pathlib import Path

from structflow_ros.cli.arguments import size_at_least
from structflow_ros.demo.inputs import DemoInputError, load_frames, open_input, resolve_weights
from structflow_ros.demo.report import print_metrics, write_report
from structflow_ros.progress import progress_bar

DEFAULT_DOMAIN = 'fog'  # held out of the default model's training (scripts/train_default.sh)
DEFAULT_SEED = 24       # the fog drive `structflow evaluate` reports on
NAMESPACE = '/structflow_demo'
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
INTERRUPT_DRAIN_S = 5.0  # after Ctrl-C, how long the replies to frames already sent may take


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
    parser.add_argument('--size', type=size_at_least(32), default=(96, 320),
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
                        help='also have the node publish depth/points (and receive them); '
                        'points are metric only (REP-118), so without a depth_mode in '
                        '--params-file the node serves depth_mode scale with depth_scale 1 '
                        '(the model unit shown as metres)')
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
    from structflow_ros.ros.depth_client import DepthClient, camera_info_for
    from structflow_ros.tools.node_process import (NodeProcess, NodeStartError, node_ros_args,
                                                   params_file_value, ros_env,
                                                   write_params_file)
    from structflow_ros.tools.run_summary import summarize_run
    parameters = {'weights': str(weights), 'publish_points': bool(args.points),
                  'threads': int(args.threads), 'device': args.device,
                  'diagnostics_period': 0.2}
    if args.points and not (args.params_file and params_file_value(
            write_params_file(out / 'node_params.yaml', {}, args.params_file),
            'depth_mode')):
        parameters['depth_mode'] = 'scale'  # points need metres (REP-118)
    params_file = write_params_file(out / 'node_params.yaml', parameters,
                                    args.params_file or None)
    depth_mode = params_file_value(params_file, 'depth_mode', 'relative')
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
        client = DepthClient(domain_id, NAMESPACE, outputs, node_name='structflow_demo_camera',
                             depth_mode=depth_mode)
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
        bar = progress_bar(progress, len(frames), 'camera -> node -> viewer', 'frame')

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
        from structflow_ros.tools.node_process import pick_domain_id
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
        from structflow_ros.tools.node_process import NodeStartError
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
