"""Raw and compressed image coding: round trips, padding, endianness and every error."""
import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from structflow_ros.data import image_codec
from structflow_ros.data.image_codec import (
    decode_compressed, decode_depth, decode_image, decode_image_msg, encode_compressed,
    encode_depth16, encode_depth32, encode_image, ImageDecodeError, SUPPORTED_ENCODINGS)


@pytest.fixture
def rgb():
    return np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8'])
def test_colour_round_trip_is_exact(rgb, encoding):
    step, payload = encode_image(rgb, encoding)
    channels = 4 if 'a' in encoding[:4] else 3
    assert step == 7 * channels and len(payload) == step * 5
    decoded = decode_image(encoding, 5, 7, step, payload)
    np.testing.assert_array_equal(decoded, rgb)
    assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous and decoded.flags.writeable


def test_bgr8_really_swaps_channels(rgb):
    step, payload = encode_image(rgb, 'rgb8')
    np.testing.assert_array_equal(decode_image('bgr8', 5, 7, step, payload), rgb[..., ::-1])


def test_mono_encodings(rgb):
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    step, payload = encode_image(rgb, 'mono8')
    decoded = decode_image('mono8', 5, 7, step, payload)
    assert decoded.shape == (5, 7, 3)
    np.testing.assert_array_equal(decoded[..., 1], grey)
    step16, payload16 = encode_image(rgb, 'mono16')
    assert step16 == 14
    np.testing.assert_array_equal(decode_image('mono16', 5, 7, step16, payload16)[..., 0], grey)


def test_mono16_full_range_map_and_big_endian():
    values = np.array([[0, 257, 65535, 128, 1000]], dtype=np.uint16)
    expected = np.round(values / 257.0).astype(np.uint8)
    little = decode_image('mono16', 1, 5, 10, values.astype('<u2').tobytes())
    big = decode_image('mono16', 1, 5, 10, values.astype('>u2').tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(little[..., 0], expected[0:1])
    np.testing.assert_array_equal(big, little)
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    decoded = decode_image('mono16', 256, 256, 512, every.tobytes())[..., 0]
    np.testing.assert_array_equal(decoded, np.round(every / 257.0).astype(np.uint8))


def test_big_endian_mono16_with_odd_step_padding():
    values = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    rows = np.full((3, 9), 7, np.uint8)  # step 9: 8 pixel bytes + 1 padding byte per row
    rows[:, :8] = values.astype('>u2').view(np.uint8).reshape(3, 8)
    decoded = decode_image('mono16', 3, 4, 9, rows.tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(decoded[..., 2], np.round(values / 257.0).astype(np.uint8))


def test_step_padding_is_dropped(rgb):
    padded = np.zeros((5, 7 * 3 + 5), np.uint8)
    padded[:, :21] = rgb.reshape(5, 21)
    padded[:, 21:] = 99  # padding bytes must not leak into the image
    np.testing.assert_array_equal(decode_image('rgb8', 5, 7, 26, padded.tobytes()), rgb)


def test_accepts_rclpy_style_data_types(rgb):
    step, payload = encode_image(rgb, 'rgb8')
    for data in (payload, bytearray(payload), memoryview(payload), array.array('B', payload),
                 np.frombuffer(payload, np.uint8)):
        np.testing.assert_array_equal(decode_image('rgb8', 5, 7, step, data), rgb)


def test_decode_image_msg_dispatches_on_fields(rgb):
    step, payload = encode_image(rgb, 'bgra8')
    raw = SimpleNamespace(encoding='bgra8', height=5, width=7, step=step, data=payload,
                          is_bigendian=0)
    np.testing.assert_array_equal(decode_image_msg(raw), rgb)
    compressed = SimpleNamespace(format='png', data=encode_compressed(rgb, 'png'))
    np.testing.assert_array_equal(decode_image_msg(compressed), rgb)


def test_depth_decoding():
    depth = np.array([[0.5, 1.25, np.nan], [10.0, 0.001, 3.0]], np.float32)
    step, payload = encode_depth32(depth)
    np.testing.assert_array_equal(decode_depth('32FC1', 2, 3, step, payload), depth)
    big = decode_depth('32FC1', 2, 3, step, depth.astype('>f4').tobytes(), is_bigendian=True)
    np.testing.assert_array_equal(big, depth)
    step16, payload16 = encode_depth16(depth)
    metres = decode_depth('16UC1', 2, 3, step16, payload16)
    assert metres.dtype == np.float32
    assert np.isnan(metres[0, 2])  # NaN in, 0 mm on the wire, NaN (no reading) out
    np.testing.assert_allclose(metres[np.isfinite(depth)], depth[np.isfinite(depth)], atol=5e-4)


def test_compressed_round_trip(rgb):
    np.testing.assert_array_equal(decode_compressed(encode_compressed(rgb, 'png'), 'png'), rgb)
    smooth = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_LINEAR)
    decoded = decode_compressed(encode_compressed(smooth, 'jpeg', quality=95), 'jpeg')
    assert decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth).mean() < 3.0


