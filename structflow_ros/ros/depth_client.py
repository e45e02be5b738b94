"""Drive a depth_node process from outside, over real DDS: the camera side and the viewer side.

`structflow demo` and `structflow bench node` both do the same thing a robot does: start the
node as its own process (`python -m structflow_ros.ros.depth_node --ros-args ...`, what
`ros2 run` starts), publish camera frames and camera_info at camera rate, and receive the
node's outputs in another process, matched to the frame they answer by header stamp.

- `NodeProcess`: the node as a child process; `stop()` is SIGINT, wait, kill (every path).
- `DepthClient`: an rclpy context of its own with the camera publishers, subscriptions to the
  node's outputs and /diagnostics, and an executor thread that only stores what arrives.
- `summarize_run`: end-to-end latency (image stamp -> depth received), rates and where frames
  went (lost before the node, dropped by it, lost after it), from the replies and the node's
  own diagnostics counters.

Stamps are the wall clock at publish time (`time.time_ns()`, what a camera driver stamps), and
receive times the same clock in the same process, so latency needs no clock sync.
"""
import collections
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from structflow_ros.ros.image_publisher import make_image_msg, pinhole_camera_info
from structflow_ros.ros.qos import make_qos

NODE_MODULE = 'structflow_ros.ros.depth_node'
OUTPUT_TYPES = {'depth': Image, 'depth/colored': Image, 'depth/camera_info': CameraInfo,
                'depth/points': PointCloud2}
# Random domain ids come from here: clear of 0 (everyone's default) and of the ids the tests
# spread over (1..101 is the valid range on Linux for every RMW).
RANDOM_DOMAIN_RANGE = (30, 99)
# Node counters that say where an input frame went once the node took it.
DROP_COUNTERS = ('dropped_stale', 'dropped_bad_input', 'dropped_no_scale', 'processing_errors')


class NodeStartError(RuntimeError):
    """The node process exited or never matched our topics; the message has its log tail."""


# ----------------------------------------------------------------------------------------------
# Environment and the node process
# ----------------------------------------------------------------------------------------------
def pick_domain_id(requested=None, environ=None):
    """(domain_id, how): `requested`, else $ROS_DOMAIN_ID, else random in 30..99."""
    environ = os.environ if environ is None else environ
    if requested is not None:
        return int(requested), 'from --ros-domain-id'
    value = environ.get('ROS_DOMAIN_ID', '').strip()
    if value:
        if not value.isdigit() or not 0 <= int(value) <= 232:
            raise ValueError(f"ROS_DOMAIN_ID '{value}' is not a domain id (an integer 0..232, "
                             '0..101 portable)')
        return int(value), 'from ROS_DOMAIN_ID'
    return random.randint(*RANDOM_DOMAIN_RANGE), 'random; set ROS_DOMAIN_ID to choose'


def ros_env(domain_id, log_dir, base=None):
    """Environment for a ROS process: local-only discovery, its own log dir and domain.

    Children start with `sys.executable` and this (the parent's) environment: the ROS wheels
    re-execute Python with LD_LIBRARY_PATH set (toolchain.md).
    """
    env = dict(os.environ if base is None else base)
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_LOG_DIR=str(log_dir),
               ROS_DOMAIN_ID=str(int(domain_id)), PYTHONUNBUFFERED='1')
    source_root = str(Path(__file__).resolve().parents[2])  # runs from a checkout too
    paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
    if source_root not in paths:
        env['PYTHONPATH'] = os.pathsep.join([source_root] + paths)
    return env


def write_params_file(path, parameters, base_file=None):
    """A --params-file for the node: `base_file`'s parameters (if any) updated with ours.

    A YAML file (not `-p name:=value`) keeps any path or string exactly as given.
    """
    values = {}
    if base_file:
        loaded = yaml.safe_load(Path(base_file).read_text()) or {}
        for section in loaded.values():  # '/**', 'depth_node', '/ns/depth_node', ...
            if isinstance(section, dict):
                values.update(section.get('ros__parameters', {}) or {})
    values.update(parameters)
    Path(path).write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    return Path(path)


