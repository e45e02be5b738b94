"""Turn a training checkpoint into a serving file (what models/ ships).

  structflow export --weights runs/default/finetune/last.pt --out models/structflow_default.pt
  structflow export --weights models/structflow_default.pt --onnx depth_640x192.onnx --size 640x192

Keeps the matched set the node and on-robot adaptation need (structure encoder, depth decoder,
motion encoder, flow decoder), drops the pose network and the optimizer state, and stores
float16 weights by default (half the size; loading casts back to float32).

`--onnx` writes the served depth graph instead (image (1, 3, H, W) float in [0, 1] ->
sigmoid disparity (1, 1, H, W), BatchNorm folded, full resolution only, opset 17), for runtimes
outside structflow (e.g. `trtexec --onnx=... --fp16` on a Jetson). The node does this itself
for `backend: onnxruntime | openvino | tensorrt`.
"""
import argparse
import sys

from structflow_ros.core.checkpoint import load_model, read_checkpoint, save_checkpoint

SERVING_MODULES = ('structure_encoder', 'depth_decoder', 'motion_encoder', 'flow_decoder')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=__doc__.split('\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', required=True, help='training checkpoint')
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument('--out', help='serving checkpoint to write')
    target.add_argument('--onnx', help='ONNX file of the served depth graph to write')
    parser.add_argument('--size', default='',
                        help='WxH of the ONNX input (multiples of 32; default: the model size)')
    parser.add_argument('--float32', action='store_true', help='keep float32 weights')
    parser.add_argument('--note', action='append', default=[],
                        help='KEY=VALUE pairs stored in the file (e.g. wall_time=...)')
    return parser


def export_onnx_file(args):
    from structflow_ros.core.backends import export_onnx, serving_graph
    from structflow_ros.core.config import SIZE_MULTIPLE

    model, _ = load_model(args.weights)
    height, width = model.config.height, model.config.width
    if args.size:
        try:
            width, height = (int(v) for v in args.size.lower().split('x'))
        except ValueError:
            raise ValueError(f"--size '{args.size}' must be WIDTHxHEIGHT, e.g. 640x192") from None
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE or min(height, width) < 64:
        raise ValueError(f'--size {width}x{height}: both sides must be multiples of '
                         f'{SIZE_MULTIPLE} and >= 64')
    path = export_onnx(serving_graph(model.float()), (height, width), args.onnx)
    print(f'wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): input image (1, 3, {height}, '
          f'{width}) float in [0, 1], output disparity (1, 1, {height}, {width})')
    return 0


def main(args):
    if args.onnx:
        try:
            return export_onnx_file(args)
        except (ValueError, OSError, RuntimeError) as error:
            print(f'structflow export: {error}', file=sys.stderr)
            return 2
    try:
        payload = read_checkpoint(args.weights)
        model, meta = load_model(args.weights)
        modules = [m for m in SERVING_MODULES if m in model.module_names()]
        extra = dict(payload.get('extra', {}))
        for note in args.note:
            key, sep, value = note.partition('=')
            if not sep:
                raise ValueError(f"--note '{note}' must be KEY=VALUE")
            extra[key] = value
        path = save_checkpoint(args.out, model, step=meta['step'], version=meta['version'],
                               stage=meta['stage'], trained_on=meta['trained_on'],
                               metrics=meta.get('metrics'), train_config=meta.get('train_config'),
                               extra=extra, modules=modules, half=not args.float32)
    except (ValueError, OSError) as error:
        print(f'structflow export: {error}', file=sys.stderr)
        return 2
    print(f'wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, modules {modules})')
    return 0
