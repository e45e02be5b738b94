"""The core, online/ (server, pair buffer, adapter, gate) and training/ never import ROS: they
run in a training job, in replay and in benchmarks on a machine without ROS."""
import subprocess
import sys


def test_core_online_and_training_import_no_ros_module():
    code = (
        'import sys, structflow_ros.core, structflow_ros.core.training, '
        'structflow_ros.core.losses, structflow_ros.core.metrics, structflow_ros.core.geometry, '
        'structflow_ros.online.adapter, structflow_ros.online.gate, structflow_ros.online.server, '
        'structflow_ros.online.pipeline, structflow_ros.online.pair_buffer, '
        'structflow_ros.online.state_dir, structflow_ros.training.trainer, '
        'structflow_ros.training.evaluation, structflow_ros.training.datasets, '
        'structflow_ros.replay.source, structflow_ros.replay.run, structflow_ros.replay.outputs, '
        'structflow_ros.cli.replay, structflow_ros.visual, structflow_ros.online.probe\n'
        'bad = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "cv_bridge", '
        '"message_filters") or m.split(".")[0].endswith("_msgs"))\n'
        'print(bad)\n'
        'sys.exit(1 if bad else 0)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f'core imported ROS modules: {result.stdout}{result.stderr}'
