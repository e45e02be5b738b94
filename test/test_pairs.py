"""Frame-pair sampling for the flow loss: strides, static skipping, augmentation, shuffling."""
import cv2
import numpy as np
import pytest
import torch

from structflow_ros.core.inference import network_frame_uint8
from torch.utils.data import DataLoader

from structflow_ros.data.pairs import collate, FramePairDataset, PairSamplingConfig
from structflow_ros.data.sources import ArraySource

HEIGHT, WIDTH = 12, 16  # model size in these tests
SOURCE_HEIGHT, SOURCE_WIDTH = 24, 40


def moving_frames(count, offset=0):
    """A texture sliding right 2 px per frame; blue = 5 * index + offset identifies the frame."""
    texture = np.random.default_rng(offset).integers(0, 256, (SOURCE_HEIGHT, SOURCE_WIDTH + 64))
    frames = []
    for i in range(count):
        frame = np.zeros((SOURCE_HEIGHT, SOURCE_WIDTH, 3), np.uint8)
        frame[..., 0] = texture[:, 2 * i:2 * i + SOURCE_WIDTH]
        frame[..., 1] = 255 - frame[..., 0]
        frame[..., 2] = 5 * i + offset
        frames.append(frame)
    return frames


def plain_config(**changes):
    """No augmentation, no shuffling: pairs come out in stream order."""
    values = dict(height=HEIGHT, width=WIDTH, strides=(1,), augment=False, shuffle_buffer=1,
                  skip_static=True)
    values.update(changes)
    return PairSamplingConfig(**values)


def frame_number(tensor, offset=0):
    """Read the index back from the blue channel (constant, so resizing keeps it)."""
    return int(round((float(tensor[2].mean()) * 255 - offset) / 5))


def resized(frame):
    """The served network's preprocessing: training pairs must see frames exactly so."""
    return network_frame_uint8(frame, (HEIGHT, WIDTH))


def test_shapes_dtypes_and_frame_correspondence():
    frames = moving_frames(6)
    pairs = list(FramePairDataset([ArraySource(frames, name='clip')], plain_config()))
    assert len(pairs) == 5
    for i, pair in enumerate(pairs):
        assert pair['frame0'].shape == (3, HEIGHT, WIDTH) and pair['frame0'].dtype == torch.float32
        assert pair['frame1'].shape == (3, HEIGHT, WIDTH)
        assert 0.0 <= float(pair['frame0'].min()) and float(pair['frame1'].max()) <= 1.0
        assert pair['source'] == 'clip' and pair['index'] == i and pair['stride'] == 1
        expected = torch.from_numpy(resized(frames[i]).transpose(2, 0, 1) / 255.0).float()
        torch.testing.assert_close(pair['frame0'], expected)
        assert frame_number(pair['frame1']) == i + 1


def test_strides_are_drawn_from_the_configured_set():
    frames = moving_frames(20)
    only_two = list(FramePairDataset([frames], plain_config(strides=(2,))))
    assert len(only_two) == 18
    assert all(frame_number(p['frame1']) - frame_number(p['frame0']) == 2 for p in only_two)
    assert all(p['stride'] == 2 for p in only_two)
    mixed = list(FramePairDataset([frames], plain_config(strides=(1, 3))))
    gaps = [frame_number(p['frame1']) - frame_number(p['frame0']) for p in mixed]
    assert gaps == [p['stride'] for p in mixed] and set(gaps) == {1, 3}
    assert all(frame_number(p['frame0']) == p['index'] for p in mixed)


def test_static_pairs_are_skipped_and_counted():
    rng = np.random.default_rng(0)
    still = moving_frames(1)[0]
    noisy = [np.clip(still.astype(int) + rng.integers(-2, 3, still.shape), 0, 255).astype(np.uint8)
             for _ in range(8)]
    dataset = FramePairDataset([noisy], plain_config())
    assert list(dataset) == []
    assert dataset.stats['static_skipped'] == 7 and dataset.stats['frames'] == 8
    kept = list(FramePairDataset([noisy], plain_config(skip_static=False)))
    assert len(kept) == 7
    # Motion after a still start: only the moving pairs survive.
    mixed = noisy[:4] + moving_frames(4, offset=100)
    dataset = FramePairDataset([mixed], plain_config())
    assert [p['index'] for p in dataset] == [3, 4, 5, 6]
    assert dataset.stats['static_skipped'] == 3


def test_flip_is_applied_to_both_frames():
    frames = moving_frames(12)
    config = plain_config(augment=True, flip_prob=0.5, jitter_prob=0.0)
    pairs = list(FramePairDataset([frames], config))
    assert {p['flipped'] for p in pairs} == {True, False}
    for pair in pairs:
        i = pair['index']
        want0, want1 = resized(frames[i]), resized(frames[i + 1])
        if pair['flipped']:
            want0, want1 = want0[:, ::-1], want1[:, ::-1]
        for got, want in ((pair['frame0'], want0), (pair['frame1'], want1)):
            torch.testing.assert_close(got, torch.from_numpy(
                want.transpose(2, 0, 1) / 255.0).float())


