"""`structflow bench adapt` and `structflow bench gate`: on-robot adaptation, proven on depth.

bench gate (the gate study): many candidate updates are made by plain, ungated adaptation
(several streams, what adapts, learning rates; a snapshot every few steps); for each candidate
every gate criterion is scored on held-out pairs of its stream and the true AbsRel change is
measured on ground truth of the same domain. The table gives each criterion's Spearman rank
correlation with the true change and how often "criterion better by the margin" meant "depth
better" (the gate's precision). A criterion that cannot tell better from worse is not a gate.

bench adapt: each stream plays at the camera rate through the same per-frame pipeline as the
node (FramePipeline: serving thread at `--rate` Hz) while the adapter thread trains and the gate
decides; depth before and after on a separate evaluation set, the source-domain change, swaps
accepted / refused, gate scores, adapter steps/s, and the output rate with adaptation on vs off.

No ROS anywhere here (the node is a thin edge over the same objects).
"""
import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch

from structflow_ros.core.checkpoint import load_state_strict, read_checkpoint
from structflow_ros.core.networks import build_model
from structflow_ros.online.adapter import AdapterConfig, OnlineAdapter, network_intrinsics
from structflow_ros.online.gate import (CRITERIA, ForgettingProbe, GateConfig, ScoringPairs,
                                        criterion_scores)
from structflow_ros.online.pair_buffer import PairBuffer, PairBufferConfig
from structflow_ros.online.stack import StackSettings, build_stack
from structflow_ros.online.weight_store import VersionedWeightStore
from structflow_ros.paths import default_weights_path

SYNTHETIC_STREAMS = {'fog': ('fog', 77, 'fog', 901), 'night': ('night', 78, 'night', 903),
                     'dusk': ('dusk', 79, 'dusk', 904), 'day': ('day', 80, 'day', 902),
                     # An indoor robot: a walk through a room no training run rendered (the
                     # default model's rooms are seeds 31-50), judged in another unseen room.
                     'room': ('room', 81, 'room', 905)}
INDOOR_CAP_M = 10.0
HARMFUL_STREAMS = ('static', 'noise', 'black', 'half_covered', 'switch')
REAL_STREAMS = ('kitti', 'dashcam')
SOURCE_EVAL = ('day', 902)


@dataclass
class Stream:
    """Frames of one camera stream (RGB uint8, any size), its rate and how to judge depth."""

    name: str
    frames: List[np.ndarray]
    fps: float
    K: Optional[np.ndarray]  # at the frames' size, when known
    evaluation: Optional[Callable]  # () -> list of {'rgb', 'depth', 'valid'} with ground truth
    max_depth: float = 80.0
    harmful: bool = False
    note: str = ''


def _synthetic_frames(domain, count, seed, height, width):
    from structflow_ros.data.synthetic import render_sequence
    return list(render_sequence(domain, count, height, width, seed=seed))


def _evaluation_set(domain, seed, height, width, count=24):
    def frames():
        return [{'rgb': f.rgb, 'depth': f.depth, 'valid': f.depth_valid}
                for f in _synthetic_frames(domain, count, seed, height, width)]
    return frames


def _kitti_depth_frames():
    from structflow_ros.data.shared_data import load_depth_frames
    return [{'rgb': f.image, 'depth': f.depth, 'valid': f.depth > 0}
            for f in load_depth_frames('kitti')]


