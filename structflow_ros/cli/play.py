"""structflow play BAG: publish a bag's topics live over DDS at the recorded rate.

For machines without `ros2 bag play` (rosbag2 is not pip-installable): the bag is read with
rosbags and each message is published as recorded, serialised bytes as they are in the bag (so
header stamps and every field stay exactly as recorded), on a fixed schedule from the record
times, scaled by --rate. --loop repeats; --start skips the first seconds; --topics limits what
is published. Publishers are reliable with a depth of 10 (what `ros2 bag play` offers by
default); --qos best_effort for sensor-data subscribers that want it.
"""
import argparse
import importlib
import sys
import time

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


def message_class(msgtype):
    """'sensor_msgs/msg/Image' -> the rclpy message class."""
    package, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


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
    try:
        classes = {t: message_class(topics[t]) for t in wanted}
    except (ImportError, AttributeError, ValueError) as error:
        print(f'structflow play: a message type of the bag is not installed here: {error}',
              file=sys.stderr)
        return EXIT_BAD_INPUT
    import rclpy
    from structflow_ros.ros.qos import make_qos
    from rclpy.signals import SignalHandlerOptions
    # Ctrl-C raises KeyboardInterrupt here (below: a clean stop, exit 130). With rclpy's own
    # handler the context was shut down under a publish() in flight, which then failed with
    # "publisher's context is invalid" and exit 1 (seen in CI).
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('structflow_play')
    publishers = {t: node.create_publisher(classes[t], t, make_qos(args.qos, 10))
                  for t in wanted}
    print(f"playing {args.bag}: {', '.join(wanted)} at {args.rate:g}x"
          + (' (looping)' if args.loop else ''), flush=True)
    published = 0
    try:
        while True:
            reader = bag_io.open_reader(args.bag)
            try:
                connections = [c for c in reader.connections if c.topic in publishers]
                start_ns = reader.start_time + int(args.start * 1e9)
                clock = None
                for connection, record_ns, raw in reader.messages(connections=connections,
                                                                  start=start_ns):
                    now = time.monotonic()
                    if clock is None:
                        clock = (now, record_ns)
                    due = clock[0] + (record_ns - clock[1]) / 1e9 / args.rate
                    if due > now:
                        time.sleep(due - now)  # the recording's clock
                    publishers[connection.topic].publish(bytes(raw))
                    published += 1
            finally:
                reader.close()
            if not args.loop:
                break
    except KeyboardInterrupt:
        print(f'\ninterrupted after {published} messages', flush=True)
        return EXIT_INTERRUPTED
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    print(f'published {published} messages', flush=True)
    return 0
