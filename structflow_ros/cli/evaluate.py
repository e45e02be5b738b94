"""Eigen depth metrics (median-scaled, beside the constant-depth and prior floors) and flow EPE.

Beside the Eigen metrics, `ordinal` is the share of pixel pairs (true depths more than 10 %
apart) that the prediction orders wrongly: one constant depth scores 0.5 on every frame, so it
tells a model that sees structure from one that is merely flat where the scene is flat.
Every set has three rows: the model, the constant-depth floor (`floor`) and the
image-independent prior floor (`prior`: the geometric mean of the model's own predictions over
the set, per image size, used for every frame and scored the same way), then the image gain,
1 - AbsRel(model) / AbsRel(prior): a model sees a set only where it is positive (design.md).
The prior has structure (a road-plane gradient), so its ordinal error is not 0.5.

  structflow evaluate                                  # shipped model, every set available
  structflow evaluate --weights runs/finetune/last.pt --synthetic fog:40:7 --real \
      --out reports/eval

Sets: synthetic domains (rendered at the model size), every real depth set of ../shared/data
(--real: KITTI, KITTI object, KITTI 2015, nuScenes' 6 cameras, Argoverse, NYU, TUM; each its own
row with its cap, 80 m outdoors and 10 m indoors, plus the pooled outdoor row the default model
is judged on), folders written by `structflow render` (--folder). Frames are served at the
network size of their own aspect (--aspect keep) or squashed to the model size (--aspect squash);
the default, auto, does what the node does with these weights; --aspect both measures the two
side by side. --input-jpeg Q serves every depth frame as a JPEG of quality Q (a camera on
compressed image transport). Flow: EPE and Fl-all on
synthetic pairs and Middlebury RubberWhale, beside zero flow, Farneback and DIS.
Writes OUT/metrics.json, OUT/<set>_best_worst.png and, with --real, OUT/real_sheet.png
(every real frame: image | ground truth | depth | error).
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
                        help='every real depth set and RubberWhale of ../shared/data')
    parser.add_argument('--real-sets', nargs='*', default=None,
                        help='only these real sets (default: all; see data/real_depth_eval.py)')
    parser.add_argument('--aspect', default='auto', choices=('auto', 'keep', 'squash', 'both'),
                        help='serve each frame at its own aspect (keep) or squashed to the model '
                        "size; auto: what the weights were trained for (the node's default); "
                        'both: measure the two')
    parser.add_argument('--input-jpeg', type=int, default=None, metavar='QUALITY',
                        help='serve every depth frame as a JPEG of this quality (1-100), as a '
                        'camera on compressed image transport delivers it; ground truth as is')
    parser.add_argument('--shared-data', default='', help='shared data folder (default: '
                        '$STRUCTFLOW_SHARED_DATA or ../shared/data)')
    parser.add_argument('--folder', nargs='*', default=[], help='`structflow render` folders')
    parser.add_argument('--no-flow', action='store_true', help='skip flow evaluation')
    parser.add_argument('--device', default='auto')
    parser.add_argument('--out', default='reports/evaluate')
    return parser


def _sheet_row(frame, pred, metrics, label, max_depth, height=160):
    """RGB | ground truth | prediction (median-scaled, one colour scale) | AbsRel error."""
    import cv2

    from structflow_ros.data.synthetic.preview import depth_to_color
    from structflow_ros.visual import error_map
    valid = np.asarray(frame['valid'], bool) & (frame['depth'] > 0) & \
        (frame['depth'] <= max_depth)
    scaled = pred * metrics['scale_ratio']
    # One colour scale for ground truth and prediction: brightest at gt's 5th percentile.
    near = float(np.percentile(frame['depth'][valid], 5)) if valid.any() else None
    error = np.abs(scaled - frame['depth']) / np.maximum(frame['depth'], 1e-3)
    # Sparse LiDAR points are single pixels: grow them so the error column can be seen.
    grow = max(1, frame['depth'].shape[1] // 400)
    error_bgr = error_map(np.where(valid, error, 0.0), valid)
    gt_bgr = cv2.cvtColor(depth_to_color(frame['depth'], valid, near), cv2.COLOR_RGB2BGR)
    if valid.mean() < 0.05:
        kernel = np.ones((2 * grow + 1,) * 2, np.uint8)
        error_bgr, gt_bgr = cv2.dilate(error_bgr, kernel), cv2.dilate(gt_bgr, kernel)
    row = [cv2.cvtColor(frame['rgb'], cv2.COLOR_RGB2BGR), gt_bgr,
           cv2.cvtColor(depth_to_color(scaled, None, near), cv2.COLOR_RGB2BGR), error_bgr]
    row = [cv2.resize(img, (int(img.shape[1] * height / img.shape[0]), height),
                      interpolation=cv2.INTER_AREA) for img in row]
    row = np.concatenate(row, 1)
    cv2.putText(row, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                cv2.LINE_AA)
    return row


def _write_rows(rows, path):
    import cv2
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(rows, 0))
    return path


def _sheet(frames, result, path, count=3, max_depth=80.0):
    """PNG: best and worst frames by AbsRel, rows of RGB | ground truth | prediction | error."""
    order = sorted(range(len(result['per_frame'])),
                   key=lambda i: result['per_frame'][i]['abs_rel']
                   if math.isfinite(result['per_frame'][i]['abs_rel']) else float('inf'))
    picks = order[:count] + [i for i in order[::-1][:count] if i not in order[:count]]
    rows = []
    for rank, index in enumerate(picks):
        metrics = result['per_frame'][index]
        label = ('best' if rank < count else 'worst') + \
            f" {frames[index].get('name', index)} AbsRel {metrics['abs_rel']:.3f} (prior " \
            f"{result['prior_per_frame'][index]['abs_rel']:.3f})"
        rows.append(_sheet_row(frames[index], result['predictions'][index], metrics, label,
                               max_depth))
    return _write_rows(rows, path)


def synthetic_sequences(args, config):
    """(set name, frames) of each --synthetic spec, rendered at the model size."""
    from structflow_ros.training import datasets
    for spec in (DEFAULT_SYNTHETIC if args.synthetic is None else args.synthetic):
        parsed = datasets.SyntheticSpec.parse(datasets.SYNTHETIC_PREFIX + spec)
        yield (f'synthetic_{parsed.domain}',
               datasets.render_synthetic(parsed, config.height, config.width))


def depth_sets(args, config):
    """name -> (frames, max_depth, garg_crop, outdoor: True/False for real sets, else None)."""
    from structflow_ros.training import datasets
    sets = {}
    for name, frames in synthetic_sequences(args, config):
        sets[name] = ([{'rgb': f.rgb, 'depth': f.depth, 'valid': f.depth_valid,
                        'name': f'{f.domain}/{f.index}'} for f in frames], 80.0, False, None)
    for folder in args.folder:
        sets[f'folder_{Path(folder).name}'] = (datasets.load_rendered_folder(folder), 80.0,
                                               False, None)
    if args.real:
        from structflow_ros.data.real_depth_eval import load_real_sets
        for real in load_real_sets(args.shared_data or None, args.real_sets):
            sets[f'real_{real.name}'] = ([{'rgb': f.image, 'depth': f.depth, 'valid': f.valid,
                                           'name': f'{real.name}/{f.name}', 'frame': f.name,
                                           'vehicles': real.vehicles}
                                          for f in real.frames], real.max_depth,
                                         real.garg_crop, real.outdoor)
    return sets


def as_jpeg_stream(sets, quality):
    """Every depth frame's image encoded as JPEG at `quality` and decoded again, as a camera on
    compressed image transport delivers it; ground truth, names and caps unchanged."""
    if not 1 <= quality <= 100:
        raise ValueError(f'--input-jpeg must be a JPEG quality in 1-100, got {quality}')
    from structflow_ros.data.image_codec import jpeg_round_trip
    return {name: ([dict(frame, rgb=jpeg_round_trip(frame['rgb'], quality)) for frame in frames],
                   *rest)
            for name, (frames, *rest) in sets.items()}


def pooled(report, names, sets=None, predictions=None, network_size=None):
    """Mean of per-frame metrics over several sets (every frame weighs the same), with the
    pooled prior floor and image gain, 1 - pooled model AbsRel / pooled prior AbsRel.

    The pooled prior is one prior over all the pooled frames (`pooled_prior`), not the mean of
    the sets' own: a set of one frame is its own prior (gain 0 by construction), while frames
    of one camera shape from several sets share the layout a model may have learned. Without
    the predictions (`sets`, `predictions`, `network_size`), each set's own prior is pooled.
    """
    from structflow_ros.core.metrics import aggregate_depth_metrics, image_gain
    result = {'sets': list(names)}
    for label, key in (('model', 'per_frame'), ('floor', 'floor_per_frame'),
                       ('prior', 'prior_per_frame')):
        result[label] = aggregate_depth_metrics(
            [f for n in names for f in report['depth'][n][key]])
    result['prior_source'] = 'each set its own'
    result['prior_per_frame'] = [f for n in names for f in report['depth'][n]['prior_per_frame']]
    if predictions is not None:
        per_frame = pooled_prior([(sets[n], predictions[n]) for n in names], network_size)
        result['prior'] = aggregate_depth_metrics(per_frame)
        result['prior_per_frame'] = per_frame
        result['prior_source'] = 'pooled frames, per network input size'
    result['image_gain'] = image_gain(result['model']['abs_rel'], result['prior']['abs_rel'])
    return result


def pooled_prior(sets, network_size):
    """Prior-floor metrics of every frame of several sets: the geometric mean of the model's
    predictions over all the frames served at one network input size (`network_size(H, W)`
    gives it for a frame), each taken at that size, then resized back to each frame and scored
    like the model with its set's cap and crop. sets: [((frames, max_depth, garg, outdoor),
    predictions at the ground-truth size)]."""
    import cv2

    from structflow_ros.core.metrics import depth_metrics, prior_floor_predictions
    entries = []
    for (frames, max_depth, garg, _), preds in sets:
        for frame, pred in zip(frames, preds):
            size = tuple(network_size(*pred.shape))
            small = cv2.resize(np.asarray(pred, np.float32), size[::-1],
                               interpolation=cv2.INTER_AREA)
            entries.append((frame, max_depth, garg, size, small))
    priors = prior_floor_predictions([entry[4] for entry in entries])  # grouped by shape
    counts = {}
    for entry in entries:
        counts[entry[3]] = counts.get(entry[3], 0) + 1
    per_frame = []
    for (frame, max_depth, garg, size, _), prior in zip(entries, priors):
        height, width = frame['depth'].shape
        full = cv2.resize(prior.astype(np.float32), (width, height),
                          interpolation=cv2.INTER_LINEAR)
        metrics = depth_metrics(full, frame['depth'], frame.get('valid'), max_depth=max_depth,
                                garg_crop=garg)
        metrics.update(name=frame.get('name'), prior_frames=counts[size])
        per_frame.append(metrics)
    return per_frame


def _alone_note(priors):
    """'; K of N frames alone at their size ...' where a frame's prior is its own prediction."""
    alone = sum(1 for f in priors if f.get('prior_frames') == 1 and f.get('valid_pixels'))
    if not alone:
        return ''
    scored = sum(1 for f in priors if f.get('valid_pixels'))
    return (f'; {alone} of {scored} frames alone at their image size: their prior is their own '
            'prediction (gain 0 by construction)')


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
    from structflow_ros.core.inference import serving_input_size
    from structflow_ros.paths import default_weights_path
    from structflow_ros.training.evaluation import evaluate_depth, evaluate_flow
    weights = args.weights or str(default_weights_path())
    try:
        device = resolve_device(args.device)
        model, meta = load_model(weights, device)
        sets = depth_sets(args, model.config)
        if args.input_jpeg is not None:
            sets = as_jpeg_stream(sets, args.input_jpeg)
        flows = {} if args.no_flow or not model.config.flow_branch else flow_sets(args,
                                                                                  model.config)
    except (ValueError, OSError) as error:
        print(f'structflow evaluate: {error}', file=sys.stderr)
        return 2
    out = Path(args.out)
    report = {'weights': weights, 'step': meta['step'], 'trained_on': meta['trained_on'],
              'model_config': meta['model_config'].to_dict(), 'input_jpeg': args.input_jpeg,
              'depth': {}, 'flow': {}}
    keys = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3', 'ordinal_error',
            'scale_ratio_spread')
    if args.aspect == 'auto':
        from structflow_ros.online.server import keeps_aspect
        aspects = ('keep',) if keeps_aspect('auto', meta) else ('squash',)
    else:
        aspects = ('keep', 'squash') if args.aspect == 'both' else (args.aspect,)
    report['aspect'] = aspects[0]
    model_hw = (model.config.height, model.config.width)

    def network_size(height, width):  # the input size a frame is served at (DepthPredictor)
        return serving_input_size((height, width), model_hw, aspects[0] == 'keep')
    print(f"{'set':<22} {'':<6} " + ' '.join(f'{k.replace("_error", ""):>9}' for k in keys))
    sheet_rows = []
    predictions = {}
    for name, (frames, max_depth, garg, outdoor) in sets.items():
        results = {aspect: evaluate_depth(model, frames, max_depth=max_depth, garg_crop=garg,
                                          device=device, keep_predictions=True,
                                          keep_aspect=aspect == 'keep')
                   for aspect in aspects}
        result = results[aspects[0]]
        if outdoor is not None:
            predictions[name] = result['predictions']
        sheet = _sheet(frames, result, out / f'{name}_best_worst.png', max_depth=max_depth)
        report['depth'][name] = {'model': result['model'], 'floor': result['floor'],
                                 'prior': result['prior'], 'image_gain': result['image_gain'],
                                 'max_depth': max_depth, 'garg_crop': garg, 'outdoor': outdoor,
                                 'per_frame': result['per_frame'],
                                 'floor_per_frame': result['floor_per_frame'],
                                 'prior_per_frame': result['prior_per_frame'],
                                 'sheet': str(sheet)}
        if len(aspects) > 1:
            # Squashed frames are their own set of predictions, so their own prior.
            squash = results['squash']
            report['depth'][name].update(
                squash=squash['model'], squash_per_frame=squash['per_frame'],
                squash_prior=squash['prior'], squash_image_gain=squash['image_gain'])
        rows = [('model', result['model']), ('floor', result['floor']),
                ('prior', result['prior'])]
        if len(aspects) > 1:
            rows.insert(1, ('squash', results['squash']['model']))
        for label, metrics in rows:
            print(f'{name:<22} {label:<6} ' + ' '.join(
                f"{metrics.get(k, float('nan')):9.3f}" for k in keys))
        print(f"{name:<22} image gain {result['image_gain']:+.3f} (1 - AbsRel "
              f"{result['model']['abs_rel']:.3f} / prior {result['prior']['abs_rel']:.3f})"
              + _alone_note(result['prior_per_frame']))
        if outdoor is not None:
            from structflow_ros.data.real_depth_eval import near_vehicle_checks
            for index, frame in enumerate(frames):
                report.setdefault('near_vehicles', []).extend(near_vehicle_checks(
                    frame.get('vehicles', []), frame['frame'], result['predictions'][index],
                    frame['depth']))
                metrics = result['per_frame'][index]
                sheet_rows.append(_sheet_row(
                    frame, result['predictions'][index], metrics,
                    f"{frame['name']} AbsRel {metrics['abs_rel']:.3f} (floor "
                    f"{result['floor_per_frame'][index]['abs_rel']:.3f}, prior "
                    f"{result['prior_per_frame'][index]['abs_rel']:.3f}), ordinal "
                    f"{metrics['ordinal_error']:.2f} (prior "
                    f"{result['prior_per_frame'][index]['ordinal_error']:.2f})", max_depth))
    outdoor_sets = [n for n, v in sets.items() if v[3]]
    indoor_sets = [n for n, v in sets.items() if v[3] is False]
    for label, names in (('real_outdoor', outdoor_sets), ('real_indoor', indoor_sets)):
        if names:
            report.setdefault('pooled', {})[label] = pooled(
                report, names, sets, predictions, network_size)
            both = report['pooled'][label]
            ratio = both['model']['abs_rel'] / both['floor']['abs_rel']
            both['abs_rel_vs_floor'] = ratio
            print(f'{label:<22} pooled over {both["model"]["frames"]} frames: AbsRel '
                  f'{both["model"]["abs_rel"]:.3f}, floor {both["floor"]["abs_rel"]:.3f} '
                  f'({ratio:.2f}x the floor), prior {both["prior"]["abs_rel"]:.3f}; ordinal '
                  f'error {both["model"]["ordinal_error"]:.3f} (one depth: 0.5, prior '
                  f'{both["prior"]["ordinal_error"]:.3f})')
            print(f'{label:<22} image gain {both["image_gain"]:+.3f} (1 - AbsRel '
                  f'{both["model"]["abs_rel"]:.3f} / prior {both["prior"]["abs_rel"]:.3f})'
                  + _alone_note(both['prior_per_frame']))
    if sheet_rows:
        report['real_sheet'] = str(_write_rows(sheet_rows, out / 'real_sheet.png'))
    if report.get('near_vehicles'):
        checks = report['near_vehicles']
        nearer = sum(c['nearer'] for c in checks)
        print(f'near vehicles (<= 15 m, labelled): {nearer} of {len(checks)} predicted nearer '
              'than what is behind them: ' + ', '.join(
                  f"{c['frame']} {c['label']} {c['depth_m']:.1f} m "
                  f"{'ok' if c['nearer'] else 'NOT nearer'}" for c in checks))
    for name, pairs in flows.items():
        result = evaluate_flow(model, pairs, device=device)
        report['flow'][name] = result
        print(f'{name:<22} flow EPE ' + ', '.join(
            f"{method} {values['epe']:.3f}" for method, values in result.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / 'metrics.json').write_text(json.dumps(report, indent=2, default=str))
    print(f'wrote {out / "metrics.json"}')
    return 0
