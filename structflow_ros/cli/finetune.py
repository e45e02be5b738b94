"""Depth finetuning of a (flow-pretrained) structure encoder with a depth decoder.

By default the network is Y-shaped, as in test-time training (Sun et al., ICML 2020): the
structure encoder trains jointly on the depth loss and the flow loss, with the motion encoder and
flow decoder continuing from pretraining, so that flow-only updates on the robot later move the
encoder in a direction the depth decoder still understands. `--paper-variant` drops the flow
branch (encoder-only finetuning, as Wang et al. 2020 did).

  structflow finetune --init runs/pretrain/last.pt --data synthetic:day:200 synthetic:dusk:200 \
      --supervised --labels 50 --steps 3000 --out runs/finetune
  structflow finetune --scratch ...             # same budget from random weights
  torchrun --nproc_per_node 2 -m structflow_ros.cli finetune ...   # DDP

Depth losses: --supervised (scale-invariant loss on ground-truth depth, dense or sparse),
--self-supervised (monodepth2 reprojection with known intrinsics and the pose network), or both.
Real calibrated video (--video, each spec with calib=FILE from `structflow calibrate` or a KITTI
calib.txt) trains the self-supervised loss on real frames; its batches alternate with the
synthetic ones. --teacher CACHE (from `structflow teacher`) adds the two-view geometry
teacher's labels on real video, calibrated or not: a fully scale-invariant loss on its sparse
depth, and the flow loss on its pairs; its batches join the round. --random-crops trains every
network aspect the node serves at:

  structflow finetune --init runs/real/pretrain/last.pt --supervised --self-supervised \
      --data synthetic:day:200:21 --video "udacity.mp4#calib=udacity.yaml,crop=0:0.06:0:0" \
      --random-crops --steps 2000 --out runs/real/finetune
"""
import argparse

import torch

from structflow_ros.core.checkpoint import CheckpointError, load_state_strict, read_checkpoint
from structflow_ros.core.losses import DepthLossConfig
from structflow_ros.core.networks import build_model
from structflow_ros.core.training import TrainStepConfig
from structflow_ros.data.synthetic.domains import room_domains
from structflow_ros.training import cli_common, datasets
from structflow_ros.training.trainer import RunSpec


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog=__doc__.split('\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', nargs='*', default=[],
                        help='synthetic:DOMAIN[:FRAMES[:SEED]] sequences with ground truth')
    parser.add_argument('--video', nargs='*', default=[],
                        help='calibrated real video specs PATH#calib=FILE[,crop=...,stride=N] '
                        'for the self-supervised loss (needs --self-supervised)')
    parser.add_argument('--teacher', nargs='*', default=[], metavar='CACHE',
                        help='teacher caches (folders or .teacher.npz files written by '
                        '`structflow teacher`): real frames with two-view depth labels')
    parser.add_argument('--teacher-weight', type=float, default=1.0, metavar='W',
                        help='weight of the loss on the teacher labels (default 1)')
    parser.add_argument('--color-jitter', action='store_true',
                        help='colour jitter of every training sample (training.datasets.'
                        'DEPTH_JITTER: contrast down to 0.4x, brightness, saturation, hue)')
    parser.add_argument('--camera-artefacts', action='store_true',
                        help='draw real-camera artefacts onto half the synthetic frames '
                        '(data.camera_artefacts: vignetting, blur, sensor noise, tone curve, '
                        'JPEG), so that the rendered frames\' cleanliness carries no depth')
    parser.add_argument('--photo-textures', nargs='+', default=[], metavar='SPEC',
                        help='real video / image folder specs whose frames texture some '
                        'surfaces of the synthetic rooms (data/synthetic/photo_textures.py: '
                        'half the objects, a quarter of the walls), so that a surface\'s '
                        'material carries no depth; never evaluation frames')
    parser.add_argument('--random-crops', action='store_true',
                        help='random crops at every training aspect (training.datasets.'
                        'TRAINING_SIZES) instead of the model size only')
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument('--init', help='checkpoint to start from (pretrain or finetune)')
    start.add_argument('--scratch', action='store_true', help='random initial weights')
    parser.add_argument('--supervised', action='store_true', help='ground-truth depth loss')
    parser.add_argument('--self-supervised', action='store_true',
                        help='reprojection loss with known intrinsics + pose network')
    parser.add_argument('--depth-gradient-weight', type=float, default=0.0, metavar='W',
                        help='add W x the multi-scale log-depth gradient matching loss '
                        '(MegaDepth; sharper edges, flat walls flat) to --supervised '
                        '(default 0: silog alone)')
    parser.add_argument('--labels', type=int, default=None,
                        help='labelled frames per sequence for --supervised (default: all)')
    parser.add_argument('--flow-weight', type=float, default=1.0,
                        help='weight of the joint flow loss on the shared encoder')
    parser.add_argument('--paper-variant', action='store_true',
                        help='drop the flow branch: encoder-only finetuning (Wang et al.)')
    parser.add_argument('--freeze-encoder', action='store_true',
                        help='train only the decoders (linear-probe style check)')
    parser.add_argument('--eval', nargs='*', default=[],
                        help='held-out synthetic specs for depth metrics and gradient cosine')
    cli_common.add_model_args(parser)
    cli_common.add_loop_args(parser, steps=3000, out='runs/finetune')
    return parser


