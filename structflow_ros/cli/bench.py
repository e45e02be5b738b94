"""Benchmarks that print a table (and `--json`); numbers for the README and closing notes.

  structflow bench model [--repeats 20] [--device auto] [--json out.json]
  structflow bench render [--frames 30]
  structflow bench node [--sizes 320x96,640x192] [--rates 10,30] (structflow_ros/cli/bench_node.py)

Timings are medians over repeats after warm-up; compare numbers taken in one run only.
"""
import argparse
import json
import resource
import statistics
import sys
import time


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest='target', required=True)
    model = sub.add_parser('model', help='inference latency, flow training step, peak memory')
    model.add_argument('--encoder', default='resnet18', choices=('resnet18', 'resnet50'))
    model.add_argument('--repeats', type=int, default=20)
    model.add_argument('--warmup', type=int, default=3)
    model.add_argument('--train-repeats', type=int, default=5)
    model.add_argument('--device', default='auto')
    model.add_argument('--threads', type=int, default=0, help='torch threads (0 = default)')
    model.add_argument('--sizes', default='320x96,640x192', help='WxH list for inference')
    model.add_argument('--json', default='', help='also write the results to this file')
    render = sub.add_parser('render', help='synthetic renderer frames/s')
    render.add_argument('--frames', type=int, default=30)
    render.add_argument('--sizes', default='320x96,640x192')
    render.add_argument('--domain', default='day')
    render.add_argument('--json', default='')
    from structflow_ros.cli import bench_node  # argparse only; rclpy is imported when run
    sub.add_parser('node', parents=[bench_node.get_args_parser(add_help=False)],
                   help='end-to-end node latency over DDS (see bench_node)')
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


def _median_ms(fn, repeats, warmup, sync):
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), min(times)


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(rows, columns):
    widths = [max(len(str(c)), *(len(str(r.get(c, ''))) for r in rows)) for c in columns]
    print(' | '.join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print('-|-'.join('-' * w for w in widths))
    for row in rows:
        print(' | '.join(str(row.get(c, '')).ljust(w) for c, w in zip(columns, widths)))


def bench_model(args):
    import torch

    from structflow_ros.core import ModelConfig, build_model, resolve_device
    from structflow_ros.core.training import TrainStepConfig, train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if device.type == 'cuda' else (lambda: None)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for height, width in parse_sizes(args.sizes):
        model = build_model(ModelConfig(encoder=args.encoder, height=height, width=width))
        model = model.to(device).eval()
        image = torch.rand(1, 3, height, width, device=device)

        def infer():
            with torch.inference_mode():
                model(image)
        median, best = _median_ms(infer, args.repeats, args.warmup, sync)
        rows.append({'case': f'depth inference {width}x{height} b1', 'median_ms': f'{median:.1f}',
                     'min_ms': f'{best:.1f}', 'repeats': args.repeats})
    height, width = 96, 320
    model = build_model(ModelConfig(encoder=args.encoder, height=height, width=width,
                                    pose_branch=False)).to(device).train()
    model.depth_decoder.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = {'frame0': torch.rand(4, 3, height, width, device=device),
             'frame1': torch.rand(4, 3, height, width, device=device)}
    config = TrainStepConfig(depth_supervised_weight=0.0, depth_selfsup_weight=0.0)
    # The trainer runs channels_last; the contiguous row shows what that layout buys.
    for layout in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=layout)
        median, best = _median_ms(lambda: train_step(model, batch, optimizer, config),
                                  args.train_repeats, 1, sync)
        name = 'channels_last' if layout == torch.channels_last else 'contiguous'
        rows.append({'case': f'flow-branch train step {width}x{height} b4 {name}',
                     'median_ms': f'{median:.1f}', 'min_ms': f'{best:.1f}',
                     'repeats': args.train_repeats})
    peak = {'peak_rss_mb': round(_peak_rss_mb(), 1)}
    if device.type == 'cuda':
        peak['peak_cuda_mb'] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(f'device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, '
          f'encoder {args.encoder}')
    print_table(rows, ['case', 'median_ms', 'min_ms', 'repeats'])
    print(', '.join(f'{k}: {v}' for k, v in peak.items()))
    return {'device': str(device), 'threads': torch.get_num_threads(), 'encoder': args.encoder,
            'rows': rows, **peak}


def bench_render(args):
    from structflow_ros.data.synthetic.render import measure_render_speed

    rows = []
    for height, width in parse_sizes(args.sizes):
        fps = measure_render_speed(height, width, args.frames, domain=args.domain)
        rows.append({'case': f'render {args.domain} {width}x{height}', 'frames': args.frames,
                     'frames_per_s': f'{fps:.1f}'})
    print_table(rows, ['case', 'frames', 'frames_per_s'])
    return {'rows': rows}


def main(args):
    if args.target == 'node':
        from structflow_ros.cli import bench_node
        return bench_node.main(args)
    try:
        result = bench_model(args) if args.target == 'model' else bench_render(args)
    except ValueError as error:
        print(f'structflow bench: {error}', file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, 'w') as handle:
            json.dump(result, handle, indent=2)
        print(f'wrote {args.json}')
    return 0
