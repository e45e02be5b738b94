"""`structflow bench adapt` and `structflow bench gate` end to end at tiny sizes (the real runs
are documented commands: docs/adaptation.md). What must hold: the table has a row per stream
with before/after depth, the harmful static stream never trains (no moving-camera pairs) and
never swaps, the gate study writes one row per candidate with every criterion."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from structflow_ros.core.checkpoint import save_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny_weights(path):
    torch.manual_seed(0)
    save_checkpoint(path, build_model(ModelConfig(height=64, width=96, flow_branch=True,
                                                  pose_branch=False)))
    return path


def run_bench(*args):
    result = subprocess.run([sys.executable, '-m', 'structflow_ros.cli.main', 'bench', *args],
                            capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_bench_adapt_reports_each_stream_and_static_never_swaps(tmp_path):
    weights = tiny_weights(tmp_path / 'tiny.pt')
    out = tmp_path / 'adapt.md'
    config = json.dumps({'steps_per_candidate': 2, 'min_train_pairs': 2,
                         'source_frames_per_domain': 4, 'duty_cycle': 1.0,
                         'gate': {'min_pairs': 2}})
    stdout = run_bench('adapt', '--streams', 'static', 'fog', '--seconds', '6',
                       '--short-seconds', '4',
                       '--frames', '30',
                       '--weights', str(weights), '--backend', 'eager', '--threads', '1',
                       '--adapter-config', config, '--out', str(out))
    table = out.read_text()
    assert table.splitlines()[0].startswith('| stream | AbsRel before -> after')
    report = json.loads(out.with_suffix('.json').read_text())
    rows = {row['stream']: row for row in report['rows']}
    assert set(rows) == {'static', 'fog'}
    static = rows['static']
    assert static['harmful'] and static['steps'] == 0 and static['accepted'] == 0
    assert static['buffer']['static'] > 10  # every pair of a parked camera was skipped
    fog = rows['fog']
    assert fog['steps'] > 0 and fog['accepted'] + fog['refused'] >= 1
    assert 0 < fog['before']['abs_rel'] < 10 and 0 < fog['after']['abs_rel'] < 10
    if fog['accepted'] == 0:  # nothing swapped: the served depth is the base model's
        assert fog['after'] == fog['before']
    assert report['output_hz_off'] > 1 and fog['output_hz'] > 1
    assert '| static (harmful) |' in stdout


def test_bench_gate_scores_every_criterion_per_candidate(tmp_path):
    weights = tiny_weights(tmp_path / 'tiny.pt')
    out = tmp_path / 'gate.md'
    run_bench('gate', '--streams', 'fog', '--frames', '24', '--snapshots', '2',
              '--snapshot-steps', '1', '--weights', str(weights), '--threads', '1',
              '--out', str(out))
    rows = [json.loads(line) for line in out.with_suffix('.jsonl').read_text().splitlines()]
    assert len(rows) == 3 * 2  # 3 variants x 2 snapshots
    for row in rows:
        for name in ('rigid_fit', 'reprojection', 'temporal', 'flow_loss'):
            assert isinstance(row[f'{name}_change'], float), name
        assert row['abs_rel'] > 0
    table = out.read_text()
    assert all(f'| {name} |' in table for name in ('rigid_fit', 'reprojection', 'temporal',
                                                  'flow_loss'))


def test_room_stream_is_an_indoor_walk_judged_in_another_room_at_the_indoor_cap():
    from structflow_ros.cli.bench_adapt import INDOOR_CAP_M, make_stream
    stream = make_stream('room', 64, 96, frames=4)
    assert stream.max_depth == INDOOR_CAP_M == 10.0 and not stream.harmful
    assert len(stream.frames) == 4 and stream.frames[0].shape == (64, 96, 3)
    assert stream.K is not None and 'room walk' in stream.note
    evaluation = stream.evaluation()
    walk_first = stream.frames[0]
    assert not any(np.array_equal(walk_first, frame['rgb']) for frame in evaluation)
    # Indoors: (almost) everything it is judged on lies within the indoor cap.
    depth = np.concatenate([frame['depth'][frame['valid']] for frame in evaluation])
    assert np.mean(depth < INDOOR_CAP_M) > 0.95
