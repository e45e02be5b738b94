"""Flow pretraining in float32 and in bf16 autocast on the same data and seed: loss curves.

    .venv/bin/python scripts/compare_precision.py                 # 400 steps each, 320x96
    .venv/bin/python scripts/compare_precision.py --steps 1000 --out runs/precision

Runs `structflow pretrain` twice (fresh runs, same data, seed and everything else but
`--precision`), then writes docs/precision.png (loss against step and against wall time, held-out
flow EPE) and docs/precision.md (the table and the exact command). bf16 is a claim about speed at
the same convergence, so both are shown on the same axes.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = ['synthetic:day:200:11', 'synthetic:dusk:200:12', 'synthetic:overcast:200:13']
EVAL = 'synthetic:fog:12:100'
PRECISIONS = ('float32', 'bfloat16')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=400)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default='runs/precision', help='run folders (not committed)')
    parser.add_argument('--docs', default=str(REPO / 'docs'))
    return parser


def run(precision, args):
    out = Path(args.out) / precision
    command = [sys.executable, '-m', 'structflow_ros.cli', 'pretrain', '--data', *DATA,
               '--eval', EVAL, '--steps', str(args.steps), '--lr', '2e-4', '--seed',
               str(args.seed), '--threads', str(args.threads), '--log-every', '10',
               '--precision', precision, '--out', str(out), '--no-progress']
    if (out / 'summary.json').exists():
        print(f'{precision}: reusing {out} (delete it to rerun)')
    else:
        print(' '.join(command), flush=True)
        subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    history = [json.loads(line) for line in (out / 'history.jsonl').read_text().splitlines()]
    summary = json.loads((out / 'summary.json').read_text())
    return history, summary


def main(args):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    results = {precision: run(precision, args) for precision in PRECISIONS}
    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    for precision, (history, summary) in results.items():
        steps = [h['step'] for h in history]
        losses = [h['loss'] for h in history]
        elapsed = [h['elapsed_s'] for h in history]
        by_step.plot(steps, losses, label=precision)
        by_time.plot(elapsed, losses, label=precision)
        final = summary['final_metrics']
        epe = next((v for k, v in final.items() if k.startswith('eval/flow_epe/')), float('nan'))
        zero = next((v for k, v in final.items() if k.startswith('eval/zero_flow_epe/')),
                    float('nan'))
        last = losses[-5:]
        rows.append((precision, summary['wall_time_s'], sum(last) / len(last), epe, zero))
    for axis, label in ((by_step, 'step'), (by_time, 'wall time (s)')):
        axis.set_xlabel(label)
        axis.set_ylabel('flow loss (mean of 10 steps)')
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f'flow pretraining, 320x96, batch 4, seed {args.seed}: float32 vs bf16 '
                    'autocast')
    figure.tight_layout()
    docs = Path(args.docs)
    figure.savefig(docs / 'precision.png', dpi=110)
    base_time = rows[0][1]
    lines = ['# Training precision: float32 vs bf16 autocast', '',
             'Written by `.venv/bin/python scripts/compare_precision.py '
             f'--steps {args.steps} --seed {args.seed}`: `structflow pretrain` twice on '
             f"{', '.join(DATA)} with the same seed, held-out flow EPE on {EVAL}. Losses, "
             'weights, gradients and the optimiser stay float32 in both; bf16 is the forward '
             'under autocast.', '', '![loss curves](precision.png)', '',
             '| precision | wall time s | speed-up | loss (last 50 steps) | held-out EPE px | '
             'zero-flow EPE px |', '|---|---|---|---|---|---|']
    for precision, wall, loss, epe, zero in rows:
        lines.append(f'| {precision} | {wall:.0f} | {base_time / wall:.2f}x | {loss:.4f} | '
                     f'{epe:.3f} | {zero:.3f} |')
    (docs / 'precision.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main(get_args_parser().parse_args()))
