"""Video sources on real files: MP4 (OpenCV), PNG folders, sqlite3 and MCAP bags (rosbags)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from structflow_ros.data import bag_io
from structflow_ros.data.bag_io import BagWriter
from structflow_ros.data.image_codec import encode_compressed
from structflow_ros.data.sources import (
    ArraySource, BagSource, Frame, ImageFolderSource, list_image_topics, open_source,
    SourceError, VideoFileSource, VideoSource)

HEIGHT, WIDTH = 24, 32
STAMP0 = 1_700_000_000_123_456_789


def make_frames(count, seed=0):
    """Smooth moving patterns (video codecs keep them close) with a per-frame noise texture."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    noise = np.random.default_rng(seed).integers(0, 40, (count, HEIGHT, WIDTH, 3))
    frames = []
    for i in range(count):
        base = np.stack([(cols * 6 + i * 10) % 200, rows * 8, np.full_like(cols, 60 + 10 * i)],
                        axis=-1)
        frames.append((base + noise[i]).astype(np.uint8))
    return frames


def write_mp4(path, frames, fps=10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (WIDTH, HEIGHT))
    assert writer.isOpened(), 'OpenCV cannot write mp4v here'
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_mp4_read_back_within_codec_tolerance(tmp_path):
    frames = [cv2.GaussianBlur(f, (5, 5), 0) for f in make_frames(12)]
    path = tmp_path / 'clip.mp4'
    write_mp4(path, frames, fps=10)
    source = open_source(path)
    assert isinstance(source, VideoFileSource) and len(source) == 12
    read = list(source)
    assert [f.index for f in read] == list(range(12))
    assert [f.stamp_ns for f in read] == [i * 100_000_000 for i in range(12)]
    for got, want in zip(read, frames):
        assert got.image.shape == (HEIGHT, WIDTH, 3) and got.image.dtype == np.uint8
        assert np.abs(got.image.astype(int) - want).mean() < 6.0
    # Each frame is closest to its own original: order and content are right.
    errors = np.array([[np.abs(g.image.astype(int) - w).mean() for w in frames] for g in read])
    assert (errors.argmin(axis=1) == np.arange(12)).all()
    strided = VideoFileSource(path, stride=3, max_frames=3)
    assert [f.index for f in strided] == [0, 3, 6] and len(strided) == 3


