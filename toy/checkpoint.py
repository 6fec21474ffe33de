"""The checkpoint of ``toy train``: one safetensors file, no pickle.

Tensors: the stacked model parameters (``model.<name>``), the optimizer moments
(``optimizer.exp_avg.<name>``, ``optimizer.exp_avg_sq.<name>``), per-seed step counts
(``optimizer.steps``) and the active mask (``active``). Everything else (format, epoch,
model and training configs, seeds, the logged history) is JSON in the file's metadata.
Written atomically; read with ``safetensors``, so a crafted file can hold no code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from llm_fourier.errors import UserError
from llm_fourier.output.files import atomic_write_bytes, to_jsonable

CHECKPOINT_FORMAT = "llm-fourier-toy"
CHECKPOINT_NAME = "checkpoint.safetensors"
META_KEY = "llm_fourier"


def write_checkpoint(path: str | Path, info: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """``info`` (JSON) and ``tensors`` into one safetensors file, atomically."""
    meta = {META_KEY: json.dumps(to_jsonable({"format": CHECKPOINT_FORMAT, "version": 2,
                                              **info}))}
    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta)
    return atomic_write_bytes(path, data)


def is_ours(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file written by ``write_checkpoint``."""
    try:
        with safe_open(str(path), "pt") as f:
            return META_KEY in (f.metadata() or {})
    except Exception:
        return False


def read_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(info, tensors)`` of a checkpoint of ours; one sentence when it is not one."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            info = json.loads(meta[META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise UserError(f"{path} is not a readable 'toy train' checkpoint ({type(err).__name__});"
                        " rerun the training with --restart, or pass the right file.") from None
    if info.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} was not written by 'llm-fourier toy train'.")
    return info, tensors


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix.<name>``, keyed by ``<name>``."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
