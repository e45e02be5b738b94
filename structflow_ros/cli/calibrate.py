"""Calibrate a camera from chessboard images (or a video), written as a ROS camera_info YAML.

  structflow calibrate ../shared/data/udacity_calibrated_video/camera_cal --pattern 9x6 \
      --square 0.025 --camera-name udacity --out udacity.yaml
  structflow calibrate board_sweep.mp4 --every 10 --pattern 8x6 --out camera.yaml

The file is the camera_calibration format that camera_info_manager reads (a camera driver's
camera_info_url can point at it) and that `structflow finetune --video PATH#calib=FILE` uses to
undistort frames. Views of another size than most, and views without a detected board, are left
out and listed. The RMS reprojection error is printed and written into the file's first line;
above 1 px usually means a bad view (see the per-view errors) or a wrong --pattern.
"""
import argparse
import json
import sys


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=__doc__.split('\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+',
                        help='chessboard images, folders of images, or videos')
    parser.add_argument('--pattern', default='9x6',
                        help='inner corners of the board, COLUMNSxROWS (default 9x6)')
    parser.add_argument('--square', type=float, default=1.0,
                        help='square size in metres (scales only the board poses)')
    parser.add_argument('--every', type=int, default=15,
                        help='use every N-th frame of a video input')
    parser.add_argument('--camera-name', default='camera')
    parser.add_argument('--out', required=True, help='camera_info YAML to write')
    return parser


def parse_pattern(text):
    try:
        cols, rows = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise ValueError(f"--pattern must be COLUMNSxROWS inner corners, e.g. 9x6, got "
                         f"'{text}'") from None
    if cols < 2 or rows < 2:
        raise ValueError(f'--pattern needs at least 2x2 inner corners, got {text}')
    return cols, rows


def main(args):
    from structflow_ros.data.calibration import CalibrationError, calibrate, read_views
    from structflow_ros.data.sources import SourceError
    try:
        pattern = parse_pattern(args.pattern)
        if args.every < 1 or not args.square > 0:
            raise ValueError('--every must be >= 1 and --square > 0')
        views = read_views(args.inputs, video_every=args.every)
        calibration = calibrate(views, pattern, args.square, args.camera_name,
                                log=lambda line: print(line, file=sys.stderr))
        path = calibration.save(args.out)
    except (ValueError, OSError, CalibrationError, SourceError) as error:
        print(f'structflow calibrate: {error}', file=sys.stderr)
        return 2
    worst = sorted(calibration.per_view_rms_px.items(), key=lambda kv: -kv[1])[:3]
    print(json.dumps({
        'out': str(path), 'image_size': [calibration.width, calibration.height],
        'views_used': len(calibration.per_view_rms_px), 'views_given': len(views),
        'rms_reprojection_px': round(calibration.rms_px, 4),
        'fx': calibration.K[0, 0], 'fy': calibration.K[1, 1], 'cx': calibration.K[0, 2],
        'cy': calibration.K[1, 2], 'distortion': calibration.D.tolist(),
        'worst_views_px': {k: round(v, 3) for k, v in worst}}, indent=2))
    return 0
