"""On-robot adaptation: a thread keeps training the structure encoder on the live camera's pairs,
a depth-aware gate decides, accepted versions go to the server and to disk.

No ROS: the node, replay and `structflow bench adapt` drive the same object. The adapter owns
two modules and never shares them (the server builds its own from what is published):
- the *training copy* (full Y model: encoder, depth decoder, flow branch), BatchNorm statistics
  frozen (the module stays in eval mode: one robot's few hundred frames must not rewrite the
  source statistics), only `config.trainable` parameters get gradients;
- the *accepted copy*: the weights of the last accepted version (the one serving), what
  candidates are judged against and what the training copy rolls back to.

One cycle: `steps_per_candidate` calls of the project's `train_step` on batches from the pair
buffer (flow loss; a `source_replay` share of steps on synthetic source-domain pairs with their
depth, which holds the source domain), L2-SP toward the base weights; then the gate scores the
candidate on held-out pairs (and the source probe). Accepted: published to the weight store
(the server swaps it in between two frames) and saved atomically to the state directory.
Refused `refusals_before_rollback` times in a row, or any non-finite weight: the training copy
returns to the accepted weights (a rollback; serving never notices).

CPU budget: the thread runs torch on `threads` threads and sleeps after each step so that it is
busy only `duty_cycle` of the time; on CUDA it uses its own stream.
"""
import contextlib
import copy
import math
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from structflow_ros.core.config import ModelConfig
from structflow_ros.core.inference import DepthPredictor
from structflow_ros.core.networks import build_model, disp_to_depth, normalize_image
from structflow_ros.core.training import (L2SP, TRAINABLE_CHOICES, TrainStepConfig,
                                          make_optimizer, resolve_precision, set_trainable,
                                          train_step)
from structflow_ros.core.checkpoint import load_state_strict
from structflow_ros.online.probe import check_predictor
from structflow_ros.online.gate import (DepthGate, ForgettingProbe, GateConfig, ScoringPairs,
                                        rigid_reprojection_error)
from structflow_ros.online.state_dir import (AdaptationStateDir, CameraIdentity,
                                             camera_mismatch, weights_fingerprint)

ADAPTER_THREAD_NAME = 'structflow-adapter'


@dataclass
class AdapterConfig:
    """What adapts, how fast, how it is judged and how much CPU it may take."""

    # Defaults from the trade-off study (docs/adaptation.md): BatchNorm affine parameters of
    # the structure encoder only (TENT-like: 9.6 k of 11 M parameters), flow loss, a third of
    # each batch synthetic source pairs with their flow loss only. Measured on the fog stream
    # after 60 steps: fog AbsRel -30 % with source (day) +3 %; the whole encoder at lr 1e-4
    # gave -30 % fog with +66 % day, and supervising the source pairs' depth made fog worse.
    trainable: str = 'norm_affine'
    lr: float = 1e-3
    batch_size: int = 4
    steps_per_candidate: int = 20
    # L2-SP toward the base weights: weight * sum (theta - theta_base)^2.
    l2sp_weight: float = 0.0
    # Share of each batch that is synthetic source-domain pairs (flow loss; with source_depth
    # also their supervised depth): holds the source domain. 0 = live pairs only.
    source_replay: float = 0.33
    source_depth: bool = False
    # With the camera's intrinsics (camera_info): weight of the calibrated self-supervised depth
    # loss on live pairs (photometric reprojection through the depth, the motion fitted to DIS
    # flow; gate.rigid_reprojection_error). 0 = calibration-free (flow loss only).
    reprojection_weight: float = 0.0
    source_domains: tuple = ('day', 'dusk', 'overcast')
    source_frames_per_domain: int = 24
    recent_fraction: float = 0.5  # of a live batch, from the newest pairs
    duty_cycle: float = 0.5  # fraction of wall time the thread may compute
    threads: int = 1  # torch threads of the adapter thread (CPU)
    precision: str = 'auto'
    min_train_pairs: int = 8
    refusals_before_rollback: int = 3
    source_probe: bool = True
    gate: GateConfig = field(default_factory=GateConfig)
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.gate, dict):
            self.gate = GateConfig(**self.gate)
        if self.trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable {self.trainable!r} is not one of "
                             f"{', '.join(TRAINABLE_CHOICES)}")
        checks = {'lr': self.lr > 0 and math.isfinite(self.lr),
                  'batch_size': isinstance(self.batch_size, int) and self.batch_size >= 1,
                  'steps_per_candidate': isinstance(self.steps_per_candidate, int)
                  and self.steps_per_candidate >= 1,
                  'l2sp_weight': math.isfinite(self.l2sp_weight) and self.l2sp_weight >= 0,
                  'reprojection_weight': math.isfinite(self.reprojection_weight)
                  and self.reprojection_weight >= 0,
                  'source_replay': 0 <= self.source_replay < 1,
                  'recent_fraction': 0 <= self.recent_fraction <= 1,
                  'duty_cycle': 0 < self.duty_cycle <= 1,
                  'threads': isinstance(self.threads, int) and self.threads >= 0,
                  'min_train_pairs': isinstance(self.min_train_pairs, int)
                  and self.min_train_pairs >= 1,
                  'refusals_before_rollback': isinstance(self.refusals_before_rollback, int)
                  and self.refusals_before_rollback >= 1}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError('invalid adapter settings: ' + ', '.join(
                f'{name}={getattr(self, name)!r}' for name in bad) +
                ' (lr > 0, batch_size/steps_per_candidate/min_train_pairs/'
                'refusals_before_rollback integers >= 1, l2sp_weight >= 0, source_replay in '
                '[0, 1), recent_fraction in [0, 1], duty_cycle in (0, 1], threads >= 0)')


