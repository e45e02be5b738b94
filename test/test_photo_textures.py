"""Real photographs as room textures (data/synthetic/photo_textures.py, --photo-textures)."""
import json

import cv2
import numpy as np
import pytest

from structflow_ros.cli import render as render_cli
from structflow_ros.data.sources import SourceError
from structflow_ros.data.synthetic import open_renderer, render_sequence
from structflow_ros.data.synthetic.photo_textures import MIP_LEVELS, PhotoTextures

SIZE = 32


def solid(rgb, size=SIZE):
    return np.broadcast_to(np.asarray(rgb, np.float32), (size, size, 3)).copy()


def checkerboard(size=SIZE):
    # one-texel black and white squares: any level above 0 averages them to grey
    board = (np.indices((size, size)).sum(axis=0) % 2).astype(np.float32)
    return np.repeat(board[:, :, None], 3, axis=2)


def gradient(size=SIZE):
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    return np.repeat(np.broadcast_to(ramp, (size, size))[:, :, None], 3, axis=2).copy()


def test_sample_picks_the_texture_and_mirrors_the_tiles():
    bank = PhotoTextures(np.stack([solid((1, 0, 0)), gradient()]))
    n = 5
    red = bank.sample(np.zeros(n), np.linspace(0, 3, n), np.zeros(n), 1.0, np.zeros(n))
    assert red == pytest.approx(np.tile([1, 0, 0], (n, 1)))
    # Index wraps around the bank; the gradient runs along u, 0 -> 1 over one tile.
    u = np.array([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 2.25])
    along = bank.sample(np.full(u.size, 3), u, np.zeros(u.size), 1.0, np.zeros(u.size))[:, 0]
    assert along == pytest.approx([0.0, 0.25, 0.5, 1.0, 0.5, 0.0, 0.25], abs=1e-6)
    # Mirrored tiling: no seam at a tile's edge, and a period of two tiles.
    tile = 0.7
    edge = bank.sample(np.ones(2), [tile - 1e-4, tile + 1e-4], [0, 0], tile, [0, 0])
    assert edge[0] == pytest.approx(edge[1], abs=1e-3)
    period = bank.sample(np.ones(2), [0.3, 0.3 + 2 * tile], [0.1, 0.1 - 2 * tile], tile, [0, 0])
    assert period[0] == pytest.approx(period[1], abs=1e-5)


def test_far_surfaces_sample_a_coarser_level():
    bank = PhotoTextures(checkerboard()[None])
    assert len(bank.levels) == MIP_LEVELS
    # Texel centres, so that bilinear filtering itself mixes nothing.
    u = np.random.default_rng(0).integers(0, SIZE, 200) / (SIZE - 1)
    v = np.random.default_rng(1).integers(0, SIZE, 200) / (SIZE - 1)
    near = bank.sample(np.zeros(200), u, v, 1.0, np.full(200, 0.1 / SIZE))
    far = bank.sample(np.zeros(200), u, v, 1.0, np.full(200, 4.0 / SIZE))
    assert np.std(near[:, 0]) > 0.45       # the squares, when a pixel is smaller than a texel
    assert far == pytest.approx(0.5, abs=1e-6)  # their mean, when it covers 4 texels


def test_from_images_crops_linearises_and_refuses_bad_input():
    image = np.zeros((60, 80, 3), np.uint8)
    image[..., 1] = 128
    bank = PhotoTextures.from_images([image], crops_per_image=3, seed=1)
    assert bank.textures.shape == (3, 128, 128, 3)
    assert bank.textures[..., 1] == pytest.approx((128 / 255) ** 2.2, abs=1e-4)
    assert bank.textures[..., 0].max() == 0
    with pytest.raises(ValueError, match='uint8 RGB'):
        PhotoTextures.from_images([np.zeros((60, 80), np.uint8)])
    with pytest.raises(ValueError, match='too small'):
        PhotoTextures.from_images([np.zeros((10, 10, 3), np.uint8)])
    with pytest.raises(ValueError, match='no image'):
        PhotoTextures.from_images([])
    with pytest.raises(ValueError, match='S >= 16'):
        PhotoTextures(np.zeros((1, 8, 8, 3), np.float32))


