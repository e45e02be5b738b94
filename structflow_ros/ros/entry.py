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
    from structflow_ros.ros.depth_node import main
    signal.signal(signal.SIGINT, previous)
    return main(args)


if __name__ == '__main__':
    sys.exit(depth_node())
