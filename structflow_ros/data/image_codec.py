"""Raw and compressed image (de)coding for sensor_msgs/Image and CompressedImage payloads.

Pure NumPy/OpenCV, no ROS imports: the same functions decode frames read from bags with
`rosbags` (where `data` is a NumPy uint8 array) and frames received by the ROS node (where `data`
is `bytes` or `array.array`). Decoding uses `np.frombuffer` and array views, so there is no
Python loop per pixel; it runs per frame in the node.

Conventions (REP 118 and the sensor_msgs/image_encodings names):
- Colour output is always RGB uint8 (H, W, 3), C-contiguous and writable (a fresh array, never a
  view of the message buffer, so callers may modify it in place).
- 16-bit encodings (mono16, rgb16, bgr16, rgba16, bgra16) are mapped to 8 bit by a fixed map of
  the sensor's bit depth, value * 255 / (2**bits - 1) rounded: for 16 bits value / 257 (0 -> 0,
  65535 -> 255). Many cameras put 10-, 12- or 14-bit samples in 16-bit words; /257 would serve a
  12-bit camera almost black (mean 8/255, issue 28), so the bit depth is given, or estimated by
  a `BitDepthEstimator` from the largest sample seen (never lowered). A fixed map keeps
  brightness comparable between frames, which the photometric flow loss needs; a per-frame
  min/max stretch would make static scenes flicker.
- Depth: 32FC1 is metres, 16UC1 is millimetres. `decode_depth` returns float32 metres with NaN
  where the sensor had no reading (16UC1 zero), as depth_image_proc does.
- Encoders always write little-endian data (`is_bigendian = 0`).
"""
from typing import Optional, Tuple, Union

import cv2
import numpy as np

try:  # libjpeg-turbo with its warnings surfaced; OpenCV's decoder only prints them on stderr
    import simplejpeg
except ImportError:  # pragma: no cover - requirements.txt installs it; OpenCV then decodes
    simplejpeg = None

# Colour/grey encodings `decode_image` turns into RGB uint8: encoding -> (channels, dtype).
_COLOUR_LAYOUT = {
    'rgb8': (3, np.uint8),
    'bgr8': (3, np.uint8),
    'rgba8': (4, np.uint8),
    'bgra8': (4, np.uint8),
    'mono8': (1, np.uint8),
    'mono16': (1, np.uint16),
    'rgb16': (3, np.uint16),
    'bgr16': (3, np.uint16),
    'rgba16': (4, np.uint16),
    'bgra16': (4, np.uint16),
}
SIXTEEN_BIT_ENCODINGS = ('mono16', 'rgb16', 'bgr16', 'rgba16', 'bgra16')
# Bit depths cameras put in 16-bit words (what an estimate rounds up to).
SENSOR_BIT_DEPTHS = (8, 10, 12, 14, 16)
# Depth encodings `decode_depth` turns into float32 metres.
_DEPTH_LAYOUT = {
    '32FC1': (1, np.float32),
    '16UC1': (1, np.uint16),
}
SUPPORTED_ENCODINGS = tuple(_COLOUR_LAYOUT)
DEPTH_ENCODINGS = tuple(_DEPTH_LAYOUT)
COMPRESSED_FORMATS = ('jpeg', 'png')
# Refuse frames above this many pixels unless the caller raises the limit: a corrupt header
# (say height = 2**31) must not make us allocate gigabytes.
DEFAULT_MAX_PIXELS = 4096 * 4096
# libjpeg warnings that leave every pixel decoded from real data (stray bytes between
# segments, which some MJPEG cameras write): the frame is served. Any other warning
# ("premature end of data segment", a bad Huffman code, ...) means part of the picture was
# invented by the decoder (libjpeg fills it grey), so the frame is refused as corrupt.
_HARMLESS_JPEG_WARNINGS = ('extraneous bytes before marker',)
# Whether a JPEG whose data was cut and then closed with an end marker can be detected:
# only with simplejpeg (libjpeg-turbo's warnings as errors); OpenCV decodes it silently.
JPEG_DAMAGE_DETECTED = simplejpeg is not None

BufferLike = Union[bytes, bytearray, memoryview, np.ndarray]


