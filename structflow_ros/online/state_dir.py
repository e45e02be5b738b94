"""Where on-robot adaptation keeps its accepted weights between runs: one directory, one file.

`adapted.pt` is a normal structflow checkpoint (so `weights:=<dir>/adapted.pt` serves it and
`structflow evaluate` reads it) written atomically (temp file + fsync + rename + directory
fsync): a process killed at any instant leaves either the previous file or the new one, never a
mix. Its `version` field is the weight store's version that served it (one meaning of
"version"), and `extra.base_fingerprint` names the weights adaptation started from, so a restart
with other shipped weights does not resume a state trained from different ones.

Nothing here takes a path from a request: the file name is fixed and only the directory is
configured, so no service call can write anywhere else.

One camera owns a directory (issue 28: two cameras once shared `~/.ros/structflow/adaptation`,
and the rear node resumed, then deleted, the front camera's state):
- `acquire` takes an exclusive `flock` on the directory itself (no lock file: nothing but
  adapted.pt is ever written there). The kernel drops it when the process dies, however it
  dies, so a SIGKILLed node never leaves a stale lock. A second process gets `StateDirBusy`
  naming the holder's pid.
- the saved state records the camera it adapted to (`extra.camera`: frame_id, resolution, K
  when known); `camera_mismatch` says why another camera's state must not be resumed.
- temp files carry their writer's pid (core.checkpoint.atomic_torch_save), and the cleanup
  removes only this process's and those of processes that no longer run.
"""
import errno
import fcntl
import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch

from structflow_ros.core.checkpoint import CheckpointError, read_checkpoint, save_checkpoint

STATE_FILE = 'adapted.pt'
_TEMP_NAME = re.compile(r'^\.' + re.escape(STATE_FILE) + r'\.(\d+)\..*\.tmp$')
# Two calibrations of one camera differ by well under this (relative, on fx, fy, cx, cy).
K_TOLERANCE = 0.02


class StateDirBusy(OSError):
    """Another process adapts in this state directory."""


@dataclass(frozen=True)
class CameraIdentity:
    """What makes a saved adaptation state this camera's: its frame_id, its image size and,
    when camera_info has arrived, its K (row-major 3x3 at that size)."""
    frame_id: str
    width: int
    height: int
    K: Optional[Tuple[float, ...]] = None

    def describe(self):
        return (f"frame_id '{self.frame_id}', {self.width}x{self.height}"
                + (f', fx {self.K[0]:.1f}' if self.K else ''))

    def to_dict(self):
        return {**asdict(self), 'K': list(self.K) if self.K else []}

    @classmethod
    def from_dict(cls, values):
        return cls(str(values['frame_id']), int(values['width']), int(values['height']),
                   tuple(float(v) for v in values['K']) if values.get('K') else None)


def camera_mismatch(saved, current):
    """Why a state adapted to camera `saved` is not for camera `current` ('' when it is). K is
    compared only when both know it (camera_info may come after the first image)."""
    if saved.frame_id != current.frame_id:
        return f"it was adapted to frame_id '{saved.frame_id}', this camera is '{current.frame_id}'"
    if (saved.width, saved.height) != (current.width, current.height):
        return (f'it was adapted to {saved.width}x{saved.height} images, this camera sends '
                f'{current.width}x{current.height}')
    if saved.K and current.K:
        for index, name in ((0, 'fx'), (4, 'fy'), (2, 'cx'), (5, 'cy')):
            a, b = saved.K[index], current.K[index]
            if abs(a - b) > K_TOLERANCE * max(abs(a), abs(b), 1.0):
                return f'its camera had {name} {a:.1f}, this camera_info says {b:.1f}'
    return ''


NODE_PLACEHOLDER = '{node}'


def resolve_state_dir(template, node_name):
    """`adapt_state_dir` with '{node}' replaced by the node's fully qualified name (without the
    leading '/'): '/front/depth_node' adapts in .../adaptation/front/depth_node, so two cameras
    (one node per namespace) never share a directory by default."""
    return Path(str(template).replace(NODE_PLACEHOLDER, node_name.strip('/'))).expanduser()


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _lock_holder(directory):
    """The pid holding a flock on `directory` (from /proc/locks), or None."""
    try:
        stat = os.stat(directory)
        device = f'{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}'
        with open('/proc/locks') as handle:
            for line in handle:
                fields = line.split()
                if 'FLOCK' in fields and device in fields:
                    return int(fields[fields.index(device) - 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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

    _lock_fd = None  # until acquire(); also when __init__ refused the directory

    def __init__(self, directory):
        if not str(directory).strip():
            raise ValueError('the adaptation state directory is empty; give a directory path')
        self.directory = Path(directory).expanduser()
        self.path = self.directory / STATE_FILE
        self._lock_fd = None

    def acquire(self):
        """Own the directory (created if needed) until `release` or this process ends; raises
        StateDirBusy when another process owns it, OSError when it cannot be created. Then
        removes the temp files of saves that were killed before their rename."""
        if self._lock_fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = _lock_holder(self.directory)
            who = ('another adapter in this process' if holder == os.getpid() else
                   f'another process (pid {holder})' if holder else 'another process')
            raise StateDirBusy(
                errno.EBUSY, f'the adaptation state directory {self.directory} is in use by '
                f'{who}: each camera needs its own adapt_state_dir (the default has the node '
                'name in it)') from None
        self._lock_fd = fd
        # A save killed before its rename leaves its temp file: never a state, only disk
        # space. Only ours and those of processes that no longer run; never another's.
        for stale in self.directory.glob(f'.{STATE_FILE}.*.tmp'):
            match = _TEMP_NAME.match(stale.name)
            if match and (int(match.group(1)) == os.getpid()
                          or not _pid_alive(int(match.group(1)))):
                stale.unlink(missing_ok=True)

    def release(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the last descriptor drops the flock
            self._lock_fd = None

    def __del__(self):  # an adapter dropped without stop() must not hold the directory
        self.release()

    @property
    def owned(self):
        return self._lock_fd is not None

    def save(self, model, *, store_version, step, base_fingerprint, metrics=None, extra=None,
             camera=None):
        """Write the model's weights atomically; returns the file path. Raises OSError (a full
        disk, no permission) with the old file left as it was."""
        self.directory.mkdir(parents=True, exist_ok=True)
        info = {'base_fingerprint': base_fingerprint, **(extra or {})}
        if camera is not None:
            info['camera'] = camera.to_dict()
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
