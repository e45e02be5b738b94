"""The teacher study's table (scripts/teacher_study.sh): per run and per arm (mean and spread
over seeds), the pooled real outdoor and indoor AbsRel, the model's own prior floor, the image
gain per real outdoor set and pooled, and held-out synthetic fog.

  .venv/bin/python scripts/teacher_study_table.py runs/study [--json OUT.json]
"""
import argparse
import json
from pathlib import Path

import numpy as np

# The real outdoor sets with more than one frame: a one-frame set is its own prior (gain 0 by
# construction), so only the pooled gain speaks for KITTI object, KITTI 2015 and Argoverse.
OUTDOOR = ('real_kitti_depth', 'real_nuscenes')


def run_row(metrics):
    depth, pooled = metrics['depth'], metrics.get('pooled', {})
    outdoor, indoor = pooled.get('real_outdoor', {}), pooled.get('real_indoor', {})
    row = {'outdoor': outdoor['model']['abs_rel'], 'outdoor_prior': outdoor['prior']['abs_rel'],
           'outdoor_floor': outdoor['floor']['abs_rel'], 'outdoor_gain': outdoor['image_gain'],
           'outdoor_ordinal': outdoor['model']['ordinal_error'],
           'indoor': indoor['model']['abs_rel'] if indoor else float('nan'),
           'fog': depth['synthetic_fog']['model']['abs_rel'] if 'synthetic_fog' in depth
           else float('nan')}
    for name in OUTDOOR:
        if name in depth:
            row[f'gain_{name[5:]}'] = depth[name]['image_gain']
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('study', help='the study folder (runs/study)')
    parser.add_argument('--json', default='')
    args = parser.parse_args()
    study = Path(args.study)
    runs = {}
    for path in sorted(study.glob('*/evaluate/metrics.json')):
        runs[path.parent.parent.name] = run_row(json.loads(path.read_text()))
    if not runs:
        raise SystemExit(f'no */evaluate/metrics.json under {study}')
    keys = list(next(iter(runs.values())))
    print('| run | ' + ' | '.join(keys) + ' |\n|' + '---|' * (len(keys) + 1))
    for name, row in runs.items():
        print(f'| {name} | ' + ' | '.join(f'{row.get(k, float("nan")):.3f}' for k in keys) + ' |')
    arms = sorted({name.rsplit('_', 1)[0] for name in runs if '_' in name})
    summary = {}
    for arm in arms:
        rows = [row for name, row in runs.items() if name.rsplit('_', 1)[0] == arm]
        summary[arm] = {k: (float(np.mean([r.get(k, np.nan) for r in rows])),
                            float(np.std([r.get(k, np.nan) for r in rows])), len(rows))
                        for k in keys}
        print(f'| **{arm}** (mean ± std, {len(rows)} seeds) | ' + ' | '.join(
            f'{summary[arm][k][0]:.3f} ± {summary[arm][k][1]:.3f}' for k in keys) + ' |')
    if args.json:
        Path(args.json).write_text(json.dumps({'runs': runs, 'arms': summary}, indent=2))


if __name__ == '__main__':
    main()
