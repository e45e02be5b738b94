"""DistributedDataParallel plumbing: the same command runs alone or under `torchrun`.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; gloo is used on the CPU and nccl on CUDA. Only
rank 0 writes checkpoints and logs.
"""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def init_distributed(device):
    """Join the process group torchrun describes (if any) and return this process's place in it."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ['RANK']), int(os.environ.get('LOCAL_RANK', '0')), world_size)
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return info


def device_for_rank(device, info):
    """One GPU per process under torchrun: cuda -> cuda:LOCAL_RANK."""
    if device.type == 'cuda' and info.enabled:
        torch.cuda.set_device(info.local_rank)
        return torch.device('cuda', info.local_rank)
    return device


def all_reduce_mean(value, info):
    """Average a float over ranks (for logging the same number on every rank)."""
    if not info.enabled:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size


def broadcast_flag(flag, info):
    """True on every rank if any rank says True (e.g. stop training)."""
    if not info.enabled:
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(tensor)
    return bool(tensor.item())


def cleanup(info):
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
