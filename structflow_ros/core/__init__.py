"""Pure PyTorch/NumPy core: networks, geometry, losses, metrics, checkpoints, train_step.

Never imports rclpy or any ROS message package (test/test_core_isolation.py checks).
"""
from structflow_ros.core.checkpoint import (CheckpointError, load_model, read_checkpoint,
                                            save_checkpoint)
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.inference import DepthPredictor, pad_to_multiple, resolve_device
from structflow_ros.core.networks import StructFlowModel, build_model, disp_to_depth

__all__ = [
    'CheckpointError', 'DepthPredictor', 'ModelConfig', 'StructFlowModel', 'build_model',
    'disp_to_depth', 'load_model', 'pad_to_multiple', 'read_checkpoint', 'resolve_device',
    'save_checkpoint',
]
