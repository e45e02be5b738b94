"""`structflow render`: render synthetic drives with exact ground truth to folders or bags.

    structflow render --domain all --frames 200 --size 640x192 --seed 0 --out /tmp/synth --preview
    structflow render --domain fog --frames 100 --format bag --storage mcap --out /tmp/bags

Output, one entry per domain under --out:
- folder: OUT/<domain>/rgb/000000.png, depth/000000.npy (float32 metres, z-depth; sky = the far
  plane, see camera.json), flow/000000.npy (float32 (H, W, 2) pixels to the next frame),
  occlusion/000000.png (255 = occluded or out of view at t+1), camera.json (K, size, poses,
  stamps, domain, seed, fps, conventions).
- bag: OUT/<domain>/ as a rosbag2 bag: /camera/image_raw (rgb8), /camera/camera_info,
  /camera/depth_gt (32FC1 metres, NaN on sky), all with the same stamps, plus camera.json
  (poses, stamps) beside the bag's metadata.yaml.
- --preview: OUT/preview_<domain>.png, rows of RGB | depth | flow.
"""
import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from structflow_ros.cli.arguments import parse_size
from structflow_ros.data.synthetic import domains as synthetic_domains

FORMATS = ('folder', 'bag')
STORAGES = ('sqlite3', 'mcap')
IMAGE_TOPIC = '/camera/image_raw'
INFO_TOPIC = '/camera/camera_info'
DEPTH_TOPIC = '/camera/depth_gt'
FRAME_ID = 'camera'
PREVIEW_ROWS = 4


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Render the synthetic driving world (RGB, depth, flow, occlusion, poses).',
        add_help=add_help)
    parser.add_argument('--domain', nargs='+', default=['day'],
                        help=f'one or more of {", ".join(synthetic_domains.DOMAINS)}, '
                             'comma-separated or "all" (default: day)')
    parser.add_argument('--frames', type=int, default=100, help='frames per domain (100)')
    parser.add_argument('--height', type=int, default=96, help='image height (96)')
    parser.add_argument('--width', type=int, default=320, help='image width (320)')
    parser.add_argument('--size', type=parse_size, default=None,
                        help='WIDTHxHEIGHT, e.g. 640x192 (overrides --width/--height)')
    parser.add_argument('--seed', type=int, default=0, help='world and drive seed (0)')
    parser.add_argument('--fps', type=float, default=10.0, help='frame rate for stamps (10)')
    parser.add_argument('--out', type=Path, required=True, help='output directory')
    parser.add_argument('--format', choices=FORMATS, default='folder',
                        help='folder (png/npy + camera.json) or bag (ROS 2 bag)')
    parser.add_argument('--storage', choices=STORAGES, default='sqlite3',
                        help='bag storage plugin (sqlite3)')
    parser.add_argument('--preview', action='store_true',
                        help='also write OUT/preview_<domain>.png (RGB | depth | flow rows)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace earlier output of this command for the same domain')
    parser.add_argument('--photo-textures', nargs='+', default=[], metavar='SPEC',
                        help='video / image folder specs whose frames texture some surfaces of '
                        'the room domains (what finetune --photo-textures trains on)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


class RenderCliError(ValueError):
    """Bad arguments or an output location that cannot be used."""


def _prepare_target(target: Path, overwrite: bool, marker: str) -> None:
    """Make sure `target` does not exist; with --overwrite remove our own earlier output."""
    if not target.exists():
        return
    if not overwrite:
        raise RenderCliError(f'{target} already exists; choose another --out or pass '
                             '--overwrite to replace it')
    if not (target / marker).exists():
        raise RenderCliError(f'{target} exists and is not output of structflow render (no '
                             f'{marker}); refusing to delete it')
    shutil.rmtree(target)


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w') as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class _FolderWriter:
    def __init__(self, root: Path):
        self.root = root
        for sub in ('rgb', 'depth', 'flow', 'occlusion'):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def write(self, frame) -> dict:
        from structflow_ros.data.synthetic.preview import write_png
        name = f'{frame.index:06d}'
        write_png(self.root / 'rgb' / f'{name}.png', frame.rgb)
        np.save(self.root / 'depth' / f'{name}.npy', frame.depth.astype(np.float32))
        np.save(self.root / 'flow' / f'{name}.npy', frame.flow.astype(np.float32))
        occlusion = np.repeat((frame.occlusion.astype(np.uint8) * 255)[..., None], 3, axis=2)
        write_png(self.root / 'occlusion' / f'{name}.png', occlusion)
        return {'rgb': f'rgb/{name}.png', 'depth': f'depth/{name}.npy',
                'flow': f'flow/{name}.npy', 'occlusion': f'occlusion/{name}.png'}

    def close(self):
        pass


class _BagOutput:
    def __init__(self, root: Path, storage: str):
        from structflow_ros.data.bag_io import BagWriter
        self.bag = BagWriter(root, storage=storage).open()

    def write(self, frame) -> dict:
        height, width = frame.depth.shape
        self.bag.write_image(IMAGE_TOPIC, frame.stamp_ns, frame.rgb, encoding='rgb8',
                             frame_id=FRAME_ID)
        self.bag.write_camera_info(INFO_TOPIC, frame.stamp_ns, frame.K, width, height,
                                   frame_id=FRAME_ID)
        depth = np.where(frame.depth_valid, frame.depth, np.nan).astype(np.float32)
        self.bag.write_image(DEPTH_TOPIC, frame.stamp_ns, depth, encoding='32FC1',
                             frame_id=FRAME_ID)
        return {}

    def close(self):
        self.bag.close()


def render_domain(domain: str, args, width: int, height: int, progress: bool, textures=None):
    """Render one domain to args.out/<domain>; returns (seconds, frames, preview path)."""
    from structflow_ros.data.synthetic.preview import contact_sheet, write_png
    from structflow_ros.data.synthetic.render import open_renderer
    config = synthetic_domains.get_domain(domain)
    target = args.out / domain
    _prepare_target(target, args.overwrite, 'camera.json' if args.format == 'folder'
                    else 'metadata.yaml')
    textures = textures if domain in synthetic_domains.room_domains() else None
    renderer = open_renderer(domain, args.frames, height, width, args.seed, args.fps, textures)
    writer = (_FolderWriter(target) if args.format == 'folder'
              else _BagOutput(target, args.storage))
    preview_at = set(np.linspace(0, args.frames - 1, min(PREVIEW_ROWS, args.frames)).round()
                     .astype(int).tolist())
    preview_frames, records = [], []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=args.frames, desc=f'render {domain}', unit='frame', file=sys.stderr)
    start = time.perf_counter()
    try:
        for frame in renderer.frames():
            files = writer.write(frame)
            records.append({'index': frame.index, 'stamp_ns': frame.stamp_ns,
                            'pose_c2w': frame.pose_c2w.tolist(), **files})
            if args.preview and frame.index in preview_at:
                preview_frames.append(frame)
            if bar is not None:
                bar.update(1)
    finally:
        writer.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    meta = {
        'domain': domain, 'seed': args.seed, 'fps': args.fps, 'num_frames': len(records),
        'width': width, 'height': height, 'K': renderer.K.tolist(),
        'sky_depth_m': config.far_m,
        'conventions': {
            'depth': 'float32 z-depth along the optical axis in metres; sky pixels hold '
                     'sky_depth_m (invalid)',
            'flow': 'float32 (H, W, 2) (u, v) pixels from this frame to the next; exact, '
                    'moving cars included; sky flow = rotation-only (surface at infinity)',
            'occlusion': 'png 255 where the pixel is occluded or out of view in the next frame '
                         '(flow invalid there)',
            'pose_c2w': '4x4 camera-to-world; camera axes OpenCV (x right, y down, z '
                        'forward); world x east, y north, z up; metres',
            'pixels': 'pixel (u, v) is the centre of column u, row v',
        },
        'format': args.format,
        'photo_textures': list(args.photo_textures) if textures is not None else [],
        'frames': records,
    }
    if args.format == 'bag':
        meta['storage'] = args.storage
        meta['topics'] = {'image': IMAGE_TOPIC, 'camera_info': INFO_TOPIC,
                          'depth_gt': DEPTH_TOPIC}
    _write_json_atomic(target / 'camera.json', meta)
    preview_path = None
    if args.preview and preview_frames:
        preview_path = args.out / f'preview_{domain}.png'
        tmp = preview_path.with_name(preview_path.stem + '.tmp.png')
        write_png(tmp, contact_sheet(preview_frames, title=domain))
        os.replace(tmp, preview_path)
    return seconds, len(records), preview_path


