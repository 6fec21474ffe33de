"""Arithmetic prompt datasets (Zhou et al. 2024): templates, pairs, splits, k-shot prompts.

Each pair (a, b) gets one template, drawn at random, followed by ``ANSWER_PREFIX``:
"Put together 15 and 93. Answer: " -> 108. Unordered pairs a <= b (34,191 for operands
0..260) or ordered pairs, shuffled by seed and split 80/10/10. k-shot prompts prepend k
solved training examples, one per line, for models that were not fine-tuned.
"""

from __future__ import annotations

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
    """Prompts for ``a op b`` with 0 <= a, b <= ``max_operand`` (a <= b unless ``ordered``).

    Deterministic in ``seed``. ``limit`` keeps the first ``limit`` shuffled pairs before
    splitting. With ``shots`` > 0 every prompt starts with that many solved training
    examples (never the example itself), one per line.
    """
    if op not in OPS:
        raise UserError(f"unknown operation {op!r}; choose one of {', '.join(OPS)}.")
    if max_operand < 1:
        raise UserError(f"max_operand must be at least 1, got {max_operand}.")
    if shots < 0:
        raise UserError(f"shots must be >= 0, got {shots}.")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of pairs, got {limit}.")
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
    if limit is not None:
        pairs, which = pairs[:limit], which[:limit]
    examples = [
        Example(int(x), int(y), int(fn(int(x), int(y))),
                templates[t].format(a=int(x), b=int(y)) + ANSWER_PREFIX)
        for (x, y), t in zip(pairs, which)
    ]
    n_train = int(round(len(examples) * split[0]))
    n_val = int(round(len(examples) * split[1]))
    n_val = min(n_val, len(examples) - n_train)
    train = examples[:n_train]
    val = examples[n_train:n_train + n_val]
    test = examples[n_train + n_val:]
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
    out = []
    for i, examples in enumerate(splits):
        with_shots = []
        for j, ex in enumerate(examples):
            picks = rng.choice(len(pool) - 1 if i == 0 else len(pool), size=shots, replace=False)
            if i == 0:
                picks = picks + (picks >= j)  # skip the example itself
            context = "".join(pool[k].prompt + str(pool[k].answer) + SHOT_SEPARATOR
                              for k in picks)
            with_shots.append(Example(ex.a, ex.b, ex.answer, context + ex.prompt))
        out.append(with_shots)
    return out


def tokenize_prompts(tokenizer, prompts: Sequence[str], device=None,
                     padding_side: str = "left") -> dict:
    """Pad a batch of prompts to ``input_ids`` / ``attention_mask`` / ``position_ids``.

    ``position_ids`` count real tokens only, so a left-padded prompt sees the same
    positions as when it runs alone (models such as GPT-2 do not derive them from the
    mask). Sets a pad token when the tokenizer has none (its eos, else unk); the caller's
    ``padding_side`` is restored afterwards.
    """
    if padding_side not in ("left", "right"):
        raise UserError(f"padding_side must be left or right, got {padding_side!r}.")
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError("the tokenizer has no pad, eos or unk token to pad with; set "
                            "tokenizer.pad_token first.")
        tokenizer.pad_token = fallback
    before = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = before
    mask = batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": positions}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out
