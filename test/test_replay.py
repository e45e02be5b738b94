"""`structflow replay`: real bags (rosbags-written sqlite3 and MCAP), the node's pipeline, a
report that agrees with `structflow evaluate`, an output bag that other readers decode, and a
clear error for every bad input. Tiny checkpoints made here; no ROS process is needed.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from structflow_ros.cli import replay
from structflow_ros.core.checkpoint import save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.data import bag_io
from structflow_ros.data.bag_io import BagWriter
from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.training.evaluation import evaluate_depth

REPO_ROOT = Path(__file__).resolve().parents[1]
IMAGE, INFO, GT = '/camera/image_raw', '/camera/camera_info', '/camera/depth_gt'


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=True, pose_branch=False))
    return save_checkpoint(tmp_path_factory.mktemp('replay_weights') / 'tiny.pt', model)


@pytest.fixture(scope='module')
def drive():
    return list(render_sequence('fog', 10, 64, 96, seed=901))


def write_bag(path, frames, storage='mcap', gt=True, gt_encoding='32FC1', stamps=None,
              sparse=False):
    with BagWriter(path, storage=storage) as writer:
        for number, frame in enumerate(frames):
            stamp = frame.stamp_ns if stamps is None else stamps[number]
            writer.write_image(IMAGE, stamp, frame.rgb, frame_id='cam_front')
            writer.write_camera_info(INFO, stamp, frame.K, frame.rgb.shape[1],
                                     frame.rgb.shape[0], frame_id='cam_front')
            if gt:
                depth = np.where(frame.depth_valid, frame.depth, 0.0)
                if sparse:  # lidar-like: one pixel in 8 has a reading, the rest are zeros
                    keep = np.zeros(depth.shape, bool)
                    keep[::4, ::2] = True
                    depth = np.where(keep, depth, 0.0)
                writer.write_image(GT, stamp, depth.astype(np.float32), gt_encoding)
    return path


def run(*argv):
    args = replay.get_args_parser().parse_args([str(a) for a in argv] + ['--no-progress'])
    return replay.main(args)


def test_replay_matches_structflow_evaluate_on_the_same_frames(tmp_path, weights, drive):
    bag = write_bag(tmp_path / 'bag', drive)
    out = tmp_path / 'report'
    assert run(bag, '--gt-depth-topic', GT, '--weights', weights, '--backend', 'eager',
               '--device', 'cpu', '--out', out) == 0
    summary = json.loads((out / 'summary.json').read_text())
    model = build_model(ModelConfig(height=64, width=96, flow_branch=True, pose_branch=False))
    model.load_state_dict(torch.load(weights, weights_only=True)['state_dict'])
    reference = evaluate_depth(model.eval(), [
        {'rgb': f.rgb, 'depth': f.depth, 'valid': f.depth_valid} for f in drive])
    for key in ('abs_rel', 'sq_rel', 'rmse', 'a1'):
        assert summary['median_scaled'][key] == pytest.approx(reference['model'][key],
                                                              rel=1e-3), key
    assert summary['constant_depth_floor_abs_rel'] == pytest.approx(
        reference['floor']['abs_rel'], rel=1e-6)
    # The prior floor: the replay's own predictions over the bag form the set, as evaluate's
    # over its frames, so both give the same prior, image gain and the prior's ordinal error.
    assert summary['prior_floor_abs_rel'] == pytest.approx(reference['prior']['abs_rel'],
                                                           rel=1e-3)
    assert summary['prior_floor']['ordinal_error'] == pytest.approx(
        reference['prior']['ordinal_error'], abs=0.01)
    assert summary['image_gain'] == pytest.approx(
        1 - summary['median_scaled']['abs_rel'] / summary['prior_floor_abs_rel'])
    assert summary['image_gain'] == pytest.approx(reference['image_gain'], abs=2e-3)
    assert summary['frames'] == summary['frames_with_ground_truth'] == len(drive)
    assert summary['source']['gt_matched'] == len(drive)
    assert summary['versions_served'] == {'1': len(drive)} and summary['swaps'] == []
    rows = (out / 'frames.csv').read_text().splitlines()
    assert len(rows) == len(drive) + 1 and rows[0].startswith('index,stamp_ns,version')
    assert rows[0].endswith('floor_abs_rel,prior_abs_rel,ordinal_error,prior_ordinal_error')
    assert all(row.split(',')[-3] for row in rows[1:])  # every frame has its prior AbsRel
    table = (out / 'comparison.md').read_text().splitlines()
    assert 'prior AbsRel | image gain' in table[0]
    assert f"{summary['image_gain']:.5g}" in table[2].split(' | ')
    for name in ('abs_rel.png', 'error_hist.png', 'replay.mp4', 'comparison.md'):
        assert (out / name).stat().st_size > 1000 or name == 'comparison.md', name


def test_output_bag_reads_with_rosbags_and_mcap_ros2(tmp_path, weights, drive):
    bag = write_bag(tmp_path / 'bag', drive[:4], storage='sqlite3')
    out = tmp_path / 'report'
    assert run(bag, '--gt-depth-topic', GT, '--weights', weights, '--backend', 'eager',
               '--device', 'cpu', '--out', out, '--no-video', '--depth-mode', 'scale',
               '--depth-scale', '2') == 0
    topics = bag_io.list_topics(out / 'bag')
    for topic in (IMAGE, INFO, GT, '/structflow/depth', '/structflow/depth/colored',
                  '/structflow/depth/camera_info', '/structflow/depth/points'):
        assert topic in topics, topics
    assert '/structflow/depth/relative' not in topics  # metres on depth, nothing unitless
    depths = [msg for _, _, msg in bag_io.read_messages(out / 'bag', '/structflow/depth')]
    assert len(depths) == 4
    depth = bag_io.decode_depth_msg(depths[0])
    assert depth.shape == (64, 96) and np.isfinite(depth).all() and (depth > 0).all()
    stamps = [bag_io.header_stamp_ns(m) for m in depths]
    assert stamps == [f.stamp_ns for f in drive[:4]]  # the images' own stamps
    assert {m.header.frame_id for m in depths} == {'cam_front'}  # and their frame_id
    # An independent reader: the MCAP library with its ROS 2 decoder.
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    mcap_file = next((out / 'bag').glob('*.mcap'))
    seen = {}
    with open(mcap_file, 'rb') as handle:
        reader = make_reader(handle, decoder_factories=[DecoderFactory()])
        for _, channel, _, ros_msg in reader.iter_decoded_messages():
            seen.setdefault(channel.topic, ros_msg)
    decoded = seen['/structflow/depth']
    assert (decoded.height, decoded.width, decoded.encoding) == (64, 96, '32FC1')
    values = np.frombuffer(bytes(decoded.data), np.float32).reshape(64, 96)
    np.testing.assert_array_equal(values, depth)
    cloud = seen['/structflow/depth/points']
    assert [f.name for f in cloud.fields] == ['x', 'y', 'z', 'rgb'] and cloud.point_step == 16
    points = np.frombuffer(bytes(cloud.data), np.float32).reshape(-1, 4)
    assert np.isfinite(points[:, :3]).all() and (points[:, 2] > 0).all()


def test_sparse_millimetre_ground_truth_with_zeros(tmp_path, weights, drive):
    bag = write_bag(tmp_path / 'bag', drive[:3], gt_encoding='16UC1', sparse=True)
    out = tmp_path / 'report'
    assert run(bag, '--gt-depth-topic', GT, '--weights', weights, '--backend', 'eager',
               '--device', 'cpu', '--out', out, '--no-video', '--no-bag') == 0
    summary = json.loads((out / 'summary.json').read_text())
    dense = sum(int((f.depth_valid & (f.depth < 80)).sum()) for f in drive[:3])
    valid = summary['median_scaled']['valid_pixels']
    assert 0 < valid < dense / 4  # only the lidar-like readings count, not the zeros
    assert 0 < summary['median_scaled']['abs_rel'] < 5


def test_compare_weights_and_adaptation_off_and_on_in_one_table(tmp_path, weights, drive,
                                                                capsys):
    torch.manual_seed(1)
    other = save_checkpoint(tmp_path / 'other.pt', build_model(
        ModelConfig(height=64, width=96, flow_branch=True, pose_branch=False)))
    bag = write_bag(tmp_path / 'bag', drive[:6])
    out = tmp_path / 'report'
    assert run(bag, '--gt-depth-topic', GT, '--compare', weights, other, '--adapt', 'both',
               '--backend', 'eager', '--device', 'cpu', '--realtime', 'off', '--out', out,
               '--no-video', '--no-bag') == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| ')]
    labels = [line.split(' | ')[0][2:] for line in lines[1:]]
    assert labels == ['tiny', 'tiny +adapt', 'other', 'other +adapt']
    for folder in ('tiny', 'tiny_adapt', 'other', 'other_adapt'):
        summary = json.loads((out / folder / 'summary.json').read_text())
        assert summary['adapt'] == folder.endswith('_adapt')
        if summary['adapt']:
            assert 'adaptation_steps' in summary['adaptation']
    assert (out / 'comparison.md').read_text().count('\n') == 6


def test_bad_inputs_are_named(tmp_path, weights, drive, capsys):
    def error_of(*argv):
        assert run(*argv, '--weights', weights, '--device', 'cpu', '--backend', 'eager',
                   '--out', tmp_path / 'out', '--no-video') == replay.EXIT_BAD_INPUT
        return capsys.readouterr().err

    assert 'does not exist' in error_of(tmp_path / 'missing_bag')
    garbage = tmp_path / 'garbage.mcap'
    garbage.write_bytes(b'not a bag at all' * 100)
    assert 'cannot read bag' in error_of(garbage)
    bag = write_bag(tmp_path / 'bag', drive[:3])
    message = error_of(bag, '--image-topic', '/front/image')
    assert 'no topic /front/image' in message and IMAGE in message and GT in message
    message = error_of(bag, '--gt-depth-topic', INFO)
    assert 'must be a sensor_msgs/msg/Image' in message
    several = write_bag(tmp_path / 'several', drive[:2], gt=False)
    with BagWriter(tmp_path / 'two_cameras', storage='mcap') as writer:
        for frame in drive[:2]:
            writer.write_image('/left/image', frame.stamp_ns, frame.rgb)
            writer.write_image('/right/image', frame.stamp_ns, frame.rgb)
    message = error_of(tmp_path / 'two_cameras')
    assert 'several image topics: /left/image, /right/image' in message
    assert several.exists()
    assert 'weights file' in error_of(bag, '--compare', tmp_path / 'nope.pt')


def test_no_ground_truth_match_says_so_and_replays_without_metrics(tmp_path, weights, drive,
                                                                   capsys):
    bag = tmp_path / 'bag'
    with BagWriter(bag, storage='mcap') as writer:
        for frame in drive[:3]:
            writer.write_image(IMAGE, frame.stamp_ns, frame.rgb)
            writer.write_image(GT, frame.stamp_ns + 50_000_000, frame.depth.astype(np.float32),
                               '32FC1')  # 50 ms later: outside the 20 ms tolerance
    out = tmp_path / 'report'
    assert run(bag, '--gt-depth-topic', GT, '--weights', weights, '--device', 'cpu',
               '--backend', 'eager', '--out', out, '--no-video') == 0
    assert 'no ground truth matched within 0.02 s' in capsys.readouterr().err
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['frames'] == 3 and summary['frames_with_ground_truth'] == 0
    assert 'median_scaled' not in summary and summary['source']['gt_unmatched'] == 3
    # The same bag with a wider tolerance matches every frame.
    assert run(bag, '--gt-depth-topic', GT, '--gt-tolerance', '0.06', '--weights', weights,
               '--device', 'cpu', '--backend', 'eager', '--out', tmp_path / 'wide',
               '--no-video') == 0
    assert json.loads((tmp_path / 'wide' / 'summary.json').read_text())[
        'frames_with_ground_truth'] == 3


def test_size_change_out_of_order_stamps_and_a_truncated_mcap(tmp_path, weights, drive,
                                                               capsys):
    import cv2
    frames = drive[:6]
    bag = tmp_path / 'bag'
    stamps = [f.stamp_ns for f in frames]
    stamps[3], stamps[4] = stamps[4], stamps[3]  # a driver that stamped two frames backwards
    with BagWriter(bag, storage='mcap') as writer:
        for number, frame in enumerate(frames):
            rgb = frame.rgb if number < 3 else cv2.resize(frame.rgb, (128, 80))
            writer.write_image(IMAGE, stamps[number], rgb, record_ns=frame.stamp_ns)
    out = tmp_path / 'report'
    assert run(bag, '--weights', weights, '--device', 'cpu', '--backend', 'eager', '--out',
               out, '--no-bag') == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['frames'] == 6 and summary['source']['size_changes'] == 1
    assert summary['source']['sizes'] == ['96x64', '128x80']
    assert summary['source']['out_of_order'] == 1
    # Recording cut mid-write: an MCAP without its summary section.
    mcap_file = next(bag.glob('*.mcap'))
    cut = tmp_path / 'cut.mcap'
    data = mcap_file.read_bytes()
    cut.write_bytes(data[:int(len(data) * 0.6)])
    code = run(cut, '--weights', weights, '--device', 'cpu', '--backend', 'eager', '--out',
               tmp_path / 'cut_report', '--no-bag', '--no-video')
    assert code == replay.EXIT_BAD_INPUT
    assert 'ends early: a recording that was cut off' in capsys.readouterr().err


def test_ctrl_c_writes_the_partial_report_and_a_valid_bag(tmp_path, weights, drive):
    # 80 frames paced at 10 Hz: 8 s, a wide margin for the interrupt on a loaded machine (with
    # 40 the drive once ended before this test had read the progress bar).
    frames = list(render_sequence('fog', 80, 64, 96, seed=902))
    bag = write_bag(tmp_path / 'bag', frames)
    out = tmp_path / 'report'
    env_path = str(REPO_ROOT)
    process = subprocess.Popen(
        [sys.executable, '-m', 'structflow_ros.cli', 'replay', str(bag), '--gt-depth-topic',
         GT, '--weights', str(weights), '--device', 'cpu', '--backend', 'eager',
         '--realtime', 'on', '--out', str(out), '--no-video'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'PYTHONPATH': env_path})
    try:
        progress = ''
        deadline = time.monotonic() + 120
        # The progress bar says 3 frames are done (paced at 10 Hz: 7.7 s of the drive remain).
        while max(map(int, re.findall(r'(\d+)/80 ', progress)), default=0) < 3:
            assert process.poll() is None and time.monotonic() < deadline, progress
            progress += process.stderr.read(1)
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == replay.EXIT_INTERRUPTED, stdout
    assert f'interrupted: partial report in {out}' in stdout
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['interrupted'] and 3 <= summary['frames'] < 80
    topics = bag_io.list_topics(out / 'bag')
    assert '/structflow/depth' not in topics and '/structflow/depth/points' not in topics
    depths = list(bag_io.read_messages(out / 'bag', '/structflow/depth/relative'))
    assert len(depths) == summary['frames']  # the bag was closed: every message readable
