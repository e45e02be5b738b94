"""A camera driver gone wild, as its own process: rgb8 frames at a high rate for a while.

    python test/camera_flood.py TOPIC WIDTH HEIGHT RATE_HZ SECONDS [best_effort|reliable]

Publishes on a fixed schedule (frames that cannot keep up go out at once, the schedule is not
shifted), each with a fresh stamp, and prints one line `sent N in S s` at the end. Environment
(domain, localhost discovery, log dir) comes from the caller.
"""
import sys
import time

import numpy as np
import rclpy
from sensor_msgs.msg import Image

from structflow_ros.ros.qos import make_qos


def main(topic, width, height, rate, seconds, reliability='best_effort'):
    rclpy.init()
    node = rclpy.create_node('camera_flood')
    publisher = node.create_publisher(Image, topic, make_qos(reliability, 5))
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width * 2, 3), dtype=np.uint8)
    msg = Image(height=height, width=width, encoding='rgb8', step=width * 3)
    msg.header.frame_id = 'camera_optical_frame'
    views = [base[:, shift:shift + width].tobytes() for shift in range(0, width, width // 8)]
    period, sent = 1.0 / rate, 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        delay = start + sent * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the camera's frame clock
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 10 ** 9)
        msg.data = views[sent % len(views)]
        publisher.publish(msg)
        sent += 1
    print(f'sent {sent} in {time.monotonic() - start:.1f} s', flush=True)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == '__main__':
    args = sys.argv[1:]
    main(args[0], int(args[1]), int(args[2]), float(args[3]), float(args[4]), *args[5:])
