"""The live pair buffer of on-robot adaptation (structflow_ros/online/pair_buffer.py).

Frames come from the synthetic driving world (real motion) and from constructed streams (a
static camera with sensor noise, a gap, frames out of order).
"""
import threading

import numpy as np
import pytest
import torch

from structflow_ros.core import ModelConfig, build_model
from structflow_ros.core.training import TrainStepConfig, train_step
from structflow_ros.data.synthetic.render import render_sequence
from structflow_ros.online.pair_buffer import PairBuffer, PairBufferConfig

HZ = 10
STEP_NS = 1_000_000_000 // HZ


@pytest.fixture(scope='module')
def drive():
    return [frame.rgb for frame in render_sequence('day', 24, 96, 128, seed=4)]


def small_config(**overrides):
    values = dict(height=64, width=96, recent=4, reservoir=6, holdout=3, holdout_every=4)
    values.update(overrides)
    return PairBufferConfig(**values)


def test_a_moving_camera_gives_pairs_split_into_training_and_held_out(drive):
    buffer = PairBuffer(small_config())
    outcomes = [buffer.add_frame(rgb, index * STEP_NS) for index, rgb in enumerate(drive)]
    assert outcomes[0] == 'first' and 'static' not in outcomes
    assert outcomes.count('held_out') == (len(drive) - 1) // 4
    assert outcomes.count('paired') == len(drive) - 1 - outcomes.count('held_out')
    stats = buffer.stats()
    assert (stats['recent'], stats['holdout']) == (4, 3) and 0 < stats['reservoir'] <= 6
    batch = buffer.sample(5)
    assert batch['frame0'].shape == (5, 3, 64, 96) and batch['frame0'].dtype == torch.uint8
    held = buffer.holdout()
    assert held['frame0'].shape == (3, 3, 64, 96)
    # Held-out pairs are never training pairs.
    training = {p.frame0.tobytes() for p in list(buffer._recent) + buffer._reservoir}
    assert not training & {p.frame0.tobytes() for p in buffer._holdout}


def test_static_camera_with_noise_and_gaps_give_no_pairs(drive):
    buffer = PairBuffer(small_config())
    rng = np.random.default_rng(0)
    still = drive[0]
    for index in range(30):  # a parked robot: the same view with sensor noise (sigma 3)
        noisy = np.clip(still + rng.normal(0, 3, still.shape), 0, 255).astype(np.uint8)
        buffer.add_frame(noisy, index * STEP_NS)
    assert buffer.counts['static'] == 29 and len(buffer) == 0 and buffer.sample(4) is None
    assert buffer.add_frame(drive[5], 40 * STEP_NS) == 'gap'  # 1 s later: not a pair
    assert buffer.add_frame(drive[6], 39 * STEP_NS) == 'out_of_order'
    assert buffer.add_frame(drive[7], 41 * STEP_NS) == 'paired'


def test_a_camera_that_restarts_or_changes_resolution_gives_no_false_pair(drive):
    import cv2
    buffer = PairBuffer(small_config())
    assert [buffer.add_frame(drive[i], i * STEP_NS) for i in range(3)] == [
        'first', 'paired', 'paired']
    # The driver restarts: its clock starts again from zero, the view jumped meanwhile.
    assert buffer.add_frame(drive[10], 0) == 'out_of_order'
    assert buffer.add_frame(drive[11], STEP_NS) in ('paired', 'held_out')
    # Then it switches to a smaller mode with a different aspect ratio (a cropped sensor):
    # same stamps cadence, yet the first frame at the new size pairs with nothing.
    smaller = [cv2.resize(rgb[8:-8], (96, 48)) for rgb in drive[12:15]]
    outcomes = [buffer.add_frame(rgb, (2 + i) * STEP_NS) for i, rgb in enumerate(smaller)]
    assert outcomes[0] == 'size_change'
    assert set(outcomes[1:]) <= {'paired', 'held_out'}  # pairs again (every 4th held out)
    assert buffer.counts['size_change'] == 1 and buffer.counts['out_of_order'] == 1


def test_memory_stays_bounded_over_a_long_stream(drive):
    config = small_config(recent=3, reservoir=5, holdout=2)
    buffer = PairBuffer(config)
    rng = np.random.default_rng(1)
    for index in range(600):  # a minute of 10 Hz driving, frames in random order of the drive
        buffer.add_frame(drive[int(rng.integers(len(drive)))], index * STEP_NS)
    stats = buffer.stats()
    assert (stats['recent'], stats['reservoir'], stats['holdout']) == (3, 5, 2)
    assert stats['paired'] + stats['held_out'] > 500
    assert 0 < buffer.nbytes() <= buffer.max_bytes()
    assert buffer.max_bytes() < 10 * 2 * 64 * 96 * 3 + 11 * 64 * 96 * 3 + 1


def test_reservoir_keeps_diverse_views_rather_than_the_latest():
    """Many pairs of one scene then a few of others: the reservoir keeps every other scene."""
    config = small_config(recent=1, reservoir=4, holdout_every=1000, static_threshold=0.0)
    buffer = PairBuffer(config)
    scenes = [list(render_sequence(domain, 12, 64, 96, seed=seed))
              for domain, seed in (('day', 1), ('night', 2), ('fog', 3), ('dusk', 4))]
    stamp = 0
    order = [(0, i) for i in range(12)] + [(s, i) for s in (1, 2, 3) for i in range(2)] + \
        [(0, i) for i in range(12)]
    for scene, index in order:
        stamp += STEP_NS
        buffer.add_frame(scenes[scene][index].rgb, stamp)
    kept_scenes = {_closest_scene(p.frame0, scenes) for p in buffer._reservoir}
    # Each rare scene (2 pairs each among 24 of scene 0) survives the flood of scene 0.
    assert {1, 2, 3} <= kept_scenes, kept_scenes
    assert buffer.counts['reservoir_replaced'] > 0


def _closest_scene(frame, scenes):
    """Index of the scene whose frames (at the rendered size = the buffer's) look most alike."""
    means = [np.mean([np.abs(f.rgb.astype(np.float32) - frame).mean() for f in scene])
             for scene in scenes]
    return int(np.argmin(means))


def test_sampled_batches_train_with_train_step_while_frames_arrive(drive):
    """The serving thread adds frames while the adapter thread samples and trains."""
    buffer = PairBuffer(small_config())
    for index in range(6):
        buffer.add_frame(drive[index], index * STEP_NS)
    torch.manual_seed(0)
    model = build_model(ModelConfig(height=64, width=96, pose_branch=False)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    errors = []

    def feed():
        try:
            for index in range(6, len(drive)):
                buffer.add_frame(drive[index], index * STEP_NS)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
    feeder = threading.Thread(target=feed)
    feeder.start()
    for _ in range(3):
        metrics = train_step(model, buffer.sample(2), optimizer,
                             TrainStepConfig(depth_supervised_weight=0, depth_selfsup_weight=0))
        assert metrics['skipped'] == 0 and metrics['loss'] > 0
    feeder.join()
    assert not errors and buffer.counts['paired'] >= 10


def test_bad_frames_and_config_are_refused_with_the_reason():
    with pytest.raises(ValueError, match='recent must be an integer >= 1'):
        PairBufferConfig(recent=0)
    buffer = PairBuffer(small_config())
    with pytest.raises(Exception, match=r'RGB uint8 \(H, W, 3\)'):
        buffer.add_frame(np.zeros((10, 10), np.uint8), 0)
