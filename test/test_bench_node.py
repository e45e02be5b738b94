"""`structflow bench node` at a tiny size: the table has the right rows and sane values.

Timings are not asserted (a shared 2-core machine is noisy); the lead measures the README
numbers on a quiet machine. Each case starts its own node process over real DDS.
"""
import json
import math
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from structflow_ros.cli import bench_node
from structflow_ros.core.checkpoint import save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model
from structflow_ros.ros.depth_client import DepthClient

RUN_TIMEOUT_S = 240


@pytest.fixture
def tiny_weights(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=False, pose_branch=False))
    return save_checkpoint(tmp_path / 'tiny.pt', model, half=True)


def test_two_cases_give_a_table_with_sane_values(ros_env, tmp_path, tiny_weights):
    result_path = tmp_path / 'bench.json'
    done = subprocess.run(
        [sys.executable, '-m', 'structflow_ros.cli.bench_node', '--sizes', '96x64', '--rates',
         '10', '--points', 'off,on', '--duration', '2', '--model-repeats', '5', '--threads', '1',
         '--weights',
         str(tiny_weights), '--log-dir', str(tmp_path / 'logs'), '--json', str(result_path),
         '--no-progress'],
        env=ros_env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    header = '| ' + ' | '.join(bench_node.COLUMNS) + ' |'
    lines = done.stdout.splitlines()
    assert header in lines
    table = lines[lines.index(header) + 2:lines.index(header) + 4]
    assert [line.split(' | ')[:3] for line in table] == [['| 96x64', '10', 'off'],
                                                          ['| 96x64', '10', 'on']]
    assert any(line.startswith('target (node overhead p50 <= 3 ms') for line in lines)

    result = json.loads(result_path.read_text())
    assert result['threads'] == 1  # --threads reaches the model and the node
    assert [row['points'] for row in result['rows']] == [False, True]
    for row in result['rows']:
        assert row['camera'] == '96x64' and row['camera_hz'] == 10
        assert row['frames_sent'] == 20
        assert 0 < row['depth_received'] <= row['frames_sent']
        # The node's own counters close: every frame it took in was published or dropped.
        assert row['frames_in_node'] == row['frames_out_node'] + row['dropped_by_node'], row
        assert row['frames_in_node'] <= row['frames_sent']
        # Reliable output on localhost: every depth the node published reached the viewer.
        assert row['lost_after_node'] == 0, row
        assert 0 < row['e2e_ms_p50'] <= row['e2e_ms_p95']
        assert row['output_rate_hz'] > 0
        assert row['bare_model_ms_p50'] > 0 and row['node_inference_ms_p50'] > 0
        # The node's own work on a frame includes the model call, so overhead >= 0.
        assert 0 <= row['node_overhead_ms_p50'] <= row['node_overhead_ms_p95']
        assert math.isclose(row['e2e_minus_bare_ms_p50'],
                            row['e2e_ms_p50'] - row['bare_model_ms_p50'])
    # With points on, the point cloud came back for the frames as well.
    assert result['rows'][1]['e2e_all_outputs_ms_p50'] >= result['rows'][1]['e2e_ms_p50']
    assert len(result['bare_model_ms']['96x64']) == 2  # timed again before each case


def test_missing_weights_exit_2(tmp_path, capsys):
    args = bench_node.get_args_parser().parse_args(
        ['--weights', str(tmp_path / 'missing.pt'), '--no-progress'])
    assert bench_node.main(args) == 2
    assert f"weights {tmp_path / 'missing.pt'} do not exist" in capsys.readouterr().err


@pytest.mark.parametrize('argv', [['--sizes', '320by96'], ['--rates', '0'],
                                  ['--points', 'maybe']])
def test_bad_options_are_refused_naming_what_is_accepted(argv, capsys):
    with pytest.raises(SystemExit):
        bench_node.get_args_parser().parse_args(argv)
    assert 'must be a comma-separated list of' in capsys.readouterr().err


def test_warm_up_ends_on_an_answered_frame():
    """A node answering each frame after its own delay (a stand-in for the node process, so
    the timing is known): frames 0 and 1 are answered late, after frame 2 went out, and frame 2
    takes longer still. Warm-up must not stop on two answers while frame 2 is in flight, or
    frame 2 lands in the node's counts of the run that follows (21 frames in for 20 sent)."""
    delays_s = [0.12, 0.12, 0.5, 0.01, 0.01, 0.01]
    published = {}

    def publish(image_msg, info):
        stamp = len(published)
        published[stamp] = time.monotonic()
        return stamp

    def reply(stamp, topic):
        answered = time.monotonic() >= published[stamp] + delays_s[stamp]
        return (0, None) if answered else None

    client = SimpleNamespace(publish=publish, reply=reply)
    sent = DepthClient.warm_up(client, None, None, None, replies=2, timeout=5.0, resend_s=0.1)
    assert reply(sent[-1], 'depth') is not None, f'warm-up ended on unanswered frame {sent[-1]}'
    assert sum(1 for stamp in sent if reply(stamp, 'depth')) >= 2


def test_a_report_older_than_the_replies_we_hold_is_not_settled():
    """Stand-in client (so the order of events is known): the node's first report after our
    last publish was made before the node took that frame in (3 in, 3 out, while its reply,
    the 4th, is already here); the next report counts it. The first must not be the baseline,
    or that frame lands in the next run's counts (21 frames in for 20 sent)."""
    reports = [{'frames_in': 3, 'frames_out': 3}, {'frames_in': 4, 'frames_out': 4}]
    calls = []

    def latest_diagnostics(after_ns=0):
        calls.append(after_ns)
        return reports[0] if len(calls) < 3 else reports[1]

    client = SimpleNamespace(latest_diagnostics=latest_diagnostics, received=lambda: 4)
    assert DepthClient.wait_settled(client, 10, None, timeout=5.0) == reports[1]
    # Replies lost on the way (best effort) never settle: the newest report comes back at the
    # timeout, for the caller to see the shortfall.
    short = SimpleNamespace(latest_diagnostics=lambda after_ns=0: reports[1], received=lambda: 3)
    assert DepthClient.wait_settled(short, 10, None, timeout=0.2) == reports[1]
