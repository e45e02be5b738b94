"""The indoor room domain (data/synthetic/room.py): exact ground truth, a camera that stays in
the room and clear of furniture, variety across seeds, and its use as finetuning data."""
import numpy as np
import torch
import pytest

from structflow_ros.data.synthetic import get_domain, open_renderer, render_sequence
from structflow_ros.data.synthetic import room as R
from structflow_ros.training import datasets

from test_synthetic import _static_flow, _warp_back


@pytest.fixture(scope='module', params=['room', 'desk', 'cluttered_room', 'cluttered_desk'])
def room_frames(request):
    # Both room cameras (the walk around the room and the workspace circling a table), in
    # rooms of solid blocks and in cluttered ones.
    return list(render_sequence(request.param, 4, 96, 128, seed=3))


def test_room_frames_have_dense_depth_inside_the_room(room_frames):
    renderer = open_renderer(room_frames[0].domain, 4, 96, 128, seed=3)
    assert isinstance(renderer, R.RoomRenderer)
    width, length, height = renderer.world.size
    diagonal = float(np.sqrt(width ** 2 + length ** 2 + height ** 2))
    for frame in room_frames:
        # A closed room: every pixel hits a surface, nearer than the room's diagonal.
        assert frame.depth_valid.all()
        assert 0.05 < frame.depth.min() and frame.depth.max() < diagonal
        assert frame.domain in ('room', 'desk', 'cluttered_room', 'cluttered_desk')
        position = frame.pose_c2w[:3, 3]
        assert 0 < position[0] < width and 0 < position[1] < length
        assert 0.25 < position[2] < 1.75


def test_room_static_flow_is_exact_and_warps_the_next_frame(room_frames):
    for f0, f1 in zip(room_frames[:-1], room_frames[1:]):
        valid = f0.flow_valid
        assert valid.mean() > 0.5 and not f0.moving.any()
        error = np.linalg.norm(_static_flow(f0, f1) - f0.flow, axis=-1)
        assert error[valid].max() < 0.05
        warped = _warp_back(f1.rgb, f0.flow).astype(np.float64)
        warped_error = np.abs(warped - f0.rgb).mean(axis=-1)[valid].mean()
        unwarped_error = np.abs(f1.rgb.astype(np.float64) - f0.rgb).mean(axis=-1)[valid].mean()
        assert unwarped_error > 2.0, 'the camera must move between frames'
        assert warped_error < 0.4 * unwarped_error


@pytest.mark.parametrize('domain', ['room', 'desk', 'cluttered_room', 'cluttered_desk'])
def test_the_camera_never_comes_within_20_cm_of_an_object(domain):
    for seed in range(6):
        world = R.RoomWorld(get_domain(domain), seed, 30.0)
        objects = world.objects
        assert (objects.kind != R.LIGHT).sum() >= 6, 'a room has furniture'
        cos, sin = np.cos(objects.yaw), np.sin(objects.yaw)
        for t in np.linspace(0.0, 30.0, 121):
            rel = world.camera_pose(t)[:3, 3] - objects.pos            # (M, 3)
            # The camera in each object's frame (rotate by -yaw), against its box + 20 cm.
            local = np.stack([cos * rel[:, 0] + sin * rel[:, 1],
                              -sin * rel[:, 0] + cos * rel[:, 1], rel[:, 2]], axis=1)
            near = np.all(np.abs(local) < objects.half + 0.2, axis=1)
            assert not near.any(), (seed, t, np.flatnonzero(near))


def test_rooms_differ_by_seed_and_repeat_with_it():
    a = list(render_sequence('room', 2, 48, 64, seed=1))
    b = list(render_sequence('room', 2, 48, 64, seed=1))
    assert np.array_equal(a[1].rgb, b[1].rgb) and np.array_equal(a[1].depth, b[1].depth)
    focals, medians = set(), []
    for seed in range(10):
        frame = next(render_sequence('room', 1, 48, 64, seed=seed))
        focals.add(round(float(frame.K[0, 0]), 3))
        medians.append(float(np.median(frame.depth)))
    assert len(focals) == 10, 'every room has its own field of view'
    # Small rooms and large halls: the typical depth changes with the room.
    assert max(medians) > 2 * min(medians)


