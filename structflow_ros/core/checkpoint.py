"""Self-describing checkpoints: weights + model config + step + version + provenance.

Files are plain `torch.save` dicts of tensors and primitive values, read back with
`torch.load(weights_only=True)` (no pickled code is ever executed) and loaded strictly (a missing
or unexpected key is an error). Writes are atomic: temp file in the same folder, fsync, rename,
so a crash or a full disk leaves the previous file intact.
"""
import datetime
import errno
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from structflow_ros.core.config import ModelConfig
from structflow_ros.core.networks import build_model

FORMAT = 'structflow-checkpoint'
FORMAT_VERSION = 1
REQUIRED_KEYS = ('format', 'format_version', 'model_config', 'state_dict', 'step', 'version')
# What a checkpoint may unpack to, checked from the zip directory before anything is read. The
# shipped model is under 32 MB and a training checkpoint with its optimiser a few hundred.
MAX_CHECKPOINT_BYTES = 4 << 30


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, foreign, unsafe or does not match the model."""


def atomic_torch_save(obj, path):
    """torch.save to `path` via a temp file + fsync + rename; the old file survives any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid in the name: a cleanup of killed saves can tell its own temp files (and
    # those of dead processes) from a save another process has in progress.
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.{os.getpid()}.', suffix='.tmp',
                                    dir=path.parent)
    try:
        try:
            with os.fdopen(fd, 'wb') as handle:
                torch.save(obj, handle)
                handle.flush()
                os.fsync(handle.fileno())
        except RuntimeError as error:
            # A full disk surfaces from torch's zip writer as a RuntimeError ("unexpected pos")
            # raised while handling the OSError of the write: callers expect that OSError.
            cause = error.__cause__ or error.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise OSError(errno.EIO, f'could not write {path}: {error}') from None
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def save_checkpoint(path, model, *, step=0, version=0, stage='', trained_on=(), metrics=None,
                    train_config=None, extra=None, optimizer_state=None, modules=None,
                    half=False):
    """Write `model` (or only the named top-level `modules`) with everything needed to rebuild it.

    `half=True` stores float16 weights (the shipped default model, to stay small); loading casts
    them back to the model's dtype.
    """
    config = model.config
    names = list(modules) if modules is not None else model.module_names()
    state_dict = {}
    for name in names:
        module = getattr(model, name, None)
        if module is None:
            raise CheckpointError(f"model has no module '{name}'; it has {model.module_names()}")
        for key, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu()
            if half and tensor.is_floating_point():
                tensor = tensor.half()
            state_dict[f'{name}.{key}'] = tensor.clone()
    payload = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'model_config': config.to_dict(),
        'modules': names,
        'state_dict': state_dict,
        'step': int(step),
        'version': int(version),
        'stage': str(stage),
        'input_size': [config.height, config.width],
        'trained_on': [str(item) for item in trained_on],
        'metrics': dict(metrics or {}),
        'train_config': dict(train_config or {}),
        'extra': dict(extra or {}),
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'weights_dtype': 'float16' if half else 'float32',
    }
    if optimizer_state is not None:
        payload['optimizer'] = optimizer_state
    return atomic_torch_save(payload, path)


# Field -> (accepted types, what to say). A weights-only load admits any plain value, so a
# crafted file can put a string where a number belongs: every field is checked before use.
_SCHEMA = {
    'format_version': ((int,), 'an integer'),
    'model_config': ((dict,), 'a dict of ModelConfig fields'),
    'state_dict': ((dict,), 'a dict of parameter name -> tensor'),
    'step': ((int,), 'an integer'),
    'version': ((int,), 'an integer'),
    'modules': ((list, tuple), 'a list of module names'),
    'stage': ((str,), 'a string'),
    'input_size': ((list, tuple), 'a list [height, width]'),
    'trained_on': ((list, tuple), 'a list of strings'),
    'metrics': ((dict,), 'a dict'),
    'train_config': ((dict,), 'a dict'),
    'extra': ((dict,), 'a dict'),
    'weights_dtype': ((str,), 'a string'),
}


def _check_schema(payload, path):
    """Types of every known field, and a state dict of name -> floating/int tensors."""
    for key, (types, what) in _SCHEMA.items():
        if key not in payload:
            continue
        value = payload[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CheckpointError(f"checkpoint {path}: '{key}' must be {what}, got "
                                  f'{type(value).__name__} {str(value)[:40]!r}')
    modules = payload.get('modules')
    if modules is not None and not all(isinstance(name, str) for name in modules):
        raise CheckpointError(f"checkpoint {path}: 'modules' must be a list of module names")
    state_dict = payload['state_dict']
    if not state_dict:
        raise CheckpointError(f"checkpoint {path}: 'state_dict' is empty")
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {path}: 'state_dict' must map parameter names to tensors; entry "
                f'{str(name)[:60]!r} is a {type(tensor).__name__}')


