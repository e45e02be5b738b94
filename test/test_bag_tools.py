"""`structflow bag from-video` and `structflow play`: a video becomes a real bag that replays;
`play` delivers a bag's frames to a subscriber in another process with the original stamps
(over real DDS; the player is its own process)."""
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import yaml

from sensor_msgs.msg import CameraInfo, Image

from structflow_ros.cli import bag as bag_cli
from structflow_ros.data import bag_io, image_codec

from dds_helpers import Client, wait_until


def write_video(path, count=12, width=96, height=64):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 10.0, (width, height))
    base = np.random.default_rng(0).integers(0, 255, (height, width * 2, 3), dtype=np.uint8)
    for index in range(count):
        writer.write(np.ascontiguousarray(base[:, index:index + width]))
    writer.release()
    return path


def calibration_yaml(path, width=192, height=128):
    path.write_text(yaml.safe_dump({
        'image_width': width, 'image_height': height, 'camera_name': 'test',
        'camera_matrix': {'rows': 3, 'cols': 3,
                          'data': [200.0, 0, 95.5, 0, 200.0, 63.5, 0, 0, 1]},
        'distortion_model': 'plumb_bob',
        'distortion_coefficients': {'rows': 1, 'cols': 5, 'data': [0.1, -0.05, 0, 0, 0]}}))
    return path


def from_video(*argv):
    return bag_cli.main(bag_cli.get_args_parser().parse_args(
        ['from-video', *map(str, argv), '--no-progress']))


def test_from_video_writes_a_bag_with_stamps_and_scaled_camera_info(tmp_path):
    video = write_video(tmp_path / 'clip.mp4')
    out = tmp_path / 'bag'
    assert from_video(video, '--out', out, '--rate', 5, '--camera-info',
                      calibration_yaml(tmp_path / 'cam.yaml')) == 0
    topics = bag_io.list_topics(out)
    assert topics == {'/camera/image_raw': bag_io.IMAGE_MSGTYPE,
                      '/camera/camera_info': bag_io.CAMERA_INFO_MSGTYPE}
    images = [m for _, _, m in bag_io.read_messages(out, '/camera/image_raw')]
    assert len(images) == 12
    stamps = [bag_io.header_stamp_ns(m) for m in images]
    assert np.all(np.diff(stamps) == 200_000_000)  # 5 Hz
    first = image_codec.decode_image_msg(images[0])
    assert first.shape == (64, 96, 3)
    reference = cv2.VideoCapture(str(video)).read()[1]
    np.testing.assert_array_equal(first, cv2.cvtColor(reference, cv2.COLOR_BGR2RGB))
    info = bag_io.read_camera_info(out, '/camera/camera_info')
    # Calibrated at 192x128, written at 96x64: K halves (pixel-centre rule for the centre).
    assert (info.width, info.height) == (96, 64)
    np.testing.assert_allclose(info.K, [[100, 0, 47.5], [0, 100, 31.5], [0, 0, 1]])


def test_from_video_bad_input(tmp_path, capsys):
    assert from_video(tmp_path / 'none.mp4', '--out', tmp_path / 'b') == bag_cli.EXIT_BAD_INPUT
    assert 'does not exist' in capsys.readouterr().err
    video = write_video(tmp_path / 'clip.mp4', count=2)
    (tmp_path / 'bad.yaml').write_text('image_width: 10\n')
    assert from_video(video, '--out', tmp_path / 'b', '--camera-info',
                      tmp_path / 'bad.yaml') == bag_cli.EXIT_BAD_INPUT
    assert 'camera_matrix.data' in capsys.readouterr().err
    (tmp_path / 'exists').mkdir()
    assert from_video(video, '--out', tmp_path / 'exists') == bag_cli.EXIT_BAD_INPUT
    assert 'already exists' in capsys.readouterr().err


@pytest.mark.ros
def test_play_delivers_frames_to_another_process_with_the_original_stamps(ros_env,
                                                                          tmp_path):
    video = write_video(tmp_path / 'clip.mp4', count=20)
    bag = tmp_path / 'bag'
    assert from_video(video, '--out', bag, '--rate', 20, '--camera-info',
                      calibration_yaml(tmp_path / 'cam.yaml')) == 0
    recorded = [bag_io.header_stamp_ns(m)
                for _, _, m in bag_io.read_messages(bag, '/camera/image_raw')]
    client = Client(int(ros_env['ROS_DOMAIN_ID']))
    client.subscribe('/camera/image_raw', Image)
    client.subscribe('/camera/camera_info', CameraInfo)
    player = None
    try:
        # The player publishes at once; wait until our subscription is matched by starting it
        # looped, then count one full pass.
        player = subprocess.Popen(
            [sys.executable, '-m', 'structflow_ros.cli', 'play', str(bag), '--loop'],
            env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def a_full_pass():
            stamps = [m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec
                      for m in client.messages('/camera/image_raw')]
            return set(recorded) <= set(stamps)
        wait_until(a_full_pass, 90, 'every recorded frame delivered by structflow play')
        got = client.messages('/camera/image_raw')[-1]
        assert (got.height, got.width, got.encoding) == (64, 96, 'rgb8')
        info = client.messages('/camera/camera_info')[-1]
        assert info.k[0] == pytest.approx(100.0)
        # Paced at the recorded rate: 20 frames at 20 Hz take about a second per pass.
        # (Counted with the uncapped total: the stored list keeps only the newest 100, and a
        # slow start under load can loop the bag past that before this point.)
        count = client.total('/camera/image_raw')
        started = time.monotonic()
        while client.total('/camera/image_raw') < count + 10:
            assert time.monotonic() - started < 30
            time.sleep(0.02)
        assert time.monotonic() - started > 0.3  # 10 frames at 20 Hz: 0.5 s, not a burst
    finally:
        if player is not None:
            player.send_signal(2)
            try:
                player.wait(20)
            except subprocess.TimeoutExpired:
                player.kill()
        client.close()
    assert player.returncode in (0, 130), player.stdout.read()


def test_play_refuses_a_missing_topic(tmp_path, capsys):
    from structflow_ros.cli import play
    video = write_video(tmp_path / 'clip.mp4', count=2)
    assert from_video(video, '--out', tmp_path / 'bag') == 0
    args = play.get_args_parser().parse_args([str(tmp_path / 'bag'), '--topics', '/nope'])
    assert play.main(args) == play.EXIT_BAD_INPUT
    assert 'has no topic /nope; topics: /camera/image_raw' in capsys.readouterr().err
