"""Write and read ROS 2 bags (sqlite3 or MCAP) with `rosbags`, no ROS install needed.

The bags are real rosbag2 bags: rosbags serialises CDR byte for byte as rclpy does, MCAP files
embed the ros2msg schemas (readable by mcap-ros2-support, Foxglove, `ros2 bag play`).

Writing (the synthetic renderer, replay evaluation output)::

    with BagWriter('/tmp/run1', storage='mcap') as bag:
        bag.write_image('/camera/image_raw', stamp_ns, rgb)                   # rgb8
        bag.write_image('/camera/depth', stamp_ns, depth_m, encoding='32FC1')  # metres
        bag.write_compressed('/camera/image_raw/compressed', stamp_ns, rgb, fmt='jpeg')
        bag.write_camera_info('/camera/camera_info', stamp_ns, K, width, height)

Reading::

    list_topics('/tmp/run1')                      # {'/camera/image_raw': 'sensor_msgs/msg/Image'}
    for stamp_ns, topic, msg in read_messages('/tmp/run1', '/camera/depth'):
        depth = decode_depth_msg(msg)
    K, width, height = read_camera_info('/tmp/run1', '/camera/camera_info')

`stamp_ns` from `read_messages` is the bag's record time; the message's own time is
`header_stamp_ns(msg)`. BagWriter records each message at its header stamp.
"""
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from structflow_ros.data import image_codec

IMAGE_MSGTYPE = 'sensor_msgs/msg/Image'
COMPRESSED_MSGTYPE = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO_MSGTYPE = 'sensor_msgs/msg/CameraInfo'
IMAGE_MSGTYPES = (IMAGE_MSGTYPE, COMPRESSED_MSGTYPE)
STORAGES = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
BAG_FILE_SUFFIXES = ('.db3', '.mcap')

PathLike = Union[str, Path]

_TYPESTORE = None