def test_png_folder_exact_and_in_natural_order(tmp_path):
    frames = make_frames(12)
    for i, frame in enumerate(frames):  # frame2 must come before frame10
        cv2.imwrite(str(tmp_path / f'frame{i}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (tmp_path / 'notes.txt').write_text('not an image')
    source = open_source(tmp_path, fps=20)
    assert isinstance(source, ImageFolderSource) and len(source) == 12
    read = list(source)
    for i, frame in enumerate(read):
        np.testing.assert_array_equal(frame.image, frames[i])
        assert frame.index == i and frame.stamp_ns == i * 50_000_000
    assert len(list(source)) == 12  # re-iterable
    assert [f.index for f in ImageFolderSource(tmp_path, stride=5)] == [0, 5, 10]


RAW_ENCODINGS = ('rgb8', 'bgr8', 'mono8', 'mono16', 'rgba8', 'bgra8')


def expected_decoded(frame, encoding):
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if encoding in ('mono8', 'mono16'):
        return np.repeat(grey[..., None], 3, axis=2)
    return frame


@pytest.fixture(params=['sqlite3', 'mcap'])
def image_bag(request, tmp_path):
    """A bag with every raw encoding, PNG and JPEG CompressedImage, depth and camera info."""
    frames = make_frames(4)
    path = tmp_path / f'bag_{request.param}'
    K = np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    with BagWriter(path, storage=request.param) as bag:
        for i, frame in enumerate(frames):
            stamp = STAMP0 + i * 33_333_333
            for encoding in RAW_ENCODINGS:
                bag.write_image(f'/cam/{encoding}', stamp, frame, encoding=encoding)
            bag.write_compressed('/cam/png', stamp, frame, fmt='png')
            bag.write_compressed('/cam/jpeg', stamp, cv2.GaussianBlur(frame, (5, 5), 0))
            bag.write_image('/cam/depth', stamp, np.full((HEIGHT, WIDTH), 2.5, np.float32),
                            encoding='32FC1')
            bag.write_camera_info('/cam/info', stamp, K, WIDTH, HEIGHT)
    return path, frames, request.param


def test_bag_round_trip_every_encoding(image_bag):
    path, frames, storage = image_bag
    topics = list_image_topics(path)
    assert set(topics) == {f'/cam/{e}' for e in RAW_ENCODINGS + ('png', 'jpeg', 'depth')}
    assert topics['/cam/png'] == 'sensor_msgs/msg/CompressedImage'
    stamps = [STAMP0 + i * 33_333_333 for i in range(4)]
    for encoding in RAW_ENCODINGS + ('png',):
        source = open_source(path, topic=f'/cam/{encoding}')
        assert isinstance(source, BagSource) and len(source) == 4
        read = list(source)
        assert [f.stamp_ns for f in read] == stamps
        for got, want in zip(read, frames):
            np.testing.assert_array_equal(got.image, expected_decoded(want, encoding),
                                          err_msg=f'{storage} {encoding}')
    for got, want in zip(BagSource(path, topic='/cam/jpeg'), frames):
        assert np.abs(got.image.astype(int) - cv2.GaussianBlur(want, (5, 5), 0)).mean() < 3.0
    K, width, height = bag_io.read_camera_info(path, '/cam/info')
    assert (width, height) == (WIDTH, HEIGHT) and K[0, 0] == 30.0 and K[1, 2] == 12
    depths = [bag_io.decode_depth_msg(m) for _, _, m in bag_io.read_messages(path, '/cam/depth')]
    assert len(depths) == 4 and all(np.all(d == 2.5) for d in depths)
    with pytest.raises(SourceError, match='depth encoding'):
        list(BagSource(path, topic='/cam/depth'))


def test_mcap_bag_is_valid_for_an_independent_reader(tmp_path):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    frames = make_frames(3)
    with BagWriter(tmp_path / 'bag', storage='mcap') as bag:
        for i, frame in enumerate(frames):
            bag.write_image('/cam/image', STAMP0 + i, frame, encoding='bgr8', frame_id='cam0')
    files = list((tmp_path / 'bag').glob('*.mcap'))
    assert len(files) == 1
    with open(files[0], 'rb') as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        messages = list(reader.iter_decoded_messages())
    assert [(s.name, s.encoding, c.topic) for s, c, _, _ in messages] == [
        ('sensor_msgs/msg/Image', 'ros2msg', '/cam/image')] * 3
    for i, (_, _, _, msg) in enumerate(messages):
        assert msg.header.frame_id == 'cam0' and msg.encoding == 'bgr8'
        assert msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec == STAMP0 + i
        pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(HEIGHT, WIDTH, 3)
        np.testing.assert_array_equal(pixels[..., ::-1], frames[i])
    # The single .mcap file also opens as a source on its own.
    assert len(list(open_source(files[0]))) == 3


def test_rclpy_deserialises_the_bag_bytes(tmp_path):
    """Real ROS 2 reads the CDR that rosbags wrote (what `ros2 bag play` would publish)."""
    serialization = pytest.importorskip('rclpy.serialization')
    image_module = pytest.importorskip('sensor_msgs.msg')
    frame = make_frames(1)[0]
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_image('/cam/image', STAMP0, frame)
    reader = bag_io.open_reader(tmp_path / 'bag')
    try:
        (_, _, raw), = list(reader.messages())
    finally:
        reader.close()
    msg = serialization.deserialize_message(bytes(raw), image_module.Image)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (HEIGHT, WIDTH, 'rgb8', WIDTH * 3)
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(frame.shape),
                                  frame)


def test_bag_topic_errors_list_topics(tmp_path):
    with BagWriter(tmp_path / 'info_only') as bag:
        bag.write_camera_info('/cam/info', STAMP0, np.eye(3), WIDTH, HEIGHT)
    with pytest.raises(SourceError, match=r'no sensor_msgs.*/cam/info \(sensor_msgs/msg/Camera'):
        open_source(tmp_path / 'info_only')
    frame = make_frames(1)[0]
    with BagWriter(tmp_path / 'two', storage='mcap') as bag:
        bag.write_image('/left/image', STAMP0, frame)
        bag.write_compressed('/right/image/compressed', STAMP0, frame)
    with pytest.raises(SourceError, match='2 image topics.*/left/image, /right/image/compressed'):
        open_source(tmp_path / 'two')
    with pytest.raises(SourceError, match="no image topic '/nope'.*/left/image"):
        open_source(tmp_path / 'two', topic='/nope')


def test_unknown_encoding_in_a_bag_is_an_error_naming_the_accepted_ones(tmp_path):
    types = bag_io.typestore().types
    with BagWriter(tmp_path / 'yuv') as bag:
        header = types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=1, nanosec=0), frame_id='cam')
        msg = types[bag_io.IMAGE_MSGTYPE](header=header, height=2, width=2, encoding='yuv422',
                                          is_bigendian=0, step=4, data=np.zeros(8, np.uint8))
        bag.write_message('/cam/image', bag_io.IMAGE_MSGTYPE, 10 ** 9, msg)
    with pytest.raises(SourceError, match="unsupported image encoding 'yuv422'.*rgb8, bgr8"):
        list(open_source(tmp_path / 'yuv'))


