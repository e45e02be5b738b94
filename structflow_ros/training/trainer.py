"""The offline training loop shared by `structflow pretrain` and `structflow finetune`.

It owns what is not the step itself: devices and DDP, freezing, the optimizer and its schedule,
resumable checkpoints, divergence handling, logging and the JSON summary. The step is
`structflow_ros.core.training.train_step`, the same one online adaptation calls.
"""
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from structflow_ros.core.checkpoint import (CheckpointError, load_state_strict, read_checkpoint,
                                            save_checkpoint)
from structflow_ros.core.inference import resolve_device
from structflow_ros.core.training import make_optimizer, resolve_precision, train_step
from structflow_ros.training import distributed

LAST_CHECKPOINT = 'last.pt'
# The exponential moving average of the weights (LoopConfig.ema_decay), written beside last.pt.
EMA_CHECKPOINT = 'ema.pt'


class TrainingStopped(RuntimeError):
    """Training gave up (e.g. persistent non-finite losses); the last good checkpoint is kept."""


@dataclass
class LoopConfig:
    """How long and how to train; stored in every checkpoint so a run describes itself."""

    steps: int = 2000
    batch_size: int = 4
    lr: float = 1e-4
    # Divide the learning rate by 10 for the last part of training (monodepth2's schedule).
    lr_drop_fraction: float = 0.75
    checkpoint_every: int = 250
    log_every: int = 25
    eval_every: int = 0
    seed: int = 0
    device: str = 'auto'
    # 0 keeps torch's default thread count.
    threads: int = 0
    # Forward precision: auto (bfloat16 where the CPU/GPU computes it natively, else float32),
    # float32, bfloat16 or float16 (CUDA). bf16 on a CPU with AVX512-BF16: 1.6x faster steps.
    precision: str = 'auto'
    # Consecutive skipped (non-finite) steps tolerated before training stops.
    max_bad_steps: int = 10
    # Keep an exponential moving average of the weights with this decay (0: off) and write it
    # to ema.pt. Why: one run's checkpoints differ a lot on held-out data (measured: held-out
    # fog AbsRel 0.34, 0.62, 0.64, 0.57 at steps 500-2000 of one finetuning); the average over
    # the last ~1/(1 - decay) steps does not depend on where the last step happened to land.
    ema_decay: float = 0.0
    out_dir: str = 'runs/train'
    resume: bool = False
    progress: bool = True


@dataclass
class RunSpec:
    """What this run trains and on what, for checkpoints and the summary."""

    stage: str
    trained_on: list = field(default_factory=list)
    trainable_modules: tuple = ()
    # Modules written to checkpoints (default: all). Pretraining leaves the depth decoder
    # untrained, so it stores only the flow modules rather than random depth weights.
    saved_modules: tuple = None
    extra: dict = field(default_factory=dict)


def _to_device(batch, device):
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


def _plain(values):
    """JSON-safe copy (dtypes, paths -> str) so checkpoints load with weights_only=True."""
    return json.loads(json.dumps(values, default=str))


def _atomic_write_json(path, payload):
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.tmp')
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


