"""Serving-side helpers: the one network preprocessing, arbitrary input sizes and a depth
predictor owned by one thread."""
import numpy as np
import torch
import torch.nn.functional as F

from structflow_ros.core.config import SIZE_MULTIPLE
from structflow_ros.core.networks import disp_to_depth


def network_frame(rgb, size, device='cpu'):
    """THE preprocessing of a camera frame for the network, shared by serving (DepthPredictor),
    training and adaptation (data/pairs.prepare_frame, the live pair buffer) and evaluation:
    (H, W, 3) uint8 RGB numpy -> (1, 3, h, w) float [0, 1] on `device`, resized to `size`
    (h, w) with antialiased bilinear interpolation (no-op at that size). The uint8 frame
    crosses to the device (4x fewer bytes than float); the rest runs there."""
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        shape = getattr(rgb, 'shape', None)
        raise ValueError(f'expected an RGB image of shape (H, W, 3), got {shape}')
    if rgb.dtype != np.uint8:
        raise ValueError(f'expected uint8 RGB, got {rgb.dtype}')
    tensor = torch.from_numpy(np.ascontiguousarray(rgb)).to(device)
    tensor = tensor.permute(2, 0, 1)[None].float().div_(255.0)  # (1, 3, H, W)
    if tuple(tensor.shape[-2:]) != tuple(size):
        tensor = F.interpolate(tensor, size=tuple(size), mode='bilinear', align_corners=False,
                               antialias=True)
    return tensor


def network_frame_uint8(rgb, size):
    """`network_frame`, stored compactly: (h, w, 3) uint8 numpy (what training batches hold;
    rounding costs at most half a grey level)."""
    tensor = network_frame(rgb, size)
    if tensor.shape[-2:] == rgb.shape[:2]:
        return np.ascontiguousarray(rgb)
    return tensor[0].mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0) \
        .contiguous().numpy()  # (3, h, w) -> (h, w, 3)


def pad_to_multiple(image, multiple=SIZE_MULTIPLE):
    """Pad (B, C, H, W) on the bottom/right by edge replication to a multiple of `multiple`.

    Returns (padded, (H, W)); `crop_to` undoes it. Replication keeps the borders free of the
    artificial edges that zero padding would create for the photometric and depth outputs.
    """
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return image, (height, width)
    return F.pad(image, (0, pad_w, 0, pad_h), mode='replicate'), (height, width)


def crop_to(tensor, size):
    height, width = size
    return tensor[..., :height, :width]


