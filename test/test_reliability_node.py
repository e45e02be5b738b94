"""Long-running reliability of the node process over real DDS: a camera flood and a soak.

- Flood: a camera process publishes 640x480 rgb8 at 200 Hz for FLOOD_S seconds (60 in CI;
  STRUCTFLOW_FLOOD_S to change it) into a node that manages about 10 Hz: latest-frame
  semantics (stale frames dropped and counted, never queued), the node's RSS, threads and open
  files flat within stated bounds, and depth for a normal frame right after the flood.
- Soak: adaptation on, a camera at 10 Hz for SOAK_S seconds (90 in CI; the documented long run
  is STRUCTFLOW_SOAK_S=1800): no growth in RSS, threads or open files after warm-up, training
  all along, every accepted version saved (state file = the published version).

Both are `slow` (CI runs them). The node's memory is read from /proc/<pid>; the bounds are
far below what a leak of one frame per message would cost (a 640x480 frame is 0.9 MB: a
200 Hz leak is 180 MB/s).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from structflow_ros.core.checkpoint import read_checkpoint
from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.ros.image_publisher import make_image_msg
from structflow_ros.ros.qos import make_qos

from dds_helpers import FRAME_ID, node_diagnostics, wait_until
from test_adaptation_node import start, tiny_flow_checkpoint
from test_depth_node import dds, make_tiny_checkpoint  # noqa: F401

pytestmark = [pytest.mark.ros, pytest.mark.slow]

FLOOD_S = float(os.environ.get('STRUCTFLOW_FLOOD_S', '60'))
SOAK_S = float(os.environ.get('STRUCTFLOW_SOAK_S', '90'))
# (camera publisher reliability, node qos_reliability, flood seconds). The default pair, and
# a reliable camera driver (usb_cam publishes reliable) met by qos_reliability:=reliable: that
# is the setting that keeps the node responsive after a flood from a reliable camera (with a
# best-effort node, Fast DDS delivered nothing for about 24 s after such a flood; measured
# in docs/reliability.md).
FLOOD_CASES = [('best_effort', 'best_effort', FLOOD_S), ('reliable', 'reliable', 20.0)]
# Bounds: what a healthy node may vary by (allocator arenas, DDS buffers settling), far below
# any per-message leak. Measured values are in docs/reliability.md.
RSS_GROWTH_LIMIT_MB = 64.0
# After a flood, Fast DDS may deliver nothing on the flooded topic for a while (measured up to
# more than 30 s with best effort); the node is checked separately to answer at once.
TRANSPORT_RECOVERY_S = 90.0
FD_GROWTH_LIMIT = 4
HERE = Path(__file__).resolve().parent


def process_resources(pid):
    """(RSS MB, threads, open file descriptors) of a live process, from /proc."""
    status = Path(f'/proc/{pid}/status').read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines()
                      if line.startswith('VmRSS:')))
    threads = len(os.listdir(f'/proc/{pid}/task'))
    fds = len(os.listdir(f'/proc/{pid}/fd'))
    return rss_kb / 1024.0, threads, fds


def sample_resources(pid, seconds, period, on_tick=None, since=None):
    """Sample the process every `period` s for `seconds`; returns [(t, rss, threads, fds)]
    with t in seconds from `since` (default: now)."""
    samples, start = [], time.monotonic()
    since = start if since is None else since
    while time.monotonic() - start < seconds:
        if on_tick is not None:
            on_tick()
        samples.append((time.monotonic() - since, *process_resources(pid)))
        time.sleep(period)
    return samples


def resource_report(samples):
    rss = [s[1] for s in samples]
    step = max(len(samples) // 6, 1)
    trend = ' '.join(f'{t:.0f}s:{r:.0f}' for t, r, *_ in samples[::step])
    return (f'RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB (max {max(rss):.0f}; {trend}), threads '
            f'{samples[0][2]} -> {samples[-1][2]}, open files {samples[0][3]} -> '
            f'{samples[-1][3]} over {samples[-1][0]:.0f} s')


@pytest.mark.parametrize('camera_qos, node_qos, flood_s', FLOOD_CASES)
def test_flood_640x480_at_200hz_keeps_memory_flat_and_the_node_responsive(  # noqa: F811
        dds, camera_qos, node_qos, flood_s):
    topic, namespace = f'/flood_{camera_qos}/image', f'/flood_{camera_qos}'
    client = dds.client
    client.subscribe(f'{namespace}/depth/relative', Image)
    client.subscribe('/diagnostics', DiagnosticArray)
    weights = make_tiny_checkpoint(dds.tmp / 'flood_tiny.pt', seed=5)
    node = start(dds, f'flood_node_{camera_qos}', namespace, topic, weights=weights,
                 qos_reliability=node_qos)
    # The camera that speaks after the flood exists (and is matched) before it: an endpoint
    # created right after a flood can take tens of seconds to be discovered (discovery shares
    # the flooded transport; seen in CI), which would measure discovery, not the node.
    publisher = client.node.create_publisher(Image, topic, make_qos(camera_qos, 5))
    wait_until(lambda: publisher.get_subscription_count() >= 1, 30,
               'the after-flood camera matched with the node', node)
    flood = None
    try:
        flood_log = open(dds.tmp / f'flood_camera_{camera_qos}.log', 'w')
        flood = subprocess.Popen(
            [sys.executable, str(HERE / 'camera_flood.py'), topic, '640', '480', '200',
             str(flood_s + 10), camera_qos], env=dds.env, stdout=flood_log,
            stderr=subprocess.STDOUT)
        # Warm-up (allocator, DDS buffers for this frame size), then the measured flood.
        wait_until(lambda: int((node_diagnostics(client, namespace) or {}).get('frames_out', 0))
                   >= 5, 60, 'depth flowing during the flood', node)
        time.sleep(5.0)  # let the first 10 s of the flood settle buffers before the baseline
        before = node_diagnostics(client, namespace)
        samples = sample_resources(node.popen.pid, flood_s - 5.0, 2.0)
        after = node_diagnostics(client, namespace)
        flood.wait(timeout=60)
        flood_log.close()
        sent = (dds.tmp / f'flood_camera_{camera_qos}.log').read_text()
        report = resource_report(samples)
        print(f'\nflood ({camera_qos} camera, {node_qos} node): {sent.strip()}; node '
              f'{report}; frames in '
              f"{int(after['frames_in']) - int(before['frames_in'])}, out "
              f"{int(after['frames_out']) - int(before['frames_out'])}, stale dropped "
              f"{int(after['dropped_stale']) - int(before['dropped_stale'])}")
        rss = [s[1] for s in samples]
        assert max(rss) - rss[0] < RSS_GROWTH_LIMIT_MB, report
        assert samples[-1][2] == samples[0][2], f'threads changed: {report}'
        assert samples[-1][3] - samples[0][3] <= FD_GROWTH_LIMIT, report
        # Latest-frame semantics: far more came in than out, and the rest was counted.
        frames_in = int(after['frames_in']) - int(before['frames_in'])
        frames_out = int(after['frames_out']) - int(before['frames_out'])
        stale = int(after['dropped_stale']) - int(before['dropped_stale'])
        assert frames_out > 0 and stale > 0, (frames_in, frames_out, stale)
        # Every frame in is out or dropped; the snapshots are taken mid-flood, so up to two
        # frames (one in the slot, one computing) may be in flight at either end.
        assert abs(frames_in - frames_out - stale) <= 2, (frames_in, frames_out, stale)
        # Right after: the node itself answers at once (its /diagnostics keep coming), and a
        # normal camera at 10 Hz gets depth back once the transport has drained. That second
        # wait is DDS's, not the node's: with best effort it took 0.1 s, 9.5 s and more than
        # 30 s in three runs here (docs/reliability.md); the bound below is the transport's.
        last_report = client.messages('/diagnostics')[-1]
        wait_until(lambda: client.messages('/diagnostics')[-1] is not last_report, 5,
                   '/diagnostics right after the flood', node)
        rgb = np.full((480, 640, 3), 90, np.uint8)
        rgb[::16] = 200
        header = Header(frame_id=FRAME_ID)
        ours = set()
        started = time.monotonic()

        def answered():
            stamp = time.time_ns()
            ours.add(stamp)
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10 ** 9)
            publisher.publish(make_image_msg(rgb, 'rgb8', header))
            time.sleep(0.1)
            return any(m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec in ours
                       for m in client.messages(f'{namespace}/depth/relative')[-5:])
        wait_until(answered, TRANSPORT_RECOVERY_S, 'depth for a normal frame after the flood',
                   node)
        print(f'first depth {time.monotonic() - started:.1f} s after the flood ended')
        assert node.poll() is None
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        assert node.stop() == 0, node.output()[-3000:]


def test_soak_with_adaptation_on_stays_flat_and_persists_every_accepted_version(  # noqa: F811
        dds):
    topic, namespace = '/soak_cam/image', '/soak'
    client = dds.client
    client.subscribe('/diagnostics', DiagnosticArray)
    client.subscribe(f'{namespace}/depth/relative', Image)
    state_dir = dds.tmp / 'soak_state'
    node = start(dds, 'soak_node', namespace, topic,
                 weights=tiny_flow_checkpoint(dds.tmp / 'soak_flow.pt'), adapt=True,
                 adapt_state_dir=str(state_dir), adapt_steps_per_candidate=4,
                 adapt_duty_cycle=0.5, adapt_threads=1)
    frames = [f.rgb for f in render_sequence('day', 60, 64, 96, seed=8)]
    publisher = client.camera_publisher(topic, Image)
    clock = {'index': 0, 'next': time.monotonic()}

    def camera():
        """10 Hz: publish every frame that is due (a moving camera: the drive, looped)."""
        while time.monotonic() >= clock['next']:
            index = clock['index']
            header = Header(frame_id=FRAME_ID)
            header.stamp.sec, header.stamp.nanosec = divmod(1000 * 10 ** 9 + index * 10 ** 8,
                                                            10 ** 9)
            publisher.publish(make_image_msg(frames[index % len(frames)], 'rgb8', header))
            clock['index'] += 1
            clock['next'] += 0.1

    try:
        def trained():
            camera()
            time.sleep(0.02)
            values = node_diagnostics(client, namespace) or {}
            return int(values.get('adaptation_steps', 0)) >= 4
        wait_until(trained, 120, 'adaptation training', node)
        warm = sample_resources(node.popen.pid, 10.0, 0.05, camera)  # warm-up
        steps_before = int(node_diagnostics(client, namespace)['adaptation_steps'])
        samples = []
        start_time = time.monotonic()
        while time.monotonic() - start_time < SOAK_S:
            samples += sample_resources(node.popen.pid, 1.0, 0.05, camera, start_time)[-1:]
        values = node_diagnostics(client, namespace)
        report = resource_report(samples)
        accepted = int(values['adaptation_candidates_accepted'])
        print(f'\nsoak {SOAK_S:.0f} s: node {report}; frames out {values["frames_out"]}, '
              f"adaptation steps {values['adaptation_steps']}, accepted {accepted}, refused "
              f"{values['adaptation_candidates_refused']}, rollbacks "
              f"{values['adaptation_rollbacks']}, saves {values['adaptation_saves']}")
        rss = [s[1] for s in samples]
        assert rss[-1] - min(rss) < RSS_GROWTH_LIMIT_MB and max(rss) - rss[0] < (
            RSS_GROWTH_LIMIT_MB), report
        assert samples[-1][2] == samples[0][2] == warm[-1][2], f'threads changed: {report}'
        assert samples[-1][3] - samples[0][3] <= FD_GROWTH_LIMIT, report
        assert int(values['adaptation_steps']) > steps_before, 'adaptation stopped'
        assert int(values['adaptation_save_failures']) == 0
        # Every accepted version was written when it was accepted: the file holds the one
        # that serves (reset or not, nothing accepted is only in memory).
        assert int(values['adaptation_saves']) >= accepted
        state_file = state_dir / 'adapted.pt'
        if accepted:
            assert read_checkpoint(state_file)['version'] == int(
                values['adaptation_published_version'])
        depth = client.messages(f'{namespace}/depth/relative')
        assert depth and all(np.isfinite(np.frombuffer(bytes(m.data), np.float32)).all()
                             for m in depth[-10:])
    finally:
        assert node.stop() == 0, node.output()[-3000:]
