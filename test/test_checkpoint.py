"""Checkpoints: bit-exact round trip, strict loading, safe loading, atomic writes."""
import os
import pickle
import resource
import struct
import zipfile

import pytest
import torch

from structflow_ros.core import CheckpointError, ModelConfig, build_model, load_model
from structflow_ros.core import checkpoint
from structflow_ros.core.checkpoint import (atomic_torch_save, load_state_strict,
                                            read_checkpoint, save_checkpoint)


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(1)
    net = build_model(ModelConfig(height=64, width=64))
    # Make BatchNorm running statistics non-default so they are checked too.
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 64, 64))
    return net.eval()


def test_round_trip_is_bit_exact_and_self_describing(model, tmp_path):
    path = save_checkpoint(tmp_path / 'a.pt', model, step=42, version=3, stage='pretrain',
                           trained_on=['synthetic:day'], metrics={'epe': 1.5})
    loaded, meta = load_model(path)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    assert meta['step'] == 42 and meta['version'] == 3 and meta['stage'] == 'pretrain'
    assert meta['input_size'] == [64, 64] and meta['trained_on'] == ['synthetic:day']
    assert meta['model_config'] == model.config
    assert not loaded.training


def test_half_precision_subset_loads_without_pose_net(model, tmp_path):
    modules = ['structure_encoder', 'depth_decoder', 'motion_encoder', 'flow_decoder']
    path = save_checkpoint(tmp_path / 'h.pt', model, modules=modules, half=True)
    loaded, meta = load_model(path)
    assert loaded.module_names() == modules and meta['weights_dtype'] == 'float16'
    weight = loaded.structure_encoder.conv1.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, model.structure_encoder.conv1.weight, atol=1e-3, rtol=1e-3)


def test_missing_truncated_and_empty_files_are_refused(model, tmp_path):
    with pytest.raises(CheckpointError, match='not found'):
        read_checkpoint(tmp_path / 'nope.pt')
    good = save_checkpoint(tmp_path / 'good.pt', model)
    data = good.read_bytes()
    (tmp_path / 'trunc.pt').write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated'):
        read_checkpoint(tmp_path / 'trunc.pt')
    (tmp_path / 'empty.pt').write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty'):
        read_checkpoint(tmp_path / 'empty.pt')


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('touch /tmp/structflow_pwned',))


def test_pickle_with_code_is_refused_and_not_executed(tmp_path):
    path = tmp_path / 'evil.pt'
    torch.save({'format': 'structflow-checkpoint', 'payload': _RunsCode()}, path)
    marker = '/tmp/structflow_pwned'
    if os.path.exists(marker):
        os.unlink(marker)
    with pytest.raises(CheckpointError, match='pickled objects or code'):
        read_checkpoint(path)
    assert not os.path.exists(marker)


def test_foreign_files_are_refused(tmp_path):
    torch.save({'state_dict': {'w': torch.ones(1)}}, tmp_path / 'foreign.pt')
    with pytest.raises(CheckpointError, match='not a structflow checkpoint'):
        read_checkpoint(tmp_path / 'foreign.pt')
    with open(tmp_path / 'plain.pkl', 'wb') as handle:
        pickle.dump({'a': 1}, handle)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / 'plain.pkl')


def test_mismatched_architecture_names_the_problem(model, tmp_path):
    path = save_checkpoint(tmp_path / 'r18.pt', model)
    payload = read_checkpoint(path)
    other = build_model(ModelConfig(encoder='resnet50', height=64, width=64))
    with pytest.raises(CheckpointError, match="'structure_encoder'.*missing"):
        load_state_strict(other, payload['state_dict'], ['structure_encoder'])
    state = dict(payload['state_dict'])
    state.pop('depth_decoder.heads.0.1.bias')
    with pytest.raises(CheckpointError, match='depth_decoder'):
        load_state_strict(build_model(ModelConfig(height=64, width=64)), state)


