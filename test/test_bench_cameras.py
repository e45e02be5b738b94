"""`structflow bench cameras` end to end at a tiny size: N cameras in one node process against
N node processes over real DDS, a table with the memory of each layout and the rate per
camera (issue 30)."""
import json
import subprocess
import sys

import pytest
import torch

from structflow_ros.cli import bench_cameras
from structflow_ros.core.checkpoint import save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_one_process_for_two_cameras_against_two_nodes(ros_env, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / 'tiny.pt'
    save_checkpoint(weights, build_model(ModelConfig(height=64, width=96, flow_branch=False,
                                                     pose_branch=False)))
    result = tmp_path / 'cameras.json'
    done = subprocess.run(
        [sys.executable, '-m', 'structflow_ros.cli', 'bench', 'cameras', '--counts', '2',
         '--rate', '5', '--size', '96x64', '--duration', '3', '--backend', 'eager',
         '--threads', '1', '--weights', str(weights), '--log-dir', str(tmp_path / 'logs'),
         '--json', str(result)], env=ros_env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    header = '| ' + ' | '.join(bench_cameras.COLUMNS) + ' |'
    assert header in done.stdout.splitlines()
    rows = {row['layout']: row for row in json.loads(result.read_text())['rows']}
    one, nodes = rows['one process'], rows['separate nodes']
    assert (one['processes'], nodes['processes']) == (1, 2)
    # two processes each hold torch and the model; one holds them once
    assert one['rss_mb'] < 0.75 * nodes['rss_mb'], rows
    for row in (one, nodes):
        assert row['sent_per_camera'] >= 10 and row['rate_min_hz'] > 0, row
