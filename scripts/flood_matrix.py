"""After a camera flood, how long until a normal frame gets depth again, per Fast DDS setting.

  .venv/bin/python scripts/flood_matrix.py --runs 3 --flood-s 20     # about 15 minutes

Issue 28: after a best-effort flood (640x480 rgb8 at 200 Hz, test/camera_flood.py), Fast DDS
delivered nothing to the node for 0.1 s to more than 30 s. Each trial runs in its own processes
(Fast DDS reads its XML profile once per process): the depth node, the flooding camera and a
probe (this script, re-run with --trial) that publishes a normal frame every 0.1 s once the flood
ends and times the first depth for one of them. The camera and the probe (the camera side) use
one profile, the node another (a setting named `X/Y`: camera side X, node Y; one name: all):
- rmw_default: no profile (rmw_fastrtps's defaults: SHM with 0.5 MB segments and UDP,
  preallocated history);
- dynamic: DYNAMIC history memory only (what config/fastdds.xml held first);
- big_buffers: dynamic + 4 MB socket buffers (this machine's net.core.rmem_max);
- udp_only: dynamic + only UDPv4 (loopback);
- shm_only: dynamic + only the shared-memory transport with 32 MB segments (a 0.9 MB frame
  fits many times; a 0.5 MB segment cannot hold one, so such frames go over UDP);
- shm_udp: dynamic + SHM with 32 MB segments + UDPv4 (other hosts still reachable): what
  config/fastdds.xml ships.
Data sharing is not in the matrix: sensor_msgs/Image is an unbounded type, which Fast DDS data
sharing cannot carry. rmw_cyclonedds does not install here (no wheel).
Prints a markdown table (per setting: each run's seconds to the first depth, the median) and
writes --out JSON.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NODE_PROFILE = (REPO / 'config' / 'fastdds.xml').read_text()
_DEFAULTS = NODE_PROFILE[NODE_PROFILE.index('<publisher'):NODE_PROFILE.index('</profiles>')]


def _participant(transports='', builtin=True, buffers=None):
    parts = []
    if transports:
        parts.append(f'<transport_descriptors>{transports}</transport_descriptors>')
    rtps = []
    if transports:
        ids = ''.join(f'<transport_id>{t}</transport_id>'
                      for t in ('shm', 'udp') if f'<transport_id>{t}<' in transports)
        rtps.append(f'<userTransports>{ids}</userTransports>')
    if not builtin:
        rtps.append('<useBuiltinTransports>false</useBuiltinTransports>')
    if buffers:
        rtps.append(f'<sendSocketBufferSize>{buffers}</sendSocketBufferSize>'
                    f'<listenSocketBufferSize>{buffers}</listenSocketBufferSize>')
    participant = (f'<participant profile_name="flood_matrix" is_default_profile="true">'
                   f'<rtps>{"".join(rtps)}</rtps></participant>')
    return ''.join(parts), participant


SHM = ('<transport_descriptor><transport_id>shm</transport_id><type>SHM</type>'
       '<segment_size>33554432</segment_size></transport_descriptor>')
# Loopback only here: these measurements must not send anything off this machine.
UDP = ('<transport_descriptor><transport_id>udp</transport_id><type>UDPv4</type>'
       '<interfaceWhiteList><address>127.0.0.1</address></interfaceWhiteList>'
       '</transport_descriptor>')


def profile_xml(setting):
    """The XML of a setting, or None for rmw_fastrtps's defaults."""
    if setting == 'rmw_default':
        return None
    extra = {'dynamic': ('', ''),
             'big_buffers': _participant(buffers=4194304),
             'shm_only': _participant(SHM, builtin=False),
             'udp_only': _participant(UDP, builtin=False),
             'shm_udp': _participant(SHM + UDP, builtin=False)}[setting]
    transports, participant = extra
    return ('<?xml version="1.0" encoding="UTF-8"?><dds xmlns="http://www.eprosima.com/'
            f'XMLSchemas/fastRTPS_Profiles">{transports}<profiles>{participant}{_DEFAULTS}'
            '</profiles></dds>')


