"""A run's prompts tokenized once (or given as token ids), batched by length in a fixed
order: the engine's unit of work is one ``Batch`` under one condition."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from llm_fourier.errors import UserError
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.tasks import Example, tokenize_prompts


@dataclass
class Batch:
    """Prompts of one batch, left padded: ``rows`` index the prompt set's examples."""

    number: int
    rows: list[int]
    enc: dict[str, Tensor]
    answers: list[tuple[int, ...]] | None

    @property
    def length(self) -> int:
        return self.enc["input_ids"].shape[1]


@dataclass
class PromptSet:
    """Prompts tokenized once, batched by length (ties in example order); ``offsets``: each
    example's token character spans, when built with them."""

    examples: Sequence[Example]
    batches: list[Batch]
    fmt: NumberFormat | None = None
    batch_size: int = 16
    offsets: list[list[list[int]]] | None = None

    @classmethod
    def build(cls, lm, examples: Sequence[Example], batch_size: int = 16,
              fmt: NumberFormat | None = None,
              ids: Sequence[Sequence[int]] | None = None, offsets: bool = False) -> PromptSet:
        """``ids``: each prompt's tokens as given (e.g. cut after an operand) instead of
        tokenizing the prompts; ``offsets``: keep the tokens' character spans too."""
        if not examples:
            raise UserError("no examples to run; use a larger operand range or another split.")
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}.")
        enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples], offsets=offsets) \
            if ids is None else _left_padded(ids)
        spans = enc.pop("offset_mapping", None)
        lengths = enc["attention_mask"].sum(1).tolist()
        order = sorted(range(len(examples)), key=lambda i: lengths[i])
        answers = fmt.encode_many(e.answer for e in examples) if fmt is not None else None
        batches = []
        for b, s in enumerate(range(0, len(order), batch_size)):
            rows = order[s:s + batch_size]
            t = max(lengths[i] for i in rows)
            part = {k: v[rows][:, v.shape[1] - t:].to(lm.input_device) for k, v in enc.items()}
            batches.append(Batch(b, rows, part,
                                 [answers[i] for i in rows] if answers is not None else None))
        return cls(examples, batches, fmt, batch_size, None if spans is None else [
            x[m.bool()].tolist() for x, m in zip(spans, enc["attention_mask"])])

    def layout(self) -> dict:
        """What a (batch, condition) unit's key stands for: the batch size and a digest of
        the rows of every batch (a resumed run must batch the same way)."""
        rows = ",".join(":".join(map(str, b.rows)) for b in self.batches)
        return {"batch_size": self.batch_size,
                "rows": hashlib.sha256(rows.encode()).hexdigest()[:16]}

    def scatter(self, parts: Sequence[Tensor | np.ndarray]) -> np.ndarray:
        """Per-batch rows (in batch order) back in example order."""
        out = np.concatenate([np.asarray(p) for p in parts])
        result = np.empty_like(out)
        result[np.concatenate([b.rows for b in self.batches])] = out
        return result


def _left_padded(ids: Sequence[Sequence[int]], pad: int = 0) -> dict[str, Tensor]:
    """Token id lists as ``tokenize_prompts`` pads prompts (left, positions of real tokens)."""
    t = max(len(x) for x in ids)
    input_ids = torch.tensor([[pad] * (t - len(x)) + list(x) for x in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (t - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask,
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