class BitDepthEstimator:
    """The bit depth of a camera's 16-bit samples, from the largest value seen so far: the
    smallest of SENSOR_BIT_DEPTHS that holds it. It only ever rises, so a dark first frame
    costs at most one later change of brightness scale; `changes` lists each (bits, max)."""

    def __init__(self):
        self.bits = 0
        self.largest = 0
        self.changes = []

    def observe(self, largest):
        if largest > self.largest:
            self.largest = int(largest)
            bits = next(b for b in SENSOR_BIT_DEPTHS if self.largest <= (1 << b) - 1)
            if bits > self.bits:
                self.bits = bits
                self.changes.append((bits, self.largest))
        return self.bits or SENSOR_BIT_DEPTHS[0]


class ImageDecodeError(ValueError):
    """An image payload could not be decoded; the message says what was wrong and what works."""


class UnsupportedEncodingError(ImageDecodeError):
    """The encoding is not one this decoder handles (a setup problem, not a corrupt frame)."""


def bytes_per_pixel(encoding: str) -> int:
    """Bytes per pixel of a supported colour or depth encoding."""
    layout = _COLOUR_LAYOUT.get(encoding) or _DEPTH_LAYOUT.get(encoding)
    if layout is None:
        raise UnsupportedEncodingError(
            f'unsupported image encoding {encoding!r}; supported: '
            f'{", ".join(SUPPORTED_ENCODINGS + DEPTH_ENCODINGS)}')
    channels, dtype = layout
    return channels * np.dtype(dtype).itemsize


def _as_uint8_buffer(data: BufferLike) -> np.ndarray:
    """View any bytes-like payload as a flat uint8 array without copying."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _pixel_view(layout, encoding, height, width, step, data, is_bigendian, max_pixels):
    """Check the geometry and return a (H, W, C) view of the pixels (padding dropped)."""
    channels, dtype = layout
    if height <= 0 or width <= 0:
        raise ImageDecodeError(
            f'zero-size {encoding} image ({width}x{height}); width and height must be > 0')
    if height * width > max_pixels:
        raise ImageDecodeError(
            f'{encoding} image {width}x{height} has {height * width} pixels, more than the limit '
            f'max_pixels={max_pixels}; pass a larger max_pixels if the image is genuine')
    row_bytes = width * channels * np.dtype(dtype).itemsize
    if step < row_bytes:
        raise ImageDecodeError(
            f'{encoding} image step {step} is smaller than width * bytes_per_pixel = '
            f'{width} * {row_bytes // width} = {row_bytes}')
    buffer = _as_uint8_buffer(data)
    if buffer.size != step * height:
        raise ImageDecodeError(
            f'{encoding} image data has {buffer.size} bytes, expected step * height = '
            f'{step} * {height} = {step * height}')
    rows = buffer.reshape(height, step)[:, :row_bytes]  # (H, row_bytes), padding dropped
    typed = np.dtype(dtype).newbyteorder('>' if is_bigendian else '<')
    return rows.view(typed).reshape(height, width, channels)  # (H, W, C)


def decode_image(encoding: str, height: int, width: int, step: int, data: BufferLike,
                 is_bigendian: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 bit_depth: Union[int, BitDepthEstimator] = 16) -> np.ndarray:
    """Decode a raw sensor_msgs/Image payload into RGB uint8 (H, W, 3).

    Handles row padding (step > width * bytes_per_pixel) and big-endian 16-bit data. Depth
    encodings (32FC1, 16UC1) are refused: they are measurements, not pictures; use
    `decode_depth`. `bit_depth` (16-bit encodings only): the sensor's bits per sample, or a
    BitDepthEstimator that follows the stream.
    """
    layout = _COLOUR_LAYOUT.get(encoding)
    if layout is None:
        if encoding in _DEPTH_LAYOUT:
            raise UnsupportedEncodingError(
                f'{encoding!r} is a depth encoding, not a colour image; decode it with '
                f'decode_depth (colour encodings: {", ".join(SUPPORTED_ENCODINGS)})')
        raise UnsupportedEncodingError(
            f'unsupported image encoding {encoding!r}; supported: '
            f'{", ".join(SUPPORTED_ENCODINGS)}')
    pixels = _pixel_view(layout, encoding, height, width, step, data, is_bigendian, max_pixels)
    if not pixels.flags.aligned:  # odd step with 16-bit pixels: OpenCV needs aligned rows
        pixels = pixels.copy()
    # OpenCV reads the (possibly padded, read-only) view directly and writes a fresh array;
    # this is 10-60x faster than NumPy fancy slicing for the channel swaps.
    if encoding == 'rgb8':
        return np.array(pixels, order='C')
    if encoding == 'bgr8':
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    if encoding == 'rgba8':
        return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)
    if encoding == 'bgra8':
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGB)
    if encoding in SIXTEEN_BIT_ENCODINGS:
        if is_bigendian:
            pixels = pixels.astype(np.uint16)  # to native byte order
        if isinstance(bit_depth, BitDepthEstimator):
            bits = bit_depth.observe(int(pixels.max()))
        else:
            bits = int(bit_depth)
            if not SENSOR_BIT_DEPTHS[0] <= bits <= 16:
                raise ImageDecodeError(f'bit depth {bits} of a 16-bit encoding must be 8..16')
        # round(value * 255 / (2**bits - 1)), saturating: for 16 bits exactly value / 257 (no
        # value is a tie, so cvRound's rounding is exact).
        scaled = cv2.convertScaleAbs(pixels, alpha=255.0 / ((1 << bits) - 1))
        conversion = {'rgb16': None, 'bgr16': cv2.COLOR_BGR2RGB, 'rgba16': cv2.COLOR_RGBA2RGB,
                      'bgra16': cv2.COLOR_BGRA2RGB, 'mono16': cv2.COLOR_GRAY2RGB}[encoding]
        if encoding == 'mono16':
            scaled = scaled[..., 0] if scaled.ndim == 3 else scaled
        return np.ascontiguousarray(scaled) if conversion is None else cv2.cvtColor(
            scaled, conversion)
    grey = pixels[..., 0]
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)  # (H, W, 3)


def decode_depth(encoding: str, height: int, width: int, step: int, data: BufferLike,
                 is_bigendian: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a depth Image payload into float32 metres (H, W); NaN where there is no reading.

    32FC1 is already metres (REP 118); 16UC1 is millimetres, zero meaning no reading.
    """
    layout = _DEPTH_LAYOUT.get(encoding)
    if layout is None:
        raise UnsupportedEncodingError(
            f'unsupported depth encoding {encoding!r}; supported: {", ".join(DEPTH_ENCODINGS)} '
            '(32FC1 in metres, 16UC1 in millimetres)')
    pixels = _pixel_view(layout, encoding, height, width, step, data, is_bigendian, max_pixels)
    if encoding == '32FC1':
        return pixels[..., 0].astype(np.float32)  # native byte order, fresh array
    depth = pixels[..., 0].astype(np.float32) * np.float32(1e-3)
    depth[pixels[..., 0] == 0] = np.nan
    return depth


