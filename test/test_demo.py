"""`structflow demo` end to end: real node process, real DDS, a report folder that adds up.

The demo runs as its own process (`python -m structflow_ros.cli demo`, what `make demo` runs)
with a tiny checkpoint made here (the shipped model may not exist yet), a short synthetic drive
or a video written here, and tiny frames so each run takes seconds. Waits are on the child
process (its exit, its output), never a fixed sleep.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from structflow_ros.cli import demo
from structflow_ros.core.checkpoint import save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.data.bag_io import BagWriter
from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.demo.inputs import load_frames, open_input
from structflow_ros.demo.report import DISPLAY_MIN_HEIGHT
from structflow_ros.visual import LABEL_HEIGHT

RUN_TIMEOUT_S = 180  # node start (torch + rclpy imports) on 2 busy cores, then a few seconds


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=False, pose_branch=False))
    return save_checkpoint(tmp_path_factory.mktemp('demo_weights') / 'tiny.pt', model,
                           half=True)


def demo_command(*args):
    return [sys.executable, '-m', 'structflow_ros.cli', 'demo', *map(str, args)]


def child_env(ros_env, **extra):
    env = {k: v for k, v in ros_env.items() if k not in ('DEMO_SOURCE', 'DEMO_DOMAIN')}
    env.update(extra)
    return env


def processes_mentioning(text):
    """Pids of live processes whose command line contains `text` (a leaked node would)."""
    pids = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


def read_video(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(image)
    capture.release()
    return frames


def test_synthetic_drive_report_adds_up(ros_env, tmp_path, tiny_weights):
    out = tmp_path / 'report'
    frames, width, height = 12, 96, 64
    done = subprocess.run(
        demo_command('--weights', tiny_weights, '--frames', frames, '--size', f'{width}x{height}',
                     '--rate', 10, '--out', out, '--no-progress'),
        env=child_env(ros_env, DEMO_DOMAIN='dusk'), capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ROS_DOMAIN_ID={ros_env['ROS_DOMAIN_ID']} " in done.stdout
    assert f'report: {out}' in done.stdout
    assert not processes_mentioning(str(out)), 'the node process outlived the demo'
    assert 'serving' in (out / 'node.log').read_text()
    assert list((out / 'ros_logs').rglob('*')), 'ROS logs went somewhere else'

    latency = json.loads((out / 'latency.json').read_text())
    assert latency['frames_sent'] == frames
    received = latency['depth_received']
    assert received >= 1, latency  # how many depends on the machine's load (latest-frame)
    # The node's own counters close: every frame it took in was published or dropped ...
    assert latency['frames_in_node'] == (latency['frames_out_node']
                                         + latency['dropped_by_node']), latency
    assert latency['frames_in_node'] <= frames
    # ... and on localhost with reliable outputs every depth it published reached the viewer.
    assert latency['lost_after_node'] == 0, latency
    assert 0 < latency['e2e_ms_p50'] <= latency['e2e_ms_p95'] <= latency['e2e_ms_max']
    assert latency['output_rate_hz'] > 0 and latency['camera_rate_hz'] > 0
    assert latency['node_inference_ms_p50'] > 0 and latency['node_overhead_ms_p50'] >= 0
    assert latency['run']['input']['domain'] == 'dusk'
    assert '| end-to-end latency' in (out / 'latency.md').read_text()

    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['ground_truth'] is True
    assert metrics['frames_evaluated'] == received
    for block in ('model', 'constant_depth_floor'):
        assert 0 < metrics[block]['abs_rel'] < 10 and 0 <= metrics[block]['a1'] <= 1
    assert metrics['scale_ratio_spread'] >= 0
    assert len(metrics['per_frame']) == received

    video = read_video(out / 'demo.mp4')
    scale = -(-DISPLAY_MIN_HEIGHT // height)  # panels scaled up for display
    assert len(video) == received
    assert video[0].shape == (height * scale + LABEL_HEIGHT, 3 * width * scale, 3)
    assert video[0][LABEL_HEIGHT:].std() > 5  # pictures, not a blank frame
    sheet = cv2.imread(str(out / 'sheet.png'))
    assert sheet is not None and sheet.shape[1] == 3 * width * scale


def write_video(path, count, width=96, height=64):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (width, height))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    for index in range(count):
        writer.write(np.ascontiguousarray(base[:, index % width:index % width + width]))
    writer.release()
    return path


def test_video_source_then_ctrl_c_stops_node_and_keeps_a_partial_report(ros_env, tmp_path,
                                                                          tiny_weights):
    """Ctrl-C once the node has answered streamed frames: the event is depth seen on DDS by
    this test's own subscriber after streaming began, not the timing of progress text."""
    from sensor_msgs.msg import Image
    from dds_helpers import Client
    # 400 frames at 10 Hz: 40 s, so that a slow discovery of this test's watcher (it once took
    # most of a 20-s stream in CI) still leaves the stream running when Ctrl-C comes.
    video = write_video(tmp_path / 'clip.mp4', 400)
    out = tmp_path / 'report'
    stderr_path = tmp_path / 'stderr.txt'
    watcher = Client(int(ros_env['ROS_DOMAIN_ID']))
    depth_seen = []
    watcher.node.create_subscription(
        Image, f'{demo.NAMESPACE}/depth/relative',
        lambda msg: depth_seen.append(time.monotonic()), 50)
    try:
        with open(stderr_path, 'w') as stderr:
            process = subprocess.Popen(
                demo_command('--weights', tiny_weights, '--rate', 10, '--frames', 0,
                             '--out', out),
                env=child_env(ros_env, DEMO_SOURCE=str(video)), stdout=subprocess.PIPE,
                stderr=stderr, text=True)
            try:
                deadline = time.monotonic() + RUN_TIMEOUT_S
                streaming_since = None
                while True:
                    assert process.poll() is None, stderr_path.read_text()
                    assert time.monotonic() < deadline, stderr_path.read_text()
                    if streaming_since is None and (
                            'camera -> node -> viewer' in stderr_path.read_text()):
                        streaming_since = time.monotonic()
                    if streaming_since is not None and sum(
                            t > streaming_since for t in list(depth_seen)) >= 3:
                        break
                    time.sleep(0.05)
                process.send_signal(signal.SIGINT)
                stdout, _ = process.communicate(timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        watcher.close()
    assert process.returncode == demo.EXIT_INTERRUPTED, stdout + stderr_path.read_text()
    assert f'interrupted: partial report in {out}' in stdout
    assert not processes_mentioning(str(out)), 'the node process outlived the demo'
    latency = json.loads((out / 'latency.json').read_text())
    assert 3 <= latency['frames_sent'] < 400
    assert latency['depth_received'] >= 3
    assert latency['run']['input']['kind'] == 'VideoFileSource'
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['ground_truth'] is False
    first = read_video(out / 'demo.mp4')[0]
    assert first.shape[1] == 2 * 96 * 3  # camera | depth: no error panel without ground truth


def test_broken_weights_file_exits_2_with_the_nodes_reason(ros_env, tmp_path):
    broken = tmp_path / 'broken.pt'
    broken.write_bytes(b'not a checkpoint')
    done = subprocess.run(
        demo_command('--weights', broken, '--frames', 3, '--size', '64x32', '--out',
                     tmp_path / 'report', '--no-progress'),
        env=child_env(ros_env), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == demo.EXIT_BAD_INPUT, done.stdout + done.stderr
    assert f'cannot load weights {broken}' in done.stderr
    assert not processes_mentioning(str(tmp_path / 'report'))


@pytest.mark.parametrize('argv, message', [
    (['--source', '/no/such/video.mp4'], 'does not exist'),
    (['--weights', '/no/such/weights.pt'], 'weights file /no/such/weights.pt does not exist'),
    (['--rate', '0'], '--rate must be a positive number'),
    (['--domain', 'mars'], "unknown synthetic domain 'mars'; valid domains: day"),
])
def test_bad_input_exits_2_before_starting_anything(argv, message, tmp_path, capsys,
                                                     tiny_weights):
    argv = ['--weights', str(tiny_weights), '--out', str(tmp_path / 'report'), *argv]
    code = demo.main(demo.get_args_parser().parse_args(argv))
    assert code == demo.EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'report').exists()


def test_demo_source_env_var_is_the_default_source(monkeypatch):
    monkeypatch.setenv('DEMO_SOURCE', '/data/drive.mp4')
    monkeypatch.setenv('DEMO_DOMAIN', 'night')
    args = demo.get_args_parser().parse_args([])
    assert (args.source, args.domain) == ('/data/drive.mp4', 'night')
    monkeypatch.delenv('DEMO_SOURCE')
    monkeypatch.delenv('DEMO_DOMAIN')
    args = demo.get_args_parser().parse_args([])
    assert (args.source, args.domain) == ('', demo.DEFAULT_DOMAIN)


def test_ground_truth_comes_with_render_bags_and_folders(tmp_path):
    """A bag or folder written like `structflow render` gives each frame its own depth."""
    rendered = list(render_sequence('day', 3, 32, 64, seed=1))
    bag = tmp_path / 'bag'
    with BagWriter(bag) as writer:
        for frame in rendered:
            writer.write_image('/camera/image_raw', frame.stamp_ns, frame.rgb)
            writer.write_camera_info('/camera/camera_info', frame.stamp_ns, frame.K, 64, 32)
            writer.write_image('/camera/depth_gt', frame.stamp_ns,
                               np.where(frame.depth_valid, frame.depth, np.nan), '32FC1')
    source = open_input(demo.get_args_parser().parse_args(['--source', str(bag)]))
    frames = load_frames(source, max_width=640, progress=False)
    assert len(frames) == 3 and source.description['ground_truth']
    for got, want in zip(frames, rendered):
        np.testing.assert_array_equal(got.rgb, want.rgb)
        np.testing.assert_array_equal(got.gt_valid, want.depth_valid)
        np.testing.assert_allclose(got.gt[want.depth_valid], want.depth[want.depth_valid])
        np.testing.assert_allclose(got.K, want.K)
    # Frames wider than --max-width are scaled down with their ground truth and intrinsics.
    source = open_input(demo.get_args_parser().parse_args(['--source', str(bag)]))
    small = load_frames(source, max_width=32, progress=False)[0]
    assert small.rgb.shape == (16, 32, 3) and small.gt.shape == (16, 32)
    assert small.K[0, 0] == pytest.approx(rendered[0].K[0, 0] / 2)
