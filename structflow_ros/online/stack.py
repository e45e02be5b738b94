"""One serving stack, built one way for the node, replay and the benchmarks.

`build_stack` gives the versioned weight store (the weights published as version 1), the
adaptation objects when asked (pair buffer and OnlineAdapter, which may publish a resumed
state), the DepthServer (started: the backend is chosen and the served version probed) and the
FramePipeline over them. What differs between callers is only what they pass in.
"""
from dataclasses import dataclass, field
from typing import Optional

import torch

from structflow_ros.core.backends import serving_torch_threads

from structflow_ros.core.checkpoint import CheckpointError
from structflow_ros.online.adapter import (NODE_PARAMETERS, OnlineAdapter,
                                           adapter_config_from_node_parameters)
from structflow_ros.online.pair_buffer import PairBuffer, PairBufferConfig
from structflow_ros.online.pipeline import FramePipeline
from structflow_ros.online.server import (DepthServer, NotServableError, read_serving_checkpoint,
                                          resolve_weights_path)
from structflow_ros.online.state_dir import StateDirBusy, resolve_state_dir
from structflow_ros.online.weight_store import VersionedWeightStore


@dataclass
class StackSettings:
    device: str = 'cpu'
    input_size: tuple = (0, 0)  # the network size; (0, 0) = the checkpoint's
    backend: str = 'auto'
    threads: int = 0
    network_aspect: str = 'auto'
    adapt: bool = False
    adapter_config: Optional[object] = None  # AdapterConfig; None = its defaults
    adapt_state_dir: Optional[object] = None  # a directory; None = nothing saved or resumed
    adapt_resume: bool = True
    # A state directory another process holds: serve without adapting (the node: depth is
    # the product) instead of raising StateDirBusy (replay, benchmarks).
    serve_when_state_busy: bool = False
    log: Optional[object] = field(default=None, repr=False)


@dataclass
class Stack:
    store: VersionedWeightStore
    server: DepthServer
    pipeline: FramePipeline
    adapter: Optional[OnlineAdapter] = None
    buffer: Optional[PairBuffer] = None
    adaptation_refused: str = ''  # why adapt was asked for and did not start

    def enter_serving_thread(self):
        """Call in the thread that serves frames, before the first: its torch thread pool, per
        calling thread (OpenMP), as the node's (a runtime with its own pool gets torch on one
        thread). The node and replay then compute the same depth to the bit."""
        torch.set_num_threads(serving_torch_threads(self.server.served.predictor.runner,
                                                    self.server.threads
                                                    or torch.get_num_threads()))

    def start(self):
        """Start the adaptation thread (the server started in build_stack)."""
        if self.adapter is not None:
            self.adapter.start()

    def close(self):
        if self.adapter is not None:
            self.adapter.stop()
        self.server.close()


def build_stack(state_dict, meta, settings: StackSettings) -> Stack:
    """The stack serving `state_dict` (with `meta`: model_config, path, ...). Raises ValueError
    (adaptation on weights without the flow branch, a bad state directory), StateDirBusy
    (unless serve_when_state_busy), NotServableError or RuntimeError (the server cannot start:
    weights that cannot serve, CUDA out of memory)."""
    store = VersionedWeightStore()
    store.publish(state_dict, meta)
    adapter = buffer = None
    refused = ''
    if settings.adapt:
        config = meta['model_config']
        if not config.flow_branch:
            raise ValueError(f"adaptation needs weights with the flow branch; "
                             f"{meta.get('path', 'these weights')} have the depth path only")
        buffer = PairBuffer(PairBufferConfig(height=config.height, width=config.width))
        try:
            adapter = OnlineAdapter(state_dict, config, store, buffer, settings.adapter_config,
                                    settings.device, settings.adapt_state_dir,
                                    settings.adapt_resume, log=settings.log)
        except StateDirBusy as error:
            if not settings.serve_when_state_busy:
                raise
            adapter, buffer, refused = None, None, str(error)
    server = DepthServer(store, settings.device, settings.input_size, settings.backend,
                         settings.threads, settings.log, aspect=settings.network_aspect)
    try:
        server.start()
    except BaseException:
        if adapter is not None:
            adapter.stop()  # releases its state directory
        raise
    return Stack(store, server, FramePipeline(server, buffer, adapter), adapter, buffer, refused)


class StackError(RuntimeError):
    """The node's parameters do not give a stack that can serve; the message says what to
    fix (the weights, the device, adaptation)."""


def stack_from_parameters(param, node_name, device, log=None):
    """The node's stack from its parameters (`param(name)` -> value): the weights read and
    checked, adaptation set up from the adapt_* values, the state directory resolved for
    `node_name`. Returns (stack, weights_path); raises StackError."""
    weights_path = resolve_weights_path(param('weights'))
    try:
        state_dict, meta = read_serving_checkpoint(weights_path)
    except CheckpointError as error:
        hint = ('' if param('weights') else " (the 'weights' parameter is empty, so the shipped "
                'default model was used; set weights:=<checkpoint file>)')
        raise StackError(f'cannot load weights {weights_path}: {error}{hint}') from None
    adapt = param('adapt')
    if adapt and not meta['model_config'].flow_branch:
        raise StackError(f'adapt:=true needs weights with the flow branch; {weights_path} has '
                         'none (depth path only)')
    threads = param('threads')
    try:
        stack = build_stack(state_dict, meta, StackSettings(
            device=device, input_size=(param('input_height'), param('input_width')),
            backend=param('backend'), threads=threads, network_aspect=param('network_aspect'),
            adapt=adapt, adapter_config=adapter_config_from_node_parameters(
                {name: param(name) for name in (*NODE_PARAMETERS, 'adapt_gate')}),
            adapt_state_dir=resolve_state_dir(param('adapt_state_dir'), node_name),
            adapt_resume=param('adapt_resume'), serve_when_state_busy=True, log=log))
    except NotServableError as error:
        raise StackError(f'weights {weights_path} cannot serve: {error}') from None
    except (ValueError, OSError) as error:  # adaptation: a bad state directory
        raise StackError(f'cannot start adaptation: {error}') from None
    except RuntimeError as error:  # CUDA out of memory, a broken driver, ...
        raise StackError(f'cannot put the model from {weights_path} on {device}: '
                         f'{error}') from None
    return stack, weights_path
