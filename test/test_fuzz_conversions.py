"""Fuzzing the node's edge: Image, CompressedImage and CameraInfo -> what the node publishes.

Hypothesis generates messages (real sensor_msgs types) that are random, nearly right or
hostile, and each goes through the same functions the node calls per frame. Properties:
- no exception but BadImageError (with a kind the diagnostics count) from any image message;
  a consistent raw message always decodes, to exactly its size;
- nothing decoded is larger than max_image_pixels, whatever the header claims (a compressed
  header is read before decoding), and peak memory stays bounded;
- every number published from a camera_info is finite (depth/camera_info K and P, rays, point
  coordinates), and a cloud that says is_dense holds no NaN; a bad camera_info is refused with
  a reason, never an exception.

The budget is fixed and the search derandomised, so CI runs the same examples every time;
STRUCTFLOW_FUZZ_EXAMPLES=N runs N random examples per property (a longer local search).
"""
import os
import resource

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header

from structflow_ros.core.config import ModelConfig
from structflow_ros.core.inference import DepthPredictor
from structflow_ros.core.networks import build_model
from structflow_ros.data.image_codec import SUPPORTED_ENCODINGS, bytes_per_pixel, encode_image
from structflow_ros.online import camera as camera_math
from structflow_ros.ros import conversions

MAX_PIXELS = 64 * 64
UINT32 = 2 ** 32 - 1
_LONG_RUN = int(os.environ.get('STRUCTFLOW_FUZZ_EXAMPLES', '0'))
FUZZ = settings(max_examples=_LONG_RUN or 150, derandomize=not _LONG_RUN, deadline=None,
                database=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.data_too_large])
BAD_KINDS = {'empty', 'zero_size', 'too_large', 'unsupported_encoding', 'size_mismatch',
             'corrupt'}


@pytest.fixture(scope='module')
def predictor():
    torch.manual_seed(0)
    model = build_model(ModelConfig(height=64, width=96, flow_branch=False, pose_branch=False))
    return DepthPredictor(model.eval(), 'cpu', input_size=(64, 96))


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decode_or_refuse(msg):
    """The node's decode step: an RGB frame within the pixel limit, or a counted refusal."""
    try:
        rgb = conversions.image_msg_to_rgb(msg, MAX_PIXELS)
    except conversions.BadImageError as error:
        assert error.kind in BAD_KINDS, error.kind
        assert str(error), 'a refusal says what was wrong'
        return None
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert 0 < rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS
    assert rgb.flags.c_contiguous and rgb.flags.writeable
    return rgb


# ----------------------------------------------------------------------------------------------
# sensor_msgs/Image
# ----------------------------------------------------------------------------------------------
small_or_any = st.one_of(st.integers(0, 80), st.integers(0, UINT32))
encodings = st.one_of(st.sampled_from(SUPPORTED_ENCODINGS),
                      st.sampled_from(['32FC1', '16UC1', 'yuv422', 'bayer_rggb8', '', 'RGB8',
                                       'rgb8 ']),
                      st.text(max_size=12))


@st.composite
def raw_images(draw):
    """Anything an Image message can hold, and often a nearly right one."""
    msg = Image()
    msg.encoding = draw(encodings)
    msg.height, msg.width = draw(small_or_any), draw(small_or_any)
    msg.is_bigendian = draw(st.integers(0, 1))
    if draw(st.booleans()) and msg.encoding in SUPPORTED_ENCODINGS and msg.height < 100 and (
            msg.width < 100):
        row = msg.width * bytes_per_pixel(msg.encoding)
        msg.step = row + draw(st.sampled_from([0, 0, 1, 3, -1]))
        size = max(msg.step, 0) * msg.height + draw(st.sampled_from([0, 0, -1, 1, -row]))
        msg.step = max(msg.step, 0)
        msg.data = draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
    else:
        msg.step = draw(small_or_any)
        msg.data = draw(st.binary(max_size=2048))
    return msg


