"""Arguments shared by `structflow pretrain` and `structflow finetune`."""
import json
import sys

from structflow_ros.core.config import ENCODERS, INPUT_NORMS, ModelConfig
from structflow_ros.training.trainer import LoopConfig, Trainer, TrainingStopped


def add_model_args(parser):
    group = parser.add_argument_group('model')
    group.add_argument('--encoder', default='resnet18', choices=ENCODERS)
    group.add_argument('--height', type=int, default=96, help='network input height (x32)')
    group.add_argument('--width', type=int, default=320, help='network input width (x32)')
    group.add_argument('--input-norm', default='imagenet', choices=INPUT_NORMS,
                       help="structure encoder input normalisation; 'per_image' takes out each "
                       "frame's brightness and contrast first (core.config.ModelConfig)")


def add_loop_args(parser, steps=2000, out='runs/train'):
    group = parser.add_argument_group('training loop')
    group.add_argument('--steps', type=int, default=steps)
    group.add_argument('--batch-size', type=int, default=4)
    group.add_argument('--lr', type=float, default=1e-4)
    group.add_argument('--checkpoint-every', type=int, default=250)
    group.add_argument('--log-every', type=int, default=25)
    group.add_argument('--eval-every', type=int, default=0, help='0: evaluate at the end only')
    group.add_argument('--seed', type=int, default=0)
    group.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    group.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    group.add_argument('--precision', default='auto',
                       choices=('auto', 'float32', 'bfloat16', 'float16'),
                       help='forward precision; auto = bfloat16 where the device has native '
                       'bf16 units, else float32 (losses and weights stay float32)')
    group.add_argument('--ema', type=float, default=0.0, metavar='DECAY',
                       help='also keep an exponential moving average of the weights with this '
                       'decay (e.g. 0.998, ~500 steps) and write it to OUT/ema.pt; 0: off')
    group.add_argument('--out', default=out, help='run folder: last.pt, history.jsonl, '
                       'summary.json')
    group.add_argument('--resume', action='store_true', help='continue from OUT/last.pt')
    group.add_argument('--no-progress', action='store_true')


def loop_config_from_args(args):
    if args.steps < 1:
        raise ValueError(f'--steps must be >= 1, got {args.steps}')
    if args.batch_size < 1:
        raise ValueError(f'--batch-size must be >= 1, got {args.batch_size}')
    return LoopConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        eval_every=args.eval_every or args.steps, seed=args.seed, device=args.device,
        threads=args.threads, precision=args.precision, out_dir=args.out, resume=args.resume,
        progress=not args.no_progress, ema_decay=args.ema)


def model_config_from_args(args, **overrides):
    return ModelConfig(encoder=args.encoder, height=args.height, width=args.width,
                       input_norm=getattr(args, 'input_norm', 'imagenet'), **overrides)


def finish(summary):
    """Print the JSON summary (rank 0) and return the exit code."""
    if summary is not None:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def fail(command, error):
    print(f'structflow {command}: {error}', file=sys.stderr)
    return 2


def run_training(command, model, make_batches, loop, step_config, run, evaluate):
    """Build the Trainer, run it, print the summary (rank 0); returns the exit code.

    Setup errors (e.g. --resume from another architecture) and a stopped run (persistent
    non-finite losses) print one line naming the cause and return 2.
    """
    try:
        trainer = Trainer(model, make_batches, loop, step_config, run, evaluate)
    except (ValueError, OSError) as error:
        return fail(command, error)
    try:
        summary = trainer.run()
    except TrainingStopped as error:
        return fail(command, error)
    finally:
        trainer.close()
    return finish(summary if trainer.dist.is_main else None)
