"""The served model: built from a checkpoint or a weight-store version, owned by one thread.

Pure PyTorch (no ROS), so the swap logic is testable without DDS. Only the depth path is built
(structure encoder + depth decoder); a state dict that also holds the flow branch or the pose
network (what the adaptation thread trains) serves just as well, a state dict that lacks a
depth-path key or has a wrong shape is refused (strict load).
"""
from dataclasses import dataclass, field
from pathlib import Path

from structflow_ros.core.checkpoint import CheckpointError, load_state_strict, read_checkpoint
from structflow_ros.core.config import ModelConfig
from structflow_ros.core.inference import DepthPredictor
from structflow_ros.core.networks import build_model
from structflow_ros.paths import default_weights_path

SERVING_MODULES = ('structure_encoder', 'depth_decoder')


def resolve_weights_path(value):
    """The `weights` parameter as a path; '' = the shipped default model."""
    return Path(value).expanduser() if value else default_weights_path()


def build_serving_model(config, state_dict, device='cpu', source='weights'):
    """A fresh depth-only module with `state_dict` loaded strictly, in eval mode on `device`."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(dict(config))
    model = build_model(config, flow_branch=False, pose_branch=False)
    load_state_strict(model, state_dict, SERVING_MODULES, source=source)
    model.requires_grad_(False)
    return model.to(device).eval()


def read_serving_checkpoint(path):
    """Read and validate a checkpoint for serving: (state_dict, meta). Raises CheckpointError.

    The file is also loaded into a throw-away module, so a file that reads fine but does not fit
    the depth path is refused here, before it is published to anyone.
    """
    path = Path(path)
    payload = read_checkpoint(path)
    state_dict = payload.pop('state_dict')
    payload.pop('optimizer', None)
    build_serving_model(payload['model_config'], state_dict, 'cpu', source=f'checkpoint {path}')
    payload['path'] = str(path)
    return state_dict, payload


@dataclass
class ServedModel:
    """What the inference thread serves: a predictor, the store version it came from, meta."""

    predictor: DepthPredictor
    version: int
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_state(cls, state_dict, meta, version, device, input_size=(0, 0)):
        config = meta['model_config']
        if not isinstance(config, ModelConfig):
            config = ModelConfig.from_dict(dict(config))
        model = build_serving_model(config, state_dict, device,
                                    source=f"weights version {version} "
                                           f"({meta.get('path', 'no file')})")
        height, width = input_size
        size = (height or config.height, width or config.width)
        return cls(DepthPredictor(model, device, input_size=size), version, dict(meta))

    def describe(self):
        meta = self.meta
        return {'model_version': self.version, 'weights': meta.get('path', ''),
                'checkpoint_version': meta.get('version', ''), 'checkpoint_step':
                meta.get('step', ''), 'checkpoint_stage': meta.get('stage', ''),
                'network_input_hw': 'x'.join(str(v) for v in self.predictor.input_size)}


__all__ = ['CheckpointError', 'SERVING_MODULES', 'ServedModel', 'build_serving_model',
           'read_serving_checkpoint', 'resolve_weights_path']