@st.composite
def consistent_images(draw):
    """A well-formed Image (any supported encoding, row padding, either byte order)."""
    encoding = draw(st.sampled_from(SUPPORTED_ENCODINGS))
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    channels = bytes_per_pixel(encoding)
    pad = draw(st.integers(0, 5))
    data = draw(st.binary(min_size=(width * channels + pad) * height,
                          max_size=(width * channels + pad) * height))
    msg = Image(encoding=encoding, height=height, width=width, step=width * channels + pad,
                is_bigendian=draw(st.integers(0, 1)))
    msg.data = data
    return msg


@FUZZ
@given(msg=raw_images())
def test_any_raw_image_is_decoded_or_refused_with_a_kind(msg):
    rgb = decode_or_refuse(msg)
    if rgb is not None:
        assert rgb.shape[:2] == (msg.height, msg.width)


@FUZZ
@given(msg=consistent_images())
def test_a_consistent_raw_image_always_decodes_to_its_size(msg):
    rgb = conversions.image_msg_to_rgb(msg, MAX_PIXELS)
    assert rgb.shape == (msg.height, msg.width, 3) and rgb.dtype == np.uint8
    if msg.encoding in ('rgb8', 'rgba8'):  # the bytes are the pixels
        expected = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
        channels = bytes_per_pixel(msg.encoding)
        expected = expected[:, :msg.width * channels].reshape(msg.height, msg.width, channels)
        np.testing.assert_array_equal(rgb, expected[..., :3])


# ----------------------------------------------------------------------------------------------
# sensor_msgs/CompressedImage
# ----------------------------------------------------------------------------------------------
def _encoded(fmt, height, width, seed):
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (width, height))
    return cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', image)[1].tobytes()


@st.composite
def compressed_images(draw):
    """Valid JPEG/PNG, then cut, overwritten, padded, or with a lying size in the header."""
    fmt = draw(st.sampled_from(['jpeg', 'png']))
    data = bytearray(_encoded(fmt, draw(st.integers(1, 80)), draw(st.integers(1, 80)),
                              draw(st.integers(0, 3))))
    for _ in range(draw(st.integers(0, 3))):
        mutation = draw(st.sampled_from(['cut', 'cut_and_close', 'overwrite', 'append',
                                         'lie_about_size', 'random']))
        if mutation == 'cut' and len(data) > 2:
            data = data[:draw(st.integers(1, len(data) - 1))]
        elif mutation == 'cut_and_close' and len(data) > 4:
            data = data[:draw(st.integers(2, len(data) - 2))] + b'\xff\xd9'
        elif mutation == 'overwrite' and data:
            position = draw(st.integers(0, len(data) - 1))
            data[position:position + 4] = draw(st.binary(min_size=1, max_size=4))
        elif mutation == 'append':
            data += draw(st.binary(max_size=64))
        elif mutation == 'lie_about_size':
            size = draw(st.integers(0, 65535)).to_bytes(2, 'big')
            if data[:4] == b'\x89PNG' and len(data) >= 24:
                data[16:24] = bytes(2) + size + bytes(2) + size  # IHDR width, height
            else:  # the first start-of-frame segment's height and width
                at = bytes(data).find(b'\xff\xc0')
                if at >= 0 and len(data) >= at + 9:
                    data[at + 5:at + 9] = size + size
        elif mutation == 'random':
            data = bytearray(draw(st.binary(max_size=512)))
    msg = CompressedImage(format=draw(st.sampled_from([fmt, 'jpeg', 'png', 'bgr8; jpeg '
                                                       'compressed bgr8', '', 'rgb8; png'])))
    msg.data = bytes(data)
    return msg


@FUZZ
@given(msg=compressed_images())
def test_any_compressed_image_is_decoded_or_refused_within_the_pixel_limit(msg):
    decode_or_refuse(msg)


def test_compressed_fuzz_memory_is_bounded(predictor):
    """Size lies up to 65535x65535 in the headers: peak memory grows by tens of MB at most
    (a full decode of one such PNG would take 12 GB). Decoded frames also make finite depth."""
    before = peak_rss_mb()
    finite = []

    @FUZZ
    @given(msg=compressed_images())
    def run(msg):
        rgb = decode_or_refuse(msg)
        if rgb is not None:
            depth = predictor.predict(rgb)
            assert depth.shape == rgb.shape[:2]
            finite.append(bool(np.isfinite(depth).all() and (depth > 0).all()))
    run()
    assert finite and all(finite), 'every decoded frame gives finite, positive depth'
    assert peak_rss_mb() - before < 200, f'peak RSS grew by {peak_rss_mb() - before:.0f} MB'


