"""structflow bag from-video VIDEO|FOLDER --out BAG [--rate HZ] [--camera-info YAML]

Makes a real ROS 2 bag (MCAP by default, or sqlite3) from a video file or a folder of images:
sensor_msgs/Image rgb8 (or CompressedImage JPEG with --compressed) on --topic, stamped at
--rate Hz from --start (or the video's own timestamps with --rate 0), and with --camera-info a
sensor_msgs/CameraInfo beside each image from a camera_calibration YAML (the format
camera_info_manager reads; `structflow calibrate` writes it). No ROS needed (rosbags).
"""
import argparse
import sys
from pathlib import Path

import numpy as np

EXIT_BAD_INPUT = 2


def get_args_parser():
    parser = argparse.ArgumentParser(description='ROS 2 bag helpers.')
    commands = parser.add_subparsers(dest='command', required=True)
    video = commands.add_parser('from-video', help='a video or image folder -> a ROS 2 bag')
    video.add_argument('source', help='video file or folder of images')
    video.add_argument('--out', required=True, help='bag folder to create (must not exist)')
    video.add_argument('--rate', type=float, default=10.0,
                       help='stamps at this rate in Hz (0: the video timestamps)')
    video.add_argument('--start', type=float, default=1.7e9,
                       help='first stamp, seconds since the epoch')
    video.add_argument('--topic', default='/camera/image_raw')
    video.add_argument('--camera-info', default='',
                       help='camera_calibration YAML (camera_info_manager format)')
    video.add_argument('--camera-info-topic', default='/camera/camera_info')
    video.add_argument('--frame-id', default='camera_optical_frame')
    video.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    video.add_argument('--compressed', action='store_true', help='CompressedImage JPEG')
    video.add_argument('--max-frames', type=int, default=0)
    video.add_argument('--stride', type=int, default=1, help='keep every n-th frame')
    video.add_argument('--max-width', type=int, default=0,
                       help='scale frames (and the intrinsics) down to this width (0: keep)')
    video.add_argument('--no-progress', action='store_true')
    return parser


class BagInputError(ValueError):
    pass


def read_camera_info_yaml(path):
    """(K 3x3, D, distortion model, width, height) from a camera_calibration YAML."""
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text())
        K = np.array(data['camera_matrix']['data'], dtype=np.float64).reshape(3, 3)
        D = np.array(data.get('distortion_coefficients', {}).get('data', []), np.float64)
        model = data.get('distortion_model', 'plumb_bob')
        width, height = int(data['image_width']), int(data['image_height'])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise BagInputError(
            f'cannot read camera_info YAML {path}: {error}; expected the camera_calibration '
            'format (image_width, image_height, camera_matrix.data (9), '
            'distortion_model, distortion_coefficients.data)') from None
    if not (np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0 and width > 0 and height > 0):
        raise BagInputError(f'camera_info YAML {path} has no usable intrinsics '
                            f'(K={K.tolist()}, size {width}x{height})')
    return K, D, model, width, height


def from_video(args):
    import cv2
    from tqdm import tqdm
    from structflow_ros.data.bag_io import BagError, BagWriter
    from structflow_ros.data.sources import SourceError, open_source
    from structflow_ros.data.camera import resize_intrinsics
    if args.rate < 0 or args.max_frames < 0 or args.stride < 1 or args.max_width < 0:
        raise BagInputError('--rate, --max-frames and --max-width must be >= 0, --stride >= 1')
    out = Path(args.out)
    if out.exists():
        raise BagInputError(f'{out} already exists; give a new bag folder')
    camera = read_camera_info_yaml(args.camera_info) if args.camera_info else None
    try:
        source = open_source(args.source, stride=args.stride,
                             max_frames=args.max_frames or None)
    except SourceError as error:
        raise BagInputError(str(error)) from None
    written = 0
    try:
        with BagWriter(out, storage=args.storage) as writer:
            bar = tqdm(total=source.num_frames, desc='frames -> bag', unit='frame',
                       file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)
            first_video_ns = None
            for frame in source:
                rgb = frame.image
                if args.max_width and rgb.shape[1] > args.max_width:
                    height = round(rgb.shape[0] * args.max_width / rgb.shape[1])
                    rgb = cv2.resize(rgb, (args.max_width, height), interpolation=cv2.INTER_AREA)
                if args.rate > 0:
                    stamp = int(args.start * 1e9) + int(round(written * 1e9 / args.rate))
                else:
                    first_video_ns = frame.stamp_ns if first_video_ns is None else first_video_ns
                    stamp = int(args.start * 1e9) + frame.stamp_ns - first_video_ns
                if args.compressed:
                    writer.write_compressed(args.topic, stamp, rgb, 'jpeg', args.frame_id)
                else:
                    writer.write_image(args.topic, stamp, rgb, 'rgb8', args.frame_id)
                if camera is not None:
                    K, D, model, width, height = camera
                    K_image = resize_intrinsics(K, (height, width), rgb.shape[:2])
                    writer.write_camera_info(args.camera_info_topic, stamp, K_image,
                                             rgb.shape[1], rgb.shape[0], args.frame_id,
                                             model, D)
                written += 1
                bar.update(1)
            bar.close()
    except (BagError, SourceError) as error:
        raise BagInputError(str(error)) from None
    if written == 0:
        raise BagInputError(f'{args.source} gave no frames; nothing was written')
    print(f'wrote {written} frames to {out} ({args.storage}; topic {args.topic}'
          + (f', camera_info on {args.camera_info_topic}' if camera is not None else '') + ')')
    return 0


def main(args):
    try:
        if args.command == 'from-video':
            return from_video(args)
    except BagInputError as error:
        print(f'structflow bag: {error}', file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_BAD_INPUT