def test_room_specs_feed_the_finetuning_data():
    spec = datasets.SyntheticSpec.parse('synthetic:room:6:4')
    sequence = datasets.render_synthetic(spec, 64, 96)
    dataset = datasets.DepthPairDataset([sequence], None, seed=0)
    sample = next(iter(dataset))
    assert sample['frame0'].shape == (3, 64, 96)
    assert bool(sample['depth_valid'].all())
    assert float(sample['depth_gt'].max()) < 15.0


def test_depth_jitter_changes_colours_alike_and_keeps_the_ground_truth():
    from structflow_ros.data.pairs import jitter_tensors
    sequence = datasets.render_synthetic(datasets.SyntheticSpec.parse('synthetic:room:6:5'),
                                         64, 96)
    # No flips: the jitter's random draws then cannot shift the flips of later samples.
    plain = datasets.DepthPairDataset([sequence], None, seed=3, flip=False)
    jittered = datasets.DepthPairDataset([sequence], None, seed=3, flip=False,
                                         jitter=datasets.DEPTH_JITTER)
    changed = 0
    for a, b in zip(plain, jittered):
        # Same pairs and ground truth; only the colours differ (about half the samples).
        assert torch.equal(a['depth_gt'], b['depth_gt']) and torch.equal(a['K'], b['K'])
        changed += int(not torch.equal(a['frame0'], b['frame0']))
        assert 0.0 <= float(b['frame0'].min()) and float(b['frame0'].max()) <= 1.0
    assert 0 < changed < 5
    # One map for every frame of a sample: equal inputs stay equal; contrast can drop to 0.4x.
    frame = plain._sample(sequence[0], sequence[1], True, None)['frame0']
    rng = np.random.default_rng(0)
    stds = []
    for _ in range(200):
        out0, out1 = jitter_tensors([frame, frame.clone()], rng, datasets.DEPTH_JITTER)
        assert torch.equal(out0, out1)
        stds.append(float(out0.std() / frame.std()))
    assert min(stds) < 0.55 and max(stds) > 1.2


def test_desk_camera_circles_a_cluttered_table_at_arms_length():
    inward_seen = 0
    for seed in range(8):
        renderer = open_renderer('desk', 30, 48, 64, seed=seed)
        world = renderer.world
        assert isinstance(world.path, R.WorkspaceCameraPath)
        cx, cy = world.path.centre
        objects = world.objects
        # The work table stands at the path's centre with at least 4 things on its top.
        top = [i for i in range(len(objects.kind)) if objects.kind[i] in (R.WOOD, R.PAINTED)
               and abs(objects.pos[i, 0] - cx) < 1e-9 and abs(objects.pos[i, 1] - cy) < 1e-9
               and objects.half[i, 2] == pytest.approx(0.02)]
        assert len(top) == 1, 'one work table at the centre'
        table_top = objects.pos[top[0], 2] + 0.02
        half_x, half_y = objects.half[top[0], :2]
        on_table = ((np.abs(objects.pos[:, 0] - cx) < half_x) &
                    (np.abs(objects.pos[:, 1] - cy) < half_y) &
                    (objects.pos[:, 2] > table_top))
        assert on_table.sum() >= 4
        for index in range(0, 30, 10):
            pose = world.camera_pose(renderer.time_of(index))
            assert 0.8 < pose[2, 3] < 1.75, 'a hand-held height above the table'
            if world.path.inward:
                # Looking in: the table's centre is in the picture, less than 2.5 m away.
                centre = np.array([cx, cy, table_top])
                in_camera = pose[:3, :3].T @ (centre - pose[:3, 3])
                u, v = (renderer.K @ in_camera)[:2] / in_camera[2]
                assert 0 < in_camera[2] < 2.5
                assert 0 <= u < 64 and 0 <= v < 48
        inward_seen += int(world.path.inward)
    assert 0 < inward_seen < 8, 'seeds look both in at the table and out at the walls'


def test_desk_views_are_nearer_than_walks_in_the_same_rooms_and_the_camera_is_checked():
    desk = [float(np.median(next(render_sequence('desk', 1, 48, 64, seed=s)).depth))
            for s in range(6)]
    walk = [float(np.median(next(render_sequence('room', 1, 48, 64, seed=s)).depth))
            for s in range(6)]
    # Same rooms (same seeds), a closer view: a workspace is seen from arm's length.
    assert np.median(desk) < np.median(walk)
    assert max(desk) < 3.5
    # The option is checked: a typo names the valid cameras.
    import dataclasses
    with pytest.raises(ValueError, match="valid: 'walk', 'workspace'"):
        R.RoomWorld(dataclasses.replace(get_domain('room'), room_camera='orbit'), 0, 5.0)


