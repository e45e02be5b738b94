"""Issue 10's pieces for real cameras: data specs (crop, repeated frames, stride, calibration),
`structflow calibrate`, random-crop training at every aspect, aspect-preserving serving, and
finetuning on calibrated video. Tiny sizes and a few steps; real data only where named."""
import json

import cv2
import numpy as np
import pytest
import torch
import yaml

from structflow_ros.cli import calibrate as calibrate_cli
from structflow_ros.cli import finetune
from structflow_ros.core import ModelConfig, build_model
from structflow_ros.core.config import aspect_network_size
from structflow_ros.core.inference import DepthPredictor
from structflow_ros.data.calibration import (CalibrationError, CameraCalibration,
                                             load_calibration, load_camera_info_yaml)
from structflow_ros.data.pairs import FramePairDataset, PairSamplingConfig
from structflow_ros.data.video_spec import PreparedSource, VideoSpec
from structflow_ros.online.server import keeps_aspect
from structflow_ros.training import datasets


def run(module, argv):
    return module.main(module.get_args_parser().parse_args(argv))


def textured(height, width, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def write_folder(path, frames):
    path.mkdir(parents=True, exist_ok=True)
    for index, rgb in enumerate(frames):
        cv2.imwrite(str(path / f'{index:04d}.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def moving_clip(count, height=120, width=200, step=3, repeat_every=0):
    """A camera panning over a texture; with repeat_every, every n-th frame is repeated (the
    25-in-30 fps pattern of real dashcam files)."""
    world = textured(height, width + step * count + 8, 1)
    frames = []
    for index in range(count):
        frame = np.ascontiguousarray(world[:, index * step:index * step + width])
        frames.append(frame)
        if repeat_every and index % repeat_every == repeat_every - 1:
            frames.append(frame.copy())
    return frames


# --- data specs -------------------------------------------------------------------------------


def test_spec_parses_options_and_rejects_bad_ones_with_the_accepted_form():
    spec = VideoSpec.parse('clip.mp4#crop=0:0.2:0:0.1,stride=3,max=40,dedupe=0')
    assert spec.crop == (0.0, 0.2, 0.0, 0.1) and spec.stride == 3 and spec.max_frames == 40
    assert spec.dedupe is False and spec.path == 'clip.mp4'
    assert VideoSpec.parse('clip.mp4').crop == (0, 0, 0, 0)
    for bad, words in (('clip.mp4#zoom=2', 'accepted: crop='), ('clip.mp4#crop=0:1', 'T:B:L:R'),
                       ('clip.mp4#stride=0', 'stride must be >= 1'),
                       ('clip.mp4#crop=0.5:0.5:0:0', r'top\+bottom')):
        with pytest.raises(ValueError, match=words):
            VideoSpec.parse(bad)


def test_prepared_source_crops_drops_repeats_and_strides_counting_distinct_frames(tmp_path):
    frames = moving_clip(12, repeat_every=3)  # 12 distinct frames + 4 repeats
    folder = write_folder(tmp_path / 'clip', frames)
    source = PreparedSource(VideoSpec.parse(f'{folder}#crop=0:0.25:0:0.1'))
    kept = list(source)
    assert source.duplicates == 4 and len(kept) == 12
    assert kept[0].image.shape == (90, 180, 3)  # 120 - 30 rows, 200 - 20 columns
    np.testing.assert_array_equal(kept[1].image, frames[1][:90, :180])
    # The index stays the file's (repeats count there), so ground truth would still line up.
    assert [f.index for f in kept[:5]] == [0, 1, 2, 4, 5]
    strided = list(PreparedSource(VideoSpec.parse(f'{folder}#stride=3')))
    assert [f.index for f in strided] == [0, 4, 8, 12]  # every 3rd distinct frame
    assert len(list(PreparedSource(VideoSpec.parse(f'{folder}#dedupe=0')))) == 16


def test_random_crops_train_every_size_with_one_window_for_both_frames():
    still = [textured(150, 260, 3)] * 2  # two identical frames: the same window must match
    moving = moving_clip(6, 150, 260)
    sizes = ((64, 160), (96, 96), (128, 64))
    config = PairSamplingConfig(height=64, width=160, sizes=sizes, skip_static=False,
                                augment=False, strides=(1,), shuffle_buffer=1)
    pairs = list(FramePairDataset([still, moving], config))
    assert {tuple(p['frame0'].shape[-2:]) for p in pairs} <= set(sizes)
    still_pairs = [p for p in pairs if p['source'] == 'source0']
    assert still_pairs and torch.equal(still_pairs[0]['frame0'], still_pairs[0]['frame1'])
    dataset = FramePairDataset([moving_clip(30, 150, 260)], config)
    batches = list(zip(range(6), datasets.infinite_batches(dataset, 3)))
    for _, batch in batches:
        assert batch['frame0'].shape[0] == 3 and batch['frame0'].shape[-2:] in sizes


def test_bucketed_batches_say_so_when_no_pair_ever_comes():
    config = PairSamplingConfig(height=64, width=64, sizes=((64, 64),))
    dataset = FramePairDataset([[textured(64, 64, 1)] * 3], config)  # static: every pair skipped
    with pytest.raises(ValueError, match='gave no pair'):
        next(datasets.infinite_batches(dataset, 2))


# --- calibration ------------------------------------------------------------------------------


BOARD = (7, 5)  # inner corners
TRUE_K = np.array([[400.0, 0, 318.0], [0, 400.0, 242.0], [0, 0, 1]])


def board_views(count=8):
    """Views of a chessboard through a known pinhole camera (homography of the planar board)."""
    square = 60  # board pixels; squares end up 30-45 image pixels (cornerSubPix needs > 23)
    cols, rows = BOARD[0] + 1, BOARD[1] + 1
    board = np.kron((np.indices((rows, cols)).sum(0) % 2) * 255,
                    np.ones((square, square))).astype(np.uint8)
    board = cv2.copyMakeBorder(board, square, square, square, square, cv2.BORDER_CONSTANT,
                               value=255)
    views = []
    for index in range(count):
        angle_x, angle_y = 0.35 * np.sin(index * 1.3), 0.35 * np.cos(index * 0.9)
        R, _ = cv2.Rodrigues(np.array([angle_x, angle_y, 0.05 * index]))
        t = np.array([-0.3 + 0.02 * index, -0.24, 0.75 + 0.03 * index])
        # Board pixel (u, v) -> metres (u, v) * 0.001 on the board plane z = 0.
        scale = np.diag([0.001, 0.001, 1.0])
        H = TRUE_K @ np.column_stack([R[:, 0], R[:, 1], t]) @ scale
        image = cv2.warpPerspective(board, H, (640, 480), borderValue=128)
        views.append((f'view{index}', cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)))
    return views


def test_calibrate_recovers_a_known_camera_and_writes_camera_info_yaml(tmp_path):
    folder = tmp_path / 'boards'
    folder.mkdir()
    for name, image in board_views():
        cv2.imwrite(str(folder / f'{name}.png'), image)
    cv2.imwrite(str(folder / 'odd_size.png'), np.zeros((100, 100, 3), np.uint8))
    out = tmp_path / 'camera.yaml'
    assert run(calibrate_cli, [str(folder), '--pattern', f'{BOARD[0]}x{BOARD[1]}',
                               '--camera-name', 'test_cam', '--out', str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    # camera_calibration's format, which camera_info_manager reads.
    assert doc['image_width'] == 640 and doc['image_height'] == 480
    assert doc['camera_name'] == 'test_cam' and doc['distortion_model'] == 'plumb_bob'
    assert len(doc['projection_matrix']['data']) == 12
    calibration = load_camera_info_yaml(out)
    assert calibration.K[0, 0] == pytest.approx(400.0, rel=0.02)
    assert calibration.K[0, 2] == pytest.approx(318.0, abs=4)
    assert calibration.rms_px is None  # the RMS lives in the comment line, for people
    assert 'reprojection RMS' in out.read_text().splitlines()[0]


def test_calibrate_with_too_few_boards_fails_in_one_line(tmp_path, capsys):
    folder = tmp_path / 'blank'
    folder.mkdir()
    for index in range(3):
        cv2.imwrite(str(folder / f'{index}.png'), textured(120, 160, index))
    assert run(calibrate_cli, [str(folder), '--out', str(tmp_path / 'c.yaml')]) == 2
    err = capsys.readouterr().err
    assert 'found in 0 of 3 views' in err and not (tmp_path / 'c.yaml').exists()
    assert run(calibrate_cli, [str(folder), '--pattern', '9', '--out', 'x.yaml']) == 2
    assert 'COLUMNSxROWS' in capsys.readouterr().err


def test_bad_calibration_files_are_refused_with_the_reason(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('image_width: 10\nimage_height: 10\ncamera_matrix: {rows: 3, cols: 3, '
                    'data: [1, 0]}\n')
    with pytest.raises(CalibrationError, match='camera_matrix must be'):
        load_camera_info_yaml(path)
    path.write_text('[1, 2]')
    with pytest.raises(CalibrationError, match='not a camera_info YAML'):
        load_camera_info_yaml(path)


def test_udacity_chessboards_give_the_documented_calibration(shared_data, tmp_path):
    out = tmp_path / 'udacity.yaml'
    assert run(calibrate_cli, [str(shared_data / 'udacity_calibrated_video' / 'camera_cal'),
                               '--pattern', '9x6', '--out', str(out)]) == 0
    reference = json.loads((shared_data / 'udacity_calibrated_video' / 'calib.json')
                           .read_text())['recommended']
    calibration = load_camera_info_yaml(out)
    assert calibration.K[0, 0] == pytest.approx(reference['fx'], rel=1e-3)
    assert calibration.D == pytest.approx(reference['dist'], abs=1e-3)
    assert f"RMS {reference['rms_reprojection_px']:.3f} px over 15 views" in out.read_text()


# --- calibrated video for self-supervised depth -----------------------------------------------


def write_camera(path, K, width, height):
    P = np.hstack([K, np.zeros((3, 1))])
    CameraCalibration(width, height, K, np.zeros(5), P, 'synthetic').save(path)
    return path


def test_calibrated_video_triplets_carry_the_intrinsics_of_the_crop(tmp_path):
    frames = moving_clip(8, 120, 200)
    folder = write_folder(tmp_path / 'video', frames)
    K = np.array([[150.0, 0, 99.5], [0, 150.0, 59.5], [0, 0, 1]])
    camera = write_camera(tmp_path / 'cam.yaml', K, 200, 120)
    assert load_calibration(camera, (120, 200)).undistorted_K == pytest.approx(K)
    # Crop 20 rows off the top: cy moves up by 20; the whole (cropped) frame is resized.
    dataset = datasets.CalibratedVideoDataset([f'{folder}#calib={camera},crop=0.1667:0:0:0'],
                                              sizes=((64, 128),), crop_scale=(1.0, 1.0),
                                              flip=False, static_threshold=0.0)
    sample = next(iter(dataset))
    assert sample['frame0'].shape == (3, 64, 128) and set(sample) == {
        'frame_prev', 'frame0', 'frame1', 'K'}
    # By hand: 100x200 -> 64x128 scales by 0.64; centres follow (c + 0.5) * 0.64 - 0.5.
    expected = np.array([[96.0, 0, 63.5], [0, 96.0, (59.5 - 20 + 0.5) * 0.64 - 0.5], [0, 0, 1]])
    assert sample['K'].numpy() == pytest.approx(expected.astype(np.float32), rel=1e-5)
    with pytest.raises(ValueError, match='no calib=FILE'):
        datasets.CalibratedVideoDataset([str(folder)], sizes=((64, 128),))
    wrong = write_camera(tmp_path / 'wrong.yaml', K, 640, 480)
    with pytest.raises(ValueError, match='calibrates 640x480'):
        datasets.CalibratedVideoDataset([f'{folder}#calib={wrong}'], sizes=((64, 128),))


def test_finetune_on_calibrated_video_with_random_crops(tmp_path):
    frames = moving_clip(10, 120, 200)
    folder = write_folder(tmp_path / 'video', frames)
    camera = write_camera(tmp_path / 'cam.yaml', np.array([[150.0, 0, 99.5], [0, 150.0, 59.5],
                                                           [0, 0, 1]]), 200, 120)
    out = tmp_path / 'ft'
    assert run(finetune, ['--scratch', '--supervised', '--self-supervised',
                          '--data', 'synthetic:day:24:1', 'synthetic:room:12:2',
                          '--video', f'{folder}#calib={camera}',
                          '--random-crops', '--color-jitter', '--camera-artefacts',
                          '--photo-textures', str(folder),
                          '--steps', '4', '--batch-size', '2',
                          '--device', 'cpu', '--threads', '1', '--no-progress',
                          '--out', str(out)]) == 0
    summary = json.loads((out / 'summary.json').read_text())
    history = [json.loads(line) for line in (out / 'history.jsonl').read_text().splitlines()]
    assert summary['steps'] == 4
    # Batches alternate: synthetic (supervised + self-supervised) and real video
    # (self-supervised only), so both losses ran.
    assert any(h.get('loss_depth_selfsup', 0) > 0 for h in history)
    assert any(h.get('loss_depth_supervised', 0) > 0 for h in history)
    from structflow_ros.core import read_checkpoint
    train_config = read_checkpoint(out / 'last.pt')['train_config']
    assert train_config['random_crops'] is True and train_config['color_jitter'] is True
    assert train_config['camera_artefacts'] is True
    assert train_config['photo_textures'] == [str(folder)]
    assert train_config['training_sizes'] == [list(s) for s in datasets.TRAINING_SIZES]


def test_video_without_self_supervised_is_refused(tmp_path, capsys):
    assert run(finetune, ['--scratch', '--supervised', '--video', 'x.mp4#calib=c.yaml',
                          '--out', str(tmp_path)]) == 2
    assert 'add --self-supervised' in capsys.readouterr().err


# --- serving at the camera's aspect -----------------------------------------------------------


@pytest.mark.parametrize('frame_hw, expected', [
    ((375, 1242), (96, 320)), ((900, 1600), (128, 224)), ((480, 640), (160, 224)),
    ((848, 480), (224, 128)), ((96, 320), (96, 320))])
def test_aspect_network_size_keeps_shape_and_pixel_budget(frame_hw, expected):
    size = aspect_network_size(*frame_hw, 96 * 320)
    assert size == expected and size[0] % 32 == 0 and size[1] % 32 == 0
    assert 0.75 <= size[0] * size[1] / (96 * 320) <= 1.35


def test_predictor_keeps_each_cameras_aspect(tmp_path):
    model = build_model(ModelConfig(height=64, width=128, flow_branch=False,
                                    pose_branch=False)).eval()
    squash = DepthPredictor(model)
    keep = DepthPredictor(model, keep_aspect=True)
    portrait = textured(200, 100, 1)
    square = textured(100, 100, 2)
    assert squash.preprocess(portrait).shape[-2:] == (64, 128)
    assert keep.preprocess(portrait).shape[-2:] == (128, 64)
    assert keep.preprocess(square).shape[-2:] == (96, 96)
    for image in (portrait, square, portrait):
        depth = keep.predict(image)
        assert depth.shape == image.shape[:2] and np.isfinite(depth).all()
    assert len(keep._runners) == 3  # the model size built at start + one per camera shape
    assert keeps_aspect('auto', {'extra': {'serving': 'keep_aspect'}})
    assert not keeps_aspect('auto', {'extra': {}}) and keeps_aspect('keep', {})
    with pytest.raises(ValueError, match='auto, keep, squash'):
        keeps_aspect('stretch', {})


def test_near_vehicle_check_compares_the_box_with_what_stands_behind_it():
    from structflow_ros.data.real_depth_eval import VehicleBox, near_vehicle_checks
    gt = np.zeros((100, 100), np.float32)
    gt[20:60, 30:70] = 30.0  # road and houses behind, sparse enough
    gt[60:90, 30:70] = 5.0   # the car
    car = VehicleBox('f', 'car', (30, 60, 70, 90), 5.0)
    sharp = np.where(np.arange(100)[:, None] >= 60, 5.0, 30.0) * np.ones((1, 100))
    [check] = near_vehicle_checks([car], 'f', sharp.astype(np.float32), gt)
    assert check['nearer'] and check['pred_ratio_behind_over_vehicle'] == pytest.approx(6.0)
    blurred = np.full((100, 100), 10.0, np.float32)
    blurred[60:90, 30:70] = 12.0  # the car comes out farther than the road behind it
    assert near_vehicle_checks([car], 'f', blurred, gt)[0]['nearer'] is False
    far = VehicleBox('f', 'car', (30, 60, 70, 90), 40.0)
    assert near_vehicle_checks([far, car], 'other', sharp, gt) == []
