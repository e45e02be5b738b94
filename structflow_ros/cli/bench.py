"""Benchmarks that print one table per run (and `--json`); numbers for docs/benchmarks.md.

  structflow bench model [--sizes 320x96,640x192,1024x320] [--repeats 20]
  structflow bench train [--repeats 8]
  structflow bench node [--sizes 320x96,640x192] [--rates 10,30] (structflow_ros/cli/bench_node.py)
  structflow bench cameras [--counts 1,2,4] [--rate 5]  (cli/bench_cameras.py)
  structflow bench all --markdown docs/benchmarks.md
  structflow bench render [--frames 30]
  structflow bench adapt [--streams fog night ...] [--seconds 300]  (cli/bench_adapt.py)
  structflow bench gate [--streams fog night ...]  (the gate study, cli/bench_adapt.py)

`model`: the served depth path of the shipped weights, per network size and per serving backend
this machine can run, beside the reference (the eager float32 path as it was served before:
all four decoder scales, BatchNorm unfolded, NCHW; monodepth2-equivalent). Backends are timed
round-robin (one call each in turn), so a busy machine slows all of them alike. Columns: the
network call, the whole served path (uint8 frame -> depth at the camera size: preprocessing,
network, postprocessing), their ratio to the reference, the median relative disparity
difference to the reference, and median-scaled AbsRel on held-out synthetic fog frames with
ground truth beside the reference's AbsRel. `train`: the flow training step (320x96, batch 4)
in float32 as the trainer ran it before, float32 with fused Adam, and bf16 autocast with fused
Adam (the trainer's `--precision auto` on CPUs with bf16 units). Compare numbers of one run only.
"""
import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

SERVING_BACKENDS = ('eager', 'bf16', 'fp16', 'onnxruntime', 'openvino', 'tensorrt')
EVAL_DOMAIN, EVAL_SEED = 'fog', 901  # held out of the shipped model's training
BLOCK = 5  # consecutive timed calls of one backend (see bench_model)


def _add_common(parser):
    parser.add_argument('--weights', default='', help='checkpoint (default: the shipped model)')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    parser.add_argument('--json', default='', help='also write the results to this file')


def _add_model_args(parser):
    parser.add_argument('--sizes', default='320x96,640x192,1024x320',
                        help='network sizes WxH (multiples of 32)')
    parser.add_argument('--backends', default=','.join(SERVING_BACKENDS),
                        help='serving backends to time (unavailable ones are listed with why)')
    parser.add_argument('--repeats', type=int, default=20,
                        help='timed calls per backend (in blocks of 5, backends in turn)')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--eval-frames', type=int, default=6,
                        help='held-out synthetic fog frames with ground truth for AbsRel')
    parser.add_argument('--no-auto', action='store_true',
                        help="skip asking backend 'auto' what it would choose")
    parser.add_argument('--no-memory', dest='memory', action='store_false',
                        help='skip the peak-RSS measurement (a fresh process per backend)')


def _add_train_args(parser):
    parser.add_argument('--train-size', default='320x96', help='WxH of the training step')
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--train-repeats', type=int, default=8, help='timed steps per case')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split('\n', 2)[2])
    sub = parser.add_subparsers(dest='target', required=True)
    model = sub.add_parser('model', help='serving latency per backend and size, depth error')
    _add_common(model)
    _add_model_args(model)
    train = sub.add_parser('train', help='flow training step: float32 vs bf16')
    _add_common(train)
    _add_train_args(train)
    from structflow_ros.cli import bench_node  # argparse only; rclpy is imported when run
    sub.add_parser('node', parents=[bench_node.get_args_parser(add_help=False)],
                   help='end-to-end node latency over DDS (see bench_node)')
    every = sub.add_parser('all', help='model + train + node, one report')
    _add_common(every)
    _add_model_args(every)
    _add_train_args(every)
    every.add_argument('--node-duration', type=float, default=8.0,
                       help='seconds of camera stream per node case')
    every.add_argument('--markdown', default='',
                       help='write the whole report (machine, command, tables) to this file')
    from structflow_ros.cli import bench_cameras
    sub.add_parser('cameras', parents=[bench_cameras.get_args_parser(add_help=False)],
                   help='N cameras in one node process vs N nodes: memory and rate')
    from structflow_ros.cli import bench_adapt
    bench_adapt.add_arguments(sub)
    render = sub.add_parser('render', help='synthetic renderer frames/s')
    render.add_argument('--frames', type=int, default=30)
    render.add_argument('--sizes', default='320x96,640x192')
    render.add_argument('--domain', default='day')
    render.add_argument('--json', default='')
    return parser


