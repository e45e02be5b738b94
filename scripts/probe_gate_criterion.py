"""Why the gate's rigid-fit criterion stops tracking depth: feed it known depths, not models.

For synthetic drives with exact ground truth, score the ground-truth depth and distorted
versions of it (compressed: depth ** 0.5, stretched: depth ** 1.5, one constant depth, upside
down) with the gate's own scorer (`online.gate.rigid_fit_scores`, true K), once against the
exact flow and once against the classical DIS flow the gate really uses. A criterion that tracks
depth must rank the ground truth first. Prints a markdown table; about 20 s on one core.

    .venv/bin/python scripts/probe_gate_criterion.py [--size 96x320] [--drives day:31 day:5 ...]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from structflow_ros.data.synthetic import render_sequence  # noqa: E402
from structflow_ros.online.gate import dis_flow, rigid_fit_scores  # noqa: E402

VARIANTS = {
    'ground truth': lambda d: d,
    'compressed (d^0.5)': np.sqrt,
    'stretched (d^1.5)': lambda d: d ** 1.5,
    'constant': lambda d: np.full_like(d, np.median(d)),
    'upside down': lambda d: d[::-1].copy(),
}


def score(depth, flow_hw2, K):
    rho = torch.from_numpy(1.0 / depth).float()[None, None]          # (1, 1, H, W)
    flow = torch.from_numpy(np.ascontiguousarray(flow_hw2)).float().permute(2, 0, 1)[None]
    return float(rigid_fit_scores(rho, flow, torch.from_numpy(K).float()[None])[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--size', default='96x320', help='HxW of the rendered pairs')
    parser.add_argument('--drives', nargs='+', default=['day:31', 'day:5', 'dusk:7', 'room:3'],
                        help='DOMAIN:SEED; day:31 is the drive of the gate tests')
    parser.add_argument('--pairs', type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    height, width = map(int, args.size.split('x'))
    header = '| drive | moving px | flow | ' + ' | '.join(VARIANTS) + ' | truth ranks |'
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    for drive in args.drives:
        domain, seed = drive.split(':')
        frames = list(render_sequence(domain, 2 * args.pairs + 1, height, width, seed=int(seed)))
        pairs = [(frames[i], frames[i + 1]) for i in range(0, 2 * args.pairs, 2)]
        moving = np.mean([f0.moving.mean() for f0, _ in pairs])
        for flow_name in ('exact', 'DIS'):
            means = {}
            for name, variant in VARIANTS.items():
                values = []
                for f0, f1 in pairs:
                    depth = np.where(f0.depth_valid, f0.depth, 400.0).astype(np.float64)
                    flow = f0.flow if flow_name == 'exact' else dis_flow(f0.rgb, f1.rgb)
                    flow = np.asarray(flow)
                    if flow.shape[0] == 2:
                        flow = flow.transpose(1, 2, 0)                 # (H, W, 2)
                    values.append(score(variant(depth), flow, f0.K))
                means[name] = float(np.mean(values))
            rank = 1 + sorted(means.values()).index(means['ground truth'])
            print(f'| {drive} | {100 * moving:.0f} % | {flow_name} | '
                  + ' | '.join(f'{v:.3f}' for v in means.values()) + f' | {rank} of '
                  f'{len(means)} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