def resolve_device(name='auto'):
    """'auto' picks CUDA when present; 'cpu', 'cuda' and 'cuda:N' are taken as given."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name == 'cpu':
        return torch.device('cpu')
    if name == 'cuda' or (name.startswith('cuda:') and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' asked for, but CUDA is not available here; "
                             "use 'auto' or 'cpu'")
        index = int(name[5:]) if ':' in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}' does not exist: {torch.cuda.device_count()} "
                             'CUDA device(s) present')
        return torch.device(name)
    raise ValueError(f"unknown device '{name}'; choose from auto, cpu, cuda, cuda:N")


def serving_input_size(frame_hw, model_hw, keep_aspect):
    """The network input size (h, w) a frame of `frame_hw` (H, W) is served at: the model size
    (`model_hw`), or with `keep_aspect` the size of the frame's own aspect with about as many
    pixels (core.config.aspect_network_size)."""
    if not keep_aspect:
        return tuple(model_hw)
    from structflow_ros.core.config import aspect_network_size
    return aspect_network_size(int(frame_hw[0]), int(frame_hw[1]), model_hw[0] * model_hw[1])


class DepthPredictor:
    """Runs the depth branch on single RGB frames; one instance per serving thread.

    `input_size` (H, W) is the size frames are resized to before the network (default: the
    size the model was trained at). With `keep_aspect`, each frame is instead resized to the
    network size of its own aspect with about as many pixels (core.config.aspect_network_size):
    a 4:3 camera runs at 160x224 rather than squashed to 96x320. Outputs are resized to
    `output_size` (default: the frame's size). Depth is relative (the model's units) unless the
    caller scales it. `backend` picks how the network runs (structflow_ros.core.backends);
    `self.backend` says what was chosen and why. Preprocessing and postprocessing run on the
    device as tensor ops.
    """

    # Network sizes whose runners stay built (a camera changing resolution back and forth).
    MAX_RUNNERS = 4

    def __init__(self, model, device='cpu', input_size=None, output_size=None, backend='eager',
                 keep_aspect=False):
        from structflow_ros.core.backends import serving_graph

        self.device = torch.device(device) if not isinstance(device, torch.device) else device
        self.model = model
        config = model.config
        self.input_size = tuple(input_size or (config.height, config.width))
        self.keep_aspect = bool(keep_aspect)
        self.last_input_size = self.input_size
        self.output_size = tuple(output_size) if output_size else None
        self.min_depth, self.max_depth = config.min_depth, config.max_depth
        self._graph = serving_graph(model)
        self._backend_choice = backend
        self._runners = {}
        # The network sees the input padded to a multiple of 32; runtimes with static shapes
        # are built for exactly that size.
        self.network_size = self._padded(self.input_size)
        self.runner, self.backend = self._runner_for(self.network_size)

    @staticmethod
    def _padded(size):
        return tuple(-(-int(v) // SIZE_MULTIPLE) * SIZE_MULTIPLE for v in size)

    def _runner_for(self, network_size):
        from structflow_ros.core.backends import choose_backend
        network_size = tuple(network_size)
        if network_size not in self._runners:
            if len(self._runners) >= self.MAX_RUNNERS:
                self._runners.pop(next(iter(self._runners)))
            self._runners[network_size] = choose_backend(self._graph, self._backend_choice,
                                                         self.device, network_size)
        return self._runners[network_size]

    def input_size_for(self, frame_hw):
        """The network input size (h, w) for a frame of `frame_hw` (H, W)."""
        return serving_input_size(frame_hw, self.input_size, self.keep_aspect)

    def preprocess(self, rgb):
        """(H, W, 3) uint8 RGB numpy -> (1, 3, h, w) float [0, 1] tensor at the network size."""
        size = self.input_size_for(rgb.shape[:2])
        self.last_input_size = size  # what the latest frame ran at (diagnostics)
        return network_frame(rgb, size, self.device)

    @torch.inference_mode()
    def predict_disparity(self, image):
        """Sigmoid disparity (1, 1, h, w) for a preprocessed (1, 3, h, w) image."""
        padded, size = pad_to_multiple(image)
        runner = self.runner if tuple(padded.shape[-2:]) == self.network_size else \
            self._runner_for(padded.shape[-2:])[0]
        return crop_to(runner(padded), size)

    @torch.inference_mode()
    def predict(self, rgb):
        """Relative depth (H_out, W_out) float32 numpy for one RGB uint8 frame."""
        return self._depth(self.predict_disparity(self.preprocess(rgb)),
                           self.output_size or rgb.shape[:2])

    @property
    def batches(self):
        """Whether several frames go through the network in one call: the PyTorch runners
        (any batch); the exported runtimes are built for one frame (static shapes)."""
        from structflow_ros.core.backends import TorchRunner
        return isinstance(self.runner, TorchRunner)

    @torch.inference_mode()
    def predict_many(self, rgbs, output_sizes):
        """Relative depth for several frames (several cameras): frames at one network size go
        through the network as one batch where the runner takes batches, else one by one.
        `output_sizes[i]` (H, W) for each frame."""
        images = [self.preprocess(rgb) for rgb in rgbs]
        if len(images) > 1 and self.batches and len({im.shape for im in images}) == 1:
            disparities = self.predict_disparity(torch.cat(images)).split(1)
        else:
            disparities = [self.predict_disparity(image) for image in images]
        return [self._depth(disp, size) for disp, size in zip(disparities, output_sizes)]

    def _depth(self, disp, out_size):
        _, depth = disp_to_depth(disp.float(), self.min_depth, self.max_depth)
        if tuple(depth.shape[-2:]) != tuple(out_size):
            depth = F.interpolate(depth, size=tuple(out_size), mode='bilinear',
                                  align_corners=False)
        return depth[0, 0].cpu().numpy()