def _parent_death_signal():
    """preexec_fn: SIGINT the child when this process dies (Linux), so no node outlives us."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_signal():
        prctl(pr_set_pdeathsig, int(signal.SIGINT))
    return set_signal if sys.platform.startswith('linux') else None


class NodeProcess:
    """The depth node as a child process, output in a log file; stop() = SIGINT, wait, kill.

    The child gets a session of its own, so a Ctrl-C in the terminal reaches only the parent,
    which then stops the node in order; it also gets SIGINT if the parent dies.
    """

    def __init__(self, ros_args, env, log_path, module=NODE_MODULE):
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, 'wb')
        self.command = [sys.executable, '-m', module, '--ros-args', *map(str, ros_args)]
        try:
            self.popen = subprocess.Popen(self.command, stdout=self._log,
                                          stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True,
                                          preexec_fn=_parent_death_signal())
        except BaseException:
            self._log.close()
            raise

    @property
    def alive(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def log_tail(self, chars=3000):
        try:
            return self.log_path.read_text(errors='replace')[-chars:]
        except OSError:
            return ''

    def stop(self, timeout=15.0):
        """SIGINT, wait up to `timeout` s, then SIGKILL; idempotent; returns the exit code."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGINT)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(10)
        finally:
            if not self._log.closed:
                self._log.close()
        return self.popen.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def node_ros_args(params_file, namespace):
    """--ros-args for the node: our parameters and a namespace of its own."""
    return ['--params-file', str(params_file), '-r', f'__ns:={namespace}']


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
    """

    def __init__(self, domain_id, namespace, outputs=('depth', 'depth/colored',
                                                      'depth/camera_info'),
                 camera_reliability='best_effort', frame_id='camera_optical_frame',
                 node_name='structflow_camera'):
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
                    OUTPUT_TYPES[topic], f'{self.namespace}/{topic}',
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
        prefix = f'{self.namespace}/depth_node'
        for status in array.status:
            if status.name.startswith(prefix):
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
        and best effort may lose a frame sent right after matching). Returns the stamps sent."""
        sent = []
        deadline = time.monotonic() + timeout
        while sum(1 for s in sent if self.reply(s, 'depth')) < replies:
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
        every frame in is out or dropped, and we hold as many depth replies as it published.
        Returns those diagnostics values (None when the node never reported in time).
        """
        deadline = time.monotonic() + timeout
        values = None
        while time.monotonic() < deadline:
            values = self.latest_diagnostics(after_ns)
            if values is not None and isinstance(values.get('frames_in'), int):
                handled = values['frames_out'] + sum(values.get(k, 0) for k in DROP_COUNTERS)
                if handled >= values['frames_in'] and self.received() >= values['frames_out']:
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


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------
def percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def rate_hz(times_ns):
    """Events per second between the first and the last of `times_ns` (0 for < 2 events)."""
    if len(times_ns) < 2:
        return 0.0
    span = (max(times_ns) - min(times_ns)) / 1e9
    return (len(times_ns) - 1) / span if span > 0 else 0.0


def _counter_delta(after, before, key):
    if after is None or not isinstance(after.get(key), int):
        return None
    base = before.get(key, 0) if before is not None else 0
    return after[key] - (base if isinstance(base, int) else 0)


def summarize_run(client, published, before=None, after=None, expect=('depth',)):
    """Latency, rates and frame accounting of one streamed run.

    published: [(stamp_ns, index)] from `DepthClient.stream`; before / after: the node's
    diagnostics values at the start and the end (counters are differenced, so warm-up frames
    are left out of the counts; the node's timing percentiles cover its last 300 frames).
    e2e latency = depth received - image stamp; e2e_all = the last of `expect` received.
    """
    latencies, all_latencies, receive_times = [], [], []
    for stamp, _ in published:
        hit = client.reply(stamp, 'depth')
        if hit is None:
            continue
        latencies.append((hit[0] - stamp) / 1e6)
        receive_times.append(hit[0])
        arrivals = [client.reply(stamp, topic) for topic in expect]
        if all(arrivals):
            all_latencies.append((max(a[0] for a in arrivals) - stamp) / 1e6)
    sent = len(published)
    received = len(latencies)
    frames_in = _counter_delta(after, before, 'frames_in')
    frames_out = _counter_delta(after, before, 'frames_out')
    dropped = [_counter_delta(after, before, key) for key in DROP_COUNTERS]
    dropped_by_node = None if None in dropped else sum(dropped)
    summary = {
        'frames_sent': sent,
        'depth_received': received,
        'camera_rate_hz': rate_hz([stamp for stamp, _ in published]),
        'output_rate_hz': rate_hz(receive_times),
        'e2e_ms_p50': percentile(latencies, 50),
        'e2e_ms_p95': percentile(latencies, 95),
        'e2e_ms_max': max(latencies) if latencies else float('nan'),
        'e2e_all_outputs_ms_p50': percentile(all_latencies, 50),
        'e2e_all_outputs_ms_p95': percentile(all_latencies, 95),
        'all_outputs_received': len(all_latencies),
        'frames_in_node': frames_in,
        'frames_out_node': frames_out,
        'dropped_by_node': dropped_by_node,
        'dropped_stale': dropped[0],
        'lost_before_node': None if frames_in is None else sent - frames_in,
        'lost_after_node': None if frames_out is None else frames_out - received,
        'frames_lost': None if dropped_by_node is None else sent - received - dropped_by_node,
        'latencies_ms': latencies,
    }
    for key in ('inference_ms_p50', 'inference_ms_p95', 'queue_ms_p50', 'queue_ms_p95',
                'processing_ms_p50', 'processing_ms_p95', 'overhead_ms_p50',
                'overhead_ms_p95'):
        value = after.get(key) if after is not None else None
        summary[f'node_{key}'] = float(value) if isinstance(value, (int, float)) else float(
            'nan')
    return summary