def test_from_specs_reads_a_folder_and_names_a_missing_one(tmp_path):
    folder = tmp_path / 'frames'
    folder.mkdir()
    for i in range(30):
        cv2.imwrite(str(folder / f'{i:03d}.png'), np.full((48, 64, 3), 8 * i, np.uint8))
    bank = PhotoTextures.from_specs([str(folder)], frames_per_source=5)
    assert len(bank) == 10 and bank.sources == (str(folder),)
    # Frames spread over the whole folder, not the first five.
    assert bank.textures.max() > ((8 * 20) / 255) ** 2.2
    with pytest.raises(SourceError, match='nowhere'):
        PhotoTextures.from_specs([str(tmp_path / 'nowhere')])


def test_textured_room_keeps_its_ground_truth_and_shows_the_photos():
    red = PhotoTextures(solid((0.9, 0.0, 0.0), 128)[None])
    plain = list(render_sequence('room', 3, 48, 64, seed=31))
    textured = list(render_sequence('room', 3, 48, 64, seed=31, textures=red))
    again = list(render_sequence('room', 3, 48, 64, seed=31, textures=red))
    for a, b, c in zip(plain, textured, again):
        # Only what the surfaces look like changes: depth, flow and occlusion are the same.
        assert np.array_equal(a.depth, b.depth) and np.array_equal(a.flow, b.flow)
        assert np.array_equal(a.occlusion, b.occlusion)
        assert np.array_equal(b.rgb, c.rgb)

    def reddish(frames):
        rgb = np.stack([f.rgb.astype(int) for f in frames])
        return np.mean((rgb[..., 0] > rgb[..., 1] + 60) & (rgb[..., 0] > rgb[..., 2] + 60))
    assert reddish(textured) > reddish(plain) + 0.05
    with pytest.raises(ValueError, match='room scenes only'):
        open_renderer('day', 2, 48, 64, textures=red)


def test_render_cli_textures_rooms_and_refuses_streets_only(tmp_path, capsys):
    folder = tmp_path / 'photos'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(folder / f'{i}.png'), rng.integers(0, 255, (64, 64, 3), np.uint8))

    def render(*extra):
        argv = ['--domain', 'room', '--frames', '2', '--size', '64x48', '--seed', '31',
                '--no-progress', *extra]
        return render_cli.main(render_cli.get_args_parser().parse_args(argv))

    assert render('--out', str(tmp_path / 'plain')) == 0
    assert render('--out', str(tmp_path / 'photo'), '--photo-textures', str(folder)) == 0
    meta = json.loads((tmp_path / 'photo' / 'room' / 'camera.json').read_text())
    assert meta['photo_textures'] == [str(folder)]
    plain = cv2.imread(str(tmp_path / 'plain' / 'room' / 'rgb' / '000000.png'))
    photo = cv2.imread(str(tmp_path / 'photo' / 'room' / 'rgb' / '000000.png'))
    assert np.abs(plain.astype(int) - photo.astype(int)).max() > 50
    assert np.array_equal(np.load(tmp_path / 'plain' / 'room' / 'depth' / '000000.npy'),
                          np.load(tmp_path / 'photo' / 'room' / 'depth' / '000000.npy'))
    capsys.readouterr()
    argv = ['--domain', 'day', '--frames', '2', '--out', str(tmp_path / 'day'),
            '--photo-textures', str(folder), '--no-progress']
    assert render_cli.main(render_cli.get_args_parser().parse_args(argv)) == 2
    assert 'room domains: room, desk' in capsys.readouterr().err


def test_finetune_refuses_photo_textures_without_a_room(tmp_path, capsys):
    from structflow_ros.cli import finetune
    argv = ['--scratch', '--supervised', '--data', 'synthetic:day:4:1', '--photo-textures',
            str(tmp_path), '--steps', '1', '--out', str(tmp_path / 'ft')]
    assert finetune.main(finetune.get_args_parser().parse_args(argv)) == 2
    assert '--data has no room scene' in capsys.readouterr().err
    assert not (tmp_path / 'ft' / 'last.pt').exists()
