"""The depth server: the served model, new weight versions converted aside, swapped between frames.

Pure PyTorch (no ROS), so the swap logic is testable without DDS, and the node, replay and the
benchmarks drive the same object. Only the depth path is built (structure encoder + depth
decoder); a state dict that also holds the flow branch or the pose network (what the adaptation
thread trains) serves just as well, a state dict that lacks a depth-path key or has a wrong
shape is refused (strict load).

Threads (sample-factory's trainer/server split: no module is ever shared between two threads):
- writers (`~/reload_weights`, the adaptation thread) publish state dicts to a
  VersionedWeightStore;
- the converter thread (`structflow-converter`) builds every newer version for the serving
  backend (an ONNX export and an OpenVINO compile take seconds) into a standby ServedModel;
- the serving thread calls `maybe_swap()` between two frames: one reference assignment, so each
  frame is computed entirely by one version and no frame waits for a conversion.
"""
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from structflow_ros.core.checkpoint import CheckpointError, load_state_strict, read_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.inference import DepthPredictor
from structflow_ros.core.networks import build_model
from structflow_ros.online.probe import (PROBE_BUDGET_S, NotServableError, check_servable,
                                        probe_frame)
from structflow_ros.paths import default_weights_path

SERVING_MODULES = ('structure_encoder', 'depth_decoder')


def resolve_weights_path(value):
    """The `weights` parameter as a path; '' = the shipped default model."""
    return Path(value).expanduser() if value else default_weights_path()


def build_serving_model(config, state_dict, device='cpu', source='weights'):
    """A fresh depth-only module with `state_dict` loaded strictly, in eval mode on `device`."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(dict(config))
    model = build_model(config, flow_branch=False, pose_branch=False)
    load_state_strict(model, state_dict, SERVING_MODULES, source=source)
    model.requires_grad_(False)
    return model.to(device).eval()


def read_serving_checkpoint(path):
    """Read and validate a checkpoint for serving: (state_dict, meta). Raises CheckpointError.

    The file is also loaded into a throw-away module, so a file that reads fine but does not fit
    the depth path is refused here, before it is published to anyone.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    state_dict = payload.pop('state_dict')
    payload.pop('optimizer', None)
    build_serving_model(payload['model_config'], state_dict, 'cpu', source=f'checkpoint {path}')
    payload['path'] = str(path)
    return state_dict, payload


ASPECTS = ('auto', 'keep', 'squash')


def keeps_aspect(aspect, meta):
    """Whether frames are served at their own aspect: 'keep', 'squash', or 'auto' = what the
    checkpoint was trained for (its export note serving=keep_aspect; older models were trained
    on frames squashed to the model size and are served that way)."""
    if aspect not in ASPECTS:
        raise ValueError(f"network aspect {aspect!r} is not one of {', '.join(ASPECTS)}")
    if aspect != 'auto':
        return aspect == 'keep'
    return (meta.get('extra') or {}).get('serving') == 'keep_aspect'


@dataclass
class ServedModel:
    """What the inference thread serves: a predictor, the store version it came from, meta."""

    predictor: DepthPredictor
    version: int
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_state(cls, state_dict, meta, version, device, input_size=(0, 0), backend='eager',
                   aspect='auto'):
        config = meta['model_config']
        if not isinstance(config, ModelConfig):
            config = ModelConfig.from_dict(dict(config))
        model = build_serving_model(config, state_dict, device,
                                    source=f"weights version {version} "
                                           f"({meta.get('path', 'no file')})")
        height, width = input_size
        size = (height or config.height, width or config.width)
        predictor = DepthPredictor(model, device, input_size=size, backend=backend,
                                   keep_aspect=keeps_aspect(aspect, meta))
        return cls(predictor, version, dict(meta))

    def describe(self):
        meta = self.meta
        return {'model_version': self.version, 'weights': meta.get('path', ''),
                'checkpoint_version': meta.get('version', ''), 'checkpoint_step':
                meta.get('step', ''), 'checkpoint_stage': meta.get('stage', ''),
                'network_input_hw': 'x'.join(str(v) for v in self.predictor.last_input_size),
                'network_aspect': 'keep' if self.predictor.keep_aspect else 'squash',
                'backend': self.predictor.backend.name,
                'backend_reason': self.predictor.backend.reason}