def test_colour_jitter_is_identical_for_both_frames():
    frame = moving_frames(1)[0]
    config = plain_config(augment=True, flip_prob=0.0, jitter_prob=1.0, skip_static=False)
    pairs = list(FramePairDataset([[frame] * 6], config))
    plain = torch.from_numpy(resized(frame).transpose(2, 0, 1) / 255.0).float()
    changes = []
    for pair in pairs:
        torch.testing.assert_close(pair['frame0'], pair['frame1'])
        changes.append(float((pair['frame0'] - plain).abs().mean()))
        assert 0.0 <= float(pair['frame0'].min()) and float(pair['frame0'].max()) <= 1.0
    assert min(changes) > 1e-3  # the jitter really changes colours
    assert len({round(c, 6) for c in changes}) == len(changes)  # and differently each time


def all_pairs(dataset):
    return [(p['source'], p['index'], p['stride'], p['flipped']) for p in dataset]


def three_sources():
    return [ArraySource(moving_frames(10, offset=k * 60), name=f'file{k}') for k in range(3)]


def test_deterministic_by_seed_and_epoch():
    config = PairSamplingConfig(height=HEIGHT, width=WIDTH, shuffle_buffer=8, seed=3)
    first = FramePairDataset(three_sources(), config)
    again = FramePairDataset(three_sources(), config)
    run1, run2 = list(first), list(again)
    assert all_pairs(run1) == all_pairs(run2)
    for a, b in zip(run1, run2):
        assert torch.equal(a['frame0'], b['frame0']) and torch.equal(a['frame1'], b['frame1'])
    other_seed = FramePairDataset(three_sources(), PairSamplingConfig(
        height=HEIGHT, width=WIDTH, shuffle_buffer=8, seed=4))
    assert all_pairs(other_seed) != all_pairs(run1)
    first.set_epoch(1)
    assert all_pairs(first) != all_pairs(run1)


def test_shuffles_across_files_and_keeps_every_pair_once():
    config = PairSamplingConfig(height=HEIGHT, width=WIDTH, strides=(1,), shuffle_buffer=8,
                                max_open_sources=3, augment=False)
    pairs = all_pairs(FramePairDataset(three_sources(), config))
    assert len(pairs) == 27
    assert sorted((s, i) for s, i, _, _ in pairs) == sorted(
        (f'file{k}', i) for k in range(3) for i in range(9))
    assert len({s for s, _, _, _ in pairs[:9]}) == 3  # the first batches mix files
    assert [i for s, i, _, _ in pairs if s == 'file0'] != list(range(9))  # order shuffled


@pytest.mark.parametrize('num_sources', [3, 1])
def test_dataloader_workers_share_the_work(num_sources):
    config = PairSamplingConfig(height=HEIGHT, width=WIDTH, strides=(1,), shuffle_buffer=4,
                                augment=False)
    dataset = FramePairDataset(three_sources()[:num_sources], config)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate)
    seen = []
    for batch in loader:
        assert batch['frame0'].shape[1:] == (3, HEIGHT, WIDTH)
        assert batch['frame0'].shape == batch['frame1'].shape
        seen += list(zip(batch['source'], batch['index'].tolist()))
    assert sorted(seen) == sorted((f'file{k}', i) for k in range(num_sources) for i in range(9))


def test_paths_and_factories_are_opened_lazily(tmp_path):
    for i, frame in enumerate(moving_frames(4)):
        cv2.imwrite(str(tmp_path / f'{i}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    opened = []

    def factory():
        opened.append(True)
        return ArraySource(moving_frames(3, offset=120), name='made')

    dataset = FramePairDataset([str(tmp_path), factory], plain_config())
    assert not opened
    pairs = all_pairs(dataset)
    assert opened
    assert sorted(pairs) == sorted([(tmp_path.name, i, 1, False) for i in range(3)]
                                   + [('made', i, 1, False) for i in range(2)])


def test_collate_and_config_validation():
    pairs = list(FramePairDataset([moving_frames(3)], plain_config()))
    batch = collate(pairs)
    assert batch['frame0'].shape == (2, 3, HEIGHT, WIDTH)
    assert batch['index'].tolist() == [0, 1] and batch['flipped'].dtype == torch.bool
    with pytest.raises(ValueError, match='strides'):
        PairSamplingConfig(strides=(0,))
    with pytest.raises(ValueError, match='flip_prob'):
        PairSamplingConfig(flip_prob=2.0)
    with pytest.raises(ValueError, match='at least one source'):
        FramePairDataset([])