def _error(call, *args, **kwargs):
    with pytest.raises(ImageDecodeError) as info:
        call(*args, **kwargs)
    return str(info.value)


def test_errors_say_what_was_wrong(rgb):
    step, payload = encode_image(rgb, 'rgb8')
    message = _error(decode_image, 'yuv422', 5, 7, step, payload)
    assert 'yuv422' in message and all(e in message for e in SUPPORTED_ENCODINGS)
    assert 'decode_depth' in _error(decode_image, '32FC1', 5, 7, 28, bytes(140))
    assert 'decode_depth' in _error(decode_image, '16UC1', 5, 7, 14, bytes(70))
    message = _error(decode_image, 'rgb8', 5, 7, 20, payload)
    assert 'step 20' in message and '21' in message
    message = _error(decode_image, 'rgb8', 5, 7, step, payload[:-1])
    assert '104' in message and '105' in message
    assert 'zero-size' in _error(decode_image, 'rgb8', 0, 7, step, b'')
    assert 'max_pixels' in _error(decode_image, 'rgb8', 5, 7, step, payload, max_pixels=34)
    assert 'max_pixels' in _error(decode_image, 'mono8', 2 ** 20, 2 ** 20, 2 ** 20, b'')
    assert 'unsupported depth' in _error(decode_depth, 'rgb8', 5, 7, step, payload)