class DepthServer:
    """Serves the store's newest good version; see the module docstring for the threads.

    `start()` builds the store's current version synchronously (for `backend='auto'` this is
    where the candidates are timed, once: later versions reuse the choice) and starts the
    converter thread. Every version must pass `check_servable` (a probe frame: finite,
    non-constant depth within a time budget) before it may serve. A version that cannot be
    built or fails the probe is reported by `swap_error` and in `wait_until_serving`'s
    reason; the version before it keeps serving.
    """

    CONVERTER_THREAD_NAME = 'structflow-converter'

    def __init__(self, store, device, input_size=(0, 0), backend='auto', threads=0, log=None,
                 probe_budget_s=PROBE_BUDGET_S, aspect='auto'):
        if aspect not in ASPECTS:
            raise ValueError(f"network aspect {aspect!r} is not one of {', '.join(ASPECTS)}")
        self.aspect = aspect
        self.store = store
        self.probe_budget_s = probe_budget_s
        self.threads = threads
        self.device = device
        self.input_size = tuple(input_size)
        self.backend = backend
        self._log = log or (lambda level, text: None)
        self._served = None
        self._standby = None  # built, waiting for the serving thread to swap it in
        self._changed = threading.Condition()
        self._swap_error = (0, '')  # (version, reason) of the last version that failed
        self._closed = threading.Event()
        self._thread = None

    @property
    def served(self):
        """The ServedModel computing frames now (read it once per frame)."""
        return self._served

    @property
    def swap_error(self):
        return self._swap_error

    def start(self):
        """Build the store's latest version now (raises on failure), then convert in the back."""
        version, state_dict, meta = self.store.latest()
        if version == 0:
            raise ValueError('the weight store is empty: publish weights before start()')
        served = ServedModel.from_state(state_dict, meta, version, self.device,
                                        self.input_size, self.backend, self.aspect)
        check_servable(served, self.probe_budget_s)  # raises NotServableError (a ValueError)
        # Later versions are built with what was chosen: `auto` times its candidates once.
        self.backend = served.predictor.backend.name
        self._log('info', f'backend {self.backend}: {served.predictor.backend.reason}')
        with self._changed:
            self._served = served
            self._changed.notify_all()
        self._thread = threading.Thread(target=self._convert_loop,
                                        name=self.CONVERTER_THREAD_NAME, daemon=True)
        self._thread.start()
        return served

    def _convert_loop(self):
        if self.threads > 0:
            torch.set_num_threads(self.threads)  # per calling thread: runtimes copy it
        seen = self._served.version
        while not self._closed.is_set():
            if not self.store.wait_for_newer(seen, timeout=0.2):
                continue
            version, state_dict, meta = self.store.latest()
            seen = version
            try:
                standby = ServedModel.from_state(state_dict, meta, version, self.device,
                                                 self.input_size, self.backend, self.aspect)
                check_servable(standby, self.probe_budget_s)
            except Exception as error:  # noqa: BLE001 - a bad version must not stop serving
                reason = f'{type(error).__name__}: {error}'
                with self._changed:
                    self._swap_error = (version, reason)
                    self._changed.notify_all()
                self._log('error', f'weights version {version} not served: {reason}')
                continue
            with self._changed:
                self._standby = standby  # a newer standby replaces an older one not yet served

    def maybe_swap(self):
        """Serving thread, between two frames: swap in a converted newer version, if any.

        Returns the newly served ServedModel, or None when nothing changed.
        """
        standby = self._standby
        if standby is None:
            return None
        with self._changed:
            self._standby = None
            if standby.version <= self._served.version:
                return None
            self._served = standby
            self._changed.notify_all()
        self._log('info', f'now serving weights version {standby.version} '
                          f"({standby.meta.get('path', 'published in memory')}) with "
                          f'{standby.predictor.backend.name}')
        return standby

    def wait_until_serving(self, version, timeout, alive=lambda: True):
        """(True, '') once `version` (or newer) serves; (False, why) when it failed or timed out.

        `alive` tells whether the serving thread still runs (a dead one never swaps).
        """
        with self._changed:
            self._changed.wait_for(
                lambda: self._served.version >= version or self._swap_error[0] >= version
                or not alive(), timeout)
            if self._served.version >= version:
                return True, ''
            if self._swap_error[0] >= version:
                return False, self._swap_error[1]
        if not alive():
            return False, 'the inference thread is not running'
        return False, f'not swapped in within {timeout:.0f} s'

    def close(self):
        self._closed.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


__all__ = ['CheckpointError', 'DepthServer', 'NotServableError', 'SERVING_MODULES',
           'ServedModel', 'check_servable', 'probe_frame',
           'build_serving_model', 'read_serving_checkpoint', 'resolve_weights_path']