class Trainer:
    """Runs `train_step` for `loop.steps` steps on `make_batches(rank, world_size)` batches."""

    def __init__(self, model, make_batches, loop: LoopConfig, step_config, run: RunSpec,
                 evaluate=None, log=print):
        self.loop, self.step_config, self.run_spec = loop, step_config, run
        self.make_batches, self.evaluate, self.log = make_batches, evaluate, log
        device = resolve_device(loop.device)
        self.dist = distributed.init_distributed(device)
        self.device = distributed.device_for_rank(device, self.dist)
        if loop.threads:
            torch.set_num_threads(loop.threads)
        # Tiny weights/gradients become denormal floats late in training; on the CPU they make
        # convolutions many times slower. Flushing them to zero changes nothing measurable.
        torch.set_flush_denormal(True)
        torch.manual_seed(loop.seed + self.dist.rank)
        # channels_last halves the convolution time of a training step on the CPU (measured
        # 1.23 s -> 0.55 s for the flow branch at 320x96, batch 4) and helps on CUDA too.
        self.model = model.to(self.device, memory_format=torch.channels_last)
        unknown = [m for m in run.trainable_modules if m not in model.module_names()]
        if unknown:
            raise ValueError(f'cannot train {unknown}: the model has {model.module_names()}')
        for name in model.module_names():
            getattr(model, name).requires_grad_(name in run.trainable_modules)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError('nothing to train: no trainable module selected')
        self.optimizer = make_optimizer(params, loop.lr, self.device)
        self.step_config = dataclasses.replace(
            step_config, precision=resolve_precision(loop.precision, self.device))
        self.scaler = (torch.amp.GradScaler(self.device.type)
                       if self.step_config.precision == 'float16' else None)
        self.out_dir = Path(loop.out_dir)
        self.step = 0
        self.history = []
        if not 0.0 <= loop.ema_decay < 1.0:
            raise ValueError(f'ema_decay must be in [0, 1) (0 turns the average off), '
                             f'got {loop.ema_decay}')
        if loop.resume:
            self._resume()
        self.ema_model, self._ema_pairs = None, ()
        if loop.ema_decay:
            self.ema_model = self._start_ema()
            # (average, current) tensor pairs, gathered once: both models keep their tensors
            # for the whole run, so each step updates them in place.
            self._ema_pairs = tuple(zip(self.ema_model.state_dict().values(),
                                        self.model.state_dict().values()))
        self.train_model = self.model
        if self.dist.enabled:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=True)

    @property
    def checkpoint_path(self):
        return self.out_dir / LAST_CHECKPOINT

    def _resume(self):
        path = self.checkpoint_path
        if not path.exists():
            self.log(f'--resume: no checkpoint at {path}, starting from step 0')
            return
        payload = read_checkpoint(path)
        if payload['model_config'] != self.model.config:
            raise CheckpointError(f'cannot resume from {path}: it was trained with '
                                  f"{payload['model_config']}, this run uses {self.model.config}")
        load_state_strict(self.model, payload['state_dict'], payload.get('modules'),
                          source=f'checkpoint {path}')
        if 'optimizer' in payload:
            self.optimizer.load_state_dict(payload['optimizer'])
        self.step = int(payload['step'])
        self.log(f'resumed from {path} at step {self.step}')

    @property
    def ema_path(self):
        return self.out_dir / EMA_CHECKPOINT

    def _start_ema(self):
        """The averaged copy: ema.pt when it belongs to the step resumed from, else the weights
        as they are now (a fresh run, or an average that was lost with an interrupted write)."""
        # The copy keeps the requires_grad flags: evaluation may take gradients of it (finetune's
        # depth/flow gradient cosine); the optimizer never sees its parameters.
        ema_model = copy.deepcopy(self.model)
        ema_model.eval()
        if self.loop.resume and self.step and self.ema_path.exists():
            payload = read_checkpoint(self.ema_path)
            if int(payload['step']) == self.step and payload['model_config'] == self.model.config:
                load_state_strict(ema_model, payload['state_dict'], payload.get('modules'),
                                  source=f'checkpoint {self.ema_path}')
                self.log(f'resumed the weight average from {self.ema_path}')
            else:
                self.log(f"WARNING: {self.ema_path} is from step {payload['step']}, not "
                         f'{self.step}; the weight average restarts from the current weights')
        return ema_model

    @torch.no_grad()
    def _update_ema(self):
        # Warm-up (as in TensorFlow's ExponentialMovingAverage with num_updates): early on the
        # average follows the weights, so it is not anchored to the initial ones.
        decay = min(self.loop.ema_decay, (1 + self.step) / (10 + self.step))
        for averaged, current in self._ema_pairs:
            if averaged.is_floating_point():
                averaged.lerp_(current.detach(), 1.0 - decay)
            else:  # counters (batch-norm steps) are copied, not averaged
                averaged.copy_(current)

    def _lr_for(self, step):
        drop = step >= int(self.loop.steps * self.loop.lr_drop_fraction)
        return self.loop.lr * (0.1 if drop else 1.0)

    def save(self, metrics=None):
        """Rank 0 writes last.pt atomically; a failed write (disk full) keeps the previous one."""
        if not self.dist.is_main:
            return None
        train_config = _plain({'loop': asdict(self.loop), 'step': asdict(self.step_config),
                               **self.run_spec.extra})
        try:
            if self.ema_model is not None:
                # Written first: a crash between the two writes leaves ema.pt a step ahead,
                # which resume notices (_start_ema) instead of pairing mismatched files.
                save_checkpoint(
                    self.ema_path, self.ema_model, step=self.step, stage=self.run_spec.stage,
                    trained_on=self.run_spec.trained_on, metrics=metrics,
                    train_config=train_config, extra={'weights': 'ema',
                                                      'ema_decay': self.loop.ema_decay},
                    modules=self.run_spec.saved_modules)
            return save_checkpoint(
                self.checkpoint_path, self.model, step=self.step, stage=self.run_spec.stage,
                trained_on=self.run_spec.trained_on, metrics=metrics,
                train_config=train_config, optimizer_state=self.optimizer.state_dict(),
                modules=self.run_spec.saved_modules)
        except OSError as error:
            self.log(f'WARNING: could not write checkpoint at step {self.step} ({error}); '
                     f'the previous checkpoint {self.checkpoint_path} is kept')
            return None

    def run(self):
        loop = self.loop
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        batches = iter(self.make_batches(self.dist.rank, self.dist.world_size))
        progress = None
        if loop.progress and self.dist.is_main:
            from tqdm import tqdm
            progress = tqdm(total=loop.steps, initial=self.step, desc=self.run_spec.stage,
                            unit='step', dynamic_ncols=True)
        self.model.train()
        bad_steps, started, running = 0, time.time(), {}
        last_metrics = {}
        try:
            while self.step < loop.steps:
                for group in self.optimizer.param_groups:
                    group['lr'] = self._lr_for(self.step)
                batch = _to_device(next(batches), self.device)
                metrics = train_step(self.train_model, batch, self.optimizer, self.step_config,
                                     scaler=self.scaler, step=self.step)
                skipped = bool(metrics.get('skipped'))
                if distributed.broadcast_flag(skipped, self.dist):
                    bad_steps += 1
                    if bad_steps >= loop.max_bad_steps:
                        raise TrainingStopped(
                            f'stopped at step {self.step}: {bad_steps} consecutive steps with a '
                            'non-finite loss or gradient '
                            f"({metrics.get('skip_reason', 'on another rank')}); "
                            f'the last good checkpoint is kept at {self.checkpoint_path}')
                    continue
                bad_steps = 0
                self.step += 1
                if self.ema_model is not None:
                    self._update_ema()
                for key, value in metrics.items():
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        running.setdefault(key, []).append(float(value))
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
                if self.step % loop.log_every == 0 or self.step == loop.steps:
                    last_metrics = {k: distributed.all_reduce_mean(sum(v) / len(v), self.dist)
                                    for k, v in sorted(running.items())}
                    last_metrics.update(step=self.step, lr=self._lr_for(self.step - 1),
                                        elapsed_s=round(time.time() - started, 1))
                    running = {}
                    if loop.eval_every and self.evaluate is not None and (
                            self.step % loop.eval_every == 0 or self.step == loop.steps):
                        if self.dist.is_main:
                            self.model.eval()
                            last_metrics.update({f'eval/{k}': v for k, v in
                                                 self.evaluate(self.model).items()})
                            if self.ema_model is not None:
                                self.ema_model.eval()
                                last_metrics.update({f'eval_ema/{k}': v for k, v in
                                                     self.evaluate(self.ema_model).items()})
                            self.model.train()
                    self.history.append(last_metrics)
                    if self.dist.is_main:
                        with open(self.out_dir / 'history.jsonl', 'a') as handle:
                            handle.write(json.dumps(last_metrics) + '\n')
                if self.step % loop.checkpoint_every == 0 or self.step == loop.steps:
                    self.save(last_metrics)
        finally:
            if progress is not None:
                progress.close()
        summary = {
            'stage': self.run_spec.stage, 'steps': self.step, 'world_size': self.dist.world_size,
            'wall_time_s': round(time.time() - started, 1),
            'checkpoint': str(self.checkpoint_path),
            'ema_checkpoint': str(self.ema_path) if self.ema_model is not None else None,
            'trained_on': self.run_spec.trained_on, 'final_metrics': last_metrics,
            'model_config': self.model.config.to_dict(), 'loop': asdict(loop),
        }
        if self.dist.is_main:
            _atomic_write_json(self.out_dir / 'summary.json', summary)
        return summary

    def close(self):
        distributed.cleanup(self.dist)