# ----------------------------------------------------------------------------------------------
# sensor_msgs/CameraInfo
# ----------------------------------------------------------------------------------------------
def normal_floats(*args, **kwargs):
    """st.floats without subnormals: a runtime loaded earlier in the process (OpenVINO, ONNX
    Runtime) may have set flush-to-zero, and hypothesis then refuses to generate them (seen in
    CI); subnormal values still come from `extreme` below."""
    return st.floats(*args, allow_subnormal=False, **kwargs)


plausible = normal_floats(-2000.0, 2000.0)
# Finite values that overflow or underflow once scaled or divided: the hard cases, since
# non-finite ones are refused up front.
extreme = st.sampled_from([0.0, -0.0, 5e-324, 1e-320, 1e-300, 1e-12, 1e12, 1e300, 1.7e308,
                           -1e300, -1.7e308])
non_finite = st.sampled_from([float('nan'), float('inf'), -float('inf')])
values = st.one_of(plausible, extreme, normal_floats(allow_nan=False, allow_infinity=False))


def _sometimes_non_finite(draw, numbers):
    """One in eight lists gets a NaN or infinity somewhere (those are refused up front)."""
    if numbers and draw(st.integers(0, 7)) == 0:
        numbers[draw(st.integers(0, len(numbers) - 1))] = draw(non_finite)
    return numbers


