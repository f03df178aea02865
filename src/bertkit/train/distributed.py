"""torchrun support: the process group, this rank's device and CPU threads. Nothing home-made: DDP does the rest.

``torchrun --nproc-per-node N`` sets RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE; with WORLD_SIZE > 1 we
join the group with NCCL on GPUs and gloo on CPUs. On a CPU the ranks of one machine share its cores, so each
rank takes ``cores / local ranks`` threads (two 2-thread ranks on 2 cores run several times slower than one).

Every trainer (pretraining, fine-tuning, distillation, the bi-encoder, the reranker) joins the group here, splits
its global batch with ``rank_share`` (each rank's slice comes from ``data.corpus.shard_batches``) and lets rank 0
alone write files while the others wait at ``barrier``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bertkit.errors import ConfigError

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


def rank_share(global_batch: int, world_size: int, setting: str = "batch_size") -> int:
    """Examples per rank of a global batch (what one process would take); a ConfigError naming both numbers when
    it does not split evenly over the ranks."""
    per_rank, rem = divmod(global_batch, world_size)
    if rem or per_rank < 1:
        fit = max(world_size, global_batch - rem)
        raise ConfigError(f"setting {setting} is {global_batch}, the global batch over all ranks: it must split evenly "
                          f"over the {world_size} ranks (a multiple of {world_size}, e.g. {fit} or {fit + world_size})"
                          f", or launch a rank count that divides {global_batch}")
    return per_rank


def is_main_process() -> bool:
    """True outside torchrun and on rank 0 under it: who prints a command's report."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Each value summed over the ranks (as float64); the values themselves in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
