"""Drive a depth_node process from outside, over real DDS: the camera side and the viewer side.

`structflow demo` and `structflow bench node` both do the same thing a robot does: start the
node as its own process (`python -m structflow_ros.ros.depth_node --ros-args ...`, what
`ros2 run` starts), publish camera frames and camera_info at camera rate, and receive the
node's outputs in another process, matched to the frame they answer by header stamp.

- `NodeProcess` (tools/node_process.py): the node as a child process; `stop()` is SIGINT, wait,
  kill (every path).
- `DepthClient`: an rclpy context of its own with the camera publishers, subscriptions to the
  node's outputs and /diagnostics, and an executor thread that only stores what arrives.
- `summarize_run` (tools/run_summary.py): end-to-end latency (image stamp -> depth received),
  rates and where frames went (lost before the node, dropped by it, lost after it), from the
  replies and the node's own diagnostics counters.

Stamps are the wall clock at publish time (`time.time_ns()`, what a camera driver stamps), and
receive times the same clock in the same process, so latency needs no clock sync.
"""
import collections
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from structflow_ros.ros.image_publisher import make_image_msg, pinhole_camera_info
# The node process and the run summary live in their own modules (no rclpy there); the names
# stay importable from here for the demo, the node benchmark and the tests.
from structflow_ros.ros.qos import make_qos
from structflow_ros.online.units import DEPTH_TOPICS
from structflow_ros.tools.node_process import (NODE_MODULE, RANDOM_DOMAIN_RANGE,  # noqa: F401
                                               NodeProcess, NodeStartError, node_ros_args,
                                               pick_domain_id, ros_env, write_params_file)
from structflow_ros.tools.run_summary import (DROP_COUNTERS, percentile, rate_hz,  # noqa: F401
                                              summarize_run)

OUTPUT_TYPES = {'depth': Image, 'depth/colored': Image, 'depth/camera_info': CameraInfo,
                'depth/points': PointCloud2}


# ----------------------------------------------------------------------------------------------
# The other process's side of DDS
# ----------------------------------------------------------------------------------------------
def stamp_to_ns(stamp):
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header_at(stamp_ns, frame_id):
    header = Header(frame_id=frame_id)
    header.stamp.sec, header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return header


def camera_info_for(height, width, frame_id, K=None):
    """CameraInfo for a frame: `K` when known, else a pinhole guess (70 degrees wide)."""
    info = pinhole_camera_info(height, width, frame_id)
    if K is not None:
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        info.k = K.reshape(-1).tolist()
        info.p = [K[0, 0], K[0, 1], K[0, 2], 0.0, K[1, 0], K[1, 1], K[1, 2], 0.0,
                  0.0, 0.0, 1.0, 0.0]
    return info


def parse_diagnostic_value(text):
    """A diagnostics string back to int / float (NaN for 'n/a') / str."""
    if text == 'n/a':
        return float('nan')
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _init_context(domain_id):
    context = Context()
    try:  # we stop the node ourselves on Ctrl-C: rclpy must not shut our context down first
        from rclpy.signals import SignalHandlerOptions
        rclpy.init(context=context, domain_id=int(domain_id),
                   signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):
        rclpy.init(context=context, domain_id=int(domain_id))
    return context


