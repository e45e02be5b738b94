"""Console entry points of the ROS executables (`ros2 run structflow depth_node`).

Kept free of heavy imports: importing torch, rclpy and the model takes seconds, and a Ctrl-C in
that window used to end in a KeyboardInterrupt traceback with exit code -2 (issue 12 defect 9).
During the imports a Ctrl-C ends the process at once with exit code 0: nothing exists yet that
needs cleaning up, and a KeyboardInterrupt raised inside some library's import can be
swallowed by its bare `except:`, after which the node would start anyway and ignore the
Ctrl-C (seen once in CI). Once the node code is loaded, its own handling takes over.
"""
import os
import signal
import sys


def _exit_now(signum, frame):
    del signum, frame
    os._exit(0)


def depth_node(args=None):
    previous = signal.signal(signal.SIGINT, _exit_now)
    import structflow_ros.ros.depth_node  # noqa: F401 - the slow imports, under _exit_now
    signal.signal(signal.SIGINT, previous)
    return run_depth_node(args)


def _ignore_further_interrupts():
    """Ignore SIGINT from now on, even when a pending interrupt lands in this very call.

    A KeyboardInterrupt can be raised inside `signal.signal` itself (CI caught one there: exit
    -2 on Ctrl-C of a launch). Once the call has returned, interrupts still pending are dropped,
    since Python skips tripped signals whose handler is SIG_IGN.
    """
    while True:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            return
        except KeyboardInterrupt:
            continue


USAGE = ('usage: depth_node [--lifecycle] [--ros-args ...]\n'
         '  --lifecycle  a managed node: it starts unconfigured and waits for '
         '`ros2 lifecycle set <node> configure` (then activate)')


def run_depth_node(args=None):
    """The node's process: DDS profile, rclpy, the node, its executor; the exit code."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.logging import get_logger
    from rclpy.utilities import remove_ros_args
    from structflow_ros.ros.dds_profile import use_node_profile
    from structflow_ros.ros.depth_node import (EXECUTOR_THREADS, DepthNode, ManagedDepthNode,
                                               StartupError)
    own = remove_ros_args(sys.argv if args is None else args)[1:]
    unknown = [arg for arg in own if arg != '--lifecycle']
    if unknown:
        print(f"depth_node: unknown argument(s) {' '.join(unknown)}\n{USAGE}", file=sys.stderr)
        return 2
    dds_note = use_node_profile()  # before rclpy.init: the DDS context reads it once
    rclpy.init(args=args)
    logger = get_logger('depth_node')
    try:
        node = ManagedDepthNode() if '--lifecycle' in own else DepthNode()
        node.get_logger().info(dds_note)
    except StartupError as error:
        logger.fatal(str(error))
        rclpy.try_shutdown()
        return 1
    except KeyboardInterrupt:
        rclpy.try_shutdown()
        return 0
    executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # The first SIGINT stopped the executor (rclpy's handler) and is also re-raised as a
        # KeyboardInterrupt at a random later point: ignore further SIGINTs while the threads
        # stop, or that interrupt lands in a join and the node dies with a traceback.
        # (`ros2 launch` escalates to SIGTERM if a node does not stop.)
        _ignore_further_interrupts()
        executor.remove_node(node)
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(depth_node())
