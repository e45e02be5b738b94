"""Where on-robot adaptation keeps its accepted weights between runs: one directory, one file.

`adapted.pt` is a normal structflow checkpoint (so `weights:=<dir>/adapted.pt` serves it and
`structflow evaluate` reads it) written atomically (temp file + fsync + rename + directory
fsync): a process killed at any instant leaves either the previous file or the new one, never a
mix. Its `version` field is the weight store's version that served it (one meaning of
"version"), and `extra.base_fingerprint` names the weights adaptation started from, so a restart
with other shipped weights does not resume a state trained from different ones.

Nothing here takes a path from a request: the file name is fixed and only the directory is
configured, so no service call can write anywhere else.
"""
import hashlib
from pathlib import Path

import torch

from structflow_ros.core.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

STATE_FILE = 'adapted.pt'


def weights_fingerprint(state_dict) -> str:
    """A short, content-based identity of a state dict (names, shapes and values)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to('cpu', torch.float32).contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


class AdaptationStateDir:
    """Atomic save / validated load of the last accepted adaptation state."""

    def __init__(self, directory):
        if not str(directory).strip():
            raise ValueError('the adaptation state directory is empty; give a directory path')
        self.directory = Path(directory).expanduser()
        self.path = self.directory / STATE_FILE
        # A save killed before its rename leaves its temp file behind: never a state, only
        # disk space. One writer per directory (the node), so what is there now is stale.
        if self.directory.is_dir():
            for stale in self.directory.glob(f'.{STATE_FILE}.*.tmp'):
                stale.unlink(missing_ok=True)

    def save(self, model, *, store_version, step, base_fingerprint, metrics=None, extra=None):
        """Write the model's weights atomically; returns the file path. Raises OSError (a full
        disk, no permission) with the old file left as it was."""
        self.directory.mkdir(parents=True, exist_ok=True)
        info = {'base_fingerprint': base_fingerprint, **(extra or {})}
        return save_checkpoint(self.path, model, step=step, version=store_version,
                               stage='online_adaptation', trained_on=['live camera stream'],
                               metrics=metrics or {}, extra=info)

    def load(self, base_fingerprint):
        """(state_dict, payload) of the saved state, or (None, why) when there is none to
        resume: no file, an unreadable file, or one adapted from different base weights."""
        if not self.path.exists():
            return None, f'no saved state in {self.directory}'
        try:
            payload = read_checkpoint(self.path)
        except CheckpointError as error:
            return None, f'saved state unusable ({error}); starting from the base weights'
        saved_base = payload['extra'].get('base_fingerprint')
        if saved_base != base_fingerprint:
            return None, (f'saved state {self.path} was adapted from other base weights '
                          f'({saved_base} != {base_fingerprint}); starting from the base weights')
        return payload.pop('state_dict'), payload