def main(args) -> int:
    try:
        names = synthetic_domains.parse_domains(
            [part for item in args.domain for part in item.split(',')])
        height, width = args.size if args.size is not None else (args.height, args.width)
        if args.frames < 1:
            raise RenderCliError(f'--frames must be >= 1, got {args.frames}')
        if width < 8 or height < 8:
            raise RenderCliError(f'image size must be at least 8x8, got {width}x{height}')
        if not args.fps > 0:
            raise RenderCliError(f'--fps must be > 0, got {args.fps}')
        textures = None
        if args.photo_textures:
            rooms = synthetic_domains.room_domains()
            if not set(names) & set(rooms):
                raise RenderCliError('--photo-textures textures the room scenes; none of '
                                     f'{", ".join(names)} is one (room domains: '
                                     f'{", ".join(rooms)})')
            from structflow_ros.data.synthetic.photo_textures import PhotoTextures
            textures = PhotoTextures.from_specs(args.photo_textures, seed=args.seed)
        args.out.mkdir(parents=True, exist_ok=True)
        for name in names:
            seconds, count, preview = render_domain(name, args, width, height,
                                                    progress=not args.no_progress,
                                                    textures=textures)
            where = args.out / name
            print(f'{name}: {count} frames {width}x{height} -> {where} ({args.format}) in '
                  f'{seconds:.1f} s, {count / max(seconds, 1e-9):.1f} frames/s (incl. writing)')
            if preview is not None:
                print(f'preview: {preview}')
    except ValueError as error:  # RenderCliError, unknown domain, BagError
        print(f'structflow render: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
