"""Offline training commands end to end at tiny sizes: pretrain, resume, divergence, DDP."""
import json
import os
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from structflow_ros.cli import pretrain
from structflow_ros.core import read_checkpoint

TINY = ['--height', '64', '--width', '64', '--batch-size', '2', '--device', 'cpu',
        '--no-progress', '--threads', '1']


def textured_frames(folder, count=8, size=(64, 64), shift=2):
    """A smooth random texture panning `shift` px per frame, written as PNGs."""
    rng = np.random.default_rng(0)
    height, width = size
    canvas = cv2.resize(rng.integers(0, 256, (24, 24 + count), dtype=np.uint8),
                        (width + count * shift + 8, height + 8), interpolation=cv2.INTER_CUBIC)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        grey = canvas[4:4 + height, index * shift:index * shift + width]
        rgb = np.stack([grey, np.roll(grey, 3, 0), 255 - grey], -1)
        cv2.imwrite(str(folder / f'frame{index}.png'), rgb)
    return folder


def run_pretrain(argv):
    parser = pretrain.get_args_parser()
    return pretrain.main(parser.parse_args(argv))


def test_pretrain_writes_resumable_self_describing_checkpoint(tmp_path, capsys):
    data = textured_frames(tmp_path / 'frames')
    out = tmp_path / 'run'
    assert run_pretrain(['--data', str(data), '--steps', '3', '--out', str(out),
                         '--checkpoint-every', '2', '--log-every', '1'] + TINY) == 0
    payload = read_checkpoint(out / 'last.pt')
    assert payload['step'] == 3 and payload['stage'] == 'pretrain'
    assert payload['trained_on'] == [str(data)]
    assert 'optimizer' in payload and payload['input_size'] == [64, 64]
    history = [json.loads(line) for line in (out / 'history.jsonl').read_text().splitlines()]
    assert [h['step'] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h['loss']) for h in history)
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['steps'] == 3
    # Resume continues from step 3 to 5 and keeps the weights it had.
    assert run_pretrain(['--data', str(data), '--steps', '5', '--out', str(out), '--resume',
                         '--log-every', '1'] + TINY) == 0
    assert 'resumed from' in capsys.readouterr().out
    assert read_checkpoint(out / 'last.pt')['step'] == 5
    history = [json.loads(line) for line in (out / 'history.jsonl').read_text().splitlines()]
    assert [h['step'] for h in history] == [1, 2, 3, 4, 5]


def test_weight_average_is_written_beside_last_and_resumes(tmp_path, capsys):
    """--ema: ema.pt holds the running average of the weights (decay 0.2 here, so each step
    keeps 0.2 of the old average and takes 0.8 of the new weights); resuming continues the
    same average rather than restarting it."""
    data = textured_frames(tmp_path / 'frames')
    out = tmp_path / 'run'
    argv = ['--data', str(data), '--out', str(out), '--ema', '0.2', '--lr', '1e-2',
            '--precision', 'float32'] + TINY
    steps = []
    for count in (1, 2, 3):
        assert run_pretrain(argv + ['--steps', str(count)] + (['--resume'] if count > 1 else [])
                            ) == 0
        steps.append((read_checkpoint(out / 'last.pt'), read_checkpoint(out / 'ema.pt')))
    assert 'resumed the weight average' in capsys.readouterr().out
    for (_, ema_before), (last, ema) in zip(steps, steps[1:]):
        assert ema['step'] == last['step'] and ema['extra']['weights'] == 'ema'
        assert 'optimizer' not in ema
        moved = 0
        for key, weights in last['state_dict'].items():
            if not weights.is_floating_point():
                continue
            expected = 0.2 * ema_before['state_dict'][key] + 0.8 * weights
            torch.testing.assert_close(ema['state_dict'][key], expected, atol=1e-6, rtol=1e-5)
            moved += not torch.equal(ema['state_dict'][key], weights)
        assert moved > 0  # an average, not a copy of the last weights
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['ema_checkpoint'] == str(out / 'ema.pt')
    assert run_pretrain(argv + ['--steps', '1', '--ema', '1.0', '--out',
                                str(tmp_path / 'bad')]) == 2
    assert 'ema_decay must be in [0, 1)' in capsys.readouterr().err


def test_bad_data_paths_are_refused_with_a_reason(tmp_path, capsys):
    assert run_pretrain(['--data', str(tmp_path / 'missing'), '--steps', '1',
                         '--out', str(tmp_path / 'r')] + TINY) == 2
    assert 'does not exist' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert run_pretrain(['--data', str(tmp_path / 'empty'), '--steps', '1',
                         '--out', str(tmp_path / 'r')] + TINY) == 2
    assert str(tmp_path / 'empty') in capsys.readouterr().err


def test_size_the_network_cannot_take_is_refused(tmp_path, capsys):
    data = textured_frames(tmp_path / 'frames')
    argv = ['--data', str(data), '--steps', '1', '--out', str(tmp_path / 'r'),
            '--height', '8', '--width', '64', '--device', 'cpu', '--no-progress']
    assert run_pretrain(argv) == 2
    assert 'height must be a multiple of 32 and >= 64' in capsys.readouterr().err


