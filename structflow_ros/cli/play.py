"""structflow play BAG: publish a bag's topics live over DDS at the recorded rate.

For machines without `ros2 bag play` (rosbag2 is not pip-installable): the bag is read with
rosbags and each message is published as recorded, serialised bytes as they are in the bag (so
header stamps and every field stay exactly as recorded), on a fixed schedule from the record
times, scaled by --rate. --loop repeats; --start skips the first seconds; --topics limits what
is published. Publishers are reliable with a depth of 10 (what `ros2 bag play` offers by
default); --qos best_effort for sensor-data subscribers that want it.
"""
import argparse
import sys

EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130


def get_args_parser():
    parser = argparse.ArgumentParser(description="Publish a bag's topics over DDS.")
    parser.add_argument('bag', help='rosbag2 folder (metadata.yaml) or a .mcap/.db3 file')
    parser.add_argument('--rate', type=float, default=1.0, help='speed factor (2 = twice)')
    parser.add_argument('--loop', action='store_true', help='play again from the start')
    parser.add_argument('--start', type=float, default=0.0, help='skip the first seconds')
    parser.add_argument('--topics', nargs='+', default=[], help='only these topics')
    parser.add_argument('--qos', choices=('reliable', 'best_effort'), default='reliable')
    parser.add_argument('--no-progress', action='store_true')
    return parser


def main(args):
    from structflow_ros.data import bag_io
    if not args.rate > 0 or args.start < 0:
        print('structflow play: --rate must be > 0 and --start >= 0', file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        topics = bag_io.list_topics(args.bag)
    except bag_io.BagError as error:
        print(f'structflow play: {error}', file=sys.stderr)
        return EXIT_BAD_INPUT
    wanted = args.topics or sorted(topics)
    missing = [t for t in wanted if t not in topics]
    if missing:
        print(f"structflow play: bag {args.bag} has no topic {', '.join(missing)}; topics: "
              f"{', '.join(sorted(topics))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from structflow_ros.ros.bag_player import MissingMessageType, play
    try:
        published, interrupted = play(args.bag, wanted, topics, args.rate, args.start,
                                      args.loop, args.qos)
    except MissingMessageType as error:
        print(f'structflow play: a message type of the bag is not installed here: {error}',
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if interrupted:
        print(f'\ninterrupted after {published} messages', flush=True)
        return EXIT_INTERRUPTED
    print(f'published {published} messages', flush=True)
    return 0