class DepthClient:
    """Camera publishers and output subscriptions for one node namespace, in a context of its own.

    Every output message is stored as it arrives (stamp -> {topic: (receive time ns, msg)});
    nothing is decoded in the callbacks, so receiving costs the node's measurements nothing.
    The output 'depth' is the node's depth image wherever its `depth_mode` publishes it
    (`depth` in metres, `depth/relative` unitless: online/units.DEPTH_TOPICS).
    """

    def __init__(self, domain_id, namespace, outputs=('depth', 'depth/colored',
                                                      'depth/camera_info'),
                 camera_reliability='best_effort', frame_id='camera_optical_frame',
                 node_name='structflow_camera', depth_mode='relative'):
        unknown = sorted(set(outputs) - set(OUTPUT_TYPES))
        if unknown:
            raise ValueError(f'unknown outputs {unknown}; the node publishes '
                             f"{', '.join(OUTPUT_TYPES)}")
        self.namespace = namespace.rstrip('/')
        self.outputs = tuple(outputs)
        self.frame_id = frame_id
        self._lock = threading.Lock()
        self.replies = collections.defaultdict(dict)  # stamp_ns -> {topic: (t_ns, msg)}
        self.output_counts = collections.Counter()
        self.diagnostics = collections.deque(maxlen=50)  # (header stamp ns, values)
        self.context = _init_context(domain_id)
        try:
            self.node = rclpy.create_node(node_name, context=self.context)
            camera_qos = make_qos(camera_reliability, 5)
            self.image_pub = self.node.create_publisher(Image, f'{self.namespace}/image',
                                                        camera_qos)
            self.info_pub = self.node.create_publisher(CameraInfo,
                                                       f'{self.namespace}/camera_info',
                                                       camera_qos)
            # Reliable with a deep history: a viewer that must not miss a reply (the node's
            # outputs are reliable by default, so both sides match).
            output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                                    reliability=ReliabilityPolicy.RELIABLE,
                                    durability=DurabilityPolicy.VOLATILE)
            self.subscriptions = {
                topic: self.node.create_subscription(
                    OUTPUT_TYPES[topic],
                    f"{self.namespace}/{DEPTH_TOPICS[depth_mode] if topic == 'depth' else topic}",
                    lambda msg, topic=topic: self._on_output(topic, msg), output_qos)
                for topic in self.outputs}
            self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                          10)
            self.executor = SingleThreadedExecutor(context=self.context)
            self.executor.add_node(self.node)
        except BaseException:
            rclpy.try_shutdown(context=self.context)
            raise
        self._thread = threading.Thread(target=self._spin, name='structflow-client',
                                        daemon=True)
        self._thread.start()
        self._last_stamp = 0

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - context shut down under us: nothing left to do
            pass

    def _on_output(self, topic, msg):
        now = time.time_ns()
        with self._lock:
            self.replies[stamp_to_ns(msg.header.stamp)][topic] = (now, msg)
            self.output_counts[topic] += 1

    def _on_diagnostics(self, array):
        name = f'{self.namespace}/depth_node: depth'  # the serving status, with every counter
        for status in array.status:
            if status.name == name:
                values = {kv.key: parse_diagnostic_value(kv.value) for kv in status.values}
                with self._lock:
                    self.diagnostics.append((stamp_to_ns(array.header.stamp), values))

    # -- discovery ---------------------------------------------------------------------------
    def matched(self):
        """True when the node subscribes to our camera and publishes every output we want."""
        if self.image_pub.get_subscription_count() < 1:
            return False
        if self.info_pub.get_subscription_count() < 1:
            return False
        return all(sub.get_publisher_count() >= 1 for sub in self.subscriptions.values())

    def wait_for_node(self, process, timeout):
        """Wait (on counts, no fixed sleep) until the node's topics match ours."""
        deadline = time.monotonic() + timeout
        while not self.matched():
            if process is not None and not process.alive:
                raise NodeStartError(f'the depth node exited with code {process.returncode} '
                                     f'before it served anything; its log '
                                     f'({process.log_path}):\n{process.log_tail()}')
            if time.monotonic() > deadline:
                raise NodeStartError(
                    f'the depth node did not match our topics within {timeout:.0f} s '
                    f'(namespace {self.namespace}); its log ({process.log_path}):\n'
                    f'{process.log_tail() if process is not None else ""}')
            time.sleep(0.05)

    # -- camera side -------------------------------------------------------------------------
    def next_stamp(self):
        """The wall clock now, strictly increasing (every frame has its own stamp)."""
        stamp = max(time.time_ns(), self._last_stamp + 1000)
        self._last_stamp = stamp
        return stamp

    def publish(self, image_msg, info=None):
        """Stamp `image_msg` (and `info`) with the clock now, publish both; returns the stamp."""
        stamp = self.next_stamp()
        header = header_at(stamp, self.frame_id)
        if info is not None:
            info.header = header
            self.info_pub.publish(info)
        image_msg.header = header
        self.image_pub.publish(image_msg)
        return stamp

    def make_image(self, rgb, encoding='rgb8'):
        return make_image_msg(rgb, encoding, header_at(0, self.frame_id))

    def warm_up(self, image_msg, info, process, replies=2, timeout=60.0, resend_s=0.5):
        """Send frames until `replies` depth answers came back (the first model calls are slow,
        and best effort may lose a frame sent right after matching) and the last frame sent was
        answered too. Returns the stamps sent.

        Ending on an answered frame matters for the counts that follow: one writer's samples
        arrive in order, so once the last warm-up frame is answered the node has taken in every
        warm-up frame it will ever get, and none of them can land in the node's counters of
        the run that comes next (a late one did: 21 frames in for 20 sent).
        """
        sent = []
        deadline = time.monotonic() + timeout
        while (sum(1 for s in sent if self.reply(s, 'depth')) < replies
               or (sent and not self.reply(sent[-1], 'depth'))):
            stamp = self.publish(image_msg, info)
            sent.append(stamp)
            resend_at = time.monotonic() + resend_s
            while not self.reply(stamp, 'depth') and time.monotonic() < resend_at:
                time.sleep(0.01)
            if process is not None and not process.alive:
                raise NodeStartError(f'the depth node exited with code {process.returncode} '
                                     f'during warm-up; its log ({process.log_path}):\n'
                                     f'{process.log_tail()}')
            if time.monotonic() > deadline:
                raise NodeStartError(f'no depth came back within {timeout:.0f} s of warm-up '
                                     f'({len(sent)} frames sent); the node log '
                                     f'({process.log_path if process else "-"}):\n'
                                     f'{process.log_tail() if process is not None else ""}')
        return sent

    def stream(self, items, rate, on_published=None, should_stop=None):
        """Publish (image_msg, info) items at `rate` Hz on a fixed schedule (a camera's clock).

        A frame that is late (this process was busy) goes out at once; the schedule is not
        shifted, so the mean rate stays `rate`. Returns [(stamp_ns, item index)].
        """
        period = 1.0 / rate
        published = []
        start = time.monotonic()
        for position, (image_msg, info) in enumerate(items):
            if should_stop is not None and should_stop():
                break
            delay = start + position * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the camera's frame clock, not a wait for a condition
            stamp = self.publish(image_msg, info)
            published.append((stamp, position))
            if on_published is not None:
                on_published(position, stamp)
        return published

    # -- viewer side -------------------------------------------------------------------------
    def reply(self, stamp, topic):
        """(receive time ns, msg) of `topic` for the frame stamped `stamp`, or None."""
        with self._lock:
            return self.replies.get(stamp, {}).get(topic)

    def received(self, topic='depth'):
        with self._lock:
            return self.output_counts[topic]

    def latest_diagnostics(self, after_ns=0):
        """Values of the newest /diagnostics status of our node stamped after `after_ns`."""
        with self._lock:
            for stamp, values in reversed(self.diagnostics):
                if stamp > after_ns:
                    return values
        return None

    def wait_settled(self, after_ns, process=None, timeout=10.0):
        """Wait until the node has handled every frame it got and its outputs reached us.

        Settled: a /diagnostics report stamped after `after_ns` (the last publish) in which
        every frame in is out or dropped, and we hold exactly as many depth replies as it
        published. Exactly: a report stamped after our publish can still predate the node's
        taking in of that frame (it was in transit); its frames_out is then short of the
        replies we hold, and taking it as the baseline counted that frame in the next run
        (bench node: 21 frames in for 20 sent). Returns those diagnostics values (None when
        the node never reported in time).
        """
        deadline = time.monotonic() + timeout
        values = None
        while time.monotonic() < deadline:
            values = self.latest_diagnostics(after_ns)
            if values is not None and isinstance(values.get('frames_in'), int):
                handled = values['frames_out'] + sum(values.get(k, 0) for k in DROP_COUNTERS)
                if handled >= values['frames_in'] and self.received() == values['frames_out']:
                    return values
            if process is not None and not process.alive:
                break
            time.sleep(0.02)
        return values if values is not None else self.latest_diagnostics()

    def close(self):
        try:
            self.executor.shutdown(timeout_sec=5)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        try:
            self.node.destroy_node()
        finally:
            rclpy.try_shutdown(context=self.context)
            self._thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CameraFleet:
    """Several cameras at once (structflow bench cameras): one image publisher and one depth
    subscription per camera, in a context of its own; `received[camera]` holds the stamps of
    the depth that came back."""

    def __init__(self, domain_id, topics):
        """`topics`: {camera: (image topic, depth topic)}."""
        self.context = _init_context(domain_id)
        self.node = rclpy.create_node('structflow_bench_cameras', context=self.context)
        self.received = {camera: set() for camera in topics}
        self.publishers = {}
        for camera, (image_topic, depth_topic) in topics.items():
            self.publishers[camera] = self.node.create_publisher(Image, image_topic, 5)
            self.node.create_subscription(
                Image, depth_topic, lambda msg, c=camera: self.received[c].add(
                    (msg.header.stamp.sec, msg.header.stamp.nanosec)),
                QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def matched(self):
        return all(pub.get_subscription_count() > 0 for pub in self.publishers.values())

    def publish(self, rgb, stamp):
        """The same frame with the same (sec, nanosec) stamp to every camera."""
        header = Header(frame_id='camera_optical_frame')
        header.stamp.sec, header.stamp.nanosec = stamp
        message = make_image_msg(rgb, 'rgb8', header)
        for publisher in self.publishers.values():
            publisher.publish(message)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