def test_non_finite_losses_stop_training_and_keep_last_good_checkpoint(tmp_path, monkeypatch,
                                                                      capsys):
    data = textured_frames(tmp_path / 'frames')
    out = tmp_path / 'run'
    assert run_pretrain(['--data', str(data), '--steps', '2', '--out', str(out)] + TINY) == 0
    good = read_checkpoint(out / 'last.pt')
    from structflow_ros.core import losses
    real_flow_loss = losses.flow_loss

    def exploding_flow_loss(*args, **kwargs):
        loss, metrics = real_flow_loss(*args, **kwargs)
        return loss * float('nan'), metrics
    monkeypatch.setattr('structflow_ros.core.training.flow_loss', exploding_flow_loss)
    code = run_pretrain(['--data', str(data), '--steps', '6', '--out', str(out), '--resume']
                        + TINY)
    assert code == 2
    err = capsys.readouterr().err
    assert 'stopped at step 2' in err and 'last good checkpoint' in err
    kept = read_checkpoint(out / 'last.pt')
    assert kept['step'] == 2
    for key, value in good['state_dict'].items():
        assert torch.equal(value, kept['state_dict'][key])


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_average_gradients(tmp_path):
    """torchrun with 2 CPU processes (gloo): the logged loss is the mean of the two ranks'
    losses and Adam's first moment holds the averaged (clipped) gradient of both batches."""
    from structflow_ros.core.training import TrainStepConfig, compute_losses
    from structflow_ros.training import datasets

    data = textured_frames(tmp_path / 'frames', count=10)
    out = tmp_path / 'ddp'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    # float32: the gradients are recomputed below in float32 (precision is not the subject).
    argv = ['--data', str(data), '--steps', '1', '--out', str(out), '--log-every', '1',
            '--seed', '3', '--lr', '1e-3', '--precision', 'float32'] + TINY
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_addr', '127.0.0.1', '--master_port', str(_free_port()),
         '-m', 'structflow_ros.cli', 'pretrain'] + argv,
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['world_size'] == 2
    logged = json.loads((out / 'history.jsonl').read_text().splitlines()[0])

    # Recompute both ranks' first batches and gradients in this process.
    args = pretrain.get_args_parser().parse_args(argv)
    config = read_checkpoint(out / 'last.pt')['model_config']
    torch.manual_seed(3)
    from structflow_ros.core.networks import build_model
    # Same memory format as the Trainer, so that the convolutions sum in the same order.
    model = build_model(config).to(memory_format=torch.channels_last).train()
    for name in model.module_names():
        getattr(model, name).requires_grad_(name in pretrain.FLOW_MODULES)
    params = [p for p in model.parameters() if p.requires_grad]
    step_config = TrainStepConfig(depth_supervised_weight=0.0, depth_selfsup_weight=0.0)
    losses, grads = [], []
    for rank in range(2):
        dataset = datasets.pair_dataset(args.data, 64, 64, args.seed)
        batch = next(datasets.infinite_batches(dataset, 2, args.seed, rank, 2))
        model.zero_grad(set_to_none=True)
        loss, _ = compute_losses(model, batch, step_config)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append([p.grad.clone() for p in params])
    assert logged['loss'] == pytest.approx(sum(losses) / 2, rel=1e-4)
    averaged = [(a + b) / 2 for a, b in zip(*grads)]
    norm = torch.sqrt(sum((g ** 2).sum() for g in averaged))
    clip = min(1.0, step_config.max_grad_norm / (float(norm) + 1e-6))
    state = read_checkpoint(out / 'last.pt')['optimizer']['state']
    beta1 = 0.9
    # The two processes run with another thread count and sum convolution gradients in
    # another order, so compare as vectors: relative error of the whole first moment.
    moment = torch.cat([state[i]['exp_avg'].reshape(-1) for i in range(len(averaged))])

    def relative_error(grads_list):
        expected = torch.cat([(1 - beta1) * clip * g.reshape(-1) for g in grads_list])
        return float((moment - expected).norm() / expected.norm())
    error_averaged = relative_error(averaged)
    error_rank0 = relative_error(grads[0])
    assert error_averaged < 1e-2, (error_averaged, error_rank0)
    assert error_rank0 > 10 * error_averaged, (error_averaged, error_rank0)


def test_resume_with_another_model_size_is_refused(tmp_path, capsys):
    data = textured_frames(tmp_path / 'frames')
    out = tmp_path / 'run'
    assert run_pretrain(['--data', str(data), '--steps', '1', '--out', str(out)] + TINY) == 0
    other_size = [a if a != '64' else '96' for a in TINY]
    assert run_pretrain(['--data', str(data), '--steps', '2', '--out', str(out), '--resume']
                        + other_size) == 2
    assert 'cannot resume' in capsys.readouterr().err


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    """A full disk during a checkpoint write (simulated: torch.save writes part of the file,
    then ENOSPC) leaves the previous checkpoint intact, no temp file, and training goes on."""
    import errno

    from structflow_ros.core import checkpoint
    data = textured_frames(tmp_path / 'frames')
    out = tmp_path / 'run'
    assert run_pretrain(['--data', str(data), '--steps', '1', '--out', str(out)] + TINY) == 0
    before = (out / 'last.pt').read_bytes()

    def full_disk_save(obj, handle, *args, **kwargs):
        handle.write(b'PK\x03\x04 partial')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(checkpoint.torch, 'save', full_disk_save)
    assert run_pretrain(['--data', str(data), '--steps', '3', '--out', str(out), '--resume',
                         '--checkpoint-every', '1'] + TINY) == 0
    assert 'No space left on device' in capsys.readouterr().out
    assert (out / 'last.pt').read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ['history.jsonl', 'last.pt', 'summary.json']
