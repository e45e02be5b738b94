"""Eigen depth metrics (median-scaled, beside the constant-depth floor) and flow EPE.

  structflow evaluate                                  # shipped model, every set available
  structflow evaluate --weights runs/finetune/last.pt --synthetic fog:40:7 --real \
      --out reports/eval

Sets: synthetic domains (rendered at the model size), the KITTI / NYU / TUM frames of
../shared/data (--real), folders written by `structflow render` (--folder). Flow: EPE and Fl-all
on synthetic pairs and Middlebury RubberWhale, beside zero flow, Farneback and DIS.
Writes OUT/metrics.json and OUT/<set>_best_worst.png.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

DEFAULT_SYNTHETIC = ('fog:24:100',)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=__doc__.split('\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--weights', default='', help='checkpoint (default: the shipped model)')
    parser.add_argument('--synthetic', nargs='*', default=None,
                        help='DOMAIN[:FRAMES[:SEED]] sets (default '
                             f'{" ".join(DEFAULT_SYNTHETIC)})')
    parser.add_argument('--real', action='store_true',
                        help='the KITTI/NYU/TUM frames and RubberWhale of ../shared/data')
    parser.add_argument('--shared-data', default='', help='shared data folder (default: '
                        '$STRUCTFLOW_SHARED_DATA or ../shared/data)')
    parser.add_argument('--folder', nargs='*', default=[], help='`structflow render` folders')
    parser.add_argument('--no-flow', action='store_true', help='skip flow evaluation')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--out', default='reports/evaluate')
    return parser


def _sheet(frames, result, path, count=3):
    """PNG: best and worst frames by AbsRel, rows of RGB | ground truth | prediction."""
    import cv2

    from structflow_ros.data.synthetic.preview import depth_to_color
    order = sorted(range(len(result['per_frame'])),
                   key=lambda i: result['per_frame'][i]['abs_rel']
                   if math.isfinite(result['per_frame'][i]['abs_rel']) else float('inf'))
    picks = order[:count] + [i for i in order[::-1][:count] if i not in order[:count]]
    rows = []
    for rank, index in enumerate(picks):
        frame, pred = frames[index], result['predictions'][index]
        valid = np.asarray(frame['valid'], bool) & (frame['depth'] > 0)
        scaled = pred * result['per_frame'][index]['scale_ratio']
        # One colour scale for ground truth and prediction: brightest at gt's 5th percentile.
        near = float(np.percentile(frame['depth'][valid], 5)) if valid.any() else None
        row = [frame['rgb'], depth_to_color(frame['depth'], valid, near),
               depth_to_color(scaled, None, near)]
        row = [cv2.cvtColor(img, cv2.COLOR_RGB2BGR) for img in row]
        height = 160
        row = [cv2.resize(img, (int(img.shape[1] * height / img.shape[0]), height)) for img in row]
        row = np.concatenate(row, 1)
        label = ('best' if rank < count else 'worst') + \
            f" {frame.get('name', index)} AbsRel {result['per_frame'][index]['abs_rel']:.3f}"
        cv2.putText(row, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, 0))
    return path


def synthetic_sequences(args, config):
    """(set name, frames) of each --synthetic spec, rendered at the model size."""
    from structflow_ros.training import datasets
    for spec in (DEFAULT_SYNTHETIC if args.synthetic is None else args.synthetic):
        parsed = datasets.SyntheticSpec.parse(datasets.SYNTHETIC_PREFIX + spec)
        yield (f'synthetic_{parsed.domain}',
               datasets.render_synthetic(parsed, config.height, config.width))


def depth_sets(args, config):
    """name -> (frames, max_depth, garg_crop)."""
    from structflow_ros.training import datasets
    sets = {}
    for name, frames in synthetic_sequences(args, config):
        sets[name] = ([{'rgb': f.rgb, 'depth': f.depth, 'valid': f.depth_valid,
                        'name': f'{f.domain}/{f.index}'} for f in frames], 80.0, False)
    for folder in args.folder:
        sets[f'folder_{Path(folder).name}'] = (datasets.load_rendered_folder(folder), 80.0,
                                               False)
    if args.real:
        from structflow_ros.data import shared_data
        root = args.shared_data or None
        for dataset, garg in (('kitti', True), ('nyu', False)):
            frames = shared_data.load_depth_frames(dataset, root)
            sets[f'real_{dataset}'] = ([{'rgb': f.image, 'depth': f.depth, 'valid': f.valid,
                                         'name': f'{dataset}/{f.name}'} for f in frames],
                                       frames[0].max_depth, garg)
        tum = shared_data.load_tum_pair(root)
        sets['real_tum'] = ([{'rgb': f.image, 'depth': f.depth, 'valid': f.valid,
                              'name': f'tum/{f.name}'} for f in tum], tum[0].max_depth, False)
    return sets


def flow_sets(args, config):
    """name -> [(rgb0, rgb1, flow_gt, valid)]."""
    sets = {name: [(a.rgb, b.rgb, a.flow, a.flow_valid) for a, b in zip(frames[:-1], frames[1:])]
            for name, frames in synthetic_sequences(args, config)}
    if args.real:
        from structflow_ros.data import shared_data
        pair = shared_data.load_rubberwhale(args.shared_data or None)
        sets['real_rubberwhale'] = [(pair.frame0, pair.frame1, pair.flow, pair.valid)]
    return sets


def main(args):
    from structflow_ros.core import load_model, resolve_device
    from structflow_ros.paths import default_weights_path
    from structflow_ros.training.evaluation import evaluate_depth, evaluate_flow
    weights = args.weights or str(default_weights_path())
    try:
        device = resolve_device(args.device)
        model, meta = load_model(weights, device)
        sets = depth_sets(args, model.config)
        flows = {} if args.no_flow or not model.config.flow_branch else flow_sets(args,
                                                                                  model.config)
    except (ValueError, OSError) as error:
        print(f'structflow evaluate: {error}', file=sys.stderr)
        return 2
    out = Path(args.out)
    report = {'weights': weights, 'step': meta['step'], 'trained_on': meta['trained_on'],
              'model_config': meta['model_config'].to_dict(), 'depth': {}, 'flow': {}}
    keys = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3', 'scale_ratio_spread')
    print(f"{'set':<22} {'':<6} " + ' '.join(f'{k:>9}' for k in keys))
    for name, (frames, max_depth, garg) in sets.items():
        result = evaluate_depth(model, frames, max_depth=max_depth, garg_crop=garg,
                                device=device, keep_predictions=True)
        sheet = _sheet(frames, result, out / f'{name}_best_worst.png')
        report['depth'][name] = {'model': result['model'], 'floor': result['floor'],
                                 'max_depth': max_depth, 'garg_crop': garg,
                                 'per_frame': result['per_frame'], 'sheet': str(sheet)}
        for label in ('model', 'floor'):
            print(f'{name:<22} {label:<6} ' + ' '.join(
                f"{result[label].get(k, float('nan')):9.3f}" for k in keys))
    for name, pairs in flows.items():
        result = evaluate_flow(model, pairs, device=device)
        report['flow'][name] = result
        print(f'{name:<22} flow EPE ' + ', '.join(
            f"{method} {values['epe']:.3f}" for method, values in result.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / 'metrics.json').write_text(json.dumps(report, indent=2, default=str))
    print(f'wrote {out / "metrics.json"}')
    return 0
