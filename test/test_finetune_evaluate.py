"""finetune, export and evaluate end to end at tiny sizes (synthetic world rendered on the fly)."""
import json

import pytest
import torch

from structflow_ros.cli import evaluate, export, finetune, pretrain
from structflow_ros.core import ModelConfig, build_model, load_model, read_checkpoint
from structflow_ros.core.checkpoint import save_checkpoint

TINY = ['--height', '64', '--width', '96', '--batch-size', '2', '--device', 'cpu',
        '--no-progress', '--threads', '1']


def run(module, argv):
    return module.main(module.get_args_parser().parse_args(argv))


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp('pretrain')
    assert run(pretrain, ['--data', 'synthetic:day:6:1', '--steps', '2', '--out', str(out)]
               + TINY) == 0
    return out / 'last.pt'


def test_finetune_from_pretrained_is_y_shaped_and_reports_gradient_agreement(pretrained,
                                                                             tmp_path):
    out = tmp_path / 'ft'
    assert run(finetune, ['--init', str(pretrained), '--data', 'synthetic:dusk:6:2',
                          '--eval', 'synthetic:fog:4:3', '--supervised', '--labels', '2',
                          '--steps', '2', '--out', str(out)] + TINY) == 0
    payload = read_checkpoint(out / 'last.pt')
    assert payload['stage'] == 'finetune'
    assert set(payload['modules']) == {'structure_encoder', 'depth_decoder', 'motion_encoder',
                                       'flow_decoder'}
    extra = payload['train_config']
    assert extra['loaded_modules'] == ['structure_encoder', 'motion_encoder', 'flow_decoder']
    assert extra['joint_flow'] is True
    summary = json.loads((out / 'summary.json').read_text())
    metrics = summary['final_metrics']
    assert -1.0 <= metrics['eval/grad_cosine_depth_flow'] <= 1.0
    assert metrics['eval/depth_abs_rel'] > 0 and metrics['eval/floor_abs_rel'] > 0
    assert metrics['loss_flow'] > 0 and metrics['loss_depth_supervised'] > 0
    # The pretrained encoder really was the starting point (it moved only 2 small steps).
    start = read_checkpoint(pretrained)['state_dict']['structure_encoder.conv1.weight']
    end = payload['state_dict']['structure_encoder.conv1.weight']
    assert torch.nn.functional.cosine_similarity(start.flatten(), end.flatten(), 0) > 0.99


def test_paper_variant_drops_the_flow_branch(pretrained, tmp_path):
    out = tmp_path / 'paper'
    assert run(finetune, ['--init', str(pretrained), '--data', 'synthetic:day:5:4',
                          '--supervised', '--paper-variant', '--depth-gradient-weight', '0.5',
                          '--steps', '1', '--out', str(out)] + TINY) == 0
    payload = read_checkpoint(out / 'last.pt')
    assert set(payload['modules']) == {'structure_encoder', 'depth_decoder'}
    # The gradient matching term was trained (and is part of the supervised loss).
    metrics = json.loads((out / 'summary.json').read_text())['final_metrics']
    assert metrics['depth_gradient'] > 0
    assert metrics['loss_depth_supervised'] > 0.5 * metrics['depth_gradient']


def test_finetune_refuses_wrong_architecture_and_missing_loss(tmp_path, capsys):
    other = save_checkpoint(tmp_path / 'r50.pt',
                            build_model(ModelConfig(encoder='resnet50', height=64, width=96)))
    argv = ['--data', 'synthetic:day:4:1', '--steps', '1', '--out', str(tmp_path / 'x')] + TINY
    assert run(finetune, ['--init', str(other), '--supervised'] + argv) == 2
    assert 'resnet50' in capsys.readouterr().err
    assert run(finetune, ['--scratch'] + argv) == 2
    assert '--supervised, --self-supervised and/or --teacher' in capsys.readouterr().err
    assert run(finetune, ['--scratch', '--supervised', '--data', 'clip.mp4', '--steps', '1',
                          '--out', str(tmp_path / 'y')] + TINY) == 2
    assert 'synthetic:DOMAIN' in capsys.readouterr().err
    assert run(finetune, ['--scratch', '--self-supervised', '--depth-gradient-weight', '0.5',
                          '--data', 'synthetic:day:4:1', '--steps', '1',
                          '--out', str(tmp_path / 'z')] + TINY) == 2
    assert 'add --supervised' in capsys.readouterr().err


