"""A versioned, thread-safe hand-over point for model weights (writer thread -> serving thread).

Writers (`~/reload_weights`, later the adaptation thread) call `publish(state_dict, meta)`; the
store keeps CPU clones, so the writer may keep training its own module right after publishing.
The serving thread polls `version` between frames (one lock-free integer read) and, when it
is newer than what it serves, takes `latest()` and builds a separate standby module from it.
Readers must treat the returned state dict as read-only: it is shared by every reader of that
version (`load_state_dict` copies it into the module, which is all a reader should do).
"""
import copy
import threading

import torch


class VersionedWeightStore:
    """Latest weights + metadata under a monotonically increasing version number (0 = empty)."""

    def __init__(self):
        self._lock = threading.Condition()
        self._version = 0
        self._state_dict = None
        self._meta = {}

    @property
    def version(self):
        """Version of the latest published weights; 0 before the first `publish`."""
        return self._version

    def publish(self, state_dict, meta=None):
        """Store CPU clones of `state_dict` (name -> tensor) as a new version; return it."""
        if not isinstance(state_dict, dict) or not state_dict:
            raise ValueError('publish expects a non-empty state dict (name -> tensor), got '
                             f'{type(state_dict).__name__} of length {len(state_dict or ())}')
        clones = {}
        for name, tensor in state_dict.items():
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"state dict entry '{name}' is a {type(tensor).__name__}, "
                                 'expected a torch.Tensor')
            # detach + clone on CPU: the writer's tensors (maybe on CUDA, maybe still being
            # trained) are never aliased by what the serving thread loads.
            clones[name] = tensor.detach().to('cpu', copy=True)
        meta = copy.deepcopy(dict(meta or {}))
        with self._lock:
            self._version += 1
            # Not 'version': a checkpoint's meta already has one (its own training version).
            meta['store_version'] = self._version
            self._state_dict, self._meta = clones, meta
            self._lock.notify_all()
            return self._version

    def latest(self):
        """(version, state_dict, meta) of the latest weights; (0, None, {}) when empty."""
        with self._lock:
            return self._version, self._state_dict, dict(self._meta)

    def wait_for_newer(self, version, timeout=None):
        """Block until the store holds a version > `version`; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._version > version, timeout)
