"""Serving backends: the depth path run by whatever this machine does fastest.

A backend turns the depth path of a model (structure encoder + depth decoder, full-resolution
disparity only) into a callable `runner(image) -> disparity` for one fixed network input size:

- `eager`: PyTorch float32, the reference. BatchNorm folded into the convolutions, channels_last,
  inference_mode (numerically the model itself, to ~1e-6).
- `bf16`: the same graph under bfloat16 autocast (CPUs with native bf16 units: AVX512-BF16 or
  AMX on x86, BF16 on Arm; CUDA GPUs with bf16).
- `fp16`: CUDA only, the graph in float16.
- `onnxruntime`: ONNX export (opset 17) run by ONNX Runtime (CPU, or CUDA where installed).
- `openvino`: the same ONNX graph compiled by OpenVINO for the CPU, in bf16 where the CPU has
  native bf16 units, float32 otherwise.
- `tensorrt`: ONNX Runtime's TensorRT execution provider with fp16 (CUDA machines with TensorRT;
  not testable on a CPU-only machine, so kept to that one small path).
- `auto`: times every backend this machine can run on a few frames at start-up and keeps the
  fastest whose depth agrees with eager (so it can never be slower than eager), and says why.

Every fallback (a runtime not installed, no bf16 unit, no CUDA) is returned as a reason string;
callers log it. Pure PyTorch + optional runtimes: no ROS here.
"""
import copy
import os
import platform
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

BACKENDS = ('auto', 'eager', 'bf16', 'fp16', 'onnxruntime', 'openvino', 'tensorrt')
ONNX_OPSET = 17
# A backend whose disparity differs from eager's by more than this (median relative error on
# the probe frames) is not used by `auto`: bf16 measures 0.2-0.8 %, float32 runtimes ~1e-6.
AUTO_MAX_RELATIVE_ERROR = 0.02
# `auto` times each candidate in AUTO_ROUNDS rounds (candidates in turn) of AUTO_WARMUP_FRAMES
# untimed and AUTO_TIMED_FRAMES timed calls: about a second at 320x96 on 2 CPU cores.
AUTO_ROUNDS = 3
AUTO_TIMED_FRAMES = 3
AUTO_WARMUP_FRAMES = 1


class BackendUnavailable(RuntimeError):
    """This backend cannot run here; the message says why (and what would make it run)."""


# ------------------------------------------------------------------------------------------------
# The served graph
# ------------------------------------------------------------------------------------------------
class DepthGraph(nn.Module):
    """image (B, 3, H, W) float in [0, 1], H and W multiples of 32 -> sigmoid disparity
    (B, 1, H, W). Only the full-resolution scale is computed: the coarse heads serve training.
    """

    def __init__(self, structure_encoder, depth_decoder):
        super().__init__()
        self.structure_encoder = structure_encoder
        self.depth_decoder = depth_decoder

    def forward(self, image):
        return self.depth_decoder(self.structure_encoder(image), scales=(0,))[0]


def _fold_pairs(module, pairs):
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name), getattr(module, bn_name)
        setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(module, bn_name, nn.Identity())


def fold_batchnorm(structure_encoder):
    """An eval-mode copy of the ResNet encoder with every BatchNorm folded into its convolution.

    Saves one pass over every feature map per BatchNorm; exact up to float rounding.
    """
    from structflow_ros.core.networks import BasicBlock, Bottleneck

    encoder = copy.deepcopy(structure_encoder).eval()
    _fold_pairs(encoder, [('conv1', 'bn1')])
    for module in encoder.modules():
        if isinstance(module, (BasicBlock, Bottleneck)):
            pairs = [('conv1', 'bn1'), ('conv2', 'bn2')]
            if isinstance(module, Bottleneck):
                pairs.append(('conv3', 'bn3'))
            _fold_pairs(module, pairs)
            if module.downsample is not None:
                conv, bn = module.downsample
                module.downsample = nn.Sequential(fuse_conv_bn_eval(conv, bn))
    return encoder


def serving_graph(model):
    """The depth path of a StructFlowModel as a float32 eval graph with BatchNorm folded."""
    graph = DepthGraph(fold_batchnorm(model.structure_encoder),
                       copy.deepcopy(model.depth_decoder))
    graph = graph.float().eval()
    graph.requires_grad_(False)
    return graph