def typestore():
    """The ROS 2 Kilted typestore (message definitions identical to Humble/Jazzy for these)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


class BagError(ValueError):
    """A bag could not be opened or does not contain what was asked for."""


def split_stamp(stamp_ns: int) -> Tuple[int, int]:
    """Nanoseconds since the epoch -> (sec, nanosec) as in builtin_interfaces/Time."""
    stamp_ns = int(stamp_ns)
    if stamp_ns < 0:
        raise ValueError(f'stamp_ns must be >= 0, got {stamp_ns}')
    return stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000


def header_stamp_ns(msg) -> int:
    """Header stamp of a message in nanoseconds (works for rosbags and rclpy messages)."""
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class BagWriter:
    """Context manager that writes images, compressed images and camera info into a new bag.

    `path` is the bag directory to create (it must not exist). `storage` is 'sqlite3' or 'mcap'.
    `version` is the rosbag2 metadata version: 9 is what Jazzy and Kilted write; rosbags writes
    only 8 or 9 (Humble's `ros2 bag` reads the MCAP file itself: `ros2 bag play bag/bag_0.mcap`).
    Each message is recorded at its header stamp.
    """

    def __init__(self, path: PathLike, storage: str = 'sqlite3', version: int = 9):
        if storage not in STORAGES:
            raise BagError(f'unknown bag storage {storage!r}; accepted: {", ".join(STORAGES)}')
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'bag path {self.path} already exists; BagWriter creates a new bag')
        self.storage = storage
        self._writer = Writer(self.path, version=version, storage_plugin=STORAGES[storage])
        self._connections: Dict[str, object] = {}
        self._open = False

    def open(self) -> 'BagWriter':
        """Create the bag on disk (called by `with`)."""
        self._writer.open()
        self._open = True
        return self

    def close(self) -> None:
        """Finish the bag (writes metadata.yaml); safe to call twice."""
        if self._open:
            self._open = False
            self._writer.close()

    def __enter__(self) -> 'BagWriter':
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _connection(self, topic: str, msgtype: str):
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=typestore())
            self._connections[topic] = connection
        elif connection.msgtype != msgtype:
            raise BagError(f'topic {topic!r} already carries {connection.msgtype}; cannot also '
                           f'write {msgtype} to it')
        return connection

    def write_message(self, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
        """Serialise any rosbags message object and record it at `stamp_ns`."""
        if not self._open:
            raise BagError(f'BagWriter for {self.path} is not open; use it in a `with` block')
        connection = self._connection(topic, msgtype)
        self._writer.write(connection, int(stamp_ns), typestore().serialize_cdr(msg, msgtype))

    def _header(self, stamp_ns: int, frame_id: str):
        types = typestore().types
        sec, nanosec = split_stamp(stamp_ns)
        return types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec),
            frame_id=frame_id)

    def write_image(self, topic: str, stamp_ns: int, array: np.ndarray, encoding: str = 'rgb8',
                    frame_id: str = 'camera', record_ns: Optional[int] = None) -> None:
        """Write a sensor_msgs/Image.

        `array` is RGB uint8 (H, W, 3) for colour encodings (grey (H, W) also for mono8/mono16,
        see image_codec.encode_image) or depth in metres (H, W) for '32FC1' / '16UC1' (mm).
        `record_ns`: when the bag recorded it (default: the header stamp).
        """
        if encoding == '32FC1':
            step, payload = image_codec.encode_depth32(array)
        elif encoding == '16UC1':
            step, payload = image_codec.encode_depth16(array)
        else:
            step, payload = image_codec.encode_image(array, encoding)
        height, width = np.asarray(array).shape[:2]
        msg = typestore().types[IMAGE_MSGTYPE](
            header=self._header(stamp_ns, frame_id), height=height, width=width,
            encoding=encoding, is_bigendian=0, step=step,
            data=np.frombuffer(payload, dtype=np.uint8))
        self.write_message(topic, IMAGE_MSGTYPE, stamp_ns if record_ns is None else record_ns,
                           msg)

    def write_compressed(self, topic: str, stamp_ns: int, rgb: np.ndarray, fmt: str = 'jpeg',
                         frame_id: str = 'camera', quality: int = 95) -> None:
        """Write a sensor_msgs/CompressedImage (format 'jpeg' or 'png') from RGB uint8."""
        payload = image_codec.encode_compressed(rgb, fmt, quality=quality)
        self.write_compressed_bytes(topic, stamp_ns, payload, fmt, frame_id)

    def write_compressed_bytes(self, topic: str, stamp_ns: int, payload: bytes, fmt: str,
                               frame_id: str = 'camera') -> None:
        """Write an already-encoded CompressedImage payload as is (also used to test bad data)."""
        msg = typestore().types[COMPRESSED_MSGTYPE](
            header=self._header(stamp_ns, frame_id), format=fmt,
            data=np.frombuffer(payload, dtype=np.uint8))
        self.write_message(topic, COMPRESSED_MSGTYPE, stamp_ns, msg)

    def write_camera_info(self, topic: str, stamp_ns: int, K: np.ndarray, width: int,
                          height: int, frame_id: str = 'camera',
                          distortion_model: str = 'plumb_bob',
                          D: Optional[Sequence[float]] = None) -> None:
        """Write a sensor_msgs/CameraInfo for a rectified pinhole camera (R = I, P = [K | 0])."""
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise BagError(f'K must be a 3x3 intrinsic matrix, got shape {K.shape}')
        D = np.zeros(5 if distortion_model == 'plumb_bob' else 0) if D is None else D
        types = typestore().types
        P = np.zeros((3, 4))
        P[:, :3] = K
        roi = types['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = types[CAMERA_INFO_MSGTYPE](
            header=self._header(stamp_ns, frame_id), height=int(height), width=int(width),
            distortion_model=distortion_model, d=np.asarray(D, dtype=np.float64),
            k=K.reshape(9), r=np.eye(3).reshape(9), p=P.reshape(12),
            binning_x=0, binning_y=0, roi=roi)
        self.write_message(topic, CAMERA_INFO_MSGTYPE, stamp_ns, msg)


def camera_info_message(camera, stamp_ns: int, frame_id: str):
    """A rosbags sensor_msgs/CameraInfo of a CameraModel (online/camera.py) at `stamp_ns`."""
    types = typestore().types
    roi = types['sensor_msgs/msg/RegionOfInterest'](
        x_offset=int(camera.roi.x_offset), y_offset=int(camera.roi.y_offset),
        height=int(camera.roi.height), width=int(camera.roi.width), do_rectify=False)
    sec, nanosec = split_stamp(stamp_ns)
    header = types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec), frame_id=frame_id)
    return types[CAMERA_INFO_MSGTYPE](
        header=header, height=int(camera.height), width=int(camera.width),
        distortion_model=camera.distortion_model, d=np.asarray(camera.d, dtype=np.float64),
        k=np.asarray(camera.k, dtype=np.float64), r=np.asarray(camera.r, dtype=np.float64),
        p=np.asarray(camera.p, dtype=np.float64), binning_x=int(camera.binning_x),
        binning_y=int(camera.binning_y), roi=roi)


def resolve_bag_path(bag_path: PathLike) -> Path:
    """Check that `bag_path` is a rosbag2 directory (metadata.yaml) or a .db3/.mcap file."""
    path = Path(bag_path)
    if not path.exists():
        raise BagError(f'bag {path} does not exist; expected a rosbag2 directory with '
                       'metadata.yaml or a .db3/.mcap file')
    if path.is_dir():
        if (path / 'metadata.yaml').is_file():
            return path
        files = [p for p in sorted(path.iterdir()) if p.suffix in BAG_FILE_SUFFIXES]
        if len(files) == 1:
            return files[0]
        raise BagError(f'{path} is not a rosbag2 directory: no metadata.yaml and '
                       f'{len(files)} .db3/.mcap files (need exactly one)')
    if path.name == 'metadata.yaml':
        return path.parent
    if path.suffix not in BAG_FILE_SUFFIXES:
        raise BagError(f'{path} is not a ROS 2 bag; expected a rosbag2 directory or a '
                       f'{"/".join(BAG_FILE_SUFFIXES)} file')
    return path


def open_reader(bag_path: PathLike) -> AnyReader:
    """Open a bag for reading (caller closes it); bags without embedded types use Kilted's."""
    path = resolve_bag_path(bag_path)
    reader = AnyReader([path], default_typestore=typestore())
    try:
        reader.open()
    except Exception as error:  # rosbags raises several error types for unreadable bags
        hint = ''
        if 'magic' in str(error).lower() and str(path).endswith('.mcap'):
            hint = (' (the MCAP file ends early: a recording that was cut off; `mcap recover '
                    f'{path.name} -o fixed.mcap` with the mcap CLI salvages its complete '
                    'chunks)')
        raise BagError(f'cannot read bag {path}: {error}{hint}') from error
    return reader


def message_counts(bag_path: PathLike) -> Dict[str, int]:
    """Messages per topic, from the bag's index (no message is read)."""
    reader = open_reader(bag_path)
    try:
        counts: Dict[str, int] = {}
        for connection in reader.connections:
            counts[connection.topic] = counts.get(connection.topic, 0) + connection.msgcount
        return counts
    finally:
        reader.close()


def list_topics(bag_path: PathLike) -> Dict[str, str]:
    """All topics in a bag: topic -> message type."""
    reader = open_reader(bag_path)
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def read_messages(bag_path: PathLike, topic: Optional[Union[str, Sequence[str]]] = None
                  ) -> Iterator[Tuple[int, str, object]]:
    """Yield (record_stamp_ns, topic, msg) in record order for one topic, several, or all.

    Raises BagError naming the bag's topics when a requested topic is not in it.
    """
    reader = open_reader(bag_path)
    try:
        wanted = [topic] if isinstance(topic, str) else topic
        connections = reader.connections
        if wanted is not None:
            available = {c.topic for c in connections}
            missing = [t for t in wanted if t not in available]
            if missing:
                raise BagError(f'bag {bag_path} has no topic {", ".join(missing)}; topics: '
                               f'{", ".join(sorted(available)) or "none"}')
            connections = [c for c in connections if c.topic in wanted]
        for connection, stamp_ns, raw in reader.messages(connections=connections):
            yield stamp_ns, connection.topic, reader.deserialize(raw, connection.msgtype)
    finally:
        reader.close()


class CameraIntrinsics(NamedTuple):
    """Pinhole intrinsics from a CameraInfo message."""

    K: np.ndarray  # (3, 3) float64
    width: int
    height: int


def read_camera_info(bag_path: PathLike, topic: str) -> CameraIntrinsics:
    """K, width and height from the first CameraInfo message on `topic`."""
    for _, _, msg in read_messages(bag_path, topic):
        if not hasattr(msg, 'k'):
            raise BagError(f'topic {topic!r} in bag {bag_path} is not a CameraInfo topic')
        return CameraIntrinsics(np.asarray(msg.k, dtype=np.float64).reshape(3, 3),
                                int(msg.width), int(msg.height))
    raise BagError(f'topic {topic!r} in bag {bag_path} has no messages')


def decode_depth_msg(msg, max_pixels: int = image_codec.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Depth Image message (32FC1 metres or 16UC1 mm) -> float32 metres, NaN = no reading."""
    return image_codec.decode_depth(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                                    bool(msg.is_bigendian), max_pixels=max_pixels)
