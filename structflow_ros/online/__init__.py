"""On-robot adaptation plumbing: how new weights reach the serving thread.

Pure PyTorch/Python, no ROS. The adaptation thread (future) and `~/reload_weights` publish
state dicts into a `VersionedWeightStore`; the node's inference thread owns the module it serves
and swaps in a freshly built one between two frames when the store's version is newer
(sample-factory's trainer/server split: never share one module between two threads).
"""
from structflow_ros.online.weight_store import VersionedWeightStore

__all__ = ['VersionedWeightStore']