# ------------------------------------------------------------------------------------------------
# What the machine offers
# ------------------------------------------------------------------------------------------------
def cpu_flags():
    """The CPU feature flags (Linux /proc/cpuinfo 'flags' on x86, 'Features' on Arm)."""
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(':')
        if key.strip() in ('flags', 'Features'):
            return set(value.split())
    return set()


def cpu_class(flags=None):
    """The CPU class benchmarks and /diagnostics name: amx, avx512_bf16, avx512, avx2, or the
    machine architecture (Arm, older x86)."""
    import platform
    flags = cpu_flags() if flags is None else flags
    for name, flag in (('amx', 'amx_bf16'), ('avx512_bf16', 'avx512_bf16'),
                       ('avx512', 'avx512f'), ('avx2', 'avx2')):
        if flag in flags:
            return name
    return platform.machine()


def cpu_native_bf16(flags=None):
    """(True/False, reason): does this CPU compute bf16 in hardware (not emulated in fp32)?"""
    flags = cpu_flags() if flags is None else flags
    native = sorted(flags & {'avx512_bf16', 'amx_bf16', 'bf16'})
    if native:
        return True, f"CPU has native bf16 ({', '.join(native)})"
    arch = platform.machine()
    return False, (f'CPU ({arch}) has no native bf16 unit (no avx512_bf16/amx_bf16/bf16 flag); '
                   'bf16 would be emulated and slower than float32')


def _import_or_unavailable(module_name, pip_name):
    try:
        return __import__(module_name)
    except ImportError as error:
        raise BackendUnavailable(f'{module_name} is not installed ({error}); '
                                 f'pip install {pip_name}') from None


def unavailable_reason(backend, device):
    """None when `backend` can run on `device` here, else why not (cheap: no model built)."""
    device = torch.device(device)
    try:
        if backend in ('eager', 'auto'):
            return None
        if backend == 'bf16':
            if device.type == 'cuda':
                if not torch.cuda.is_bf16_supported():
                    return f'{device} does not support bf16'
                return None
            native, reason = cpu_native_bf16()
            return None if native else reason
        if backend == 'fp16':
            return None if device.type == 'cuda' else 'fp16 is for CUDA devices (CPUs: use bf16)'
        if backend in ('onnxruntime', 'openvino', 'tensorrt'):
            _import_or_unavailable('onnx', 'onnx')  # the exporter writes through it
        if backend == 'onnxruntime':
            ort = _import_or_unavailable('onnxruntime', 'onnxruntime')
            if device.type == 'cuda' and 'CUDAExecutionProvider' not in \
                    ort.get_available_providers():
                return ('onnxruntime has no CUDAExecutionProvider here (install '
                        'onnxruntime-gpu for CUDA)')
            return None
        if backend == 'openvino':
            if device.type != 'cpu':
                return 'openvino runs on the CPU here; the model is on ' + str(device)
            _import_or_unavailable('openvino', 'openvino')
            return None
        if backend == 'tensorrt':
            if device.type != 'cuda':
                return 'tensorrt needs a CUDA device; this model runs on ' + str(device)
            ort = _import_or_unavailable('onnxruntime', 'onnxruntime-gpu')
            if 'TensorrtExecutionProvider' not in ort.get_available_providers():
                return ('onnxruntime has no TensorrtExecutionProvider (install onnxruntime-gpu '
                        'and TensorRT)')
            return None
    except BackendUnavailable as error:
        return str(error)
    return f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}"


# ------------------------------------------------------------------------------------------------
# Runners: (1, 3, H, W) float [0, 1] tensor on the device -> (1, 1, H, W) float32 disparity
# ------------------------------------------------------------------------------------------------
class TorchRunner:
    """The folded graph in PyTorch: float32, bf16 autocast or float16."""

    # Runtimes with a thread pool of their own (OpenVINO, ONNX Runtime) set this: the serving
    # thread then gives torch (pre/post-processing only) a single thread, or torch's spinning
    # OpenMP workers and the runtime's workers fight over the cores (measured at 320x96 with
    # OpenVINO: served path 18.0 ms with 2 torch threads, 12.9 ms with 1).
    own_thread_pool = False

    def __init__(self, graph, device, dtype=None):
        self.device = torch.device(device)
        self.dtype = dtype
        graph = graph.to(self.device)
        if dtype is torch.float16:
            graph = graph.half()  # CUDA only (checked by the caller): no autocast casts per call
        self.graph = graph.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, image):
        image = image.to(self.device).contiguous(memory_format=torch.channels_last)
        if self.dtype is torch.float16:
            return self.graph(image.half()).float()
        if self.dtype is torch.bfloat16:
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.graph(image).float()
        return self.graph(image)


