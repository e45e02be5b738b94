"""A plain rclpy camera stand-in: synthetic frames + camera_info at a fixed rate.

    python -m structflow_ros.ros.image_publisher --encoding bgr8 --rate 10 \
        --ros-args -r image:=/camera/image_raw -r camera_info:=/camera/camera_info

For tests and demos of the depth node across processes (a real camera driver in its place).
Frames are a moving ground-and-sky pattern; camera_info has a pinhole K for the frame size.
"""
import argparse
import sys

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from structflow_ros.data.image_codec import (SUPPORTED_ENCODINGS, encode_compressed,
                                             encode_image)
from structflow_ros.ros.qos import RELIABILITY_CHOICES, make_qos


def synthetic_frame(height, width, index):
    """RGB uint8 (H, W, 3): textured ground below the horizon, sky above, shifting per frame."""
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = np.arange(width, dtype=np.float32)[None, :]
    stripes = (np.sin((cols + 3 * index) / 5.0 + rows / 7.0) + 1) * 60
    frame = np.empty((height, width, 3), np.float32)
    frame[..., 0] = 40 + stripes + rows
    frame[..., 1] = 80 + stripes * 0.5
    frame[..., 2] = 200 - rows
    frame[: height // 2, :, 2] = 250  # sky
    return np.clip(frame, 0, 255).astype(np.uint8)


def pinhole_camera_info(height, width, frame_id, fov_deg=70.0):
    focal = 0.5 * width / np.tan(np.deg2rad(fov_deg) / 2)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    info = CameraInfo()
    info.header.frame_id = frame_id
    info.height, info.width = height, width
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    info.k = [focal, 0.0, cx, 0.0, focal, cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [focal, 0.0, cx, 0.0, 0.0, focal, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def make_image_msg(rgb, encoding, header):
    """RGB frame -> sensor_msgs/Image in `encoding`, or CompressedImage for 'jpeg'/'png'."""
    if encoding in ('jpeg', 'png'):
        msg = CompressedImage()
        msg.header = header
        msg.format = encoding
        msg.data = encode_compressed(rgb, encoding)
        return msg
    step, data = encode_image(rgb, encoding)
    msg = Image()
    msg.header = header
    msg.height, msg.width = rgb.shape[:2]
    msg.encoding = encoding
    msg.step = step
    msg.data = data
    return msg


class ImagePublisher(Node):
    def __init__(self, options):
        super().__init__('image_publisher')
        self.options = options
        compressed = options.encoding in ('jpeg', 'png')
        qos = make_qos(options.reliability, 5)
        self.image_pub = self.create_publisher(CompressedImage if compressed else Image,
                                               'image', qos)
        self.info_pub = self.create_publisher(CameraInfo, 'camera_info', qos)
        self.info = pinhole_camera_info(options.height, options.width, options.frame_id)
        self.index = 0
        self.timer = self.create_timer(1.0 / options.rate, self.tick)

    def tick(self):
        if self.options.count and self.index >= self.options.count:
            raise SystemExit(0)
        rgb = synthetic_frame(self.options.height, self.options.width, self.index)
        self.info.header.stamp = self.get_clock().now().to_msg()
        self.image_pub.publish(make_image_msg(rgb, self.options.encoding, self.info.header))
        self.info_pub.publish(self.info)
        self.index += 1


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--encoding', default='rgb8',
                        choices=SUPPORTED_ENCODINGS + ('jpeg', 'png'))
    parser.add_argument('--rate', type=float, default=10.0, help='frames per second')
    parser.add_argument('--height', type=int, default=64)
    parser.add_argument('--width', type=int, default=96)
    parser.add_argument('--frame-id', default='camera_optical_frame')
    parser.add_argument('--count', type=int, default=0, help='stop after N frames (0: never)')
    parser.add_argument('--reliability', default='best_effort', choices=RELIABILITY_CHOICES)
    return parser


def main(args=None):
    argv = sys.argv if args is None else args
    options = get_args_parser().parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = ImagePublisher(options)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