def _row(objects, i):
    """Object i as a rounded (shape, kind, half, yaw, pos) tuple."""
    return (int(objects.shape[i]), int(objects.kind[i]), *np.round(objects.half[i], 9),
            round(float(objects.yaw[i]), 9), *np.round(objects.pos[i], 9))


def _rows(objects, keep):
    """The objects `keep` (bool mask) as a set of rows."""
    return {_row(objects, i) for i in np.flatnonzero(keep)}


@pytest.mark.parametrize('domain', ['room', 'desk'])
def test_a_cluttered_room_is_the_same_room_made_irregular(domain):
    people = chairs = shelves = books_on_shelves = 0
    for seed in range(8):
        boxes = R.RoomWorld(get_domain(domain), seed, 30.0)
        cluttered = R.RoomWorld(get_domain(f'cluttered_{domain}'), seed, 30.0)
        assert cluttered.size == boxes.size and cluttered.look == boxes.look
        plain, messy = boxes.objects, cluttered.objects
        # Solid shelves (tall BOOKS blocks against a wall) become open shelves; every other
        # block of the plain room is still there, exactly (the clutter has its own draws).
        shelf = (plain.kind == R.BOOKS) & np.isclose(plain.pos[:, 2], plain.half[:, 2])
        shelf &= plain.half[:, 2] > 0.3
        assert _rows(plain, ~shelf) <= _rows(messy, np.ones(len(messy.kind), bool))
        assert not _rows(plain, shelf) & _rows(messy, np.ones(len(messy.kind), bool))
        assert len(messy.kind) > len(plain.kind) + 20
        shelves += int(shelf.sum())
        kept = _rows(plain, ~shelf)
        new = np.array([_row(messy, i) not in kept for i in range(len(messy.kind))])
        for i in np.flatnonzero(shelf):
            # The open shelf stands inside the solid one it replaced: every part, turned as
            # it is, within the block's extent.
            inside = new & np.all(np.abs(messy.pos - plain.pos[i]) <= plain.half[i] + 1e-6, 1)
            c, s = np.abs(np.cos(messy.yaw)), np.abs(np.sin(messy.yaw))
            extent = np.stack([c * messy.half[:, 0] + s * messy.half[:, 1],
                               s * messy.half[:, 0] + c * messy.half[:, 1], messy.half[:, 2]], 1)
            assert np.all(np.abs(messy.pos[inside] - plain.pos[i]) + extent[inside]
                          <= plain.half[i] + 1e-6)
            books = inside & (messy.kind == R.SPINES)
            books_on_shelves += int(books.sum())
            # Runs of books (spines along their local x) leave gaps on every level.
            covered = 2 * messy.half[books, 0].sum()
            levels = len(np.unique(np.round(messy.pos[books, 2] - messy.half[books, 2], 6)))
            if books.any():
                # Turned a quarter (yaw pi/2) on the walls at x = 0 and x = width.
                along = plain.half[i, 1] if np.isclose(messy.yaw[books][0], np.pi / 2) else \
                    plain.half[i, 0]
                assert covered < levels * 2 * along
        people += int((messy.kind == R.SKIN).sum())
        # An office chair's star base: two crossed metal bars 0.6 m long, 6 cm off the floor.
        chairs += int(((messy.kind == R.METAL) & (messy.half[:, 0] == 0.3) &
                       np.isclose(messy.pos[:, 2], 0.06)).sum()) // 2
    assert people >= 2 and chairs >= 2
    assert shelves >= 2 and books_on_shelves >= 3 * shelves


def test_cluttered_rooms_have_more_depth_edges_and_the_furnishing_is_checked():
    def edges(domain):
        fractions = []
        for seed in range(4):
            for frame in render_sequence(domain, 2, 96, 128, seed=seed):
                log_depth = np.log(frame.depth)
                step = np.maximum(np.abs(np.diff(log_depth, axis=0))[:, :-1],
                                  np.abs(np.diff(log_depth, axis=1))[:-1])
                fractions.append(float((step > 0.05).mean()))
        return float(np.mean(fractions))
    # More, smaller things in front of each other: more depth discontinuities per picture.
    assert edges('cluttered_room') > 1.2 * edges('room')
    import dataclasses
    with pytest.raises(ValueError, match="valid: 'boxes', 'cluttered'"):
        R.RoomWorld(dataclasses.replace(get_domain('room'), room_furnishing='messy'), 0, 5.0)
