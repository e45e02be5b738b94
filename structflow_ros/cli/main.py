"""The one `structflow` command; each subcommand module has `get_args_parser()` and `main(args)`.

Subcommands are imported lazily so that `structflow render --help` does not pay for torch or
rclpy imports it does not need.
"""
import importlib
import sys

# name -> (module, one-line help). Modules live in structflow_ros.cli unless dotted.
SUBCOMMANDS = {
    'render': ('render', 'render the synthetic driving world (RGB, depth, flow, poses)'),
    'bench': ('bench', 'benchmarks that print a table (model, node, renderer)'),
    'pretrain': ('pretrain', 'flow pretraining on uncalibrated video/folders/bags'),
    'finetune': ('finetune', 'depth finetuning of a (pretrained) structure encoder'),
    'calibrate': ('calibrate', 'chessboard images or video -> camera_info YAML (intrinsics, '
                  'distortion)'),
    'teacher': ('teacher', 'two-view geometry depth labels for real video, cached per clip'),
    'evaluate': ('evaluate', 'Eigen depth metrics and flow EPE on data with ground truth'),
    'export': ('export', 'make a serving checkpoint (fp16, no optimizer) from a training one'),
    'demo': ('demo', 'run the node on a synthetic drive or a video and write a report'),
    'replay': ('replay', 'replay a ROS 2 bag through the depth pipeline and measure it'),
    'bag': ('bag', 'bag helpers: from-video (a video or image folder -> a ROS 2 bag)'),
    'play': ('play', "publish a bag's topics over DDS at the recorded rate"),
    'node': ('structflow_ros.ros.depth_node', 'run the ROS 2 depth node (same as depth_node)'),
}


def _load(name):
    module_name, _ = SUBCOMMANDS[name]
    if '.' not in module_name:
        module_name = f'structflow_ros.cli.{module_name}'
    return importlib.import_module(module_name)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        lines = [f'  {name:<10} {help_}' for name, (_, help_) in SUBCOMMANDS.items()]
        print('usage: structflow <command> [options]\n\ncommands:\n' + '\n'.join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"structflow: unknown command '{name}'; choose from: {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        return 2
    # argparse names programs (and subcommands' usage lines) after sys.argv[0].
    sys.argv[0] = f'structflow {name}'
    module = _load(name)
    if name == 'node':
        return module.main(['structflow_node'] + rest)
    parser = module.get_args_parser()
    args = parser.parse_args(rest)
    result = module.main(args)
    return int(result or 0)


if __name__ == '__main__':
    sys.exit(main())