def _check_unpacked_size(path, limit=None):
    """Memory bounded before reading: every entry stored (torch.save never compresses, so a
    deflated one can only be a zip bomb: megabytes on disk, gigabytes once read) and the
    entries' total within MAX_CHECKPOINT_BYTES. (A tensor that declares more elements than its
    record holds is refused by torch itself before it allocates.)"""
    limit = MAX_CHECKPOINT_BYTES if limit is None else limit
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CheckpointError(f'checkpoint {path} has a corrupt zip directory: {error}') from None
    compressed = [entry.filename for entry in entries
                  if entry.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise CheckpointError(
            f'refused to load {path}: entries {compressed[:3]} are compressed; torch.save '
            'writes them stored, and a compressed entry can unpack to far more memory than '
            'the file takes on disk (a zip bomb)')
    total = sum(entry.file_size for entry in entries)
    if total > limit:
        raise CheckpointError(
            f'refused to load {path}: it unpacks to {total / 2**30:.1f} GiB, more than the '
            f'{limit / 2**30:.1f} GiB a structflow checkpoint may take')


def read_checkpoint(path, map_location='cpu'):
    """Load and validate a checkpoint dict; every failure says which file and why."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f'checkpoint not found: {path}')
    if not path.is_file():
        raise CheckpointError(f'checkpoint path is not a file: {path}')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint is empty (0 bytes): {path}')
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f'checkpoint {path} is truncated or not a torch file (no zip central directory); '
            'expected a file written by structflow (torch.save format)')
    _check_unpacked_size(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f'refused to load {path}: it contains pickled objects or code that a weights-only '
            f'load does not execute; only tensors and plain values are accepted '
            f'({str(error).splitlines()[0][:120]})') from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as error:
        raise CheckpointError(f'checkpoint {path} is corrupt or truncated: {error}') from None
    if not isinstance(payload, dict) or payload.get('format') != FORMAT:
        found = payload.get('format') if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a structflow checkpoint (format {found!r}, "
                              f"expected {FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f'checkpoint {path} lacks keys {missing}')
    _check_schema(payload, path)
    if payload['format_version'] > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload['format_version']}; "
                              f'this structflow reads up to {FORMAT_VERSION}')
    try:
        payload['model_config'] = ModelConfig.from_dict(payload['model_config'])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f'checkpoint {path} has an invalid model config: {error}') from None
    return payload


def load_state_strict(model, state_dict, modules=None, source='checkpoint'):
    """Copy `state_dict` into `model` (or its named `modules`); any key/shape mismatch raises."""
    names = list(modules) if modules is not None else model.module_names()
    for name in names:
        module = getattr(model, name, None)
        if module is None:
            raise CheckpointError(f"{source}: the model has no module '{name}' "
                                  f'(it has {model.module_names()})')
        prefix = f'{name}.'
        sub_state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not sub_state:
            available = sorted({k.split('.', 1)[0] for k in state_dict})
            raise CheckpointError(f"{source} has no weights for '{name}' (it has {available})")
        expected = module.state_dict()
        missing = sorted(set(expected) - set(sub_state))
        unexpected = sorted(set(sub_state) - set(expected))
        mismatched = [f'{k}: {tuple(sub_state[k].shape)} vs model {tuple(v.shape)}'
                      for k, v in expected.items()
                      if k in sub_state and tuple(sub_state[k].shape) != tuple(v.shape)]
        if missing or unexpected or mismatched:
            raise CheckpointError(
                f"{source} does not match the model's '{name}': "
                f'missing {missing[:5]}{"..." if len(missing) > 5 else ""} ({len(missing)}), '
                f'unexpected {unexpected[:5]} ({len(unexpected)}), '
                f'shape mismatches {mismatched[:3]} ({len(mismatched)})')
        module.load_state_dict(sub_state, strict=True)


def load_model(path, device='cpu', modules=None):
    """Rebuild the model a checkpoint describes and load its weights strictly.

    Returns (model in eval mode on `device`, checkpoint dict without the state dict). Only the
    modules stored in the file are built when it holds a subset (e.g. no pose network).
    """
    payload = read_checkpoint(path)
    config = payload['model_config']
    stored = payload.get('modules') or sorted({k.split('.', 1)[0] for k in payload['state_dict']})
    overrides = {}
    if 'motion_encoder' not in stored and 'flow_decoder' not in stored:
        overrides['flow_branch'] = False
    if 'pose_net' not in stored:
        overrides['pose_branch'] = False
    model = build_model(config, **overrides)
    load_state_strict(model, payload['state_dict'], modules or model.module_names(),
                      source=f'checkpoint {path}')
    model.to(device).eval()
    meta = {k: v for k, v in payload.items() if k not in ('state_dict', 'optimizer')}
    meta['model_config'] = model.config
    meta['path'] = str(path)
    return model, meta
