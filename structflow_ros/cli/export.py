"""Turn a training checkpoint into a serving file (what models/ ships).

  structflow export --weights runs/default/finetune/last.pt --out models/structflow_default.pt

Keeps the matched set the node and on-robot adaptation need (structure encoder, depth decoder,
motion encoder, flow decoder), drops the pose network and the optimizer state, and stores
float16 weights by default (half the size; loading casts back to float32).
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
    parser.add_argument('--out', required=True, help='serving checkpoint to write')
    parser.add_argument('--float32', action='store_true', help='keep float32 weights')
    parser.add_argument('--note', action='append', default=[],
                        help='KEY=VALUE pairs stored in the file (e.g. wall_time=...)')
    return parser


def main(args):
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