def make_stream(name, height=96, width=320, frames=200, seed_offset=0):
    """Build a named stream (see --help for the list)."""
    rng = np.random.default_rng(1000 + seed_offset)
    if name in SYNTHETIC_STREAMS:
        domain, seed, eval_domain, eval_seed = SYNTHETIC_STREAMS[name]
        rendered = _synthetic_frames(domain, frames, seed + seed_offset, height, width)
        indoor = domain == 'room'
        kind = 'walk' if indoor else 'drive'
        return Stream(name, [f.rgb for f in rendered], 10.0, rendered[0].K,
                      _evaluation_set(eval_domain, eval_seed, height, width),
                      max_depth=INDOOR_CAP_M if indoor else 80.0,
                      note=f'synthetic {domain} {kind} (held out of training: '
                           f"{'yes' if domain in ('fog', 'night') else 'no'}); evaluated on "
                           f'another {eval_domain} {kind}')
    if name == 'kitti':
        from structflow_ros.data.shared_data import KITTI_CLIPS, load_kitti_odometry_clip
        images, K = [], None
        for clip_name in KITTI_CLIPS:
            clip = load_kitti_odometry_clip(clip_name)
            K = clip.P0[:, :3]
            images += [frame.image for frame in clip.frames]  # grey, read as RGB
        return Stream(name, images, 10.0, K, _kitti_depth_frames,
                      note='real KITTI odometry clips (2 x 51 grey frames); depth checked on the '
                           '3 real KITTI frames with lidar depth')
    if name == 'dashcam':
        from structflow_ros.data.shared_data import default_root
        from structflow_ros.data.sources import open_source
        path = default_root() / 'real_driving_video' / 'dashcam_eu_motorway' / 'highway.mp4'
        with open_source(path, stride=3) as source:
            images = [frame.image for frame in source]
        return Stream(name, images, 10.0, None, _kitti_depth_frames,
                      note='real dashcam (German motorway, 960x540, every 3rd frame of 30 fps, '
                           'no intrinsics); depth checked on the 3 real KITTI frames')
    fog = _synthetic_frames('fog', frames, 77 + seed_offset, height, width)
    fog_eval = _evaluation_set('fog', 901, height, width)
    if name == 'static':
        still = fog[len(fog) // 5].rgb.astype(np.float32)
        images = [np.clip(still + rng.normal(0, 2.0, still.shape), 0, 255).astype(np.uint8)
                  for _ in range(frames)]
        note = 'parked: one fog frame with sensor noise'
    elif name == 'noise':
        images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                  for _ in range(frames)]
        note = 'uniform noise frames (a broken sensor)'
    elif name == 'black':
        images = [np.clip(rng.normal(2, 1.0, (height, width, 3)), 0, 255).astype(np.uint8)
                  for _ in range(frames)]
        note = 'black frames with dark noise (lens cap)'
    elif name == 'half_covered':
        images = []
        for frame in fog:
            image = frame.rgb.copy()
            image[:, : width // 2] = 12  # the left half of the lens covered
            images.append(image)
        note = 'fog drive with the left half of the lens covered'
    elif name == 'switch':
        night = _synthetic_frames('night', frames // 2, 78 + seed_offset, height, width)
        images = [f.rgb for f in fog[: frames // 2]] + [f.rgb for f in night]
        note = 'fog drive, then a sudden switch to a night drive'
        return Stream(name, images, 10.0, fog[0].K, _evaluation_set('night', 903, height, width),
                      harmful=True, note=note)
    else:
        raise ValueError(f"unknown stream {name!r}; choose from "
                         f"{', '.join([*SYNTHETIC_STREAMS, *REAL_STREAMS, *HARMFUL_STREAMS])}")
    return Stream(name, images, 10.0, fog[0].K, fog_eval, harmful=True, note=note)


def evaluate(model, frames, max_depth=80.0):
    """Median-scaled AbsRel, RMSE and delta<1.25 of `model` on frames with ground truth."""
    from structflow_ros.training.evaluation import evaluate_depth
    result = evaluate_depth(model, frames, max_depth=max_depth)['model']
    return {'abs_rel': result['abs_rel'], 'rmse': result['rmse'], 'a1': result['a1']}


def load_base(weights):
    payload = read_checkpoint(weights)
    return payload['state_dict'], payload['model_config']


def full_model(state, config):
    model = build_model(config, pose_branch=False)
    load_state_strict(model, state, model.module_names(), source='weights')
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The gate study
# ---------------------------------------------------------------------------------------------
def _spearman(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return float('nan'), len(a)

    def ranks(x):
        order = x.argsort()
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1]), len(a)


def gate_study(args):
    """Candidates from ungated adaptation; criterion change vs true AbsRel change."""
    torch.set_num_threads(args.threads)
    base_state, config = load_base(args.weights)
    size = (config.height, config.width)
    # Helpful and harmful updates alike: what adapts decides the sign of the effect.
    variants = [dict(trainable='encoder', lr=1e-4), dict(trainable='flow_path', lr=1e-4),
                dict(trainable='norm_affine', lr=1e-3)]
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    probe = ForgettingProbe.synthetic(*size)  # the gate's source probe, as the adapter builds it
    base = full_model(base_state, config)
    probe_base = probe.abs_rel(base)
    for stream_name in args.streams:
        stream = make_stream(stream_name, *size, frames=args.frames)
        evaluation = stream.evaluation()
        K = (None if stream.K is None else
             network_intrinsics(stream.K, stream.frames[0].shape[:2], size))
        base_depth = evaluate(base, evaluation)
        for variant in variants:
            store = VersionedWeightStore()
            store.publish(base_state, {'model_config': config})
            buffer = PairBuffer(PairBufferConfig(height=size[0], width=size[1]))
            for index, rgb in enumerate(stream.frames):
                buffer.add_frame(rgb, int(index * 1e9 / stream.fps))
            adapter = OnlineAdapter(base_state, config, store, buffer, AdapterConfig(
                source_replay=0.0, source_probe=False, l2sp_weight=0.0, **variant))
            pairs = ScoringPairs.from_batch(buffer.holdout(), K)
            base_scores = criterion_scores(base, pairs)
            previous_scores, previous_depth = base_scores, base_depth
            for snapshot in range(1, args.snapshots + 1):
                for _ in range(args.snapshot_steps):
                    adapter.train_step()
                candidate = adapter.training_model
                scores = criterion_scores(candidate, pairs)
                depth = evaluate(candidate, evaluation)
                row = {'stream': stream_name, **variant, 'steps': adapter.counts['steps'],
                       'abs_rel_base': base_depth['abs_rel'], 'abs_rel': depth['abs_rel'],
                       'true_change': depth['abs_rel'] / base_depth['abs_rel'] - 1,
                       'true_change_step': depth['abs_rel'] / previous_depth['abs_rel'] - 1}
                row['probe_change'] = probe.abs_rel(candidate) / probe_base - 1
                for name in CRITERIA:
                    new = float(scores[name].double().mean())
                    row[f'{name}_change'] = new / float(base_scores[name].double().mean()) - 1
                    row[f'{name}_change_step'] = (
                        new / float(previous_scores[name].double().mean()) - 1)
                    row[f'{name}_wins'] = float((scores[name] < base_scores[name])
                                                .double().mean())
                rows.append(row)
                previous_scores, previous_depth = scores, depth
                print(json.dumps(row), flush=True)
        out.with_suffix('.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n')
    report = gate_study_table(rows, args.margin)
    print(report)
    out.write_text(report)


def gate_accepts(row, name, config=None):
    """Would the gate (criterion `name`, default GateConfig) accept this candidate against
    the base? Criterion lower by the margin on enough pairs, and the source probe within
    tolerance."""
    config = config or GateConfig()
    return (row[f'{name}_change'] < -config.margin
            and row[f'{name}_wins'] >= config.min_win_fraction
            and row.get('probe_change', 0.0) <= config.source_tolerance)


def gate_study_table(rows, margin=0.01):
    lines = ['| criterion | Spearman vs true AbsRel change (all / synthetic / real) | '
             'candidates | criterion alone: accepted (depth better) | with the source probe: '
             'accepted (depth better) | sign agreement |',
             '|---|---|---|---|---|---|']
    real = [r for r in rows if r['stream'] in REAL_STREAMS]
    synthetic = [r for r in rows if r['stream'] not in REAL_STREAMS]
    for name in CRITERIA:
        key = f'{name}_change'
        rho_all, count = _spearman([r[key] for r in rows], [r['true_change'] for r in rows])
        rho_syn, _ = _spearman([r[key] for r in synthetic], [r['true_change'] for r in synthetic])
        rho_real, _ = _spearman([r[key] for r in real], [r['true_change'] for r in real])
        usable = [r for r in rows if math.isfinite(r[key])]
        accepted = [r for r in usable if r[key] < -margin]
        better = [r for r in accepted if r['true_change'] < 0]
        gated = [r for r in usable if gate_accepts(r, name, GateConfig(margin=margin))]
        gated_better = [r for r in gated if r['true_change'] < 0]
        agree = [r for r in usable if (r[key] < 0) == (r['true_change'] < 0)]
        lines.append(f'| {name} | {rho_all:+.2f} / {rho_syn:+.2f} / {rho_real:+.2f} | {count} | '
                     f'{len(accepted)} ({len(better)}) | {len(gated)} ({len(gated_better)}) | '
                     f'{len(agree) / max(1, len(usable)):.0%} |')
    return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------------
# bench adapt
# ---------------------------------------------------------------------------------------------
def serve_stream(pipeline, stream, seconds, rate, on_frame=None):
    """Play `stream` at `rate` Hz (looped) through the pipeline for `seconds`; returns the
    output rate (frames computed per second of camera time) and per-frame versions."""
    period = 1.0 / rate
    started = time.perf_counter()
    frames, versions, late = 0, [], 0
    index = 0
    while True:
        due = started + index * period
        now = time.perf_counter()
        if due - started >= seconds:
            break
        if now < due:
            time.sleep(due - now)
        elif now - due > period:  # the camera delivered while we were busy: drop (latest-only)
            skipped = int((now - due) / period)
            index += skipped
            late += skipped
            continue
        pipeline.between_frames()
        rgb = stream.frames[index % len(stream.frames)]
        result = pipeline.process(rgb, int(index * 1e9 / rate))
        versions.append(result.version)
        frames += 1
        index += 1
        if on_frame is not None:
            on_frame(frames)
    elapsed = time.perf_counter() - started
    return {'output_hz': frames / elapsed, 'frames': frames, 'dropped': late,
            'versions': versions}


def adapt_stream(stream, base_state, config, args, adapter_config):
    """One stream through the pipeline with the adapter thread; the row of the table."""
    seconds = args.seconds if stream.name in SYNTHETIC_STREAMS else args.short_seconds
    size = (config.height, config.width)
    stack = build_stack(base_state, {'model_config': config}, StackSettings(
        device='cpu', input_size=size, backend=args.backend, threads=1, adapt=True,
        adapter_config=adapter_config))
    adapter, buffer, pipeline = stack.adapter, stack.buffer, stack.pipeline
    K = (None if stream.K is None else
         network_intrinsics(stream.K, stream.frames[0].shape[:2], size))
    adapter.prepare()
    evaluation = stream.evaluation() if stream.evaluation else None
    base = full_model(base_state, config)
    before = evaluate(base, evaluation, stream.max_depth) if evaluation else {}
    source_frames = _evaluation_set(SOURCE_EVAL[0], SOURCE_EVAL[1], *size)()
    source_before = evaluate(base, source_frames)
    decisions = []
    original_log = adapter._log

    def log(level, text):
        decisions.append(text)
        original_log(level, text)
    adapter._log = log
    stack.start()
    try:
        served = serve_stream(pipeline, stream, seconds, args.rate)
    finally:
        stack.close()
    accepted_model = adapter.accepted_model
    after = evaluate(accepted_model, evaluation, stream.max_depth) if evaluation else {}
    source_after = evaluate(accepted_model, source_frames)
    pairs = adapter.held_out_pairs()
    scores = {}
    if pairs is not None and len(pairs) >= 2:
        with_k = ScoringPairs(pairs.frame0, pairs.frame1, pairs.flow,
                              None if K is None else torch.as_tensor(K).float()
                              .expand(len(pairs), 3, 3))
        base_scores = criterion_scores(base, with_k, ('rigid_fit', 'reprojection'))
        final_scores = criterion_scores(accepted_model, with_k, ('rigid_fit', 'reprojection'))
        scores = {name: (float(base_scores[name].mean()), float(final_scores[name].mean()))
                  for name in base_scores}
    counts = adapter.counts
    return {
        'stream': stream.name, 'harmful': stream.harmful, 'note': stream.note,
        'before': before, 'after': after, 'source_before': source_before,
        'source_after': source_after, 'accepted': counts['accepted'],
        'refused': counts['refused'], 'rollbacks': counts['rollbacks'],
        'steps': counts['steps'], 'steps_per_s': counts['steps'] / seconds,
        'output_hz': served['output_hz'], 'versions_served': sorted(set(served['versions'])),
        'scores': scores, 'last_decision': adapter.last_decision.reason
        if adapter.last_decision else '', 'buffer': buffer.stats(), 'seconds': seconds,
    }


def output_rate_off(stream, base_state, config, args):
    size = (config.height, config.width)
    stack = build_stack(base_state, {'model_config': config}, StackSettings(
        device='cpu', input_size=size, backend=args.backend, threads=1))
    try:
        return serve_stream(stack.pipeline, stream, min(args.seconds, 30.0),
                            args.rate)['output_hz']
    finally:
        stack.close()


def adapt_table(rows, rate_off):
    def fmt(metrics, key):
        return f"{metrics[key]:.3f}" if metrics and key in metrics else 'n/a'

    def change(before, after, key='abs_rel'):
        if not before or not after:
            return 'n/a'
        return f'{after[key] / before[key] - 1:+.0%}'
    lines = ['| stream | AbsRel before -> after (change) | RMSE before -> after | '
             'δ<1.25 before -> after | source AbsRel change | swaps accepted / refused | '
             'rigid_fit base -> served | steps (steps/s) | output Hz on (off) |',
             '|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        rigid = row['scores'].get('rigid_fit')
        rigid_text = f'{rigid[0]:.4f} -> {rigid[1]:.4f}' if rigid else 'n/a'
        lines.append(
            f"| {row['stream']}{' (harmful)' if row['harmful'] else ''} | "
            f"{fmt(row['before'], 'abs_rel')} -> {fmt(row['after'], 'abs_rel')} "
            f"({change(row['before'], row['after'])}) | "
            f"{fmt(row['before'], 'rmse')} -> {fmt(row['after'], 'rmse')} | "
            f"{fmt(row['before'], 'a1')} -> {fmt(row['after'], 'a1')} | "
            f"{change(row['source_before'], row['source_after'])} | "
            f"{row['accepted']} / {row['refused']} | {rigid_text} | "
            f"{row['steps']} ({row['steps_per_s']:.2f}) | "
            f"{row['output_hz']:.1f} ({rate_off:.1f}) |")
    return '\n'.join(lines) + '\n'


def bench_adapt(args):
    torch.set_num_threads(args.threads)
    base_state, config = load_base(args.weights)
    adapter_config = AdapterConfig(**json.loads(args.adapter_config or '{}'))
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rate_off = None
    for name in args.streams:
        stream = make_stream(name, config.height, config.width, frames=args.frames)
        if rate_off is None:
            rate_off = output_rate_off(stream, base_state, config, args)
            print(f'output rate with adaptation off: {rate_off:.2f} Hz', flush=True)
        row = adapt_stream(stream, base_state, config, args, adapter_config)
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.with_suffix('.json').write_text(json.dumps(
            {'rows': rows, 'output_hz_off': rate_off, 'rate': args.rate,
             'adapter_config': json.loads(json.dumps(adapter_config.__dict__, default=str))},
            indent=1))
    table = adapt_table(rows, rate_off)
    print(table)
    out.write_text(table)
    return rows


def add_arguments(sub):
    adapt = sub.add_parser('adapt', help='online adaptation: depth before/after per stream')
    adapt.add_argument('--streams', nargs='+', default=[
        'fog', 'night', 'kitti', 'dashcam', *HARMFUL_STREAMS],
        help=f"streams to play: {', '.join([*SYNTHETIC_STREAMS, *REAL_STREAMS, *HARMFUL_STREAMS])}"
             " ('room': an indoor robot, judged at the 10 m indoor cap)")
    adapt.add_argument('--seconds', type=float, default=300.0,
                       help='camera time per stream (the target is 5 minutes of fog)')
    adapt.add_argument('--short-seconds', type=float, default=90.0,
                       help='camera time of the real and harmful streams')
    adapt.add_argument('--rate', type=float, default=10.0, help='camera rate, Hz')
    adapt.add_argument('--frames', type=int, default=600, help='frames rendered per stream')
    adapt.add_argument('--backend', default='auto')
    adapt.add_argument('--adapter-config', default='',
                       help='JSON of AdapterConfig overrides, e.g. {"lr": 3e-5}')
    adapt.add_argument('--weights', default=str(default_weights_path()))
    adapt.add_argument('--threads', type=int, default=2)
    adapt.add_argument('--out', default='runs/bench_adapt/table.md')
    gate = sub.add_parser('gate', help='gate study: each criterion vs the true depth change')
    gate.add_argument('--streams', nargs='+', default=['fog', 'night', 'dusk', 'day', 'kitti',
                                                       'dashcam', 'half_covered'])
    gate.add_argument('--frames', type=int, default=200)
    gate.add_argument('--snapshots', type=int, default=4)
    gate.add_argument('--snapshot-steps', type=int, default=15)
    gate.add_argument('--margin', type=float, default=0.01)
    gate.add_argument('--weights', default=str(default_weights_path()))
    gate.add_argument('--threads', type=int, default=2)
    gate.add_argument('--out', default='runs/bench_gate/table.md')


def main(argv=None):
    parser = argparse.ArgumentParser(prog='structflow bench')
    add_arguments(parser.add_subparsers(dest='target', required=True))
    args = parser.parse_args(argv)
    return gate_study(args) if args.target == 'gate' else bench_adapt(args)


if __name__ == '__main__':
    sys.exit(main())