def test_corrupt_message_in_a_bag_is_skipped_and_counted(tmp_path):
    frames = make_frames(5)
    with BagWriter(tmp_path / 'bag', storage='mcap') as bag:
        for i, frame in enumerate(frames):
            payload = encode_compressed(frame, 'png')
            if i == 2:
                payload = payload[:len(payload) // 2]  # truncated in transit
            bag.write_compressed_bytes('/cam/compressed', STAMP0 + i, payload, 'png')
    source = open_source(tmp_path / 'bag')
    with pytest.warns(RuntimeWarning, match='skipped corrupt frame 2'):
        read = list(source)
    assert [f.index for f in read] == [0, 1, 3, 4] and source.skipped == 1
    np.testing.assert_array_equal(read[2].image, frames[3])


def test_corrupt_png_in_a_folder_is_skipped_and_counted(tmp_path):
    frames = make_frames(4)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f'{i:03d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    data = (tmp_path / '001.png').read_bytes()
    (tmp_path / '001.png').write_bytes(data[:40])  # truncated file
    source = ImageFolderSource(tmp_path)
    with pytest.warns(RuntimeWarning, match='skipped corrupt frame 1.*001.png'):
        read = list(source)
    assert [f.index for f in read] == [0, 2, 3] and source.skipped == 1
    np.testing.assert_array_equal(read[1].image, frames[2])


def test_corrupt_frame_in_a_video_is_skipped_and_counted(tmp_path):
    frames = [cv2.GaussianBlur(f, (5, 5), 0) for f in make_frames(10)]
    path = tmp_path / 'clip.avi'
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b'\xff\xd8']  # JPEG SOI
    assert len(starts) == 10
    # Garbage over frame 4 (and the container's chunk header of frame 5).
    data[starts[4]:starts[5]] = np.random.default_rng(0).bytes(starts[5] - starts[4])
    path.write_bytes(bytes(data))
    source = open_source(path)
    with pytest.warns(RuntimeWarning, match='clip.avi: skipped corrupt frame'):
        read = list(source)
    assert source.skipped >= 1 and len(read) + source.skipped == 10
    assert [f.index for f in read[:4]] == [0, 1, 2, 3]
    # The frames after the damage are still there (the stream goes on).
    last = read[-1].image.astype(int)
    assert np.abs(last - frames[9]).mean() < np.abs(last - frames[3]).mean()


def test_bad_inputs_raise_source_errors_that_say_what_is_accepted(tmp_path):
    accepted = 'accepted: a video file'
    with pytest.raises(SourceError, match=f'missing.mp4 does not exist; {accepted}'):
        open_source(tmp_path / 'missing.mp4')
    (tmp_path / 'empty.mp4').write_bytes(b'')
    with pytest.raises(SourceError, match=f'empty.mp4.*{accepted}'):
        open_source(tmp_path / 'empty.mp4')
    (tmp_path / 'garbage.avi').write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(SourceError, match=f'garbage.avi.*{accepted}'):
        open_source(tmp_path / 'garbage.avi')
    (tmp_path / 'table.csv').write_text('a,b\n')
    with pytest.raises(SourceError, match=f'table.csv is not a supported video input; {accepted}'):
        open_source(tmp_path / 'table.csv')
    (tmp_path / 'empty_dir').mkdir()
    with pytest.raises(SourceError, match='empty_dir has no image files; accepted: .png'):
        open_source(tmp_path / 'empty_dir')
    (tmp_path / 'broken.db3').write_bytes(b'not sqlite')
    with pytest.raises(SourceError, match='broken.db3'):
        open_source(tmp_path / 'broken.db3')
    folder = tmp_path / 'pngs'
    folder.mkdir()
    cv2.imwrite(str(folder / 'a.png'), make_frames(1)[0])
    with pytest.raises(SourceError, match='topic=.*only to ROS 2 bags'):
        open_source(folder, topic='/cam')
    (folder / 'a.png').write_bytes(b'junk')
    with pytest.raises(SourceError, match='no decodable frame'), pytest.warns(RuntimeWarning):
        list(open_source(folder))


def test_array_source_and_base_contract():
    frames = make_frames(5)
    source = ArraySource(frames, fps=5, name='mem', max_frames=2)
    assert isinstance(source, VideoSource) and source.name == 'mem' and len(source) == 2
    read = list(source)
    assert all(isinstance(f, Frame) for f in read)
    assert [(f.index, f.stamp_ns) for f in read] == [(0, 0), (1, 200_000_000)]
    with ArraySource(frames) as unknown:
        unknown._raw_num_frames = None
        with pytest.raises(TypeError, match='not known'):
            len(unknown)
    with pytest.raises(SourceError, match='stride'):
        ArraySource(frames, stride=0)


def test_sources_do_not_import_ros():
    import subprocess
    import sys
    code = ('import sys, structflow_ros.data.sources, structflow_ros.data.pairs, '
            'structflow_ros.data.shared_data; '
            'bad = [m for m in sys.modules if m.startswith("rclpy") or m.endswith("_msgs")]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True,
                   cwd=str(Path(__file__).resolve().parents[1]))
