"""Several processes (``accelerate launch`` / ``torchrun``): accelerate's process state, plus
what it lacks: order-preserving batch maps, one-rank blocks and per-process GPU groups.

Under a launcher (``WORLD_SIZE`` > 1) ``process_info()`` starts accelerate's
``PartialState`` (gloo on CPUs, NCCL on GPUs). Work is split by *whole batches*: the
batches a single process would run (same prompts, same padding) are dealt out as contiguous
blocks (``PartialState.split_between_processes``) and gathered back in rank order
(``gather_object``), so the result equals the single-process run exactly. The library's
batch loops (``lens.run_lens``, ``ablation.evaluate``, ``hidden_states.collect``) use ``map_ranges``
and so shard whenever several processes run, and are plain loops otherwise. ``solo()``
runs a block on one process alone (a report's one-rank jobs). Big models take several GPUs
per process: before CUDA starts, each process of a node sees only its own contiguous group
of the node's GPUs (``CUDA_VISIBLE_DEVICES``), so ``device_map="auto"`` spreads its model
over that group; ``max_memory_for_rank`` does the same once CUDA is initialised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm_fourier.output.progress import tqdm

_solo = 0  # > 0 inside solo(): this process works alone
_narrowed = False  # CUDA_VISIBLE_DEVICES narrowed to this process's GPU group


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def gpu_group(local_rank: int, local_world_size: int, gpus: Sequence) -> list:
    """This process's contiguous share of a node's ``gpus`` (all of them for one process)."""
    n = len(gpus)
    if local_world_size <= 1:
        return list(gpus)
    if n < local_world_size or n % local_world_size:
        raise ValueError(f"{n} GPUs cannot be split evenly among {local_world_size} processes")
    per = n // local_world_size
    return list(gpus)[local_rank * per:(local_rank + 1) * per]


def _narrow_gpus() -> None:
    """Before CUDA starts: show each of several processes per node only its GPU group."""
    global _narrowed
    local, local_world = int(os.environ.get("LOCAL_RANK", 0)), \
        int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if _narrowed or local_world <= 1 or not torch.cuda.is_available() \
            or torch.cuda.is_initialized():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_group(local, local_world, ids))
    os.environ["LOCAL_RANK"] = "0"  # accelerate picks cuda:LOCAL_RANK: the group's first GPU
    os.environ["LLM_FOURIER_LOCAL_RANK"] = str(local)
    _narrowed = True


def _state():
    """accelerate's PartialState when launched with several processes, else None."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return None
    from accelerate import PartialState

    _narrow_gpus()
    return PartialState(cpu=not torch.cuda.is_available())


def process_info() -> ProcessInfo:
    """This process's place; inside ``solo()`` it is rank 0 of 1 (its GPU group is kept)."""
    local = int(os.environ.get("LLM_FOURIER_LOCAL_RANK", os.environ.get("LOCAL_RANK", 0)))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    state = None if _solo else _state()
    rank, world = (0, 1) if state is None else (state.process_index, state.num_processes)
    return ProcessInfo(rank, world, local, local_world)


def active() -> bool:
    """True when this process is one of several working together (outside ``solo()``)."""
    return not _solo and process_info().world_size > 1


@contextmanager
def solo() -> Iterator[None]:
    """Run the block on this process alone: no sharding, no collectives, rank 0 of 1."""
    global _solo
    _solo += 1
    try:
        yield
    finally:
        _solo -= 1


def barrier() -> None:
    if active():
        _state().wait_for_everyone()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as held by process ``src``, on every process."""
    if not active():
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=src)[0]


def all_gather_objects(obj: Any) -> list:
    """Every process's ``obj``, in rank order, on every process."""
    if not active():
        return [obj]
    from accelerate.utils import gather_object

    return gather_object([obj])


def batch_ranges(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The (start, end) batches a single process runs over ``n`` items."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


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
    """``fn(start, end)`` over ``ranges``, dealt out to the processes in contiguous blocks:
    every range's result (moved to the CPU) in the order of ``ranges``, on every process;
    with one process it is a plain loop."""
    if not active():
        bar = tqdm(ranges, desc=desc, unit="batch", leave=False,
                   disable=not progress or len(ranges) < 2)
        return [_to_cpu(fn(s, e)) for s, e in bar]
    from accelerate.utils import gather_object

    state = _state()
    with state.split_between_processes(list(ranges)) as mine:
        bar = tqdm(mine, desc=desc, unit="batch", leave=False,
                   disable=not progress or not state.is_main_process or len(mine) < 2)
        local = [_to_cpu(fn(s, e)) for s, e in bar]
    return gather_object(local)


def map_batches(fn: Callable[[int, int], Any], n: int, batch_size: int, *,
                desc: str | None = None, progress: bool = True) -> list:
    """``map_ranges`` over the batches a single process runs on ``range(n)``."""
    return map_ranges(fn, batch_ranges(n, batch_size), desc=desc, progress=progress)


def rounds(ranges: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """``ranges`` cut into rounds of one range per process, for loops that checkpoint:
    after each round the finished ranges are a prefix, so a checkpoint resumes under any
    number of processes."""
    world = process_info().world_size if active() else 1
    return [list(ranges[i:i + world]) for i in range(0, len(ranges), world)]


def max_memory_for_rank(local_rank: int, local_world_size: int,
                        gpu_memory: Sequence[int], cpu_memory: int | None = None) -> dict:
    """``max_memory`` for ``device_map="auto"`` listing only this process's GPU group, for
    processes whose CUDA was initialised before ``CUDA_VISIBLE_DEVICES`` could be narrowed."""
    mine = gpu_group(local_rank, local_world_size, range(len(gpu_memory)))
    memory: dict = {i: int(gpu_memory[i]) for i in mine}
    if cpu_memory is not None:
        memory["cpu"] = int(cpu_memory)
    return memory


def device_map_kwargs() -> dict:
    """``device_map`` / ``max_memory`` for ``load_model`` in this process."""
    if not torch.cuda.is_available():
        return {"device_map": None}
    info = process_info()
    if info.local_world_size <= 1 or _narrowed:
        return {"device_map": "auto"}  # one process, or GPUs already narrowed per process
    usable = [int(torch.cuda.get_device_properties(i).total_memory * 0.9)
              for i in range(torch.cuda.device_count())]
    return {"device_map": "auto",
            "max_memory": max_memory_for_rank(info.local_rank, info.local_world_size, usable)}