def test_failed_write_keeps_the_old_file(model, tmp_path):
    path = save_checkpoint(tmp_path / 'keep.pt', model, step=1)

    class Unsaveable:
        pass
    with pytest.raises(Exception):
        atomic_torch_save({'x': Unsaveable(), 'y': lambda: 0}, path)
    assert read_checkpoint(path)['step'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['keep.pt']


def _crafted(source, edit):
    payload = torch.load(source, weights_only=True)
    edit(payload)
    return payload


@pytest.mark.parametrize('edit, field', [
    (lambda d: d.update(format_version='1'), "'format_version' must be an integer"),
    (lambda d: d.update(state_dict=list(d['state_dict'].values())), "'state_dict' must be a dict"),
    (lambda d: d.update(state_dict={k: 1 for k in d['state_dict']}), 'map parameter names'),
    (lambda d: d.update(state_dict={}), "'state_dict' is empty"),
    (lambda d: d.update(step='7'), "'step' must be an integer"),
    (lambda d: d.update(version=True), "'version' must be an integer"),
    (lambda d: d.update(model_config=[96, 320]), "'model_config' must be a dict"),
    (lambda d: d.update(modules=[1, 2]), "'modules' must be a list of module names"),
    (lambda d: d.update(metrics='good'), "'metrics' must be a dict"),
])
def test_crafted_plain_value_files_are_refused_naming_the_field(model, tmp_path, edit, field):
    """Files of plain values pass the weights-only loader; their schema is checked instead
    (issue 12, defect 1: such files used to crash `~/reload_weights`)."""
    good = save_checkpoint(tmp_path / 'good.pt', model)
    crafted = tmp_path / 'crafted.pt'
    torch.save(_crafted(good, edit), crafted)
    with pytest.raises(CheckpointError, match=field):
        read_checkpoint(crafted)


def _rezip(source, target, compress=zipfile.ZIP_STORED, edit=None, inflate=None):
    """Copy a torch zip entry by entry, compressed or not, optionally with one entry's bytes
    edited, or with the entry named by `inflate` (a suffix) replaced by 1 GiB of zeros written
    in chunks (never held in memory)."""
    with zipfile.ZipFile(source) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    if edit is not None:
        entries = edit(entries)
    with zipfile.ZipFile(target, 'w', compress) as archive:
        for name, data in entries.items():
            if inflate is not None and name.endswith(inflate):
                with archive.open(name, 'w', force_zip64=True) as handle:
                    chunk = bytes(1 << 20)
                    for _ in range(1024):
                        handle.write(chunk)
            else:
                archive.writestr(name, data)
    return target


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _declaring(elements):
    """An edit of torch.save({'w': torch.zeros(4)})'s pickle: its storage declares `elements`."""
    def edit(entries):
        name = next(name for name in entries if name.endswith('data.pkl'))
        small = b"X\x03\x00\x00\x00cpuq\x06K\x04"
        assert small in entries[name]
        entries[name] = entries[name].replace(
            small, b"X\x03\x00\x00\x00cpuq\x06J" + struct.pack('<i', elements))
        return entries
    return edit


def test_zip_bomb_and_huge_declared_tensors_are_refused_before_memory_is_spent(model,
                                                                             tmp_path):
    """Issue 28: memory is bounded before a checkpoint is read. A deflated 1 GiB tensor of
    zeros is 1 MB on disk (torch.load would allocate and inflate all of it); a stored tensor
    that declares 2**31 elements holds 16 bytes."""
    path = save_checkpoint(tmp_path / 'good.pt', model)
    torch.save({'w': torch.zeros(4)}, tmp_path / 'small.pt')
    before = _peak_rss_mb()
    bombed = _rezip(tmp_path / 'small.pt', tmp_path / 'bomb.pt', zipfile.ZIP_DEFLATED,
                    edit=_declaring(1 << 28), inflate='/data/0')
    assert bombed.stat().st_size < 16 << 20
    with pytest.raises(CheckpointError, match='compressed.*zip bomb'):
        read_checkpoint(bombed)
    huge = _rezip(tmp_path / 'small.pt', tmp_path / 'huge.pt', edit=_declaring(2**31 - 1))
    with pytest.raises(CheckpointError, match='corrupt or truncated.*does not match expected'):
        read_checkpoint(huge)
    assert _peak_rss_mb() - before < 512  # neither 1 GiB nor 8 GiB was ever allocated

    # The size budget, from the zip directory alone.
    with pytest.raises(CheckpointError, match='unpacks to .* more than'):
        checkpoint._check_unpacked_size(path, limit=1024)
    read_checkpoint(path)  # the normal file is within every bound
