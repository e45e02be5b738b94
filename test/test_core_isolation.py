"""The core never imports ROS: it must run in a training job or on a machine without ROS."""
import subprocess
import sys


def test_core_imports_no_ros_module():
    code = (
        'import sys, structflow_ros.core, structflow_ros.core.training, '
        'structflow_ros.core.losses, structflow_ros.core.metrics, structflow_ros.core.geometry\n'
        'bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "cv_bridge", '
        '"message_filters") or m.split(".")[0].endswith("_msgs"))\n'
        'print(bad)\n'
        'sys.exit(1 if bad else 0)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f'core imported ROS modules: {result.stdout}{result.stderr}'
