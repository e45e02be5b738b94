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

from structflow_ros.online.adapter import OnlineAdapter
from structflow_ros.online.pair_buffer import PairBuffer, PairBufferConfig
from structflow_ros.online.pipeline import FramePipeline
from structflow_ros.online.server import DepthServer
from structflow_ros.online.state_dir import StateDirBusy
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
