"""Fingerprints of a run's inputs, so a resumed run can tell that its inputs changed.

``model_fingerprint`` hashes a strided sample of every parameter (and the dtype and shape of
each), read from the loaded model: it is cheap (about 4k values per tensor, whatever the
model's size), works for hub ids, folders and GGUF files alike, and changes when a model
folder is overwritten by another training run. ``tokenizer_fingerprint`` hashes the
vocabulary, ``examples_fingerprint`` the prompts and answers of a task split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import torch

SAMPLE = 4096  # values hashed per parameter


def _digest(h) -> str:
    return h.hexdigest()[:16]


@torch.no_grad()
def model_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, param in model.state_dict().items():
        h.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        flat = param.detach().reshape(-1)
        if flat.numel() == 0 or flat.device.type == "meta":
            continue
        step = max(1, flat.numel() // SAMPLE)
        sample = flat[::step][:SAMPLE].to("cpu", torch.float64)
        h.update(sample.numpy().tobytes())
    return _digest(h)


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    h = hashlib.sha256(f"{type(tokenizer).__name__}:{tokenizer.padding_side}".encode())
    h.update(json.dumps(vocab).encode())
    return _digest(h)


def examples_fingerprint(examples: Iterable) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.prompt}\x00{e.answer}\x01".encode())
    return _digest(h)