def test_corrupt_compressed_data_is_an_error(rgb):
    jpeg = encode_compressed(cv2.resize(rgb, (64, 48)), 'jpeg')
    assert 'truncated' in _error(decode_compressed, jpeg[:len(jpeg) // 2], 'jpeg')
    assert 'corrupt' in _error(decode_compressed, b'\x00garbage' * 20, 'jpeg')
    assert 'empty' in _error(decode_compressed, b'', 'png')
    assert 'compressedDepth' in _error(decode_compressed, jpeg, '16UC1; compressedDepth')
    assert 'max_pixels' in _error(decode_compressed, jpeg, 'jpeg', max_pixels=100)


@pytest.mark.skipif(not image_codec.JPEG_DAMAGE_DETECTED,
                    reason='simplejpeg (requirements.txt) is not installed')
def test_jpeg_cut_and_closed_with_an_end_marker_is_corrupt_not_grey(rgb):
    """Defect 8: OpenCV decodes it with the lost half grey; it must not become a frame."""
    image = cv2.resize(rgb, (320, 240))
    jpeg = encode_compressed(image, 'jpeg')
    closed = jpeg[:len(jpeg) // 2] + b'\xff\xd9'
    grey = cv2.imdecode(np.frombuffer(closed, np.uint8), cv2.IMREAD_COLOR)
    assert grey is not None and grey[-40:].std() == 0  # what OpenCV alone would serve
    message = _error(decode_compressed, closed, 'jpeg')
    assert 'corrupt' in message and 'premature end of data segment' in message
    # The same picture whole decodes exactly as OpenCV decodes it (same libjpeg-turbo maths).
    whole = decode_compressed(jpeg, 'jpeg')
    reference = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR),
                             cv2.COLOR_BGR2RGB)
    assert np.abs(whole.astype(int) - reference).max() <= 1
    # Stray bytes before the end marker (some MJPEG cameras write them) lose no picture data:
    # libjpeg warns, the frame is served unchanged.
    padded = jpeg[:-2] + b'\x00\x00\x00' + jpeg[-2:]
    np.testing.assert_array_equal(decode_compressed(padded, 'jpeg'), whole)
    # Greyscale and progressive JPEGs still decode, as RGB.
    grey_jpeg = cv2.imencode('.jpg', image[..., 0])[1].tobytes()
    assert decode_compressed(grey_jpeg, 'jpeg').shape == (240, 320, 3)
    progressive = cv2.imencode('.jpg', image[..., ::-1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    assert np.abs(decode_compressed(progressive.tobytes(), 'jpeg').astype(int)
                  - image).mean() < 8


def test_encoder_rejects_bad_input(rgb):
    assert 'supported' in _error(encode_image, rgb, 'yuv422')
    assert 'RGB uint8' in _error(encode_image, rgb.astype(np.float32), 'rgb8')
    assert 'supported' in _error(encode_compressed, rgb, 'webp')


def test_bytes_per_pixel_table():
    assert [image_codec.bytes_per_pixel(e) for e in ('rgb8', 'bgra8', 'mono8', 'mono16',
                                                     '32FC1', '16UC1')] == [3, 4, 1, 2, 4, 2]


@pytest.mark.parametrize('kind, params', [
    ('png', []), ('jpeg', []), ('jpeg', [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    ('jpeg', [cv2.IMWRITE_JPEG_QUALITY, 5])])
def test_declared_size_is_read_from_the_header(kind, params):
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    ok, data = cv2.imencode('.' + ('jpg' if kind == 'jpeg' else 'png'), image, params)
    assert ok
    assert image_codec.declared_size(data.reshape(-1)) == (53, 37)
    assert image_codec.declared_size(data.reshape(-1)[:12]) is None  # header cut short
    assert image_codec.declared_size(np.frombuffer(b'GIF89a' + bytes(40), np.uint8)) is None


def test_compressed_bomb_is_refused_from_its_header_without_decoding(monkeypatch):
    """Issue 12, defect 3: a small PNG declaring a huge image was decoded in full (gigabytes,
    seconds) before max_pixels was checked."""
    grey = np.zeros((3000, 3000), np.uint8)  # 9 Mpx of nothing: compresses to a few KB
    ok, bomb = cv2.imencode('.png', grey)
    assert ok and bomb.size < 100_000

    def no_decode(*args, **kwargs):
        raise AssertionError('the bomb was decoded')
    monkeypatch.setattr(image_codec.cv2, 'imdecode', no_decode)
    with pytest.raises(image_codec.ImageDecodeError, match='declares 3000x3000 pixels'):
        image_codec.decode_compressed(bomb.tobytes(), 'png', max_pixels=1_000_000)
    with pytest.raises(image_codec.ImageDecodeError, match='neither a JPEG nor a PNG'):
        image_codec.decode_compressed(b'BM' + bytes(100), 'bmp')


def test_twelve_bit_mono16_is_served_at_its_brightness_not_almost_black():
    """Issue 28 defect 5: a 12-bit camera in mono16 (values up to 4095) came out at mean
    8/255 through the fixed /257 map. With its bit depth, given or estimated, the full 0..255."""
    rng = np.random.default_rng(0)
    twelve = rng.integers(0, 4096, (48, 64), dtype=np.uint16)
    twelve[0, 0] = 4095
    step, payload = encode_image(twelve, 'mono16')
    old = decode_image('mono16', 48, 64, step, payload)[..., 0]
    assert old.mean() < 9  # what /257 does to 12-bit data
    given = decode_image('mono16', 48, 64, step, payload, bit_depth=12)[..., 0]
    np.testing.assert_array_equal(given, np.round(twelve * 255.0 / 4095.0).astype(np.uint8))
    assert 120 < given.mean() < 135 and given.max() == 255
    estimator = image_codec.BitDepthEstimator()
    estimated = decode_image('mono16', 48, 64, step, payload, bit_depth=estimator)
    np.testing.assert_array_equal(estimated[..., 0], given)
    assert estimator.bits == 12 and estimator.changes == [(12, 4095)]
    # A darker frame does not lower it (brightness stays comparable between frames); a larger
    # sample raises it once, and says so.
    step, dark = encode_image((twelve // 4).astype(np.uint16), 'mono16')
    decode_image('mono16', 48, 64, step, dark, bit_depth=estimator)
    assert estimator.bits == 12
    step, bright = encode_image(np.full((48, 64), 9000, np.uint16), 'mono16')
    assert decode_image('mono16', 48, 64, step, bright, bit_depth=estimator)[0, 0, 0] == round(
        9000 * 255 / 16383)
    assert estimator.changes == [(12, 4095), (14, 9000)]
    with pytest.raises(image_codec.ImageDecodeError, match='must be 8..16'):
        decode_image('mono16', 48, 64, step, payload, bit_depth=4)


@pytest.mark.parametrize('encoding', ['rgb16', 'bgr16', 'rgba16', 'bgra16'])
def test_sixteen_bit_colour_decodes_like_its_eight_bit_source(encoding):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    step, payload = encode_image(rgb, encoding)
    assert step == 7 * image_codec.bytes_per_pixel(encoding)
    np.testing.assert_array_equal(decode_image(encoding, 5, 7, step, payload), rgb)
    big = np.frombuffer(payload, '<u2').astype('>u2').tobytes()
    np.testing.assert_array_equal(decode_image(encoding, 5, 7, step, big, is_bigendian=True),
                                  rgb)
    # Ten-bit colour (values up to 1023) with its bit depth.
    ten = (rgb.astype(np.uint16) * 4 + 3).astype(np.uint16)
    if encoding == 'rgb16':
        step, payload = encode_image(ten, 'rgb16')
        np.testing.assert_array_equal(decode_image('rgb16', 5, 7, step, payload, bit_depth=10),
                                      np.round(ten * 255.0 / 1023.0).astype(np.uint8))
