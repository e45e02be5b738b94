#!/usr/bin/env python3
"""Write models/MODEL_CARD.md from a default-weights run (called by scripts/train_default.sh).

  .venv/bin/python scripts/write_model_card.py --run runs/default \
      --model models/structflow_default.pt
"""
import argparse
import json
from pathlib import Path

from structflow_ros.core import read_checkpoint

KEYS = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3', 'scale_ratio_spread')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--run', default='runs/default')
    parser.add_argument('--model', default='models/structflow_default.pt')
    parser.add_argument('--out', default='models/MODEL_CARD.md')
    return parser


def row(name, label, metrics):
    return f'| {name} | {label} | ' + ' | '.join(f'{metrics.get(k, float("nan")):.3f}'
                                                 for k in KEYS) + ' |'


def main(args):
    run = Path(args.run)
    payload = read_checkpoint(args.model)
    config = payload['model_config']
    pretrain = json.loads((run / 'pretrain' / 'summary.json').read_text())
    finetune = json.loads((run / 'finetune' / 'summary.json').read_text())
    report = json.loads((run / 'evaluate' / 'metrics.json').read_text())
    size_mib = Path(args.model).stat().st_size / 2**20
    lines = [
        '# structflow default model', '',
        f'File: `{args.model}` ({size_mib:.1f} MiB, {payload["weights_dtype"]} weights), '
        f'written by `scripts/train_default.sh` (`make train-default`).', '',
        '## Architecture', '',
        f'- Structure encoder {config.encoder} (written in this project, no ImageNet weights), '
        'depth decoder (sigmoid disparity, 4 scales), motion encoder (two frames -> '
        f'{config.motion_dim}-d latent) and flow decoder (motion joined at the bottleneck): '
        'the matched set that on-robot adaptation needs.',
        f'- Input {config.width}x{config.height} (W x H), RGB; any camera size is resized to it '
        'by the node. Output: relative depth (see README, depth units).', '',
        '## Training (CPU, 2 cores)', '',
        f'1. Flow pretraining, {pretrain["steps"]} steps, batch {pretrain["loop"]["batch_size"]}, '
        f'lr {pretrain["loop"]["lr"]}, {pretrain["wall_time_s"] / 60:.0f} min, on: '
        + ', '.join(f'`{d}`' for d in pretrain['trained_on']) + '.',
        f'2. Depth finetuning (supervised scale-invariant loss on synthetic ground truth, jointly '
        f'with the flow loss), {finetune["steps"]} steps, batch '
        f'{finetune["loop"]["batch_size"]}, lr {finetune["loop"]["lr"]}, '
        f'{finetune["wall_time_s"] / 60:.0f} min, on: '
        + ', '.join(f'`{d}`' for d in finetune['trained_on']) + '.',
        '', 'Held out of all training: the synthetic `fog` domain (for the adaptation work) and '
        'every real depth frame below.', '',
        '## Measured', '',
        f'`structflow evaluate --weights {args.model} --synthetic fog:24:100 --real`. '
        'Median scaling per frame; the constant-depth floor (one depth everywhere, median-scaled) '
        'on the same frames is the number a useful model must beat. Beside it the prior floor '
        "(the geometric mean of the model's own predictions over the set, used for every frame) "
        'and the image gain, 1 - AbsRel(model) / AbsRel(prior): the model sees a set only where '
        'it is positive. KITTI uses the Garg crop and 80 m cap, NYU/TUM 10 m.', '',
        '| set | | AbsRel | SqRel | RMSE | RMSE log | δ<1.25 | δ<1.25² | δ<1.25³ | scale spread |',
        '|---|---|---|---|---|---|---|---|---|---|']
    for name, entry in report['depth'].items():
        frames = entry['model'].get('frames')
        lines.append(row(f'{name} ({frames} frames)', 'model', entry['model']))
        lines.append(row('', 'floor', entry['floor']))
        if 'prior' in entry:
            lines.append(row('', f"prior (image gain {entry['image_gain']:+.3f})",
                             entry['prior']))
    if report.get('flow'):
        lines += ['', '| flow set | method | EPE (px) | Fl-all |', '|---|---|---|---|']
        for name, methods in report['flow'].items():
            for method, values in methods.items():
                lines.append(f'| {name} | {method} | {values["epe"]:.3f} | '
                             f'{values["fl_all"]:.3f} |')
    final = finetune.get('final_metrics', {})
    if 'eval/grad_cosine_depth_flow' in final:
        lines += ['', f'Cosine between the depth- and flow-loss gradients on the structure '
                  f'encoder (held-out fog): {final["eval/grad_cosine_depth_flow"]:.3f}.']
    verdicts = []
    for name, entry in report['depth'].items():
        beats = entry['model']['abs_rel'] < entry['floor']['abs_rel']
        verdicts.append(f'- {name}: AbsRel {entry["model"]["abs_rel"]:.3f} vs floor '
                        f'{entry["floor"]["abs_rel"]:.3f}: '
                        + ('beats the constant-depth floor.' if beats else
                           '**does not beat the constant-depth floor** (outside what it was '
                           'trained on).'))
    lines += ['', '## Reading the numbers', ''] + verdicts
    lines += ['', '## Limits', '',
              '- Trained for minutes on a 2-core CPU, mostly on a procedural world: expect '
              'coarse depth on real cameras. It is a working default and a starting point for '
              'on-robot adaptation, not a competitor to models trained for days on KITTI.',
              '- Relative depth only: metric output needs `depth_mode:=scale` or '
              '`camera_height` in the node.',
              '- Trained on driving scenes: indoor frames (NYU, TUM) and small indoor motions '
              '(RubberWhale flow) are outside its training distribution; the flow branch in '
              'particular predicts driving-like flow there. On-robot adaptation is meant to '
              'close such gaps.']
    Path(args.out).write_text('\n'.join(lines) + '\n')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main(get_args_parser().parse_args())
