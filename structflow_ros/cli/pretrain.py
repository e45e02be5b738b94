"""Flow pretraining of the conditional encoder-decoder on uncalibrated video (Wang et al. 2020).

The structure encoder, motion encoder and flow decoder learn optical flow with the photometric
loss alone; no intrinsics, poses or labels. Any mix of videos, image folders, ROS 2 bags and
synthetic sequences:

  structflow pretrain --data drive.mp4 frames/ my_bag/ synthetic:day:300 --steps 4000 \
      --out runs/pretrain
  torchrun --nproc_per_node 2 -m structflow_ros.cli pretrain ...   # DDP, same command

Resume with --resume (reads OUT/last.pt). The summary JSON goes to OUT/summary.json.
"""
import argparse

import torch

from structflow_ros.core.checkpoint import load_state_strict, read_checkpoint
from structflow_ros.core.losses import FlowLossConfig
from structflow_ros.core.networks import build_model
from structflow_ros.core.training import TrainStepConfig
from structflow_ros.training import cli_common, datasets
from structflow_ros.training.trainer import RunSpec

FLOW_MODULES = ('structure_encoder', 'motion_encoder', 'flow_decoder')


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=__doc__.split('\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', nargs='+', required=True,
                        help='videos, image folders, bags, render folders, '
                             'synthetic:DOMAIN[:FRAMES[:SEED]]')
    parser.add_argument('--eval', nargs='*', default=[],
                        help='held-out sets for flow EPE: synthetic:DOMAIN[:FRAMES[:SEED]] '
                             'and/or rubberwhale (Middlebury, from ../shared/data)')
    parser.add_argument('--init', default='', help='start from this checkpoint (flow modules)')
    parser.add_argument('--strides', default='1,2', help='frame gaps to sample pairs from')
    parser.add_argument('--random-crops', action='store_true',
                        help='train on random crops at several aspect ratios (network sizes '
                        'of training.datasets.TRAINING_SIZES) instead of squashing every frame '
                        'to --height x --width')
    parser.add_argument('--census', action='store_true', help='census instead of SSIM+L1')
    parser.add_argument('--fb-occlusion', action='store_true',
                        help='mask forward-backward occlusions (computes backward flow too)')
    parser.add_argument('--smoothness', type=float, default=None,
                        help='edge-aware smoothness weight (default: FlowLossConfig)')
    cli_common.add_model_args(parser)
    cli_common.add_loop_args(parser, steps=4000, out='runs/pretrain')
    return parser


def flow_eval_sets(specs, height, width):
    """name -> [(rgb0, rgb1, flow_gt, valid)] for each --eval spec."""
    sets = {}
    for spec in specs:
        if spec == 'rubberwhale':
            from structflow_ros.data.shared_data import load_rubberwhale
            pair = load_rubberwhale()  # SharedDataError (an OSError) names the folder
            sets['rubberwhale'] = [(pair.frame0, pair.frame1, pair.flow, pair.valid)]
            continue
        parsed = datasets.SyntheticSpec.parse(spec)
        frames = datasets.render_synthetic(parsed, height, width)
        sets[parsed.domain] = [(a.rgb, b.rgb, a.flow, a.flow_valid)
                               for a, b in zip(frames[:-1], frames[1:])]
    return sets


def main(args):
    from structflow_ros.training.evaluation import evaluate_flow
    try:
        loop = cli_common.loop_config_from_args(args)
        config = cli_common.model_config_from_args(args, pose_branch=False)
        strides = tuple(int(s) for s in args.strides.split(','))
        dataset = datasets.pair_dataset(args.data, config.height, config.width, args.seed,
                                        strides=strides,
                                        sizes=datasets.TRAINING_SIZES if args.random_crops
                                        else ())
        eval_sets = flow_eval_sets(args.eval, config.height, config.width)
        torch.manual_seed(args.seed)  # every rank builds the same initial weights
        model = build_model(config)
        if args.init:
            payload = read_checkpoint(args.init)
            load_state_strict(model, payload['state_dict'], FLOW_MODULES,
                              source=f'checkpoint {args.init}')
        flow_kwargs = {'photometric': 'census' if args.census else 'ssim_l1',
                       'fb_occlusion': args.fb_occlusion}
        if args.smoothness is not None:
            flow_kwargs['smooth_weight'] = args.smoothness
        step_config = TrainStepConfig(flow=FlowLossConfig(**flow_kwargs),
                                      depth_supervised_weight=0.0, depth_selfsup_weight=0.0)
    except (ValueError, OSError) as error:
        return cli_common.fail('pretrain', error)

    def evaluate(net):
        metrics = {}
        for name, pairs in eval_sets.items():
            results = evaluate_flow(net, pairs, device=next(net.parameters()).device,
                                    references=('zero',))
            metrics.update({f'flow_epe/{name}': results['model']['epe'],
                            f'flow_fl_all/{name}': results['model']['fl_all'],
                            f'zero_flow_epe/{name}': results['zero']['epe']})
        return metrics

    run = RunSpec(stage='pretrain', trained_on=[str(d) for d in args.data],
                  trainable_modules=FLOW_MODULES, saved_modules=FLOW_MODULES,
                  extra={'data': list(args.data)})
    return cli_common.run_training(
        'pretrain', model, lambda rank, world: datasets.infinite_batches(
            dataset, loop.batch_size, loop.seed, rank, world), loop, step_config, run, evaluate)
