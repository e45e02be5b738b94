"""The CameraInfo that goes with an image: message_filters where installed, else the latest one.

A camera driver publishes one CameraInfo per image with the image's stamp. With message_filters
(every ROS 2 install) a `Cache` on the camera_info subscription keeps the last few, and an
image gets the newest one stamped at or before it (the one published with it), or the newest
of all when every cached one is newer (a driver that stamps its info late). Without
message_filters (the PyPI wheels alone) the latest CameraInfo is used, which is the same message
whenever the driver publishes the info just before or with its image. Images never wait for a
CameraInfo (unlike a synchronizer): latest-frame semantics and best-effort cameras keep working,
and a camera without camera_info still gets depth.
"""
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo

try:  # on every ROS 2 install; not on PyPI
    import message_filters
except ImportError:  # pragma: no cover - depends on the install
    message_filters = None

CACHE_SIZE = 10  # a third of a second at 30 Hz: enough for an image to find its info


class CameraInfoSource:
    """Subscribes `topic` on `node` and answers `for_stamp(header_stamp)`."""

    def __init__(self, node, topic, qos, use_message_filters=True):
        self._latest = None
        self._cache = None
        if use_message_filters and message_filters is not None:
            # Fed by our own callback, not message_filters.Subscriber: the Cache turns each stamp
            # into an rclpy Time, which raises on a negative stamp (int32 allows it), and an
            # exception in a subscription callback ends the executor, i.e. the node.
            self._feed = message_filters.SimpleFilter()
            self._cache = message_filters.Cache(self._feed, CACHE_SIZE)
            self.pairing = 'message_filters cache (info stamped at or before the image)'
        else:
            self.pairing = 'latest camera_info (message_filters not installed)'
        self.subscription = node.create_subscription(CameraInfo, topic, self._on_info, qos)

    def _on_info(self, msg):
        if self._cache is not None and _valid_stamp(msg.header.stamp):
            self._feed.signalMessage(msg)
        self._remember(msg)

    def _remember(self, msg):
        self._latest = msg  # one reference: replaced atomically

    @property
    def received(self):
        return self._latest is not None

    def for_stamp(self, stamp):
        """The CameraInfo for an image with header stamp `stamp` (builtin_interfaces/Time)."""
        if self._cache is None or self._latest is None or not _valid_stamp(stamp):
            return self._latest
        before = self._cache.getElemBeforeTime(Time.from_msg(stamp))
        return before if before is not None else self._latest


def _valid_stamp(stamp):
    """A stamp rclpy's Time accepts (seconds >= 0)."""
    return stamp.sec >= 0