def export_onnx(graph, input_hw, path):
    """Export the float32 graph for a fixed (1, 3, H, W) input (opset 17, TorchScript exporter,
    which needs no onnxscript)."""
    height, width = input_hw
    example = torch.zeros(1, 3, height, width)
    graph = copy.deepcopy(graph).cpu().float().eval()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings about Python-side shape checks
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=['image'], output_names=['disparity'])
    return Path(path)


class OnnxRuntimeRunner:
    """ONNX Runtime session on a fixed input size (CPU, CUDA or TensorRT execution provider)."""

    own_thread_pool = True

    def __init__(self, graph, input_hw, device, providers, threads):
        import onnxruntime as ort
        self.device = torch.device(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        with tempfile.TemporaryDirectory(prefix='structflow_onnx_') as folder:
            path = export_onnx(graph, input_hw, Path(folder) / 'depth.onnx')
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()

    def __call__(self, image):
        array = image.detach().float().cpu().numpy()
        (disparity,) = self.session.run(None, {'image': array})
        return torch.from_numpy(disparity).to(self.device)


_OPENVINO_CORE = None
_OPENVINO_CORE_LOCK = threading.Lock()


def openvino_core():
    """One OpenVINO Core for the process (OpenVINO's advice: a Core is heavy, and every compiled
    model keeps it, so Cores are never created and dropped per weight version)."""
    global _OPENVINO_CORE
    with _OPENVINO_CORE_LOCK:
        if _OPENVINO_CORE is None:
            import openvino as ov
            _OPENVINO_CORE = ov.Core()
        return _OPENVINO_CORE


class OpenVinoRunner:
    """OpenVINO CPU plugin on a fixed input size; bf16 inference precision where native."""

    own_thread_pool = True

    def __init__(self, graph, input_hw, precision, threads):
        self.precision = precision
        self.core = openvino_core()  # held: the Core outlives what it compiled
        config = {'INFERENCE_PRECISION_HINT': precision, 'PERFORMANCE_HINT': 'LATENCY',
                  'INFERENCE_NUM_THREADS': threads}
        with tempfile.TemporaryDirectory(prefix='structflow_openvino_') as folder:
            path = export_onnx(graph, input_hw, Path(folder) / 'depth.onnx')
            model = self.core.read_model(str(path))
            self.compiled = self.core.compile_model(model, 'CPU', config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, image):
        array = image.detach().float().cpu().numpy()
        disparity = self.request.infer({0: array})[0]
        return torch.from_numpy(disparity.copy())


def serving_torch_threads(runner, threads):
    """Torch intra-op threads for the thread that calls `runner` (see own_thread_pool)."""
    return 1 if getattr(runner, 'own_thread_pool', False) else threads


def _threads():
    return max(1, torch.get_num_threads())


def build_runner(graph, backend, device, input_hw):
    """A runner of `backend` for `graph` (from `serving_graph`). Raises BackendUnavailable."""
    reason = unavailable_reason(backend, device)
    if reason:
        raise BackendUnavailable(reason)
    device = torch.device(device)
    if backend == 'eager':
        return TorchRunner(graph, device)
    if backend == 'bf16':
        return TorchRunner(graph, device, torch.bfloat16)
    if backend == 'fp16':
        return TorchRunner(graph, device, torch.float16)
    if backend == 'onnxruntime':
        providers = (['CUDAExecutionProvider', 'CPUExecutionProvider'] if device.type == 'cuda'
                     else ['CPUExecutionProvider'])
        return OnnxRuntimeRunner(graph, input_hw, device, providers, _threads())
    if backend == 'openvino':
        native, _ = cpu_native_bf16()
        return OpenVinoRunner(graph, input_hw, 'bf16' if native else 'f32', _threads())
    if backend == 'tensorrt':
        cache = os.path.join(tempfile.gettempdir(), 'structflow_tensorrt_cache')
        providers = [('TensorrtExecutionProvider', {
            'trt_fp16_enable': True, 'trt_engine_cache_enable': True,
            'trt_engine_cache_path': cache}), 'CUDAExecutionProvider']
        return OnnxRuntimeRunner(graph, input_hw, device, providers, _threads())
    raise BackendUnavailable(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")


# ------------------------------------------------------------------------------------------------
# Choosing
# ------------------------------------------------------------------------------------------------
@dataclass
class BackendChoice:
    """What serves and why: the backend's name, a one-line reason, timings of `auto`."""

    name: str
    reason: str
    timings_ms: dict = field(default_factory=dict)


def time_runner(runner, image, frames=AUTO_TIMED_FRAMES, warmup=AUTO_WARMUP_FRAMES):
    """Median milliseconds of `runner(image)` (synchronised on CUDA)."""
    sync = torch.cuda.synchronize if image.device.type == 'cuda' else (lambda: None)
    for _ in range(warmup):
        runner(image)
    sync()
    times = []
    for _ in range(frames):
        start = time.perf_counter()
        runner(image)
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _time_in_rounds(runners, image, rounds=AUTO_ROUNDS):
    """Median ms per runner, timed in rounds of a few calls each, runners in turn.

    One long block per runner would credit whichever ran while the machine was quiet; single
    calls in turn would time the hand-over between torch's OpenMP pool and a runtime's pool.
    Each runner is timed with the torch thread count the serving thread will give it.
    """
    threads = torch.get_num_threads()
    times = {name: [] for name in runners}
    try:
        for _ in range(rounds):
            for name, runner in runners.items():
                torch.set_num_threads(serving_torch_threads(runner, threads))
                per_call = time_runner(runner, image, frames=AUTO_TIMED_FRAMES,
                                       warmup=AUTO_WARMUP_FRAMES)
                times[name].append(per_call)
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(values) for name, values in times.items()}


def relative_error(disparity, reference):
    """Median relative difference of two disparity maps."""
    reference = reference.float().cpu()
    return float(((disparity.float().cpu() - reference).abs() / reference.clamp_min(1e-6))
                 .median())


def auto_candidates(device):
    """Backends `auto` tries on `device`, eager first (the fallback that is always there)."""
    device = torch.device(device)
    if device.type == 'cuda':
        return ['eager', 'fp16', 'bf16', 'tensorrt', 'onnxruntime']
    return ['eager', 'bf16', 'openvino', 'onnxruntime']


def choose_backend(graph, backend, device, input_hw, probe_image=None):
    """(runner, BackendChoice) for `backend` ('auto' times the candidates on `probe_image`).

    A named backend that cannot run here falls back to eager with the reason; `auto` keeps the
    fastest candidate whose disparity agrees with eager within AUTO_MAX_RELATIVE_ERROR.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    if backend != 'auto':
        try:
            runner = build_runner(graph, backend, device, input_hw)
            return runner, BackendChoice(backend, f'{backend} as asked')
        except Exception as error:  # noqa: BLE001 - any failure: serve with eager, say why
            runner = build_runner(graph, 'eager', device, input_hw)
            return runner, BackendChoice('eager', f'{backend} asked for but not usable here '
                                         f'({type(error).__name__}: {error}); serving eager')
    if probe_image is None:
        height, width = input_hw
        generator = torch.Generator().manual_seed(0)
        probe_image = torch.rand(1, 3, height, width, generator=generator)
    probe_image = probe_image.to(device)
    runners, skipped = {}, []
    reference = None
    for name in auto_candidates(device):
        reason = unavailable_reason(name, device)
        if reason:
            skipped.append(f'{name}: {reason}')
            continue
        try:
            runner = build_runner(graph, name, device, input_hw)
            output = runner(probe_image)
            if reference is None:
                reference = output
            error = relative_error(output, reference)
            if not error <= AUTO_MAX_RELATIVE_ERROR:
                skipped.append(f'{name}: disparity differs from eager by {error:.2%}')
                continue
            runners[name] = runner
        except Exception as error:  # noqa: BLE001 - a broken runtime must not stop serving
            skipped.append(f'{name}: {type(error).__name__}: {error}')
    timings = _time_in_rounds(runners, probe_image)
    best = min(timings, key=timings.get)
    measured = ', '.join(f'{name} {ms:.1f} ms' for name, ms in sorted(timings.items(),
                                                                    key=lambda kv: kv[1]))
    height, width = input_hw
    reason = f'auto: fastest at {width}x{height} on {device} ({measured})'
    if skipped:
        reason += '; not tried: ' + '; '.join(skipped)
    return runners[best], BackendChoice(best, reason, dict(timings))
