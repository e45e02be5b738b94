"""`structflow bench model | train` at tiny sizes, and the report writer.

Timings are not asserted (noisy machines); what is checked is that every backend this machine
can run gets a row, that the depth columns are computed against the reference, and that the
markdown report and its target lines follow from the numbers.
"""
import json

import pytest
import torch

from structflow_ros.cli import bench
from structflow_ros.core import ModelConfig, build_model
from structflow_ros.core.backends import unavailable_reason
from structflow_ros.core.checkpoint import save_checkpoint


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=False, pose_branch=False))
    return save_checkpoint(tmp_path_factory.mktemp('bench') / 'tiny.pt', model, half=True)


def parse(argv):
    return bench.get_args_parser().parse_args(argv)


def test_bench_model_rows_for_every_available_backend(tiny_weights, tmp_path, capsys):
    out = tmp_path / 'model.json'
    code = bench.main(parse(['model', '--weights', str(tiny_weights), '--sizes', '96x64',
                             '--repeats', '2', '--warmup', '1', '--eval-frames', '2',
                             '--device', 'cpu', '--json', str(out)]))
    assert code == 0
    result = json.loads(out.read_text())
    names = [row['backend'] for row in result['rows']]
    available = [b for b in bench.SERVING_BACKENDS if unavailable_reason(b, 'cpu') is None]
    assert names == ['reference eager fp32 (before)'] + available
    assert set(result['not_available']) == set(bench.SERVING_BACKENDS) - set(available)
    reference = result['rows'][0]
    for row in result['rows'][1:]:
        assert float(row['served ms']) > 0 and float(row['peak RSS MB']) > 100
        # 'served ms' is printed to 0.1 ms and the ratio is computed from the unrounded times:
        # at this tiny size (a few ms) that rounding alone moves the ratio by more than 0.01.
        served, ref_served = float(row['served ms']), float(reference['served ms'])
        lowest = (served - 0.05) / (ref_served + 0.05)
        highest = (served + 0.05) / (ref_served - 0.05)
        assert lowest - 0.005 <= float(row['served / ref']) <= highest + 0.005, row
        assert float(row['disp diff'].rstrip('%')) < 2.0, row  # the same model, any backend
        assert float(row['dAbsRel']) == pytest.approx(
            float(row['AbsRel']) - float(reference['AbsRel']), abs=2e-4)
    assert result['auto']['96x64']['choice'] in available
    printed = capsys.readouterr().out
    assert 'reference eager fp32 (before)' in printed and 'auto at 96x64' in printed


def test_bench_train_compares_float32_and_bf16(tmp_path):
    out = tmp_path / 'train.json'
    assert bench.main(parse(['train', '--train-size', '64x64', '--batch-size', '1',
                             '--train-repeats', '1', '--device', 'cpu',
                             '--json', str(out)])) == 0
    rows = json.loads(out.read_text())['rows']
    assert [r['case'] for r in rows] == ['float32, Adam (before)', 'float32, fused Adam',
                                         'bf16 autocast, fused Adam']
    assert rows[0]['speed-up'] == '1.00x'
    for row in rows:
        # batch size 1: as many pairs as steps; pairs/s is printed to 0.1, steps/s to 0.01
        assert float(row['pairs/s']) == pytest.approx(float(row['steps/s']), abs=0.051)


def test_markdown_report_and_targets_follow_the_numbers(tmp_path):
    model = {'weights': 'w.pt', 'eval': 'fog', 'peak_rss_mb': 900.0, 'not_available':
             {'fp16': 'CUDA only'}, 'auto': {'640x192': {'choice': 'openvino', 'reason': 'r'}},
             'columns': ['size', 'backend', 'served ms', 'served / ref', 'dAbsRel'],
             'rows': [{'size': '640x192', 'backend': 'reference eager fp32 (before)',
                       'served ms': '100', 'served / ref': '1.00', 'dAbsRel': '0'},
                      {'size': '640x192', 'backend': 'openvino', 'served ms': '10',
                       'served / ref': '0.10', 'dAbsRel': '+0.0010'},
                      {'size': '640x192', 'backend': 'bf16', 'served ms': '50',
                       'served / ref': '0.50', 'dAbsRel': '-0.0070'}]}
    train = {'size': '320x96', 'batch_size': 4, 'columns': ['case', 'speed-up'],
             'rows': [{'case': 'a', 'speed-up': '1.00x'}, {'case': 'b', 'speed-up': '1.50x'}]}
    machine = {'cpu': 'cpu', 'logical_cpus': 2, 'threads': 2, 'cuda': 'none',
               'flags': ['avx512_bf16'], 'native_bf16': 'yes', 'versions': {'torch': 'x'}}
    lines = bench.target_lines(model, train, {}, machine)
    assert 'best openvino 0.10x (10 ms) met' in lines[0]
    assert 'worst 0.0070 missed' in lines[1]
    assert '1.50x missed' in lines[2]
    assert 'no AMX' in lines[-1]
    path = tmp_path / 'docs' / 'benchmarks.md'
    bench.write_markdown({'machine': machine, 'model': model, 'train': train, 'node': {},
                          'command': 'structflow bench all'}, path)
    text = path.read_text()
    assert '`structflow bench all`' in text and '| 640x192 | openvino | 10 | 0.10 |' in text
    assert 'chose **openvino**' in text and 'fp16: CUDA only' in text