# The node's adapt_* parameters and the AdapterConfig fields they set (the node and replay
# build the adapter from the same parameters, so a replay with --adapt adapts as the robot does).
NODE_PARAMETERS = {'adapt_trainable': 'trainable', 'adapt_lr': 'lr',
                   'adapt_steps_per_candidate': 'steps_per_candidate',
                   'adapt_source_replay': 'source_replay',
                   'adapt_reprojection_weight': 'reprojection_weight',
                   'adapt_duty_cycle': 'duty_cycle', 'adapt_threads': 'threads'}


def adapter_config_from_node_parameters(parameters):
    """AdapterConfig from the node's parameter values ({name: value}; missing ones keep the
    defaults); `adapt_gate` is the gate criterion."""
    values = {field_name: parameters[name] for name, field_name in NODE_PARAMETERS.items()
              if name in parameters}
    gate = GateConfig(criterion=parameters.get('adapt_gate', GateConfig().criterion))
    return AdapterConfig(**values, gate=gate)


def network_intrinsics(K, image_size, network_size):
    """A camera's 3x3 K for an image of `image_size` (h, w), scaled to `network_size` (h, w);
    None when K is unusable (K all zeros: an uncalibrated camera, non-finite values)."""
    K = np.array(K, dtype=np.float64).reshape(3, 3)
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0):
        return None
    K[0] *= network_size[1] / image_size[1]
    K[1] *= network_size[0] / image_size[0]
    return K


class SourceRehearsal:
    """Synthetic source-domain pairs with frame 0's depth, rendered in-process once."""

    def __init__(self, height, width, domains, frames_per_domain, seed=7100):
        from structflow_ros.data.synthetic import render_sequence
        frames0, frames1, depths, valids = [], [], [], []
        for offset, domain in enumerate(domains):
            sequence = list(render_sequence(domain, frames_per_domain, height, width,
                                            seed=seed + offset))
            for first, second in zip(sequence[:-1], sequence[1:]):
                frames0.append(first.rgb)
                frames1.append(second.rgb)
                depths.append(np.where(first.depth_valid, first.depth, 0.0))
                valids.append(first.depth_valid)

        def to_tensor(images):
            return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        self.frame0, self.frame1 = to_tensor(frames0), to_tensor(frames1)
        self.depth = torch.from_numpy(np.stack(depths)).float().unsqueeze(1)  # (N, 1, H, W)
        self.valid = torch.from_numpy(np.stack(valids)).unsqueeze(1)

    def sample(self, batch_size, rng):
        index = torch.from_numpy(rng.integers(0, self.frame0.shape[0], batch_size))
        return {'frame0': self.frame0[index], 'frame1': self.frame1[index],
                'depth_gt': self.depth[index], 'depth_valid': self.valid[index]}


