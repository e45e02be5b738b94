"""The depth node's parameters: one table, used for declaration, validation, YAML and tests.

Each entry carries its default, a description, a range and whether it can change while the node
runs (read_only ones shape subscriptions, the device or the thread pool, fixed at start).
config/structflow.yaml lists exactly these names (a test checks both directions).
"""
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from structflow_ros.core.backends import BACKENDS
from structflow_ros.core.config import SIZE_MULTIPLE
from structflow_ros.core.training import TRAINABLE_CHOICES
from structflow_ros.online.gate import CRITERIA
from structflow_ros.ros.conversions import COLORMAP_RANGE_MODES, COLORMAPS
from structflow_ros.ros.qos import RELIABILITY_CHOICES
from structflow_ros.online.units import DEPTH_MODES


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    int_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None
    choices: Optional[Tuple[str, ...]] = None

    def descriptor(self):
        text = self.description
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        descriptor = ParameterDescriptor(name=self.name, description=text,
                                         read_only=self.read_only)
        if self.choices:
            descriptor.additional_constraints = f"one of {', '.join(self.choices)}"
        if self.int_range:
            descriptor.integer_range = [IntegerRange(from_value=self.int_range[0],
                                                     to_value=self.int_range[1], step=1)]
        if self.float_range:
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=self.float_range[0], to_value=self.float_range[1], step=0.0)]
        return descriptor


