"""On-robot serving and adaptation plumbing, without ROS (the node, replay and benchmarks share it).

- `weight_store.VersionedWeightStore`: writers (`~/reload_weights`, later the adaptation thread)
  publish state dicts under increasing version numbers;
- `server.DepthServer`: converts each new version for the serving backend in its own thread and
  lets the serving thread swap it in between two frames (sample-factory's trainer/server split:
  never one module shared by two threads);
- `pair_buffer.PairBuffer`: frame pairs from the live stream for adaptation (held-out split,
  diversity-keeping reservoir, bounded memory).
"""
from structflow_ros.online.pair_buffer import PairBuffer, PairBufferConfig
from structflow_ros.online.weight_store import VersionedWeightStore

__all__ = ['PairBuffer', 'PairBufferConfig', 'VersionedWeightStore']
