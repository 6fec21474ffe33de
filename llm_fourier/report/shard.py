"""Scale-out: shard prompts across processes with torch.distributed and gather in order.

Launch any ``llm-fourier`` command or report under ``accelerate launch`` or ``torchrun``;
they set ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``, and ``init_distributed`` joins the
process group (NCCL on GPUs, gloo on CPUs). Work is split by *whole batches*: the batches a
single process would run (same prompts, same padding) are dealt out as contiguous blocks,
one block per rank, and gathered back in rank order, so the gathered result equals the
single-process run exactly. Big models take several GPUs per process: ``max_memory_for_rank``
gives each process its own group of a node's GPUs for ``device_map="auto"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

_narrowed = False  # True once init_distributed narrowed CUDA_VISIBLE_DEVICES


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
    """This process's place: from the process group if joined, else the launcher's env."""
    env = os.environ
    local = int(env.get("LOCAL_RANK", 0))
    local_world = int(env.get("LOCAL_WORLD_SIZE", 1))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, local_world)
    return DistInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), local, local_world)


def active() -> bool:
    """True when this process is one of several in an initialized process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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


def shard_batches(n: int, batch_size: int, rank: int, world_size: int) -> list[tuple[int, int]]:
    """This rank's contiguous block of the single-process batches (blocks differ by <= 1)."""
    batches = batch_ranges(n, batch_size)
    per, extra = divmod(len(batches), world_size)
    start = rank * per + min(rank, extra)
    return batches[start:start + per + (1 if rank < extra else 0)]


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


def map_batches(fn: Callable[[int, int], Any], n: int, batch_size: int, *,
                desc: str | None = None, progress: bool = True) -> list:
    """``fn(start, end)`` over the batches of ``range(n)``, sharded across ranks.

    Returns every batch's result (moved to the CPU) in single-process order, on every rank.
    """
    info = dist_info() if active() else DistInfo()
    mine = shard_batches(n, batch_size, info.rank, info.world_size)
    bar = tqdm(mine, desc=desc, disable=not progress or not info.is_main or len(mine) < 2,
               leave=False)
    local = [_to_cpu(fn(s, e)) for s, e in bar]
    return [r for rank_results in all_gather_objects(local) for r in rank_results]


def sharded_capture(lm, prompts: Sequence[str], roles: Sequence[str] = ("attn", "mlp", "block"),
                    layers: Sequence[int] | None = None, batch_size: int = 16,
                    desc: str = "capture") -> dict[str, torch.Tensor]:
    """Last-token outputs of ``roles`` at ``layers``: role -> N x L x D, sharded + gathered."""
    from llm_fourier.hooks import capture
    from llm_fourier.tasks import tokenize_prompts

    def run(start: int, end: int) -> dict[str, torch.Tensor]:
        batch = tokenize_prompts(lm.tokenizer, prompts[start:end], device=lm.input_device)
        with torch.no_grad(), capture(lm, roles=roles, layers=layers) as cap:
            lm.model(**batch)
        return {r: cap.stack(r) for r in roles}

    return concat(map_batches(run, len(prompts), batch_size, desc=desc))


def _last_logits(lm, prompts: Sequence[str], edits: dict | None = None,
                 positions: str = "last") -> torch.Tensor:
    """Logits at the last real token of each prompt (one padded batch, edits applied)."""
    from llm_fourier.hooks import edit, last_token_positions
    from llm_fourier.tasks import tokenize_prompts

    enc = tokenize_prompts(lm.tokenizer, list(prompts), device=lm.input_device)
    with torch.inference_mode(), edit(lm, edits or {}, positions=positions):
        logits = lm.model(**enc).logits
    last = last_token_positions(enc["attention_mask"]).to(logits.device)
    return logits[torch.arange(len(prompts), device=logits.device), last]


def sharded_last_logits(lm, prompts: Sequence[str], batch_size: int = 16,
                        desc: str = "forward") -> torch.Tensor:
    """Next-token logits at the last real token of every prompt (N x vocab, float32)."""
    return concat(map_batches(lambda s, e: _last_logits(lm, prompts[s:e]).float(),
                              len(prompts), batch_size, desc=desc))


def sharded_evaluate(lm, examples: Sequence, numbers, edits: dict | None = None, *,
                     positions: str = "last", prediction: str = "vocab",
                     batch_size: int = 16, desc: str = "evaluate") -> dict:
    """``llm_fourier.ablate.evaluate`` with its batches sharded across ranks.

    Same batches, same scoring (``ablate.score_batch`` / ``ablate.Scores``): the gathered
    summary and predictions equal a single-process ``evaluate`` exactly.
    """
    from llm_fourier.ablate import Scores, score_batch

    def run(start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = examples[start:end]
        rows = _last_logits(lm, [e.prompt for e in batch], edits, positions)
        return score_batch(rows, torch.tensor([e.answer for e in batch]), numbers, prediction)

    parts = map_batches(run, len(examples), batch_size, desc=desc)
    preds = torch.cat([p for p, _ in parts])
    losses = torch.cat([loss for _, loss in parts])
    scores = Scores(np.array([e.answer for e in examples]), preds.numpy(), losses.numpy())
    return {**scores.summary(), "predictions": scores.predictions.tolist()}


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


# Commands whose run() shards its prompts with the helpers above: a report under several
# processes runs these on all ranks together and deals every other job to one rank.
SHARD_AWARE: set[str] = set()