class OnlineAdapter:
    """See the module docstring. Thread-safe: the service calls (`set_enabled`, `reset`,
    `save`, `status`) may come from any thread while the adapter thread trains."""

    def __init__(self, base_state, model_config, store, buffer, config=None, device='cpu',
                 state_dir=None, resume=True, log=None, camera_K=None):
        self.config = config or AdapterConfig()
        if not isinstance(model_config, ModelConfig):
            model_config = ModelConfig.from_dict(dict(model_config))
        if not model_config.flow_branch:
            raise ValueError('online adaptation trains through the flow branch; these weights '
                             'have none (model_config.flow_branch is False)')
        self.model_config = ModelConfig.from_dict({**model_config.to_dict(),
                                                   'pose_branch': False})
        self.device = torch.device(device)
        self.store = store
        self.buffer = buffer
        self.camera_K = None if camera_K is None else np.asarray(camera_K, np.float64)
        self._live_pairs = None
        self._log = log or (lambda level, text: None)
        self._lock = threading.RLock()  # guards both modules and the optimiser
        self._enabled = threading.Event()
        self._enabled.set()
        self._stop = threading.Event()
        self._thread = None
        self._rng = np.random.default_rng(self.config.seed)
        self.step_config = TrainStepConfig(
            depth_selfsup_weight=0.0,
            precision=resolve_precision(self.config.precision, self.device))
        self.base_state = {name: tensor.detach().to('cpu', copy=True)
                           for name, tensor in base_state.items()}
        self.base_fingerprint = weights_fingerprint(self.base_state)
        self.state_dir = AdaptationStateDir(state_dir) if state_dir else None
        if self.state_dir is not None:
            self.state_dir.acquire()  # StateDirBusy (an OSError) when another process owns it
        self.counts = {'steps': 0, 'skipped_steps': 0, 'candidates': 0,
                       'accepted': 0, 'refused': 0, 'rollbacks': 0, 'saves': 0,
                       'save_failures': 0}
        self.last_decision = None
        self.last_refusal = ''
        self.last_error = ''
        self.last_metrics = {}
        self.phase = 'starting'
        self.served_version = store.version
        self.saved_path = ''
        self._steps_since_candidate = 0
        self._refusals_in_row = 0
        self.training_model = self._new_model(self.base_state).to(self.device)
        self.accepted_model = self._new_model(self.base_state).to(self.device)
        self.accepted_model.requires_grad_(False)
        self.camera = None  # CameraIdentity of the live camera, from observe_camera
        self.resumed = ''
        # A saved state is resumed only once the first frame has shown that it is this
        # camera's (observe_camera); until then the base weights serve and nothing trains.
        self._pending_resume = None
        if self.state_dir is not None and resume:
            saved, info = self.state_dir.load(self.base_fingerprint)
            if saved is None:
                self.resumed = info
            else:
                self._pending_resume = (saved, info)
                self.resumed = (f'a saved state in {self.state_dir.path} waits for the first '
                                'frame to show it is this camera\'s')
        self._new_optimizer()
        self.regularizer = None
        if self.config.l2sp_weight > 0:
            anchor = self._new_model(self.base_state)
            set_trainable(anchor, self.config.trainable)
            self.regularizer = L2SP(anchor, self.config.l2sp_weight)
        self.gate = None  # built in prepare(): the source probe renders frames
        self.source = None

    # ------------------------------------------------------------------------------------------
    # Building blocks
    # ------------------------------------------------------------------------------------------
    def _new_model(self, state_dict):
        model = build_model(self.model_config)
        load_state_strict(model, state_dict, model.module_names(), source='adaptation weights')
        return model.eval()  # BatchNorm statistics frozen, gradients still flow

    def _load_both(self, state_dict):
        for model in (self.training_model, self.accepted_model):
            load_state_strict(model, state_dict, model.module_names(), source='adapted state')

    def _new_optimizer(self):
        set_trainable(self.training_model, self.config.trainable)
        trainable = [p for p in self.training_model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(trainable, self.config.lr, self.device)

    def prepare(self):
        """Render the source probe and the source replay pairs (a few seconds, once)."""
        if self.gate is not None:
            return
        height, width = self.model_config.height, self.model_config.width
        probe = ForgettingProbe.synthetic(height, width) if self.config.source_probe else None
        base = self._new_model(self.base_state).to(self.device)
        self.gate = DepthGate(self.config.gate, probe, base)
        if self.config.source_replay > 0:
            self.source = SourceRehearsal(height, width, self.config.source_domains,
                                          self.config.source_frames_per_domain)

    # ------------------------------------------------------------------------------------------
    # Synchronous API (the thread, replay, benchmarks and tests call these)
    # ------------------------------------------------------------------------------------------
    def ready_to_train(self):
        return (self._pending_resume is None
                and len(self.buffer) >= self.config.min_train_pairs)

    @property
    def awaiting_camera(self):
        return self._pending_resume is not None

    def observe_camera(self, camera):
        """The live camera's identity (every frame; cheap when unchanged). The first one decides
        whether the saved state is resumed: only when it was adapted to this camera."""
        if camera == self.camera:
            return
        self.camera = camera
        if self._pending_resume is None:
            return
        saved, info = self._pending_resume
        self._pending_resume = None
        recorded = info['extra'].get('camera')
        why = camera_mismatch(CameraIdentity.from_dict(recorded), camera) if recorded else ''
        if why:
            self.resumed = (f'saved state {self.state_dir.path} not resumed: {why}; adapting '
                            'from the base weights (a save will replace it)')
            self._log('warning', self.resumed)
            return
        with self._lock:
            self._load_both(saved)
            self.counts['steps'] = info['step']
            self.served_version = self.store.publish(saved, {
                'model_config': self.model_config, 'path': str(self.state_dir.path),
                'stage': 'online_adaptation', 'step': info['step']})
        self.resumed = (f"resumed adapted version {info['version']} ({info['step']} adapter "
                        f'steps) from {self.state_dir.path}'
                        + ('' if recorded else ' (it records no camera: saved by an older '
                           'structflow)'))
        self._log('info', self.resumed)

    def train_step(self):
        """One step on a live batch (plus source replay pairs); returns its metrics, or None
        when the buffer has too few pairs."""
        self.prepare()
        if not self.ready_to_train():
            return None
        batch = self.buffer.sample(self.config.batch_size, self.config.recent_fraction)
        calibrated = self.config.reprojection_weight > 0 and self.camera_K is not None
        self._live_pairs = ScoringPairs.from_batch(batch, self.camera_K) if calibrated else None
        if self.source is not None:
            batch = self._with_source(batch)
        with self._lock:
            metrics = train_step(self.training_model, batch, self.optimizer, self.step_config,
                                 step=self.counts['steps'], regularizer=self._extra_terms)
            self.counts['steps'] += 1
            self._steps_since_candidate += 1
            if metrics.get('skipped'):
                self.counts['skipped_steps'] += 1
                self.last_error = metrics.get('skip_reason', '')
            if not self._weights_finite():
                self._rollback('non-finite weights after a step')
            self.last_metrics = metrics
        return metrics

    def _with_source(self, live):
        """Append source pairs (share `source_replay` of the batch) with their depth; live pairs
        have no depth (valid mask all false), so the supervised term sees only source pairs and
        the flow term sees all: one step serves both (multi-task, not alternating)."""
        share = self.config.source_replay
        count = max(1, int(round(live['frame0'].shape[0] * share / (1.0 - share))))
        source = self.source.sample(count, self._rng)
        if not self.config.source_depth:
            return {key: torch.cat([live[key], source[key]]) for key in ('frame0', 'frame1')}
        live_count, (height, width) = live['frame0'].shape[0], live['frame0'].shape[-2:]
        return {'frame0': torch.cat([live['frame0'], source['frame0']]),
                'frame1': torch.cat([live['frame1'], source['frame1']]),
                'depth_gt': torch.cat([torch.zeros(live_count, 1, height, width),
                                       source['depth_gt']]),
                'depth_valid': torch.cat([torch.zeros(live_count, 1, height, width,
                                                      dtype=torch.bool),
                                          source['depth_valid']])}

    def _extra_terms(self, model):
        """train_step's regulariser hook: L2-SP and, with intrinsics, the calibrated
        reprojection loss on the live pairs of this batch."""
        total, metrics = torch.zeros((), device=self.device), {}
        if self.regularizer is not None:
            term, metrics = self.regularizer(model)
            total = total + term
        pairs = self._live_pairs
        if pairs is not None:
            with self._autocast():
                disp = model(normalize_image(pairs.frame0.to(self.device)))['disp'][0]
            rho = disp_to_depth(disp.float(), self.model_config.min_depth,
                                self.model_config.max_depth)[0]
            error, in_view = rigid_reprojection_error(rho, pairs.frame0.to(self.device),
                                                      pairs.frame1.to(self.device),
                                                      pairs.flow.to(self.device),
                                                      pairs.K.to(self.device))
            loss = (error * in_view).sum() / in_view.sum().clamp_min(1)
            total = total + self.config.reprojection_weight * loss
            metrics['reprojection'] = float(loss.detach())
        return total, metrics

    def _autocast(self):
        dtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}.get(
            self.step_config.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def set_camera(self, K, image_size):
        """Intrinsics of the camera (3x3, for an image of `image_size` (h, w)) scaled to the
        network size; enables the calibrated loss when its weight is > 0."""
        self.camera_K = network_intrinsics(
            K, image_size, (self.model_config.height, self.model_config.width))

    def _weights_finite(self):
        return all(bool(torch.isfinite(p).all()) for p in self.training_model.parameters()
                   if p.requires_grad)

    def _rollback(self, why):
        with self._lock:
            state = self.accepted_model.state_dict()
            load_state_strict(self.training_model, state, self.training_model.module_names(),
                              source='accepted weights')
            self._new_optimizer()
            self.counts['rollbacks'] += 1
            self._refusals_in_row = 0
            self._steps_since_candidate = 0
            self.last_error = f'rolled back to version {self.served_version}: {why}'
        self._log('warning', f'adaptation {self.last_error}')

    def held_out_pairs(self):
        batch = self.buffer.holdout()
        return None if batch is None else ScoringPairs.from_batch(batch, self.camera_K)

    def propose(self):
        """Judge the training copy now; publish and save it when the gate accepts."""
        self.prepare()
        pairs = self.held_out_pairs()
        with self._lock:
            self.counts['candidates'] += 1
            self._steps_since_candidate = 0
            decision = self.gate.judge(self.accepted_model, self.training_model, pairs)
            self.last_decision = decision
            if decision.accepted:
                self.accepted_model.load_state_dict(self.training_model.state_dict())
                self.counts['accepted'] += 1
                self._refusals_in_row = 0
                state = self.accepted_model.state_dict()
                self.served_version = self.store.publish(state, {
                    'model_config': self.model_config, 'path': 'online adaptation',
                    'stage': 'online_adaptation', 'step': self.counts['steps']})
            else:
                self.counts['refused'] += 1
                self._refusals_in_row += 1
                self.last_refusal = decision.reason
        if decision.accepted:
            self._log('info', f'adaptation: accepted version {self.served_version}: '
                              f'{decision.reason}')
            self._save_accepted()
        else:
            self._log('info', f'adaptation: candidate refused: {decision.reason}')
            if 'not finite' in decision.reason:
                self._rollback(decision.reason)
            elif self._refusals_in_row >= self.config.refusals_before_rollback:
                self._rollback(f'{self._refusals_in_row} candidates refused in a row')
        return decision

    def cycle(self):
        """`steps_per_candidate` steps, then a gate decision (None when no pairs yet)."""
        for _ in range(self.config.steps_per_candidate):
            if self.train_step() is None:
                return None
        return self.propose()

    def _save_accepted(self):
        if self.state_dir is None:
            return ''
        try:
            with self._lock:
                path = self.state_dir.save(
                    self.accepted_model, store_version=self.served_version,
                    step=self.counts['steps'], base_fingerprint=self.base_fingerprint,
                    metrics=self.last_decision.as_dict() if self.last_decision else {},
                    extra={'adapter_config': _plain(asdict(self.config))},
                    camera=self.camera)
        except OSError as error:
            self.counts['save_failures'] += 1
            self.last_error = (f'could not save version {self.served_version} to '
                               f'{self.state_dir.path}: {error}; the previous saved state is '
                               'unchanged')
            self._log('error', self.last_error)
            return ''
        self.counts['saves'] += 1
        self.saved_path = str(path)
        return self.saved_path

    # ------------------------------------------------------------------------------------------
    # Service calls
    # ------------------------------------------------------------------------------------------
    def set_enabled(self, enabled):
        (self._enabled.set if enabled else self._enabled.clear)()
        return 'adaptation ' + ('resumed' if enabled else 'paused')

    @property
    def enabled(self):
        return self._enabled.is_set()

    def set_lr(self, lr):
        """A new learning rate from the next step on (a live parameter). Too large a rate makes
        candidates diverge: those are rolled back or refused, serving is unaffected."""
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f'learning rate must be finite and > 0, got {lr}')
        with self._lock:
            self.config.lr = float(lr)
            for group in self.optimizer.param_groups:
                group['lr'] = float(lr)
        return f'adaptation learning rate {lr:g}'

    def reset(self):
        """Back to the base weights: both copies, the optimiser, the server, the saved state.

        Returns (ok, message), as `save` does. A saved state that cannot be deleted (a
        read-only mount, a directory in its place) leaves the base weights serving and says so
        with ok False: the node must answer the service, not die (issue 28).
        """
        ok = True
        with self._lock:
            self._pending_resume = None  # a reset also means: do not resume the saved state
            self._load_both(self.base_state)
            self._new_optimizer()
            self._refusals_in_row = 0
            self._steps_since_candidate = 0
            self.served_version = self.store.publish(self.base_state, {
                'model_config': self.model_config, 'path': 'base weights (adaptation reset)',
                'stage': 'base'})
            removed = ''
            if self.state_dir is not None and self.state_dir.path.exists():
                try:
                    self.state_dir.path.unlink()
                    removed = f'; removed {self.state_dir.path}'
                except OSError as error:
                    ok = False
                    removed = (f'; but the saved state {self.state_dir.path} could not be '
                               f'removed ({error.strerror or error}): delete it by hand, or '
                               'a later start may resume it')
        message = f'adaptation reset to the base weights (version {self.served_version}){removed}'
        self._log('info' if ok else 'warning', message)
        return ok, message

    def rebase(self, state_dict, meta):
        """New base weights (a `~/reload_weights`): adaptation restarts from them, L2-SP
        anchors to them, they are published; returns their store version. Raises ValueError
        when they do not fit the adapter's model or cannot serve (NaN, constant depth: the
        probe frame), checked before anything changes."""
        candidate = build_model(self.model_config)
        try:
            load_state_strict(candidate, state_dict, candidate.module_names(),
                              source=f"weights {meta.get('path', '')}")
        except ValueError as error:
            raise ValueError(f'adaptation needs the full model (flow branch included): '
                             f'{error}') from None
        # The server would refuse NaN or degenerate weights anyway, but by then adaptation
        # would have rebased on them (and rolled back to them forever): probe them first.
        check_predictor(DepthPredictor(candidate.eval().to(self.device), self.device,
                                       input_size=(self.model_config.height,
                                                   self.model_config.width)))
        with self._lock:
            self.base_state = {name: tensor.detach().to('cpu', copy=True)
                               for name, tensor in state_dict.items()
                               if name.split('.', 1)[0] in candidate.module_names()}
            self.base_fingerprint = weights_fingerprint(self.base_state)
            self._pending_resume = None  # adapted from the old base: not for the new one
            self._load_both(self.base_state)
            self._new_optimizer()
            if self.regularizer is not None:
                anchor = self._new_model(self.base_state)
                set_trainable(anchor, self.config.trainable)
                self.regularizer = L2SP(anchor, self.config.l2sp_weight)
            if self.gate is not None:
                self.gate = DepthGate(self.config.gate, self.gate.probe,
                                      self._new_model(self.base_state).to(self.device))
            self._refusals_in_row = 0
            self._steps_since_candidate = 0
            self.served_version = self.store.publish(state_dict, meta)
        return self.served_version

    def save(self):
        """Write the accepted (serving) weights now; (ok, message)."""
        if self.state_dir is None:
            return False, 'no adaptation state directory is configured'
        path = self._save_accepted()
        if not path:
            return False, self.last_error
        return True, f'saved version {self.served_version} to {path}'

    def status(self):
        decision = self.last_decision
        buffer = self.buffer.stats()
        return {
            'adaptation_enabled': self.enabled, 'adaptation_phase': self.phase,
            'adaptation_steps': self.counts['steps'],
            'adaptation_skipped_steps': self.counts['skipped_steps'],
            'adaptation_candidates_accepted': self.counts['accepted'],
            'adaptation_candidates_refused': self.counts['refused'],
            'adaptation_rollbacks': self.counts['rollbacks'],
            'adaptation_saves': self.counts['saves'],
            'adaptation_save_failures': self.counts['save_failures'],
            'adaptation_pairs_buffered': buffer.get('recent', 0) + buffer.get('reservoir', 0),
            'adaptation_pairs_held_out': buffer.get('holdout', 0),
            'adaptation_pairs_static_skipped': buffer.get('static', 0),
            'adaptation_published_version': self.served_version,
            'adaptation_gate_criterion': self.config.gate.criterion,
            'adaptation_trainable': self.config.trainable,
            'adaptation_last_decision': decision.reason if decision else '',
            'adaptation_last_served_score': decision.served_score if decision else float('nan'),
            'adaptation_last_candidate_score':
                decision.candidate_score if decision else float('nan'),
            'adaptation_last_source_abs_rel':
                decision.source_abs_rel if decision else float('nan'),
            'adaptation_last_refusal': self.last_refusal,
            'adaptation_last_error': self.last_error,
            'adaptation_state_dir': str(self.state_dir.directory) if self.state_dir else '',
            'adaptation_state_file': self.saved_path,
            'adaptation_resumed': self.resumed,
        }

    # ------------------------------------------------------------------------------------------
    # The thread
    # ------------------------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name=ADAPTER_THREAD_NAME, daemon=True)
        self._thread.start()
        return self._thread

    def is_alive(self):
        return self._thread is not None and self._thread.is_alive()

    def _run(self):
        if self.device.type == 'cpu' and self.config.threads > 0:
            torch.set_num_threads(self.config.threads)  # this thread's OpenMP pool only
        stream = torch.cuda.Stream(self.device) if self.device.type == 'cuda' else None
        context = contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)
        try:
            self.phase = 'rendering the source probe'
            self.prepare()
            with context:
                self._loop()
        except Exception as error:  # noqa: BLE001 - say why adaptation stopped; serving goes on
            self.phase = 'stopped by an error'
            self.last_error = f'{type(error).__name__}: {error}'
            self._log('error', f'adaptation stopped: {self.last_error}; serving continues with '
                               f'version {self.served_version}')

    def _loop(self):
        while not self._stop.is_set():
            if not self._enabled.is_set():
                self.phase = 'paused'
                self._enabled.wait(0.2)
                continue
            if not self.ready_to_train():
                self.phase = 'waiting for moving-camera pairs'
                self._stop.wait(0.2)
                continue
            self.phase = 'training'
            started = time.perf_counter()
            self.train_step()
            if self._steps_since_candidate >= self.config.steps_per_candidate:
                self.phase = 'judging a candidate'
                self.propose()
            busy = time.perf_counter() - started
            # Sleep so that compute is duty_cycle of wall time (the serving thread's share).
            self._stop.wait(busy * (1.0 - self.config.duty_cycle) / self.config.duty_cycle)

    def stop(self):
        self._stop.set()
        self._enabled.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.state_dir is not None:
            self.state_dir.release()


def _plain(value):
    """Config dicts as plain values (tuples as lists) for a weights-only checkpoint."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return copy.copy(value)