def init_from_checkpoint(model, path):
    """Load every module that the file and the model share; the encoder is required."""
    payload = read_checkpoint(path)
    if payload['model_config'].encoder != model.config.encoder:
        raise CheckpointError(f"{path} holds a {payload['model_config'].encoder} encoder, this "
                              f'run builds {model.config.encoder} (--encoder)')
    stored = set(payload.get('modules') or [])
    shared = [m for m in model.module_names() if m in stored]
    if 'structure_encoder' not in shared:
        raise CheckpointError(f'{path} has no structure_encoder weights (it has {sorted(stored)})')
    load_state_strict(model, payload['state_dict'], shared, source=f'checkpoint {path}')
    return shared


def main(args):
    from structflow_ros.core.training import grad_cosine_similarity
    from structflow_ros.training.evaluation import evaluate_depth
    try:
        if not (args.supervised or args.self_supervised or args.teacher):
            raise ValueError('choose a depth loss: --supervised, --self-supervised and/or '
                             '--teacher CACHE')
        if not (args.data or args.video or args.teacher):
            raise ValueError('no training data: give --data synthetic specs, --video and/or '
                             '--teacher caches')
        if args.data and not (args.supervised or args.self_supervised):
            raise ValueError('--data synthetic specs train a depth loss: add --supervised '
                             'and/or --self-supervised (--teacher covers only its own '
                             'real frames)')
        if args.teacher and not args.teacher_weight > 0:
            raise ValueError(f'--teacher-weight must be > 0 with --teacher, got '
                             f'{args.teacher_weight}')
        if args.video and not args.self_supervised:
            raise ValueError('--video trains the self-supervised depth loss: add '
                             '--self-supervised')
        if args.labels is not None and args.labels < 1:
            raise ValueError(f'--labels must be >= 1, got {args.labels}')
        joint_flow = not args.paper_variant and args.flow_weight > 0
        loop = cli_common.loop_config_from_args(args)
        config = cli_common.model_config_from_args(
            args, flow_branch=not args.paper_variant, pose_branch=args.self_supervised)
        for spec in args.data + args.eval:
            if not spec.startswith(datasets.SYNTHETIC_PREFIX):
                raise ValueError(f"finetune data '{spec}' must be synthetic:DOMAIN[:FRAMES[:SEED]]"
                                 ' (ground-truth depth and intrinsics are needed; real video goes '
                                 'in --video with calib=FILE)')
        sizes = datasets.TRAINING_SIZES if args.random_crops else ((config.height,
                                                                     config.width),)
        textures = None
        if args.photo_textures:
            if not any(datasets.SyntheticSpec.parse(spec).domain in room_domains()
                       for spec in args.data):
                raise ValueError('--photo-textures textures the synthetic rooms; --data has no '
                                 'room scene (add synthetic:room:FRAMES:SEED or '
                                 'synthetic:desk:FRAMES:SEED)')
            from structflow_ros.data.synthetic.photo_textures import PhotoTextures
            textures = PhotoTextures.from_specs(args.photo_textures, seed=args.seed)
        sequences = []
        for spec in map(datasets.SyntheticSpec.parse, args.data):
            room = spec.domain in room_domains()
            # The spec's frame count shared out over the sizes, each size its own drive.
            for k, size in enumerate(sizes):
                part = datasets.SyntheticSpec(spec.domain, max(2, spec.frames // len(sizes)),
                                              spec.seed + 1000 * k)
                sequences.append(datasets.render_synthetic(part, *size,
                                                           textures if room else None))
        jitter = datasets.DEPTH_JITTER if args.color_jitter else None
        video = (datasets.CalibratedVideoDataset(args.video, sizes, seed=args.seed,
                                                 jitter=jitter) if args.video else None)
        teacher = (datasets.TeacherDepthDataset(args.teacher, sizes, seed=args.seed,
                                                jitter=jitter) if args.teacher else None)
        eval_sequences = [datasets.render_synthetic(datasets.SyntheticSpec.parse(s),
                                                    config.height, config.width)
                          for s in args.eval]
        from structflow_ros.data.camera_artefacts import SYNTHETIC_CAMERA_ARTEFACTS
        dataset = (datasets.DepthPairDataset(sequences, args.labels if args.supervised else 0,
                                             seed=args.seed, jitter=jitter,
                                             camera_artefacts=SYNTHETIC_CAMERA_ARTEFACTS
                                             if args.camera_artefacts else None)
                   if sequences else None)
        torch.manual_seed(args.seed)  # every rank builds the same initial weights
        model = build_model(config)
        loaded = init_from_checkpoint(model, args.init) if args.init else []
        trainable = ['depth_decoder']
        if not args.freeze_encoder:
            trainable.append('structure_encoder')
        if joint_flow:
            trainable += ['motion_encoder', 'flow_decoder']
        if args.self_supervised:
            trainable.append('pose_net')
        if args.depth_gradient_weight and not args.supervised:
            raise ValueError('--depth-gradient-weight weighs a term of the ground-truth depth '
                             'loss: add --supervised')
        step_config = TrainStepConfig(
            depth=DepthLossConfig(gradient_weight=args.depth_gradient_weight),
            flow_weight=args.flow_weight if joint_flow else 0.0,
            depth_supervised_weight=1.0 if args.supervised else 0.0,
            depth_selfsup_weight=1.0 if args.self_supervised else 0.0,
            depth_teacher_weight=args.teacher_weight if args.teacher else 0.0)
    except (ValueError, OSError) as error:
        return cli_common.fail('finetune', error)

    eval_frames = [{'rgb': f.rgb, 'depth': f.depth, 'valid': f.depth_valid,
                    'name': f'{spec}/{f.index}'}
                   for spec, seq in zip(args.eval, eval_sequences) for f in seq]
    eval_batch = None
    if eval_sequences:
        eval_batch = datasets.depth_collate(
            [datasets.DepthPairDataset([seq], None, flip=False)._sample(seq[i], seq[i + 1], True,
                                                                        None)
             for seq in eval_sequences for i in range(0, len(seq) - 1,
                                                      max(1, (len(seq) - 1) // 4))][:8])

    def evaluate(net):
        if not eval_frames:
            return {}
        device = next(net.parameters()).device
        result = evaluate_depth(net, eval_frames, device=device)
        metrics = {f'depth_{k}': v for k, v in result['model'].items()
                   if isinstance(v, float)}
        metrics.update({f'floor_{k}': result['floor'][k] for k in ('abs_rel', 'rmse', 'a1')})
        if net.config.flow_branch:
            batch = {k: v.to(device) for k, v in eval_batch.items()}
            # Full default weights: with --flow-weight 0 (encoder-only finetuning, the flow
            # branch frozen as pretrained) the flow gradient is still measured.
            metrics['grad_cosine_depth_flow'] = grad_cosine_similarity(
                net, batch, loss_a='depth_supervised', config=TrainStepConfig())
        return metrics

    def make_batches(rank, world):
        streams = []
        if dataset is not None:
            streams.append(datasets.depth_batches(dataset, loop.batch_size, loop.seed, rank,
                                                  world))
        if video is not None:
            streams.append(datasets.video_depth_batches(video, loop.batch_size, loop.seed, rank,
                                                        world))
        if teacher is not None:
            streams.append(datasets.teacher_depth_batches(teacher, loop.batch_size, loop.seed,
                                                          rank, world))
        return datasets.alternate(*streams)

    run = RunSpec(stage='finetune',
                  trained_on=[str(d) for d in args.data + args.video] + [
                      clip.meta['spec'] for clip in (teacher.clips if teacher else [])],
                  trainable_modules=tuple(trainable),
                  extra={'init': args.init or 'scratch', 'loaded_modules': loaded,
                         'labels_per_sequence': args.labels, 'joint_flow': joint_flow,
                         'random_crops': bool(args.random_crops),
                         'color_jitter': bool(args.color_jitter),
                         'camera_artefacts': bool(args.camera_artefacts),
                         'photo_textures': list(args.photo_textures),
                         'teacher': list(args.teacher),
                         'teacher_labelled_frames': teacher.labelled_frames if teacher else 0,
                         'training_sizes': [list(s) for s in sizes]})
    return cli_common.run_training('finetune', model, make_batches, loop, step_config, run,
                                   evaluate)