def test_self_supervised_finetune_trains_the_pose_network(tmp_path):
    out = tmp_path / 'selfsup'
    assert run(finetune, ['--scratch', '--data', 'synthetic:day:5:5', '--self-supervised',
                          '--steps', '2', '--log-every', '1', '--out', str(out)] + TINY) == 0
    payload = read_checkpoint(out / 'last.pt')
    assert 'pose_net' in payload['modules']
    history = (out / 'history.jsonl').read_text().splitlines()
    assert all(json.loads(line)['loss_depth_selfsup'] > 0 for line in history)


@pytest.fixture(scope='module')
def finetuned(pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp('finetune')
    assert run(finetune, ['--init', str(pretrained), '--data', 'synthetic:day:5:6',
                          '--supervised', '--steps', '1', '--out', str(out)] + TINY) == 0
    return out / 'last.pt'


def test_pretrain_checkpoint_holds_only_what_pretraining_trained(pretrained, capsys):
    assert read_checkpoint(pretrained)['modules'] == list(pretrain.FLOW_MODULES)
    with pytest.raises(ValueError, match="no weights for 'depth_decoder'"):
        load_model(pretrained)


def test_export_then_evaluate(finetuned, tmp_path):
    served = tmp_path / 'served.pt'
    assert run(export, ['--weights', str(finetuned), '--out', str(served),
                        '--note', 'purpose=test']) == 0
    payload = read_checkpoint(served)
    assert payload['weights_dtype'] == 'float16' and 'optimizer' not in payload
    assert payload['extra']['purpose'] == 'test'
    assert served.stat().st_size < 0.6 * finetuned.stat().st_size
    model, _ = load_model(served)
    assert 'pose_net' not in model.module_names()
    report_dir = tmp_path / 'eval'
    assert run(evaluate, ['--weights', str(served), '--synthetic', 'fog:4:9', '--device', 'cpu',
                          '--out', str(report_dir)]) == 0
    report = json.loads((report_dir / 'metrics.json').read_text())
    depth = report['depth']['synthetic_fog']
    assert depth['model']['frames'] == 4 and depth['floor']['frames'] == 4
    assert 0 < depth['model']['abs_rel'] < 10
    flow = report['flow']['synthetic_fog']
    assert set(flow) == {'model', 'zero', 'farneback', 'dis'}
    # Classical flow beats zero flow on the synthetic drive (a sanity check of the GT).
    assert flow['dis']['epe'] < flow['zero']['epe']
    assert (report_dir / 'synthetic_fog_best_worst.png').stat().st_size > 1000


def test_evaluate_input_jpeg_serves_compressed_frames(finetuned, tmp_path, capsys):
    reports = {}
    for label, extra in (('raw', []), ('q100', ['--input-jpeg', '100']),
                         ('q5', ['--input-jpeg', '5'])):
        out = tmp_path / label
        assert run(evaluate, ['--weights', str(finetuned), '--synthetic', 'fog:4:9',
                              '--no-flow', '--device', 'cpu', '--out', str(out)] + extra) == 0
        reports[label] = json.loads((out / 'metrics.json').read_text())
    assert reports['raw']['input_jpeg'] is None and reports['q5']['input_jpeg'] == 5
    depth = {label: r['depth']['synthetic_fog'] for label, r in reports.items()}
    # The ground truth is the same; only what the network sees changes.
    assert depth['q5']['floor'] == depth['raw']['floor'] == depth['q100']['floor']
    raw, q100, q5 = (depth[k]['model']['abs_rel'] for k in ('raw', 'q100', 'q5'))
    assert abs(q100 - raw) < abs(q5 - raw) and q5 != raw
    assert run(evaluate, ['--weights', str(finetuned), '--synthetic', 'fog:2:9', '--no-flow',
                          '--input-jpeg', '0', '--out', str(tmp_path / 'bad')]) == 2
    assert 'JPEG quality in 1-100, got 0' in capsys.readouterr().err


def test_evaluate_missing_weights_is_a_clear_error(tmp_path, capsys):
    assert run(evaluate, ['--weights', str(tmp_path / 'none.pt'), '--out', str(tmp_path)]) == 2
    assert 'checkpoint not found' in capsys.readouterr().err


def test_evaluate_real_frames(shared_data, finetuned, tmp_path):
    report_dir = tmp_path / 'real'
    assert run(evaluate, ['--weights', str(finetuned), '--synthetic', '--real', '--device',
                          'cpu', '--shared-data', str(shared_data), '--out',
                          str(report_dir)]) == 0
    report = json.loads((report_dir / 'metrics.json').read_text())
    # Every real source in its own row, with its own cap and crop.
    assert set(report['depth']) == {
        'real_kitti_depth', 'real_kitti_object', 'real_kitti2015', 'real_nuscenes',
        'real_argoverse', 'real_nyu_depth', 'real_nyu_diningroom', 'real_tum',
        'real_middlebury'}
    assert report['depth']['real_kitti_depth']['garg_crop'] is True
    assert report['depth']['real_nuscenes']['model']['frames'] == 6
    assert report['depth']['real_tum']['max_depth'] == 10.0
    assert report['depth']['real_argoverse']['max_depth'] == 80.0
    # One constant depth orders no pixel pair: the ordinal error of every floor is chance.
    assert {name: entry['floor']['ordinal_error'] for name, entry in report['depth'].items()} \
        == {name: 0.5 for name in report['depth']}
    assert 0.0 <= report['pooled']['real_indoor']['model']['ordinal_error'] <= 1.0
    outdoor = report['pooled']['real_outdoor']
    assert outdoor['model']['frames'] == 12 and report['pooled']['real_indoor']['model'][
        'frames'] == 16
    # The pooled row is the per-frame mean over the outdoor sets.
    frames = [f['abs_rel'] for name in outdoor['sets']
              for f in report['depth'][name]['per_frame']]
    assert outdoor['model']['abs_rel'] == pytest.approx(sum(frames) / len(frames))
    # The labelled cars of KITTI object 000008 within 15 m (3.7, 6.2, 7.9, 14.4 m) are
    # checked for sharpness.
    kitti_cars = sorted(c['depth_m'] for c in report['near_vehicles'] if c['frame'] == '000008')
    assert kitti_cars == pytest.approx([3.68, 6.15, 7.86, 14.44], abs=0.01)
    sheet = report_dir / 'real_sheet.png'
    assert sheet.stat().st_size > 10000
    rubber = report['flow']['real_rubberwhale']
    assert rubber['zero']['epe'] == pytest.approx(1.256, abs=0.01)


def test_pretrain_reports_flow_epe_on_held_out_sets(shared_data, tmp_path):
    out = tmp_path / 'pe'
    assert run(pretrain, ['--data', 'synthetic:day:6:1', '--eval', 'synthetic:fog:3:2',
                          'rubberwhale', '--steps', '1', '--out', str(out)] + TINY) == 0
    final = json.loads((out / 'summary.json').read_text())['final_metrics']
    assert final['eval/zero_flow_epe/rubberwhale'] == pytest.approx(1.256, abs=0.01)
    assert final['eval/flow_epe/fog'] > 0 and final['eval/flow_epe/rubberwhale'] > 0


def test_export_onnx_runs_in_onnxruntime_like_the_model(finetuned, tmp_path):
    ort = pytest.importorskip('onnxruntime', reason='onnxruntime (requirements.txt) not installed')
    path = tmp_path / 'depth.onnx'
    assert run(export, ['--weights', str(finetuned), '--onnx', str(path), '--size', '128x64']) == 0
    model, _ = load_model(finetuned)
    image = torch.rand(1, 3, 64, 128)
    with torch.inference_mode():
        expected = model.float().eval()(image)['disp'][0].numpy()
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (got,) = session.run(None, {'image': image.numpy()})
    assert got.shape == (1, 1, 64, 128)
    assert float(abs(got - expected).max()) < 1e-4
    assert run(export, ['--weights', str(finetuned), '--onnx', str(path), '--size', '100x64']) == 2