PARAMETERS = (
    ParamSpec('cameras', [''], "Cameras this node serves with one model: [''] = one camera "
              "on the node's own topics (image, camera_info -> depth, ...); [front, rear] = "
              'one per sub-namespace (front/image, front/camera_info -> front/depth, ...), '
              'frames that arrive together computed as one batch, adaptation (adapt:=true) '
              'per camera.', read_only=True),
    ParamSpec('weights', '', 'Checkpoint file to serve; empty = the shipped default model '
              '(share/structflow/models/structflow_default.pt). Re-read by ~/reload_weights.'),
    ParamSpec('device', 'auto', "Torch device: auto (CUDA when present), cpu, cuda or cuda:N.",
              read_only=True),
    ParamSpec('backend', 'auto', 'How the network runs: auto (times the backends this machine '
              'can run on a few frames at start-up and keeps the fastest that agrees with '
              'eager; the log says what and why), eager (PyTorch float32), bf16 (bfloat16 '
              'autocast; CPUs with native bf16, CUDA), fp16 (CUDA), onnxruntime, openvino '
              '(CPU; bf16 where native) or tensorrt (CUDA with TensorRT). A backend that cannot '
              'run here falls back to eager with the reason in the log.', read_only=True,
              choices=BACKENDS),
    ParamSpec('input_height', 0, 'Network input height in pixels; 0 = the size the model was '
              f'trained at; otherwise >= {SIZE_MULTIPLE}.', read_only=True,
              int_range=(0, 4096)),
    ParamSpec('input_width', 0, 'Network input width in pixels; 0 = the size the model was '
              f'trained at; otherwise >= {SIZE_MULTIPLE}.', read_only=True,
              int_range=(0, 8192)),
    ParamSpec('network_aspect', 'auto', 'How camera frames meet the network: keep (resized to '
              'the network size of their own aspect with about as many pixels as the model '
              'size, multiples of 32: a 4:3 camera runs at 224x160), squash (resized to the '
              'model size whatever their shape), or auto (what the weights were trained for: '
              'keep for models trained on random crops).', read_only=True,
              choices=('auto', 'keep', 'squash')),
    ParamSpec('output_height', 0, 'Height of the published depth; 0 = the input image height.',
              int_range=(0, 8192)),
    ParamSpec('output_width', 0, 'Width of the published depth; 0 = the input image width.',
              int_range=(0, 8192)),
    ParamSpec('depth_mode', 'relative', 'Unit and topic of the published depth: relative '
              '(model output divided by its per-frame median (sampled on every 2nd row and '
              'column), so the median is 1.0; unitless, on depth/relative, no depth/points), '
              'scale (metres = depth_scale * model output) or camera_height (metres from the '
              'ground plane fitted with camera_info and the camera_height parameter); metres '
              'go to depth (REP-118) and make depth/points.', choices=DEPTH_MODES),
    ParamSpec('depth_scale', 1.0, 'Metres per model unit, used when depth_mode is scale.',
              float_range=(1e-6, 1e6)),
    ParamSpec('camera_height', 1.0, 'Height of the camera above a flat ground in metres, '
              'used when depth_mode is camera_height.', float_range=(0.01, 100.0)),
    ParamSpec('colormap', 'turbo', 'Colormap of depth/colored (near = warm/bright end).',
              choices=COLORMAPS),
    ParamSpec('colormap_range', 'percentile', 'Depth range of depth/colored: percentile (per '
              'frame, colormap_percentile_low..high) or fixed (colormap_min..max, in the '
              'published depth unit).', choices=COLORMAP_RANGE_MODES),
    ParamSpec('colormap_min', 0.0, 'Nearest depth of the fixed colormap range.',
              float_range=(0.0, 1e4)),
    ParamSpec('colormap_max', 5.0, 'Farthest depth of the fixed colormap range.',
              float_range=(0.0, 1e4)),
    ParamSpec('colormap_percentile_low', 2.0, 'Lower percentile of the per-frame range.',
              float_range=(0.0, 100.0)),
    ParamSpec('colormap_percentile_high', 98.0, 'Upper percentile of the per-frame range.',
              float_range=(0.0, 100.0)),
    ParamSpec('qos_reliability', 'best_effort', 'Reliability of the image and camera_info '
              'subscriptions: best_effort (sensor data, matches any camera) or reliable.',
              read_only=True, choices=RELIABILITY_CHOICES),
    ParamSpec('qos_depth', 5, 'History depth of the subscriptions (the node keeps only the '
              'newest frame anyway).', read_only=True, int_range=(1, 1000)),
    ParamSpec('output_qos_reliability', 'reliable', 'Reliability of the outputs: reliable '
              '(serves reliable and best-effort subscribers, e.g. RViz) or best_effort.',
              read_only=True, choices=RELIABILITY_CHOICES),
    ParamSpec('publish_points', True, 'Publish depth/points (needs camera_info and a metric '
              'depth_mode).'),
    ParamSpec('points_decimation', 2, 'Keep every n-th depth pixel (rows and columns) as a '
              'point.', int_range=(1, 64)),
    ParamSpec('threads', 0, 'torch intra-op threads; 0 = torch default.', read_only=True,
              int_range=(0, 256)),
    ParamSpec('input_compressed', False, 'Subscribe to sensor_msgs/CompressedImage (JPEG/PNG) '
              'on image instead of sensor_msgs/Image.', read_only=True),
    ParamSpec('max_image_pixels', 4096 * 4096, 'Frames with more pixels are refused (guards '
              'against corrupt headers).', int_range=(1, 1 << 30)),
    ParamSpec('input_bit_depth', 0, 'Bits per sample of 16-bit images (mono16, rgb16, bgr16, '
              'rgba16, bgra16; many cameras send 10-, 12- or 14-bit data in 16-bit words): '
              'mapped to 8 bit as value * 255 / (2**bits - 1). 0 = auto: from the largest '
              'sample seen (8, 10, 12, 14 or 16; it only rises, each change is logged).',
              int_range=(0, 16)),
    ParamSpec('max_output_pixels', 4096 * 4096, 'Largest published depth in pixels (the '
              'depth image, depth/colored and depth/points all grow with it): an '
              'output_height x output_width above it is refused when set, and an output that '
              'follows a larger input is scaled down to fit, with a warning.',
              int_range=(1, 1 << 30)),
    ParamSpec('diagnostics_period', 1.0, 'Seconds between /diagnostics messages.',
              read_only=True, float_range=(0.05, 60.0)),
    ParamSpec('diagnostics_min_rate', 1.0, 'Input and output frequency (Hz) below which '
              "/diagnostics' input rate and output rate statuses warn (10 % tolerance, as "
              "diagnostic_updater's FrequencyStatus); 0 = no lower bound.",
              float_range=(0.0, 1000.0)),
    ParamSpec('diagnostics_max_rate', 0.0, 'Input and output frequency (Hz) above which those '
              'statuses warn; 0 = no upper bound.', float_range=(0.0, 1000.0)),
    ParamSpec('diagnostics_latency_warn_ms', 1000.0, "p95 latency (image received -> last "
              "output published) at which /diagnostics' latency status warns.",
              float_range=(1.0, 1e6)),
    ParamSpec('diagnostics_latency_error_ms', 5000.0, 'p95 latency at which the latency status '
              'is an error.', float_range=(1.0, 1e6)),
    # On-robot adaptation (structflow_ros/online/adapter.py, docs/adaptation.md).
    ParamSpec('adapt', False, 'Keep training the structure encoder on the live camera (flow '
              'loss, calibration-free) and serve each version the depth-aware gate accepts.',
              read_only=True),
    ParamSpec('adapt_state_dir', '~/.ros/structflow/adaptation/{node}', 'Directory of the '
              'accepted adaptation state (adapted.pt, written atomically; the only place '
              "adaptation writes). '{node}' becomes the node's fully qualified name, so each "
              'camera (one node per namespace) has its own; one process at a time adapts in a '
              'directory (a second one serves without adapting and says why).', read_only=True),
    ParamSpec('adapt_resume', True, 'Start from the saved adaptation state when it was adapted '
              'from the same weights; false = start fresh from the weights.', read_only=True),
    ParamSpec('adapt_trainable', 'norm_affine', 'Parameters that adapt (norm_affine: the '
              "structure encoder's BatchNorm scales and shifts; docs/adaptation.md).",
              read_only=True,
              choices=tuple(TRAINABLE_CHOICES)),
    ParamSpec('adapt_gate', 'rigid_fit', 'Criterion that accepts a candidate (rigid_fit: depth '
              'vs an independent classical flow, no calibration).', read_only=True,
              choices=CRITERIA),
    ParamSpec('adapt_lr', 1e-3, 'Adam learning rate of adaptation (live; above about 1e-2 '
              'candidates diverge and are rolled back or refused).', float_range=(1e-7, 1.0)),
    ParamSpec('adapt_steps_per_candidate', 20, 'Training steps between two gate decisions.',
              read_only=True, int_range=(1, 100000)),
    ParamSpec('adapt_source_replay', 0.33, 'Share of each adaptation batch that is synthetic '
              'source-domain pairs with depth (holds the source domain).', read_only=True,
              float_range=(0.0, 0.9)),
    ParamSpec('adapt_reprojection_weight', 0.0, 'With camera_info: weight of the calibrated '
              'self-supervised depth loss (reprojection through the depth, motion fitted to '
              'classical flow); 0 = calibration-free.', read_only=True, float_range=(0.0, 10.0)),
    ParamSpec('adapt_duty_cycle', 0.5, 'Fraction of wall time the adaptation thread may '
              'compute (the rest is left to inference).', float_range=(0.01, 1.0)),
    ParamSpec('adapt_threads', 1, 'torch threads of the adaptation thread (CPU); 0 = torch '
              'default.', read_only=True, int_range=(0, 256)),
)
PARAMETERS_BY_NAME = {spec.name: spec for spec in PARAMETERS}
DEVICE_HELP = 'auto, cpu, cuda or cuda:N'


