"""What adapts, and how forgetting is held: the target gain / source forgetting trade-off.

Plain (ungated) adaptation of the shipped model on the synthetic fog stream (fog:200:77, held
out of training), 2 frames arriving per step, batch 4 (+ source replay pairs); the training
copy is evaluated every `--every` steps on another fog drive (fog:24:901) and on a source-domain
drive (day:24:902), median-scaled AbsRel. One JSON line per configuration; `--plot` draws the
curves (docs/adaptation_tradeoff.png) and prints the markdown table.

    python scripts/adaptation_tradeoff.py --configs '{"trainable":"norm_affine","lr":1e-3}' ...
    python scripts/adaptation_tradeoff.py --plot docs/adaptation_tradeoff.jsonl
"""
import argparse
import json
import time

import numpy as np
import torch


def run(configs, every, out):
    from structflow_ros.core.checkpoint import read_checkpoint
    from structflow_ros.data.synthetic import render_sequence
    from structflow_ros.online.adapter import AdapterConfig, OnlineAdapter
    from structflow_ros.online.pair_buffer import PairBuffer
    from structflow_ros.online.weight_store import VersionedWeightStore
    from structflow_ros.paths import default_weights_path
    from structflow_ros.training.evaluation import evaluate_depth

    payload = read_checkpoint(default_weights_path())
    state, model_config = payload['state_dict'], payload['model_config']

    def frames(domain, count, seed):
        return [{'rgb': f.rgb, 'depth': f.depth, 'valid': f.depth_valid}
                for f in render_sequence(domain, count, 96, 320, seed=seed)]
    fog_eval, day_eval = frames('fog', 24, 901), frames('day', 24, 902)
    stream = list(render_sequence('fog', 200, 96, 320, seed=77))

    def depth(model):
        return (evaluate_depth(model, fog_eval)['model']['abs_rel'],
                evaluate_depth(model, day_eval)['model']['abs_rel'])
    for config in configs:
        config = dict(config)
        steps = config.pop('steps', 120)
        adapter_config = AdapterConfig(source_probe=False, **config)
        store = VersionedWeightStore()
        store.publish(state, {'model_config': model_config})
        buffer = PairBuffer()
        # The calibrated mode gets the renderer's intrinsics (at the network size).
        adapter = OnlineAdapter(state, model_config, store, buffer, adapter_config,
                                camera_K=stream[0].K)
        adapter.prepare()
        rows = [(0, *depth(adapter.training_model))]
        index, started = 0, time.time()
        while adapter.counts['steps'] < steps:
            for _ in range(2):
                frame = stream[index % len(stream)]
                buffer.add_frame(frame.rgb, frame.stamp_ns + (index // len(stream)) * 10 ** 11)
                index += 1
            if adapter.train_step() is not None and adapter.counts['steps'] % every == 0:
                rows.append((adapter.counts['steps'], *depth(adapter.training_model)))
        line = json.dumps({'config': config, 'rows': rows,
                           'train_s': round(time.time() - started)})
        print(line, flush=True)
        with open(out, 'a') as handle:
            handle.write(line + '\n')


def label(config):
    text = f"{config.get('trainable', 'norm_affine')} lr {config.get('lr', 1e-3):g}"
    replay = config.get('source_replay', 0.33)
    if replay:
        kind = 'flow+depth' if config.get('source_depth', False) else 'flow'
        text += f', replay {replay:g} ({kind})'
    if config.get('l2sp_weight'):
        text += f", L2-SP {config['l2sp_weight']:g}"
    if config.get('reprojection_weight'):
        text += f", calibrated reprojection {config['reprojection_weight']:g}"
    return text


def plot(path, png):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    runs = [json.loads(line) for line in open(path) if line.strip()]
    figure, axis = plt.subplots(figsize=(9, 6))
    print('| what adapts | fog AbsRel change after ~60 / ~120 steps (steps) | '
          'source (day) change after ~60 / ~120 |')
    print('|---|---|---|')
    colors = plt.cm.tab20(np.linspace(0, 1, max(len(runs), 2)))
    markers = 'os^vD<>ph*'
    for number, run_ in enumerate(runs):
        rows = np.array(run_['rows'], dtype=float)
        fog0, day0 = rows[0, 1], rows[0, 2]
        fog = rows[:, 1] / fog0 - 1
        day = rows[:, 2] / day0 - 1
        axis.plot(100 * day, -100 * fog, marker=markers[number % len(markers)],
                  color=colors[number], linestyle='-' if number % 2 == 0 else '--',
                  label=label(run_['config']))

        def at(step):  # the nearest measured step (early runs measured every 25)
            hit = int(np.abs(rows[1:, 0] - step).argmin()) + 1
            return f'{fog[hit]:+.0%} ({rows[hit, 0]:.0f})', f'{day[hit]:+.0%}'
        (f60, d60), (f120, d120) = at(60), at(120)
        print(f'| {label(run_["config"])} | {f60} / {f120} | {d60} / {d120} |')
    axis.axvline(5, color='grey', linestyle='--', linewidth=1)
    axis.axhline(25, color='grey', linestyle='--', linewidth=1)
    axis.set_xlabel('source-domain forgetting: day AbsRel change, % (lower is better)')
    axis.set_ylabel('target gain: fog AbsRel reduction, % (higher is better)')
    axis.set_title('Online adaptation on a fog stream: gain vs forgetting (points every ~30 '
                   'steps)')
    axis.legend(fontsize=7, loc='lower right')
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    print(f'wrote {png}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--configs', nargs='*', default=[])
    parser.add_argument('--every', type=int, default=30)
    parser.add_argument('--out', default='runs/adaptation_tradeoff.jsonl')
    parser.add_argument('--plot', default='')
    parser.add_argument('--png', default='docs/adaptation_tradeoff.png')
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.configs:
        run([json.loads(c) for c in args.configs], args.every, args.out)
    if args.plot:
        plot(args.plot, args.png)


if __name__ == '__main__':
    main()
