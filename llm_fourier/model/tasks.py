"""Arithmetic prompt datasets (Zhou et al. 2024): templates, pairs, splits, k-shot prompts.

Each pair (a, b) gets one template, drawn at random, followed by ``ANSWER_PREFIX``:
"Put together 15 and 93. Answer: " -> 108. Unordered pairs a <= b (34,191 for operands
0..260) or ordered pairs, shuffled by seed and split 80/10/10. k-shot prompts prepend k
solved training examples, one per line, for models that were not fine-tuned.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from llm_fourier.errors import UserError

TEMPLATES: tuple[str, ...] = (
    "Total of {a} and {b}.",
    "Add together {a} and {b}.",
    "Calculate {a} + {b}.",
    "What is the sum of {a} and {b}?",
    "Put together {a} and {b}.",
)
MUL_TEMPLATES: tuple[str, ...] = (
    "Multiply {a} by {b}.",
    "What is the product of {a} and {b}?",
    "Calculate {a} * {b}.",
    "Find the product of {a} and {b}.",
    "Compute {a} times {b}.",
)
ANSWER_PREFIX = " Answer: "
SHOT_SEPARATOR = "\n"
OPS = {"+": (lambda a, b: a + b, TEMPLATES), "*": (lambda a, b: a * b, MUL_TEMPLATES)}


@dataclass(frozen=True)
class Example:
    a: int
    b: int
    answer: int
    prompt: str


@dataclass
class TaskSplits:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    settings: dict = field(default_factory=dict)

    def split(self, name: str) -> list[Example]:
        if name not in ("train", "val", "test"):
            raise UserError(f"unknown split {name!r}; choose train, val or test.")
        return getattr(self, name)

    @property
    def max_answer(self) -> int:
        return int(self.settings["max_answer"])


def _check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    templates = tuple(templates)
    if not templates:
        raise UserError("templates is empty; give at least one template with {a} and {b}.")
    for t in templates:
        if "{a}" not in t or "{b}" not in t:
            raise UserError(f"template {t!r} lacks {{a}} or {{b}}; write e.g. "
                            "'Add {a} and {b}.'.")
        try:
            t.format(a=1, b=2)
        except (KeyError, IndexError, ValueError) as err:
            raise UserError(f"template {t!r} has braces other than {{a}} and {{b}}; double "
                            "them ({{ }}) to write them literally.") from err
    return templates


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-6:
        raise UserError(f"split {tuple(split)} must be three non-negative fractions (train, "
                        "val, test) summing to 1, e.g. 0.8 0.1 0.1.")
    return tuple(float(s) for s in split)


# measured peak bytes while ``make_task`` builds: per pair of the grid (meshgrid, mask,
# shuffled pairs and templates), per kept example (Example, prompt text), per shot
_GRID_BYTES, _EXAMPLE_BYTES, _SHOT_BYTES = 48, 360, 140


def n_pairs(max_operand: int, ordered: bool = False) -> int:
    """How many pairs (a, b) with 0 <= a, b <= ``max_operand`` the task holds."""
    n = max_operand + 1
    return n * n if ordered else n * (n + 1) // 2


def task_bytes(max_operand: int, ordered: bool = False, shots: int = 0,
               limit: int | None = None) -> int:
    """An estimate of the memory ``make_task`` needs (from its sizes alone, instantly)."""
    kept = n_pairs(max_operand, ordered)
    kept = kept if limit is None else min(limit, kept)
    return (max_operand + 1) ** 2 * _GRID_BYTES + kept * (_EXAMPLE_BYTES + shots * _SHOT_BYTES)


def available_memory() -> int:
    """Bytes of memory this process may still take (MemAvailable; else physical memory)."""
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_task_size(max_operand: int, ordered: bool = False, shots: int = 0,
                    limit: int | None = None, flag: str = "max_operand") -> None:
    """Refuse, in one sentence and before building anything, a task that would take more
    than half of the available memory."""
    budget = available_memory() // 2
    need = task_bytes(max_operand, ordered, shots, limit)
    if need <= budget:
        return
    lo, hi = 1, max_operand  # the largest operand range that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if task_bytes(mid, ordered, shots, limit) <= budget else (lo, mid - 1)
    name = flag.rsplit(" ", 1)[-1]
    raise UserError(f"{flag} {max_operand} makes {n_pairs(max_operand, ordered):,} "
                    f"{'ordered ' if ordered else ''}pairs, about {need / 2**30:,.1f} GiB of "
                    f"prompts, more than half of the {2 * budget / 2**30:,.1f} GiB of memory "
                    f"available; use {name} {lo} or less.")


def make_task(
    op: str = "+",
    max_operand: int = 260,
    ordered: bool = False,
    templates: Sequence[str] | None = None,
    seed: int = 0,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    shots: int = 0,
    limit: int | None = None,
) -> TaskSplits:
    """Prompts for ``a op b`` with 0 <= a, b <= ``max_operand`` (a <= b unless ``ordered``),
    deterministic in ``seed``. ``limit`` keeps the first ``limit`` shuffled pairs before
    splitting. With ``shots`` > 0 every prompt starts with that many solved training
    examples (never the example itself), one per line."""
    if op not in OPS:
        raise UserError(f"unknown operation {op!r}; choose one of {', '.join(OPS)}.")
    if max_operand < 1:
        raise UserError(f"max_operand must be at least 1, got {max_operand}.")
    if shots < 0:
        raise UserError(f"shots must be >= 0, got {shots}.")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of pairs, got {limit}.")
    if not 0 <= seed < 2**32:
        raise UserError(f"seed must be an integer in 0..{2**32 - 1}, got {seed}.")
    check_task_size(max_operand, ordered, shots, limit)
    fn, default_templates = OPS[op]
    templates = _check_templates(default_templates if templates is None else templates)
    split = _check_split(split)

    n = max_operand + 1
    a, b = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = np.ones_like(a, dtype=bool) if ordered else a <= b
    pairs = np.stack([a[keep], b[keep]], axis=1)
    n_pairs = len(pairs)
    rng = np.random.default_rng(seed)
    pairs = pairs[rng.permutation(n_pairs)]
    which = rng.integers(0, len(templates), size=n_pairs)
    pairs, which = pairs[:limit], which[:limit]  # limit None keeps all
    examples = [
        Example(int(x), int(y), int(fn(int(x), int(y))),
                templates[t].format(a=int(x), b=int(y)) + ANSWER_PREFIX)
        for (x, y), t in zip(pairs, which)
    ]
    n_train = int(round(len(examples) * split[0]))
    end_val = n_train + min(int(round(len(examples) * split[1])), len(examples) - n_train)
    train, val, test = examples[:n_train], examples[n_train:end_val], examples[end_val:]
    if shots:
        if shots > len(train) - 1:
            raise UserError(f"{shots}-shot prompts need more than {shots} training examples, "
                            f"there are {len(train)}; use fewer shots or more pairs.")
        train, val, test = _add_shots((train, val, test), shots, rng)
    settings = {
        "op": op, "max_operand": max_operand, "ordered": ordered, "templates": list(templates),
        "answer_prefix": ANSWER_PREFIX, "seed": seed, "split": list(split), "shots": shots,
        "limit": limit, "n_pairs": n_pairs,
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "max_answer": largest_answer(op, max_operand),
    }
    return TaskSplits(train, val, test, settings)


def largest_answer(op: str, max_operand: int) -> int:
    """The largest answer of a task over operands 0..``max_operand`` (the one formula)."""
    if op not in OPS:
        raise UserError(f"unknown operation {op!r}; choose one of {', '.join(OPS)}.")
    return int(OPS[op][0](max_operand, max_operand))


def _add_shots(splits, shots: int, rng: np.random.Generator):
    """Prefix every prompt with ``shots`` solved examples drawn from the (zero-shot) train."""
    pool = splits[0]

    def with_shots(ex: Example, i: int, j: int) -> Example:
        """Example ``j`` of split ``i`` after its shots."""
        picks = rng.choice(len(pool) - 1 if i == 0 else len(pool), size=shots, replace=False)
        if i == 0:
            picks = picks + (picks >= j)  # skip the example itself
        context = "".join(pool[k].prompt + str(pool[k].answer) + SHOT_SEPARATOR for k in picks)
        return Example(ex.a, ex.b, ex.answer, context + ex.prompt)

    return [[with_shots(ex, i, j) for j, ex in enumerate(examples)]
            for i, examples in enumerate(splits)]


def tokenize_prompts(tokenizer, prompts: Sequence[str], device=None,
                     padding_side: str = "left", offsets: bool = False) -> dict:
    """Pad a batch of prompts to ``input_ids`` / ``attention_mask`` / ``position_ids`` (and
    ``offset_mapping`` with ``offsets``: each token's characters, a fast tokenizer's).
    ``position_ids`` count real tokens only, so a left-padded prompt sees the same positions
    as when it runs alone (GPT-2, for one, does not derive them from the mask). Sets a pad
    token when the tokenizer has none (its eos, else unk); ``padding_side`` is restored."""
    if padding_side not in ("left", "right"):
        raise UserError(f"padding_side must be left or right, got {padding_side!r}.")
    if offsets and not getattr(tokenizer, "is_fast", False):
        raise UserError("finding the operands' tokens needs a fast tokenizer (offsets); load "
                        "the model's tokenizer with use_fast=True.")
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError("the tokenizer has no pad, eos or unk token to pad with; set "
                            "tokenizer.pad_token first.")
        tokenizer.pad_token = fallback
    before = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True,
                          return_offsets_mapping=offsets)
    finally:
        tokenizer.padding_side = before
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": positions}
    if offsets:
        out["offset_mapping"] = batch["offset_mapping"]
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