def check_device_name(value):
    if value in ('auto', 'cpu', 'cuda') or (value.startswith('cuda:') and value[5:].isdigit()):
        return None
    return f"device '{value}' is not one of {DEVICE_HELP}"


# The live parameters the inference thread reads once per frame (cheap dict lookups, no locks):
# online.pipeline.OutputSettings and what the node's outputs and decoding use.
LIVE_OUTPUT_PARAMETERS = (
    'output_height', 'output_width', 'depth_mode', 'depth_scale', 'camera_height', 'colormap',
    'colormap_range', 'colormap_min', 'colormap_max', 'colormap_percentile_low',
    'colormap_percentile_high', 'publish_points', 'points_decimation', 'max_image_pixels',
    'max_output_pixels', 'input_bit_depth')


def check_camera_names(names):
    """Why `cameras` is unusable, or None: [''] (the node's own topics) or distinct ROS name
    tokens (letters, digits, '_'; not starting with a digit)."""
    names = list(names)
    if names == ['']:
        return None
    bad = [name for name in names if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', name)]
    if not names or bad:
        return (f'cameras {names}: give [\'\'] (one camera, the node\'s own topics) or names '
                'made of letters, digits and _ such as [front, rear]'
                + (f' ({bad} is not)' if bad else ''))
    if len(set(names)) != len(names):
        return f'cameras {names}: each camera once'
    return None


def validate(name, value, values):
    """Reason why `name` may not take `value` (None when it may). `values`: all other current
    values (cross-checks use them when present)."""
    spec = PARAMETERS_BY_NAME.get(name)
    if spec is None:
        return None  # not ours (use_sim_time, ...): rclpy handles it
    if spec.choices and value not in spec.choices:
        return f"{name} '{value}' is not one of {', '.join(spec.choices)}"
    if spec.int_range and not spec.int_range[0] <= value <= spec.int_range[1]:
        return f'{name} {value} is outside [{spec.int_range[0]}, {spec.int_range[1]}]'
    if spec.float_range and not spec.float_range[0] <= value <= spec.float_range[1]:
        return f'{name} {value} is outside [{spec.float_range[0]}, {spec.float_range[1]}]'
    if name == 'device':
        return check_device_name(value)
    if name == 'cameras':
        return check_camera_names(value)
    if name == 'adapt_state_dir' and not str(value).strip():
        return 'adapt_state_dir is empty: give a directory for the adaptation state'
    if name == 'input_bit_depth' and 0 < value < 8:
        return f'input_bit_depth {value}: use 0 (auto) or 8..16'
    if name in ('input_height', 'input_width') and 0 < value < SIZE_MULTIPLE:
        return f'{name} {value} is too small: use 0 (model size) or >= {SIZE_MULTIPLE}'
    if name == 'weights' and value:
        path = Path(value).expanduser()
        if not path.is_file():
            return (f"weights file '{value}' does not exist or is not a file "
                    "(give a checkpoint path, or '' for the shipped default model)")
    if name in ('output_height', 'output_width', 'max_output_pixels'):
        merged = {**values, name: value}
        height, width = merged.get('output_height', 0), merged.get('output_width', 0)
        limit = merged.get('max_output_pixels', PARAMETERS_BY_NAME['max_output_pixels'].default)
        if height and width and height * width > limit:
            return (f'output {width}x{height} is {width * height} pixels, more than '
                    f'max_output_pixels {limit}: the depth image, its colormap and its point '
                    'cloud each take memory in proportion (raise max_output_pixels to allow it)')
    pairs = {'colormap_min': ('colormap_min', 'colormap_max'),
             'colormap_max': ('colormap_min', 'colormap_max'),
             'colormap_percentile_low': ('colormap_percentile_low', 'colormap_percentile_high'),
             'colormap_percentile_high': ('colormap_percentile_low', 'colormap_percentile_high')}
    if name in pairs:
        low_name, high_name = pairs[name]
        merged = {**values, name: value}
        if low_name in merged and high_name in merged and not merged[low_name] < merged[high_name]:
            return (f'{low_name} ({merged[low_name]}) must be smaller than {high_name} '
                    f'({merged[high_name]})')
    return None
