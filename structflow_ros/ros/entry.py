"""Console entry points of the ROS executables (`ros2 run structflow depth_node`).

Kept free of heavy imports: importing torch, rclpy and the model takes seconds, and a Ctrl-C in
that window used to end in a KeyboardInterrupt traceback with exit code -2 (issue 12 defect 9).
Stopping before the node exists is a clean, quiet exit.
"""
import sys


def depth_node(args=None):
    try:
        from structflow_ros.ros.depth_node import main
    except KeyboardInterrupt:
        return 0
    return main(args)


if __name__ == '__main__':
    sys.exit(depth_node())
