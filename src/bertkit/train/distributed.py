"""torchrun support: the process group, this rank's device and CPU threads. Nothing home-made: DDP does the rest.

``torchrun --nproc-per-node N`` sets RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE; with WORLD_SIZE > 1 we
join the group with NCCL on GPUs and gloo on CPUs. On a CPU the ranks of one machine share its cores, so each
rank takes ``cores / local ranks`` threads (two 2-thread ranks on 2 cores run several times slower than one).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("bertkit")


@dataclass
class DistInfo:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the torchrun process group when there is one; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DistInfo(0, 1, dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        threads = max(1, (os.cpu_count() or 1) // local_world)
        torch.set_num_threads(threads)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    log.info("distributed: rank %d of %d on %s (%s)%s", rank, world, dev, dist.get_backend(),
             "" if use_cuda else f", {torch.get_num_threads()} CPU thread(s) per rank")
    return DistInfo(rank, world, dev)
