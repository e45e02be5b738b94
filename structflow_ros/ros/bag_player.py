"""Publish a bag's messages over DDS at the recorded rate (`structflow play`'s ROS side).

Each message is published as recorded, serialised bytes as they are in the bag (so header
stamps and every field stay exactly as recorded), on a fixed schedule from the record times,
scaled by `rate`.
"""
import importlib
import time

from structflow_ros.data import bag_io
from structflow_ros.ros.qos import make_qos


class MissingMessageType(ImportError):
    """A message type of the bag is not installed here."""


def message_class(msgtype):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    package, _, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise MissingMessageType(str(error)) from None


def play(bag, wanted, topics, rate, start_s, loop, qos):
    """Publish the `wanted` topics (types from `topics`); returns (published, interrupted)."""
    classes = {t: message_class(topics[t]) for t in wanted}
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    # Ctrl-C raises KeyboardInterrupt here (a clean stop). With rclpy's own handler the
    # context was shut down under a publish() in flight, which then failed with "publisher's
    # context is invalid" and exit 1 (seen in CI).
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('structflow_play')
    publishers = {t: node.create_publisher(classes[t], t, make_qos(qos, 10)) for t in wanted}
    print(f"playing {bag}: {', '.join(wanted)} at {rate:g}x" + (' (looping)' if loop else ''),
          flush=True)
    published = 0
    try:
        while True:
            reader = bag_io.open_reader(bag)
            try:
                connections = [c for c in reader.connections if c.topic in publishers]
                start_ns = reader.start_time + int(start_s * 1e9)
                clock = None
                for connection, record_ns, raw in reader.messages(connections=connections,
                                                                  start=start_ns):
                    now = time.monotonic()
                    if clock is None:
                        clock = (now, record_ns)
                    due = clock[0] + (record_ns - clock[1]) / 1e9 / rate
                    if due > now:
                        time.sleep(due - now)  # the recording's clock
                    publishers[connection.topic].publish(bytes(raw))
                    published += 1
            finally:
                reader.close()
            if not loop:
                break
    except KeyboardInterrupt:
        return published, True
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return published, False
