"""Test helpers for talking to structflow nodes over real DDS from a test process.

Shared by the node tests (node started as `python -m ...`) and the ros2 tool tests (node started
by `ros2 launch` / `ros2 run`). Every wait is on a condition with a timeout and a message.
"""
import collections
import itertools
import threading
import time
from pathlib import Path

import pytest

import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

FRAME_ID = 'camera_optical_frame'


def wait_until(predicate, timeout, message, process=None):
    """Poll `predicate` until true; fail with `message` (and the node's log) on timeout/death."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f'{message}: the node process exited with {process.returncode}\n'
                        f'{process.output()[-3000:]}')
        time.sleep(0.05)
    log = f'\nnode log:\n{process.output()[-3000:]}' if process is not None else ''
    pytest.fail(f'timed out after {timeout:.0f} s: {message}{log}')


class LoggedProcess:
    """A child process with its output in a file (subclasses start `self.popen`)."""

    def __init__(self, log_path):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, 'wb')
        self.popen = None

    def poll(self):
        return self.popen.poll()

    @property
    def returncode(self):
        return self.popen.returncode

    def output(self):
        return self.log_path.read_text(errors='replace')


class Client:
    """This test's side of DDS: publishers, subscribers, parameter/service clients."""

    def __init__(self, domain_id):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node('structflow_test_client', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.received = collections.defaultdict(lambda: collections.deque(maxlen=100))
        # Messages ever received per topic (`received` keeps only the newest 100).
        self.totals = collections.Counter()
        self._stamps = itertools.count(1)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def subscribe(self, topic, msg_type):
        qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)

        def store(msg):
            with self._lock:
                self.received[topic].append(msg)
                self.totals[topic] += 1
        return self.node.create_subscription(msg_type, topic, store, qos)

    def camera_publisher(self, topic, msg_type):
        """A camera-like publisher: best effort (sensor data), the node's default QoS."""
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        return self.node.create_publisher(msg_type, topic, qos)

    def messages(self, topic):
        with self._lock:
            return list(self.received[topic])

    def total(self, topic):
        """How many messages arrived on `topic` since it was subscribed (not capped)."""
        with self._lock:
            return self.totals[topic]

    def find(self, topic, stamp=None, frame_id=None):
        """Newest message on `topic` with the given header stamp and/or frame_id, or None."""
        for msg in reversed(self.messages(topic)):
            if stamp is not None and (msg.header.stamp.sec, msg.header.stamp.nanosec) != stamp:
                continue
            if frame_id is not None and msg.header.frame_id != frame_id:
                continue
            return msg
        return None

    def new_header(self, frame_id=FRAME_ID):
        header = Header(frame_id=frame_id)
        header.stamp.sec, header.stamp.nanosec = next(self._stamps), 4321
        return header

    def wait_future(self, future, timeout, what):
        wait_until(future.done, timeout, what)
        return future.result()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(10)


def node_diagnostics(client, namespace):
    """{key: value} of the newest /diagnostics status of the node in `namespace`."""
    for array in reversed(client.messages('/diagnostics')):
        for status in array.status:
            if status.name == f'{namespace}/depth_node: depth':  # the one with the counters
                return {kv.key: kv.value for kv in status.values}
    return None