def _looks_truncated_jpeg(buffer: np.ndarray) -> bool:
    """True for JPEG data without an end-of-image marker (libjpeg would decode it silently)."""
    if buffer.size < 4 or buffer[0] != 0xFF or buffer[1] != 0xD8:
        return False
    tail = buffer[-64:].tobytes()
    return b'\xff\xd9' not in tail


PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers (they carry the image size); C4, C8 and CC are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_NO_LENGTH = {0x01, *range(0xD0, 0xD9)}  # TEM, RSTn, SOI: markers without a segment


def declared_size(buffer) -> Optional[Tuple[int, int]]:
    """(width, height) from a PNG's IHDR or a JPEG's start-of-frame segment; None when the
    data is neither or its header is cut short. Reads only the header bytes."""
    data = memoryview(buffer).cast('B')
    if bytes(data[:8]) == PNG_SIGNATURE:
        if len(data) < 24 or bytes(data[12:16]) != b'IHDR':
            return None
        return (int.from_bytes(data[16:20], 'big'), int.from_bytes(data[20:24], 'big'))
    if bytes(data[:2]) != b'\xff\xd8':
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], 'big')
        if marker in _JPEG_SOF:
            if position + 9 > len(data):
                return None
            height = int.from_bytes(data[position + 5:position + 7], 'big')
            width = int.from_bytes(data[position + 7:position + 9], 'big')
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header: malformed
            return None
        position += 2 + length
    return None