def _matrix(draw, size, calibrated):
    if calibrated:  # a pinhole K (or P) with some entries then disturbed
        fx, fy = draw(normal_floats(1.0, 2000.0)), draw(normal_floats(1.0, 2000.0))
        cx, cy = draw(normal_floats(0.0, 100.0)), draw(normal_floats(0.0, 100.0))
        base = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0] if size == 9 else [
            fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        for _ in range(draw(st.integers(0, 2))):
            base[draw(st.sampled_from([0, 2, 4, 5] if size == 9 else [0, 2, 5, 6]))] = draw(
                values)  # a focal length or principal point
        return _sometimes_non_finite(draw, base)
    return _sometimes_non_finite(draw, draw(st.lists(values, min_size=size, max_size=size)))


@st.composite
def camera_infos(draw):
    calibrated = draw(st.integers(0, 3)) > 0  # a pinhole K, disturbed; else any numbers
    info = CameraInfo()
    info.width, info.height = draw(small_or_any), draw(small_or_any)
    info.k = _matrix(draw, 9, calibrated)
    info.p = _matrix(draw, 12, calibrated)
    info.r = _sometimes_non_finite(draw, draw(st.one_of(
        st.just([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]),
        st.lists(values, min_size=9, max_size=9))))
    info.distortion_model = draw(st.sampled_from(['plumb_bob', 'rational_polynomial',
                                                  'equidistant', '', 'unknown_model']))
    info.d = _sometimes_non_finite(draw, draw(st.one_of(
        st.just([]), st.just([0.0] * 5),
        st.lists(st.one_of(normal_floats(-0.5, 0.5), values), max_size=14))))
    binning = st.one_of(st.integers(0, 4), small_or_any)
    info.binning_x, info.binning_y = draw(binning), draw(binning)
    if draw(st.booleans()):  # most cameras send no ROI
        info.roi = RegionOfInterest(x_offset=draw(small_or_any), y_offset=draw(small_or_any),
                                    width=draw(small_or_any), height=draw(small_or_any))
    return info


@FUZZ
@given(info=camera_infos(), image_size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
       out_size=st.tuples(st.integers(1, 40), st.integers(1, 40)), decimation=st.integers(1, 4))
def test_any_camera_info_publishes_only_finite_numbers_or_is_refused(info, image_size,
                                                                      out_size, decimation):
    (height, width), (out_height, out_width) = image_size, out_size
    rays = camera_math.RayCache()
    camera = camera_math.depth_camera(info, width, height, out_width, out_height, rays,
                                      need_rays=True)
    if camera.problem:
        assert camera.info is None and camera.rays is None and camera.rays_missing
        return
    assert np.isfinite(camera.info.k).all() and np.isfinite(camera.info.p).all(), camera.info
    assert (camera.info.width, camera.info.height) == (out_width, out_height)
    if camera.rays is None:
        assert camera.rays_missing, 'no rays without saying why'
        return
    assert camera.rays.shape == (out_height, out_width, 3) and np.isfinite(camera.rays).all()
    depth = np.random.default_rng(0).uniform(0.5, 80.0, (out_height, out_width))
    depth[0, 0] = np.nan  # the model's invalid pixels stay out of the cloud, marked
    rgb = np.zeros((height, width, 3), np.uint8)
    cloud = conversions.pointcloud_to_array(conversions.depth_to_pointcloud(
        depth.astype(np.float32), camera.rays, rgb, decimation, Header(),
        use_sensor_msgs_py=False))
    xyz = np.stack([cloud['x'], cloud['y'], cloud['z']], axis=-1)
    assert not np.isinf(xyz).any(), 'a point at infinity'
    # Each point is finite or entirely NaN (invalid), never half of each.
    assert (np.isfinite(xyz).all(axis=-1) | np.isnan(xyz).all(axis=-1)).all()


def test_consistent_raw_image_messages_become_finite_depth(predictor):
    """The whole per-frame path for well-formed frames: decode -> model -> depth (finite)."""
    @settings(max_examples=25, derandomize=True, deadline=None, database=None)
    @given(msg=consistent_images())
    def run(msg):
        depth = predictor.predict(conversions.image_msg_to_rgb(msg, MAX_PIXELS))
        assert depth.shape == (msg.height, msg.width)
        assert np.isfinite(depth).all() and (depth > 0).all()
    run()


def test_the_pinhole_rays_are_right_for_a_plain_camera():
    """A reference for the fuzz: K = (100, 100, 10, 5) at 20x10 gives x = (u - 10) / 100;
    fx = 1.7e308 overflows when scaled, fx = 1e-300 makes float32 rays infinite."""
    info = CameraInfo(width=20, height=10, k=[100.0, 0, 10, 0, 100.0, 5, 0, 0, 1],
                      p=[100.0, 0, 10, 0, 0, 100.0, 5, 0, 0, 0, 1, 0])
    camera = camera_math.depth_camera(info, 20, 10, 20, 10, camera_math.RayCache(),
                                      need_rays=True)
    assert camera.problem == '' and camera.mismatch == ''
    np.testing.assert_allclose(camera.rays[5, 15], [0.05, 0.0, 1.0], atol=1e-6)
    huge = CameraInfo(width=20, height=10, k=[1.7e308, 0, 10, 0, 1.7e308, 5, 0, 0, 1])
    overflow = camera_math.depth_camera(huge, 20, 10, 40, 20, camera_math.RayCache(),
                                        need_rays=True)
    assert 'overflow' in overflow.problem and overflow.info is None
    tiny = CameraInfo(width=20, height=10, k=[1e-300, 0, 10, 0, 1e-300, 5, 0, 0, 1])
    no_rays = camera_math.depth_camera(tiny, 20, 10, 20, 10, camera_math.RayCache(),
                                       need_rays=True)
    assert no_rays.rays is None and 'non-finite rays' in no_rays.rays_missing


def test_encoded_raw_images_round_trip_through_the_node_decoder():
    """Sanity for the strategies: what encode_image writes, the node's decoder reads back."""
    rgb = np.random.default_rng(3).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    for encoding in ('rgb8', 'bgr8', 'rgba8', 'bgra8'):
        step, payload = encode_image(rgb, encoding)
        msg = Image(encoding=encoding, height=7, width=9, step=step)
        msg.data = payload
        np.testing.assert_array_equal(conversions.image_msg_to_rgb(msg, MAX_PIXELS), rgb)