PROFILES = ('rmw_default', 'dynamic', 'big_buffers', 'udp_only', 'shm_only', 'shm_udp')
# The camera driver is usually someone else's process with rmw defaults: shm_udp on the node
# alone is the case that matters.
SETTINGS = ('rmw_default', 'rmw_default/dynamic', 'rmw_default/big_buffers',
            'rmw_default/shm_udp', 'shm_udp', 'udp_only', 'shm_only')


def sides(setting):
    """(camera side profile, node profile) of a setting."""
    camera, _, node = setting.partition('/')
    return camera, node or camera


def write_profile(setting, path):
    """The profile file of one side. A file with no default profiles stands for "none": the
    node then leaves the environment alone (its own profile applies only when none is named)."""
    xml = profile_xml(setting)
    path.write_text(xml or '<?xml version="1.0" encoding="UTF-8"?><dds xmlns="http://'
                    'www.eprosima.com/XMLSchemas/fastRTPS_Profiles"><profiles/></dds>')
    return path, xml is not None


def profile_env(env, path, uses_xml):
    env = dict(env)
    for name in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                 'RMW_FASTRTPS_USE_QOS_FROM_XML'):
        env.pop(name, None)
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(path)
    if uses_xml:
        env['RMW_FASTRTPS_USE_QOS_FROM_XML'] = '1'
    return env


def trial(setting, flood_s, workdir, timeout_s):
    """One flood and recovery, all processes with `setting`'s profile (this process too: the
    caller set the environment). Returns a dict."""
    import numpy as np
    import torch
    import yaml
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    sys.path.insert(0, str(REPO / 'test'))
    from dds_helpers import Client, LoggedProcess  # noqa: E402 - the test helpers
    from structflow_ros.core.checkpoint import save_checkpoint
    from structflow_ros.core.config import ModelConfig
    from structflow_ros.core.networks import build_model
    from structflow_ros.ros.image_publisher import make_image_msg
    from structflow_ros.ros.qos import make_qos

    workdir = Path(workdir)
    torch.manual_seed(5)
    weights = save_checkpoint(workdir / 'tiny.pt', build_model(ModelConfig(
        height=64, width=96, flow_branch=False, pose_branch=False)), half=True)
    params = yaml.safe_load((REPO / 'config' / 'structflow.yaml').read_text())
    params['/**']['ros__parameters'].update(weights=str(weights), threads=1, backend='eager',
                                            diagnostics_period=0.5)
    (workdir / 'params.yaml').write_text(yaml.safe_dump(params))
    topic, namespace = '/flood/image', '/flood'
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED='1')
    node_env = profile_env(env, *write_profile(sides(setting)[1], workdir / 'node.xml'))
    node_log = LoggedProcess(workdir / 'node.log')
    node_log.popen = subprocess.Popen(
        [sys.executable, '-m', 'structflow_ros.ros.depth_node', '--ros-args', '--params-file',
         str(workdir / 'params.yaml'), '-r', f'__ns:={namespace}', '-r', f'image:={topic}'],
        stdout=node_log._log, stderr=subprocess.STDOUT, env=node_env)
    client = Client(int(os.environ['ROS_DOMAIN_ID']))
    flood = None
    result = {'setting': setting}
    try:
        client.subscribe(f'{namespace}/depth', Image)
        publisher = client.node.create_publisher(Image, topic, make_qos('best_effort', 5))
        rgb = np.full((480, 640, 3), 90, np.uint8)
        rgb[::16] = 200
        header = Header(frame_id='camera_optical_frame')
        ours = set()

        def send_and_check():
            stamp = time.time_ns()
            ours.add(stamp)
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10 ** 9)
            publisher.publish(make_image_msg(rgb, 'rgb8', header))
            time.sleep(0.1)
            return any(m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec in ours
                       for m in client.messages(f'{namespace}/depth')[-5:])

        deadline = time.monotonic() + 90
        while not send_and_check():  # matched and serving before the flood
            if time.monotonic() > deadline or node_log.poll() is not None:
                raise RuntimeError(f'node did not serve before the flood:\n'
                                   f'{node_log.output()[-2000:]}')
        flood = subprocess.run(
            [sys.executable, str(REPO / 'test' / 'camera_flood.py'), topic, '640', '480', '200',
             str(flood_s), 'best_effort'], env=env, capture_output=True, text=True,
            timeout=flood_s + 120)
        result['flood'] = flood.stdout.strip()
        ours.clear()
        started = time.monotonic()
        while not send_and_check():
            if time.monotonic() - started > timeout_s:
                result['first_depth_s'] = None
                break
        else:
            result['first_depth_s'] = round(time.monotonic() - started, 2)
        result['node_alive'] = node_log.poll() is None
    finally:
        client.close()
        if node_log.poll() is None:
            node_log.popen.terminate()
            try:
                node_log.popen.wait(20)
            except subprocess.TimeoutExpired:
                node_log.popen.kill()
        node_log._log.close()
    return result


