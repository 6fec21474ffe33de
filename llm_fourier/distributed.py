"""Scale-out: shard prompts across processes with torch.distributed and gather in order.

Launch ``llm-fourier probe`` / ``ablate`` / ``report`` under ``accelerate launch`` or
``torchrun``; they set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, and ``init_distributed``
joins the process group (NCCL on GPUs, gloo on CPUs). Work is split by *whole batches*: the
batches a single process would run (same prompts, same padding) are dealt out as contiguous
blocks, one block per rank, and gathered back in rank order, so the gathered result equals
the single-process run exactly. The library's batch loops (``lens.run_lens``,
``ablate.evaluate``) use ``map_batches`` / ``map_ranges`` and so shard whenever a process
group is active; ``solo()`` runs code on one rank alone (the report runner's one-rank jobs).
Big models take several GPUs per process: ``init_distributed`` narrows
``CUDA_VISIBLE_DEVICES`` and ``max_memory_for_rank`` gives each process its own group of a
node's GPUs for ``device_map="auto"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

_narrowed = False  # True once init_distributed narrowed CUDA_VISIBLE_DEVICES
_solo = 0  # > 0 inside solo(): this rank works alone


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """This process's place: from the process group if joined, else the launcher's env.

    Inside ``solo()`` the process is rank 0 of 1 (its GPU group is kept).
    """
    env = os.environ
    local = int(env.get("LOCAL_RANK", 0))
    local_world = int(env.get("LOCAL_WORLD_SIZE", 1))
    if _solo:
        return DistInfo(0, 1, local, local_world)
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, local_world)
    return DistInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), local, local_world)


def active() -> bool:
    """True when this process is one of several in an initialized process group."""
    return (not _solo and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() > 1)


@contextmanager
def solo() -> Iterator[None]:
    """Run the block on this rank alone: no sharding, no collectives, ``dist_info()`` is
    rank 0 of 1 (so it writes its outputs). For work dealt to one rank, e.g. a report's
    jobs whose command does not shard."""
    global _solo
    _solo += 1
    try:
        yield
    finally:
        _solo -= 1


def gpu_group(local_rank: int, local_world_size: int, gpus: Sequence) -> list:
    """This process's contiguous share of a node's ``gpus`` (all of them for one process)."""
    n = len(gpus)
    if local_world_size <= 1:
        return list(gpus)
    if n < local_world_size or n % local_world_size:
        raise ValueError(f"{n} GPUs cannot be split evenly among {local_world_size} processes")
    per = n // local_world_size
    return list(gpus)[local_rank * per:(local_rank + 1) * per]


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group when launched with several processes; a no-op otherwise.

    With several processes per node and CUDA not yet initialised, each process sees only its
    own group of the node's GPUs (``CUDA_VISIBLE_DEVICES``), so ``device_map="auto"`` in any
    command spreads that process's model over its group only.
    """
    global _narrowed
    info = dist_info()
    if info.world_size > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        several = info.local_world_size > 1
        if use_cuda and several and not torch.cuda.is_initialized():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in
                                                      range(torch.cuda.device_count())]
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(
                gpu_group(info.local_rank, info.local_world_size, ids))
            _narrowed = True
        if use_cuda:  # the first GPU of this process's group
            torch.cuda.set_device(0 if _narrowed or not several else gpu_group(
                info.local_rank, info.local_world_size, range(torch.cuda.device_count()))[0])
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
        info = dist_info()
    return info


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as held by rank ``src``, on every rank (identity when not distributed)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    boxes: list = [None] * dist.get_world_size()
    dist.all_gather_object(boxes, obj)
    return boxes


def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The (start, end) batches a single process runs over ``n`` items."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def deal(items: Sequence, rank: int, world_size: int) -> list:
    """This rank's contiguous block of ``items`` (block sizes differ by at most one)."""
    per, extra = divmod(len(items), world_size)
    start = rank * per + min(rank, extra)
    return list(items[start:start + per + (1 if rank < extra else 0)])