def parse_sizes(text):
    """'320x96,640x192' -> [(96, 320), (192, 640)] as (H, W)."""
    sizes = []
    for item in text.split(','):
        try:
            width, height = (int(v) for v in item.lower().split('x'))
        except ValueError:
            raise ValueError(f"bad size '{item}': expected WIDTHxHEIGHT, e.g. 320x96") from None
        sizes.append((height, width))
    return sizes


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PEAK_RSS_SCRIPT = """
import sys, numpy as np
from structflow_ros.online.server import ServedModel, read_serving_checkpoint
from structflow_ros.core import resolve_device
weights, device, backend, height, width = sys.argv[1:6]
state_dict, meta = read_serving_checkpoint(weights)
served = ServedModel.from_state(state_dict, meta, 1, resolve_device(device),
                                (int(height), int(width)), backend)
frame = np.zeros((int(height), int(width), 3), np.uint8)
for _ in range(3):
    served.predictor.predict(frame)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork and exec from the parent.
peak_kb = next(int(line.split()[1]) for line in open('/proc/self/status')
               if line.startswith('VmHWM:'))
print(served.predictor.backend.name, peak_kb / 1024)
"""


def serving_peak_rss_mb(weights, device, backend, size):
    """Peak RSS (MB) of a fresh process that loads the weights, builds `backend` at `size` and
    serves 3 frames: what one node process needs for its model (the interpreter included)."""
    import subprocess
    height, width = size
    result = subprocess.run([sys.executable, '-c', PEAK_RSS_SCRIPT, str(weights), device,
                             backend, str(height), str(width)], capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0:
        return float('nan')
    return float(result.stdout.split()[-1])


def markdown_table(rows, columns):
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for row in rows:
        lines.append('| ' + ' | '.join(str(row.get(c, '')) for c in columns) + ' |')
    return '\n'.join(lines)


def print_table(rows, columns):
    widths = [max(len(str(c)), *(len(str(r.get(c, ''))) for r in rows)) for c in columns]
    print(' | '.join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print('-|-'.join('-' * w for w in widths))
    for row in rows:
        print(' | '.join(str(row.get(c, '')).ljust(w) for c, w in zip(columns, widths)))


def machine_description():
    """CPU model and the flags that decide the backends, torch and runtime versions."""
    import torch

    from structflow_ros.core.backends import cpu_flags, cpu_native_bf16
    model = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    relevant = sorted(f for f in flags if f.startswith(('avx512', 'amx')) or f in (
        'avx2', 'fma', 'avx_vnni', 'bf16', 'i8mm', 'sve'))
    versions = {'torch': torch.__version__}
    for name in ('onnxruntime', 'openvino'):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = 'not installed'
    return {'cpu': model, 'logical_cpus': __import__('os').cpu_count(),
            'flags': relevant, 'native_bf16': cpu_native_bf16(flags)[1],
            'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none',
            'versions': versions, 'threads': torch.get_num_threads()}


def _load_model(weights):
    from structflow_ros.online.server import build_serving_model, read_serving_checkpoint
    from structflow_ros.paths import default_weights_path
    path = Path(weights).expanduser() if weights else default_weights_path()
    state_dict, meta = read_serving_checkpoint(path)
    return build_serving_model(meta['model_config'], state_dict, 'cpu').float(), path


def _eval_frames(height, width, count):
    from structflow_ros.data.synthetic.render import render_sequence
    return list(render_sequence(EVAL_DOMAIN, count, height, width, seed=EVAL_SEED))


def _abs_rel(depths, frames):
    from structflow_ros.core.metrics import aggregate_depth_metrics, depth_metrics
    per_frame = [depth_metrics(depth, frame.depth, frame.depth_valid, max_depth=80.0)
                 for depth, frame in zip(depths, frames)]
    return aggregate_depth_metrics(per_frame)['abs_rel']


def bench_model(args):
    import numpy as np
    import torch

    from structflow_ros.core import DepthPredictor, resolve_device
    from structflow_ros.core.backends import (choose_backend, serving_graph, serving_torch_threads,
                                              unavailable_reason)
    from structflow_ros.core.networks import disp_to_depth

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, weights = _load_model(args.weights)
    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    wanted = [b.strip() for b in args.backends.split(',') if b.strip()]
    unknown = [b for b in wanted if b not in SERVING_BACKENDS]
    if unknown:
        raise ValueError(f"unknown backends {unknown}; choose from {', '.join(SERVING_BACKENDS)}")
    rows, skipped, auto_choices = [], {}, {}
    for height, width in parse_sizes(args.sizes):
        frames = _eval_frames(height, width, args.eval_frames)
        rgb = frames[0].rgb
        candidates = {}
        for name in wanted:
            reason = unavailable_reason(name, device)
            if reason:
                skipped[name] = reason
                continue
            started = time.perf_counter()
            predictor = DepthPredictor(model, device, (height, width), backend=name)
            build_s = time.perf_counter() - started
            if predictor.backend.name != name:  # fell back: report why, do not time twice
                skipped[name] = predictor.backend.reason
                continue
            memory = (serving_peak_rss_mb(weights, args.device, name, (height, width))
                      if args.memory else float('nan'))
            candidates[name] = (predictor, build_s, memory)
        if not candidates:
            raise ValueError(f'none of the backends {wanted} can run here: {skipped}')
        reference_predictor = next(iter(candidates.values()))[0]
        image = reference_predictor.preprocess(rgb)

        def reference_call():
            with torch.inference_mode():
                return model(image)['disp'][0]

        def reference_served():
            # The served path as it was: the same preprocessing, the whole model.
            with torch.inference_mode():
                x = reference_predictor.preprocess(rgb)
                disp = model(x)['disp'][0]
                depth = disp_to_depth(disp, model.config.min_depth, model.config.max_depth)[1]
                return depth[0, 0].float().cpu().numpy()

        calls = {'reference': (reference_call, reference_served)}
        for name, (predictor, _, _) in candidates.items():
            calls[name] = ((lambda p=predictor: p.runner(image)),
                           (lambda p=predictor: p.predict(rgb)))
        times = {name: ([], []) for name in calls}
        for _ in range(args.warmup):
            for network, served in calls.values():
                network(), served()
        sync()
        # Blocks of BLOCK calls in turn: drift hits every backend alike, and each backend's
        # thread pool is warm within its block (alternating single calls between torch's
        # OpenMP pool and a runtime's own pool measures their hand-over, not the backend).
        threads = torch.get_num_threads()
        for _ in range(-(-args.repeats // BLOCK)):
            for name, (network, served) in calls.items():
                runner = candidates[name][0].runner if name in candidates else None
                torch.set_num_threads(serving_torch_threads(runner, threads))  # as the node
                for index, fn in enumerate((network, served)):
                    fn()
                    sync()
                    for _ in range(BLOCK):
                        start = time.perf_counter()
                        fn()
                        sync()
                        times[name][index].append((time.perf_counter() - start) * 1e3)
        torch.set_num_threads(threads)
        # Depth quality: reference = the model itself in float32.
        with torch.inference_mode():
            references, reference_depths = [], []
            for frame in frames:
                x = reference_predictor.preprocess(frame.rgb)
                disp = model(x)['disp'][0].float()
                references.append(disp)
                reference_depths.append(disp_to_depth(disp, model.config.min_depth,
                                                      model.config.max_depth)[1][0, 0]
                                        .cpu().numpy())
        reference_abs_rel = _abs_rel(reference_depths, frames)
        base_network = statistics.median(times['reference'][0])
        base_served = statistics.median(times['reference'][1])
        size = f'{width}x{height}'
        rows.append({'size': size, 'backend': 'reference eager fp32 (before)',
                     'network ms': f'{base_network:.1f}', 'served ms': f'{base_served:.1f}',
                     'served / ref': '1.00', 'disp diff': '0',
                     'AbsRel': f'{reference_abs_rel:.4f}', 'dAbsRel': '0',
                     'build s': '', 'peak RSS MB': ''})
        for name, (predictor, build_s, mem_mb) in candidates.items():
            errors, depths = [], []
            with torch.inference_mode():
                for frame, reference in zip(frames, references):
                    x = predictor.preprocess(frame.rgb)
                    disp = predictor.predict_disparity(x).float()
                    errors.append(float(((disp - reference).abs() / reference).median()))
                    depths.append(predictor.predict(frame.rgb))
            abs_rel = _abs_rel(depths, frames)
            network = statistics.median(times[name][0])
            served = statistics.median(times[name][1])
            rows.append({'size': size, 'backend': name, 'network ms': f'{network:.1f}',
                         'served ms': f'{served:.1f}', 'served / ref':
                         f'{served / base_served:.2f}',
                         'disp diff': f'{float(np.median(errors)):.2%}',
                         'AbsRel': f'{abs_rel:.4f}',
                         'dAbsRel': f'{abs_rel - reference_abs_rel:+.4f}',
                         'build s': f'{build_s:.1f}', 'peak RSS MB': f'{mem_mb:.0f}'})
        if not args.no_auto:
            _, choice = choose_backend(serving_graph(model), 'auto', device, (height, width))
            auto_choices[size] = {'choice': choice.name, 'reason': choice.reason}
        del candidates, calls
    columns = ['size', 'backend', 'network ms', 'served ms', 'served / ref', 'disp diff',
               'AbsRel', 'dAbsRel', 'build s', 'peak RSS MB']
    result = {'weights': str(weights), 'device': str(device), 'rows': rows,
              'columns': columns, 'not_available': skipped, 'auto': auto_choices,
              'peak_rss_mb': round(_peak_rss_mb(), 1), 'eval': f'{EVAL_DOMAIN} seed '
              f'{EVAL_SEED}, {args.eval_frames} frames at each size, median-scaled, cap 80 m'}
    print(f'serving latency, device {device}, torch threads {torch.get_num_threads()}, '
          f'weights {weights.name}, AbsRel on {result["eval"]}')
    print_table(rows, columns)
    for name, reason in skipped.items():
        print(f'not timed: {name}: {reason}')
    for size, choice in auto_choices.items():
        print(f"auto at {size}: {choice['choice']} ({choice['reason']})")
    print(f"peak RSS {result['peak_rss_mb']} MB")
    return result


def bench_train(args):
    import copy

    import torch

    from structflow_ros.core import ModelConfig, build_model, resolve_device
    from structflow_ros.core.training import TrainStepConfig, make_optimizer, train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the trainer does
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    (height, width), = parse_sizes(args.train_size)
    torch.manual_seed(0)
    base = build_model(ModelConfig(height=height, width=width, pose_branch=False))
    generator = torch.Generator().manual_seed(0)
    batch = {key: torch.rand(args.batch_size, 3, height, width, generator=generator).to(device)
             for key in ('frame0', 'frame1')}
    cases = {}
    for name, precision, fused in (('float32, Adam (before)', 'float32', False),
                                   ('float32, fused Adam', 'float32', True),
                                   ('bf16 autocast, fused Adam', 'bfloat16', True)):
        model = copy.deepcopy(base).to(device, memory_format=torch.channels_last).train()
        model.depth_decoder.requires_grad_(False)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = (make_optimizer(params, 1e-4, device) if fused
                     else torch.optim.Adam(params, lr=1e-4))
        config = TrainStepConfig(depth_supervised_weight=0.0, depth_selfsup_weight=0.0,
                                 precision=precision)
        cases[name] = (model, optimizer, config)
    times = {name: [] for name in cases}
    for _ in range(2):
        for model, optimizer, config in cases.values():
            train_step(model, batch, optimizer, config)
    for _ in range(args.train_repeats):
        for name, (model, optimizer, config) in cases.items():
            sync()
            start = time.perf_counter()
            metrics = train_step(model, batch, optimizer, config)
            sync()
            times[name].append(time.perf_counter() - start)
            if metrics['skipped']:
                raise RuntimeError(f"{name}: step skipped: {metrics['skip_reason']}")
    base_ms = statistics.median(times['float32, Adam (before)']) * 1e3
    rows = []
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        rows.append({'case': name, 'step ms': f'{ms:.0f}', 'steps/s': f'{1e3 / ms:.2f}',
                     'pairs/s': f'{args.batch_size * 1e3 / ms:.1f}',
                     'speed-up': f'{base_ms / ms:.2f}x'})
    columns = ['case', 'step ms', 'steps/s', 'pairs/s', 'speed-up']
    print(f'flow training step {width}x{height}, batch {args.batch_size}, channels_last, '
          f'device {device}, torch threads {torch.get_num_threads()}')
    print_table(rows, columns)
    return {'rows': rows, 'columns': columns, 'size': f'{width}x{height}',
            'batch_size': args.batch_size, 'device': str(device)}


def bench_render(args):
    from structflow_ros.data.synthetic.render import measure_render_speed

    rows = []
    for height, width in parse_sizes(args.sizes):
        fps = measure_render_speed(height, width, args.frames, domain=args.domain)
        rows.append({'case': f'render {args.domain} {width}x{height}', 'frames': args.frames,
                     'frames_per_s': f'{fps:.1f}'})
    columns = ['case', 'frames', 'frames_per_s']
    print_table(rows, columns)
    return {'rows': rows, 'columns': columns}


def bench_all(args):
    from structflow_ros.cli import bench_node

    machine = machine_description()
    print(json.dumps(machine, indent=1))
    model = bench_model(args)
    train = bench_train(args)
    node_args = bench_node.get_args_parser().parse_args([])
    node_args.weights, node_args.device = args.weights, args.device
    node_args.threads, node_args.duration = args.threads, args.node_duration
    node_args.points = [False]
    node_args.json = str(Path(args.markdown or 'bench').with_suffix('.node.json')) \
        if args.markdown else ''
    status = bench_node.main(node_args)
    node = {}
    if node_args.json and Path(node_args.json).is_file():
        node = json.loads(Path(node_args.json).read_text())
        Path(node_args.json).unlink()
    result = {'machine': machine, 'model': model, 'train': train, 'node': node,
              'node_status': status, 'command': _command_line()}
    if args.markdown:
        write_markdown(result, args.markdown)
        print(f'wrote {args.markdown}')
    return result


def _command_line():
    """`structflow bench all ...` as typed (argv holds 'bench' under python -m too)."""
    argv = sys.argv[1:]
    if 'all' in argv:
        argv = argv[argv.index('all'):]
    return 'structflow bench ' + ' '.join(argv)


def target_lines(model, train, node, machine):
    """The performance issue's targets against what this run measured."""
    lines = []
    for size, target in (('640x192', 0.12), ('320x96', 0.25)):
        rows = [r for r in model['rows'] if r['size'] == size and 'reference' not in r['backend']]
        if not rows:
            continue
        best = min(rows, key=lambda r: float(r['served / ref']))
        ratio = float(best['served / ref'])
        lines.append(f"- served path at {size} <= {target}x eager float32: best "
                     f"{best['backend']} {ratio:.2f}x ({best['served ms']} ms) "
                     f"{'met' if ratio <= target else 'missed'}")
    changes = [abs(float(r['dAbsRel'])) for r in model['rows'] if 'reference' not in r['backend']]
    if changes:
        worst = max(changes)
        lines.append(f'- AbsRel change of every backend <= 0.005: worst {worst:.4f} '
                     f"{'met' if worst <= 0.005 else 'missed'}")
    speedup = max(float(r['speed-up'].rstrip('x')) for r in train['rows'])
    lines.append(f"- flow training step >= 2x float32: {speedup:.2f}x "
                 f"{'met' if speedup >= 2 else 'missed'}")
    if node.get('rows'):
        overheads = [r['node_overhead_ms_p50'] for r in node['rows'] if not r['points']
                     and r['node_overhead_ms_p50'] is not None]
        if overheads:
            lines.append(f'- node overhead p50 <= 3 ms (points off): worst {max(overheads):.2f} '
                         f"ms {'met' if max(overheads) <= 3 else 'missed'}")
    if not any(flag.startswith('amx') for flag in machine['flags']):
        lines.append('- This CPU has no AMX tiles (no amx_* flag): bf16 runs on AVX512-BF16 '
                     'dot products, about half the bf16 throughput the targets were set with '
                     '(a Xeon with AMX measured OpenVINO bf16 at 0.13x at 640x192).')
    return lines


def write_markdown(result, path):
    machine, model, train, node = (result[k] for k in ('machine', 'model', 'train', 'node'))
    lines = [
        '# Benchmarks', '',
        f"Written by `{result['command']}` on {time.strftime('%Y-%m-%d')}. Every number of one "
        'table comes from the same run; compare ratios, not absolute times across machines.', '',
        '## Machine', '',
        f"- CPU: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, torch threads "
        f"{machine['threads']}; CUDA: {machine['cuda']}",
        f"- flags: {' '.join(machine['flags'])}",
        f"- bf16: {machine['native_bf16']}",
        '- ' + ', '.join(f'{k} {v}' for k, v in machine['versions'].items()), '',
        '## Serving (`structflow bench model`)', '',
        f"Weights {Path(model['weights']).name}; AbsRel on {model['eval']}. 'served' = uint8 "
        'frame in, depth at the frame size out (what the node calls); ratios to the '
        'reference = the eager float32 path served before this benchmark existed.', '',
        markdown_table(model['rows'], model['columns']), '']
    for name, reason in model['not_available'].items():
        lines.append(f'- not available here: {name}: {reason}')
    for size, choice in model['auto'].items():
        lines.append(f"- `backend: auto` at {size} chose **{choice['choice']}**: "
                     f"{choice['reason']}")
    lines += ['', f"Peak RSS of the benchmark process: {model['peak_rss_mb']} MB.", '',
              '## Training (`structflow bench train`)', '',
              f"Flow training step, {train['size']}, batch {train['batch_size']}, "
              'channels_last, depth decoder frozen (pretraining and adaptation).', '',
              markdown_table(train['rows'], train['columns']), '']
    if node:
        lines += ['## Node over DDS (`structflow bench node`)', '',
                  f"Backend {node.get('backend', '?')} (what `auto` chose in this run); "
                  f"{node.get('duration_s')} s of camera stream per case; the node's network "
                  'input is the model size (320x96) whatever the camera size.', '',
                  node.get('table_markdown', ''), '']
    lines += ['## Against the targets', ''] + target_lines(model, train, node, machine) + ['']
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text('\n'.join(lines) + '\n')


def main(args):
    if args.target == 'cameras':
        from structflow_ros.cli import bench_cameras
        return bench_cameras.main(args)
    if args.target == 'node':
        from structflow_ros.cli import bench_node
        return bench_node.main(args)
    if args.target in ('adapt', 'gate'):
        from structflow_ros.cli import bench_adapt
        try:
            runner = bench_adapt.gate_study if args.target == 'gate' else bench_adapt.bench_adapt
            runner(args)
        except ValueError as error:
            print(f'structflow bench: {error}', file=sys.stderr)
            return 2
        return 0
    runners = {'model': bench_model, 'train': bench_train, 'render': bench_render,
               'all': bench_all}
    try:
        result = runners[args.target](args)
    except ValueError as error:
        print(f'structflow bench: {error}', file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(result, handle, indent=2, default=str)
        print(f'wrote {args.json}')
    return 0