def decode_compressed(data: BufferLike, format: str = '',
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage payload (JPEG or PNG) into RGB uint8 (H, W, 3).

    `format` is the message's format string ('jpeg', 'png', 'bgr8; jpeg compressed bgr8');
    the codec itself is detected from the data. compressedDepth payloads are refused.
    A truncated JPEG (no end-of-image marker) is reported as corrupt instead of being returned
    half grey, as libjpeg would do.
    """
    if 'compresseddepth' in format.replace(' ', '').lower():
        raise UnsupportedEncodingError(
            f'CompressedImage format {format!r} is compressedDepth (depth, not colour); '
            f'supported compressed colour formats: {", ".join(COMPRESSED_FORMATS)}')
    buffer = _as_uint8_buffer(data)
    if buffer.size == 0:
        raise ImageDecodeError(f'empty CompressedImage data (format {format!r})')
    if _looks_truncated_jpeg(buffer):
        raise ImageDecodeError(
            f'corrupt compressed image (format {format!r}, {buffer.size} bytes): JPEG data '
            'has no end-of-image marker (truncated)')
    # The size the header declares, before any decoding: a 389 KB PNG declaring 20000x20000
    # would otherwise cost gigabytes and seconds before the size could be checked.
    declared = declared_size(buffer)
    if declared is None:
        raise ImageDecodeError(
            f'corrupt or unsupported compressed image (format {format!r}, {buffer.size} '
            'bytes): neither a JPEG nor a PNG with a readable size in its header; supported: '
            f'{", ".join(COMPRESSED_FORMATS)}')
    if declared[0] * declared[1] > max_pixels:
        raise ImageDecodeError(
            f'compressed image declares {declared[0]}x{declared[1]} pixels, more than the limit '
            f'max_pixels={max_pixels}; not decoded')
    if simplejpeg is not None and buffer[0] == 0xFF and buffer[1] == 0xD8:
        rgb = _decode_jpeg_strict(buffer, format)
    else:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ImageDecodeError(
                f'corrupt compressed image (format {format!r}, {buffer.size} bytes): OpenCV '
                f'could not decode it; supported: {", ".join(COMPRESSED_FORMATS)}')
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb.shape[0] * rgb.shape[1] > max_pixels:
        raise ImageDecodeError(
            f'compressed image {rgb.shape[1]}x{rgb.shape[0]} is larger than the limit '
            f'max_pixels={max_pixels}')
    return rgb


def _decode_jpeg_strict(buffer: np.ndarray, format: str) -> np.ndarray:
    """JPEG -> RGB uint8 (H, W, 3) with libjpeg's warnings as errors, except harmless ones.

    A JPEG cut short and closed with an end-of-image marker decodes "successfully" in
    OpenCV with the missing part grey (libjpeg only prints a warning): that frame would be
    served as depth of a grey wall. Here it is refused, naming libjpeg's reason.
    """
    try:
        return simplejpeg.decode_jpeg(buffer, colorspace='RGB', strict=True)
    except ValueError as warning:
        reason = str(warning)
        if not any(harmless in reason.lower() for harmless in _HARMLESS_JPEG_WARNINGS):
            raise ImageDecodeError(
                f'corrupt compressed image (format {format!r}, {buffer.size} bytes): '
                f'libjpeg: {reason}; part of the picture would be invented, so it is not '
                'served') from None
    try:
        return simplejpeg.decode_jpeg(buffer, colorspace='RGB', strict=False)
    except ValueError as error:
        raise ImageDecodeError(
            f'corrupt compressed image (format {format!r}, {buffer.size} bytes): libjpeg: '
            f'{error}') from None


def decode_image_msg(msg, max_pixels: int = DEFAULT_MAX_PIXELS,
                     bit_depth: Union[int, BitDepthEstimator] = 16) -> np.ndarray:
    """Decode an Image or CompressedImage message object (rosbags or rclpy) into RGB uint8.

    Duck-typed on the message fields, so this module still imports nothing from ROS.
    """
    if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
        return decode_compressed(msg.data, msg.format, max_pixels=max_pixels)
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                        bool(msg.is_bigendian), max_pixels=max_pixels, bit_depth=bit_depth)


def encode_image(image: np.ndarray, encoding: str = 'rgb8') -> tuple:
    """Encode an RGB uint8 (H, W, 3) image as a raw Image payload; returns (step, bytes).

    mono8 also accepts a grey (H, W) uint8 array and mono16 a grey (H, W) uint16 array, written
    unchanged; RGB input is converted to grey (mono16 = grey * 257, the inverse of decoding).
    """
    if encoding not in _COLOUR_LAYOUT:
        raise UnsupportedEncodingError(
            f'cannot encode {encoding!r}; supported: {", ".join(SUPPORTED_ENCODINGS)} '
            '(depth: encode_depth32, encode_depth16)')
    image = np.asarray(image)
    if encoding == 'mono16' and image.ndim == 2 and image.dtype == np.uint16:
        pixels = image.astype('<u2', copy=False)
    elif encoding in ('rgb16', 'bgr16') and image.ndim == 3 and image.dtype == np.uint16:
        pixels = image if encoding == 'rgb16' else image[..., ::-1]
    elif encoding == 'mono8' and image.ndim == 2 and image.dtype == np.uint8:
        pixels = image
    else:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageDecodeError(
                f'encode_image expects RGB uint8 (H, W, 3) (or grey (H, W) for mono8/mono16), '
                f'got {image.dtype} {image.shape}')
        if encoding == 'rgb8':
            pixels = image
        elif encoding == 'bgr8':
            pixels = image[..., ::-1]
        elif encoding in ('rgba8', 'bgra8'):
            colour = image if encoding == 'rgba8' else image[..., ::-1]
            alpha = np.full(image.shape[:2] + (1,), 255, np.uint8)
            pixels = np.concatenate([colour, alpha], axis=2)  # (H, W, 4)
        elif encoding in ('rgb16', 'bgr16', 'rgba16', 'bgra16'):
            colour = (image if encoding.startswith('rgb') else image[..., ::-1]).astype(
                '<u2') * np.uint16(257)
            if encoding.endswith('a16'):
                alpha = np.full(image.shape[:2] + (1,), 65535, '<u2')
                colour = np.concatenate([colour, alpha], axis=2)
            pixels = colour
        else:
            grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
            pixels = grey if encoding == 'mono8' else grey.astype('<u2') * np.uint16(257)
    pixels = np.ascontiguousarray(pixels)
    if pixels.size == 0:
        raise ImageDecodeError(f'cannot encode a zero-size image {pixels.shape}')
    step = pixels.shape[1] * bytes_per_pixel(encoding)
    return step, pixels.astype(pixels.dtype.newbyteorder('<'), copy=False).tobytes()


def encode_depth32(depth_m: np.ndarray) -> tuple:
    """Encode float depth in metres (H, W) as a 32FC1 payload; returns (step, bytes)."""
    depth = np.ascontiguousarray(depth_m, dtype='<f4')
    if depth.ndim != 2 or depth.size == 0:
        raise ImageDecodeError(f'encode_depth32 expects a non-empty (H, W) array, got '
                               f'{depth.shape}')
    return depth.shape[1] * 4, depth.tobytes()


def encode_depth16(depth_m: np.ndarray) -> tuple:
    """Encode depth in metres (H, W) as a 16UC1 millimetre payload; NaN/<=0 become 0."""
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2 or depth.size == 0:
        raise ImageDecodeError(f'encode_depth16 expects a non-empty (H, W) array, got '
                               f'{depth.shape}')
    millimetres = np.nan_to_num(depth * 1000.0, nan=0.0, posinf=0.0, neginf=0.0)
    millimetres = np.clip(np.rint(millimetres), 0, 65535).astype('<u2')
    return depth.shape[1] * 2, millimetres.tobytes()


def encode_compressed(image: np.ndarray, fmt: str = 'jpeg', quality: int = 95) -> bytes:
    """Encode an RGB uint8 (H, W, 3) image as JPEG or PNG bytes (CompressedImage.data)."""
    fmt = fmt.lower()
    if fmt not in ('jpeg', 'jpg', 'png'):
        raise UnsupportedEncodingError(
            f'unsupported compressed format {fmt!r}; supported: {", ".join(COMPRESSED_FORMATS)}')
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageDecodeError(f'encode_compressed expects RGB uint8 (H, W, 3), got '
                               f'{image.dtype} {image.shape}')
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    if fmt == 'png':
        ok, encoded = cv2.imencode('.png', bgr)
    else:
        ok, encoded = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageDecodeError(f'OpenCV failed to encode a {image.shape} image as {fmt}')
    return encoded.tobytes()


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image as a JPEG of `quality` delivers it: encoded and decoded
    again (what a camera on compressed image transport hands the node)."""
    return decode_compressed(encode_compressed(image, 'jpeg', quality), 'jpeg')