def shard_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """This rank's contiguous block of the single-process batches."""
    return deal(batch_ranges(n, batch_size), rank, world_size)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def concat(parts: Sequence[Any]) -> Any:
    """Join per-batch results: tensors / arrays along dim 0, lists end to end, dicts by key."""
    if not parts:
        return []
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts), dim=0)
    if isinstance(first, np.ndarray):
        return np.concatenate(list(parts), axis=0)
    if isinstance(first, dict):
        return {k: concat([p[k] for p in parts]) for k in first}
    if isinstance(first, (list, tuple)):
        return [x for p in parts for x in p]
    return list(parts)


def map_ranges(fn: Callable[[int, int], Any], ranges: Sequence[tuple[int, int]], *,
               desc: str | None = None, progress: bool = True) -> list:
    """``fn(start, end)`` over ``ranges``, dealt out to the ranks in contiguous blocks.

    Returns every range's result (moved to the CPU) in the order of ``ranges``, on every
    rank; without an active process group it is a plain loop.
    """
    info = dist_info() if active() else DistInfo()
    mine = deal(ranges, info.rank, info.world_size)
    bar = tqdm(mine, desc=desc, unit="batch", leave=False,
               disable=not progress or not info.is_main or len(mine) < 2)
    local = [_to_cpu(fn(s, e)) for s, e in bar]
    if not active():
        return local
    return [r for rank_results in all_gather_objects(local) for r in rank_results]


def map_batches(fn: Callable[[int, int], Any], n: int, batch_size: int, *,
                desc: str | None = None, progress: bool = True) -> list:
    """``map_ranges`` over the batches a single process runs on ``range(n)``."""
    return map_ranges(fn, batch_ranges(n, batch_size), desc=desc, progress=progress)


def rounds(ranges: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """``ranges`` cut into rounds of one range per rank, for loops that checkpoint.

    After each round (``map_ranges`` over it) the finished ranges are a prefix of ``ranges``,
    so a checkpoint taken then resumes under any number of processes.
    """
    world = dist_info().world_size if active() else 1
    return [list(ranges[i:i + world]) for i in range(0, len(ranges), world)]


def max_memory_for_rank(local_rank: int, local_world_size: int,
                        gpu_memory: Sequence[int], cpu_memory: int | None = None) -> dict:
    """``max_memory`` for ``device_map="auto"`` giving this process its own GPU group.

    For processes that cannot narrow ``CUDA_VISIBLE_DEVICES`` (CUDA already initialised):
    only this process's group is listed, and ``accelerate`` places weights on listed devices
    only. With 8 GPUs and 2 processes per node each process spreads its model over 4 GPUs.
    """
    mine = gpu_group(local_rank, local_world_size, range(len(gpu_memory)))
    memory: dict = {i: int(gpu_memory[i]) for i in mine}
    if cpu_memory is not None:
        memory["cpu"] = int(cpu_memory)
    return memory


def device_map_kwargs() -> dict:
    """``device_map`` / ``max_memory`` for ``load_model`` in this process."""
    if not torch.cuda.is_available():
        return {"device_map": None}
    info = dist_info()
    count = torch.cuda.device_count()
    if info.local_world_size <= 1 or _narrowed:
        return {"device_map": "auto"}  # one process, or GPUs already narrowed per process
    usable = [int(torch.cuda.get_device_properties(i).total_memory * 0.9) for i in range(count)]
    return {"device_map": "auto",
            "max_memory": max_memory_for_rank(info.local_rank, info.local_world_size, usable)}


# Commands whose run() shards its prompts with the helpers above (every rank calls run(),
# rank 0 writes): a report under several processes runs these on all ranks together and
# deals every other job to one rank, inside solo().
SHARD_AWARE: set[str] = {"probe", "ablate"}