def run_trial(setting, flood_s, timeout_s, domain):
    """`trial` in fresh processes with the setting's profiles."""
    with tempfile.TemporaryDirectory(prefix='flood_') as workdir:
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_LOG_DIR=f'{workdir}/roslog',
                   ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
        env = profile_env(env, *write_profile(sides(setting)[0], Path(workdir) / 'camera.xml'))
        done = subprocess.run([sys.executable, __file__, '--trial', setting, '--flood-s',
                               str(flood_s), '--timeout-s', str(timeout_s), '--workdir',
                               workdir], env=env, capture_output=True, text=True,
                              timeout=flood_s + timeout_s + 400)
        lines = [line for line in done.stdout.splitlines() if line.startswith('TRIAL ')]
        if not lines:
            return {'setting': setting, 'error': (done.stdout + done.stderr)[-1500:]}
        return json.loads(lines[-1][len('TRIAL '):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS))
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--flood-s', type=float, default=20.0)
    parser.add_argument('--timeout-s', type=float, default=60.0,
                        help='give up waiting for the first depth after this long')
    parser.add_argument('--out', type=Path, default=Path('reports/flood_matrix.json'))
    parser.add_argument('--trial', help=argparse.SUPPRESS)
    parser.add_argument('--workdir', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trial:
        print('TRIAL ' + json.dumps(trial(args.trial, args.flood_s, args.workdir,
                                          args.timeout_s)), flush=True)
        return 0
    results = []
    domain = 60 + os.getpid() % 20
    for run in range(args.runs):
        for setting in args.settings:  # interleaved: drift on the machine hits every setting
            result = run_trial(setting, args.flood_s, args.timeout_s, domain)
            result['run'] = run
            results.append(result)
            print(json.dumps(result), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    print(f'\nfirst depth after a {args.flood_s:.0f} s best-effort flood (640x480 rgb8, 200 Hz), '
          f'seconds; "> {args.timeout_s:.0f}" = none within the wait\n')
    print('| setting | ' + ' | '.join(f'run {r + 1}' for r in range(args.runs))
          + ' | median |')
    print('|---|' + '---|' * (args.runs + 1))
    for setting in args.settings:
        times = [r.get('first_depth_s') for r in results
                 if r['setting'] == setting and 'error' not in r]
        shown = ['error' if 'error' in r else ('> %.0f' % args.timeout_s
                                              if r['first_depth_s'] is None
                                              else f"{r['first_depth_s']:.1f}")
                 for r in results if r['setting'] == setting]
        finite = [args.timeout_s if t is None else t for t in times]
        median = f'{statistics.median(finite):.1f}' if finite else 'n/a'
        print(f'| {setting} | ' + ' | '.join(shown) + f' | {median} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
