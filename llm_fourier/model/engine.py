"""One engine for forward work: the only place that batches prompts and runs the model.

Per batch of a ``PromptSet`` (prompts tokenized once), ``Engine.run`` computes the unedited
prefix (every prompt token but the last) once on a ``DynamicCache``. ``Condition``s that
edit only the answer positions then run together in one forward of [last prompt token,
answer tokens] on it (``model.stacking``: side by side along the sequence, or stacked along
the batch); patch conditions run from their first patched token; the others alone, from
position 0. Greedy answers are read from the teacher-forced argmax where it writes the
answer and ends it; the other rows are decoded step by step. ``reduce(batch, condition,
output)`` makes a resume unit, kept in ``store`` (``RunDir.store``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from transformers import DynamicCache

from llm_fourier.errors import UserError
from llm_fourier.model.distributed import broadcast_object, map_ranges, process_info, rounds
from llm_fourier.model.hooks import POSITIONS, capture, edit
from llm_fourier.model.number_format import NumberFormat, NumberParser
from llm_fourier.model.patches import Patch, patch_start, with_patches
from llm_fourier.model.prompt_set import Batch, PromptSet
from llm_fourier.model.stacking import (
    Edits,
    attention_window,
    block_mask,
    fork,
    on_rows,
    per_block,
    shares_tensors,
    stacked,
    takes_block_mask,
)
from llm_fourier.output.progress import tqdm

__all__ = ["Batch", "Condition", "Engine", "Greedy", "Output", "Patch", "PromptSet", "Store"]


class Store(Protocol):
    """Where finished (batch, condition) units are kept: ``RunDir.store`` or a dict."""

    def get(self, key: str) -> Any: ...
    def __setitem__(self, key: str, value: Any) -> None: ...


@dataclass
class Condition:
    """One way to run the model: ``edits`` and/or ``hooks`` (a context-manager factory;
    ``row_hooks`` one given the slice of rows it acts on, so that it stacks with others) at
    the answer positions or everywhere; ``patches`` put per-example states in at per-example
    prompt tokens."""

    name: str = "none"
    edits: Edits = field(default_factory=dict)
    positions: str = "last"
    hooks: Callable[[], Any] | None = None
    row_hooks: Callable[[slice], Any] | None = None
    patches: dict[tuple[str, int], Patch] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise UserError(f"positions must be one of {', '.join(POSITIONS)}, got "
                            f"{self.positions!r}.")


@dataclass
class Greedy:
    """Greedy whole answers: argmax over the vocabulary, or over ``allowed`` tokens for
    exactly the answer's digit count; at most ``max_tokens`` per row."""

    fmt: NumberFormat
    max_tokens: int
    allowed: Tensor | None = None


@dataclass
class Output:
    """One (batch, condition): ``logits`` (N x S x V, float32) at the S read positions
    (answer position s predicts answer token s; S = 1 without answers), ``rows[role]``
    (N x S x L x D, float32, on the CPU or ``rows_device``) and greedy ``predictions`` (N)."""

    logits: Tensor | None
    rows: dict[str, Tensor]
    predictions: np.ndarray | None = None


class _Stop(Exception):
    """Raised from a hook after the deepest layer read."""


def _stopper(lm, layer: int):
    def hook(*_):
        raise _Stop

    return lm.blocks[layer].register_forward_hook(hook)


class Engine:
    """Runs ``conditions`` over a ``PromptSet`` (see the module doc)."""

    def __init__(self, lm, prompts: PromptSet, stack_rows: int | None = None,
                 stack_queries: bool | None = None) -> None:
        self.lm, self.prompts = lm, prompts
        # Conditions on one prefix run together, up to ``stack_rows`` rows per forward (0:
        # one at a time): side by side (``stack_queries``) or stacked along the batch
        self.stack_rows = 4096 if stack_rows is None else stack_rows
        self.pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        params = set(inspect.signature(lm.model.forward).parameters)
        # transformers 5.25 names the cache "cache", earlier versions "past_key_values"
        self.cache = "cache" if "cache" in params else "past_key_values"
        self.cached = self.cache in params  # hand-built test models may take no cache
        self.keep = "logits_to_keep" in params
        self.dtype = getattr(lm.model, "dtype", torch.float32)  # of the 4D block mask
        self.stack_queries = takes_block_mask(lm.model) if stack_queries is None \
            else stack_queries
        self.window = attention_window(lm.model)

    # ------------------------------------------------------------------ the loop
    def run(self, conditions: Sequence[Condition],
            reduce: Callable[[Batch, Condition, Output], Any], *,
            roles: Sequence[str] = (), layers: Sequence[int] | None = None,
            answers: bool = False, logits: bool = True, greedy: Greedy | None = None,
            stop_after: int | None = None, store: Store | None = None,
            per_batch: bool = False, progress: bool = True, desc: str = "forward",
            rows_device: str | torch.device = "cpu") -> dict[str, list]:
        """Units ``reduce(batch, condition, output)`` per condition, in batch order.

        ``answers``: feed the answer tokens (teacher forcing) and read every answer
        position; else only the last prompt position. ``greedy`` decodes whole answers.
        ``per_batch``: ``store`` keeps one unit per batch holding every condition's (for
        many small units, e.g. one per attention head), else one per (batch, condition).
        ``rows_device``: where captured rows go (a reduction on the accelerator is fast).
        """
        names = [c.name for c in conditions]
        if len(set(names)) != len(names):
            raise UserError(f"condition names must differ, got {names}.")
        spec = dict(roles=tuple(roles), layers=layers, answers=answers or greedy is not None,
                    logits=logits and stop_after is None, greedy=greedy, stop_after=stop_after,
                    rows_device=rows_device)
        keys = [(b.number, c.name) for b in self.prompts.batches for c in conditions]
        done = {}
        if store is not None:
            self._check_layout(store, f"layout/{names[0]}")
            # read by the main process, sent to the others
            done = broadcast_object(self._saved(store, keys, names[0], per_batch)
                                    if process_info().is_main else None)
        if done and process_info().is_main:
            print(f"resuming: {len(done)} of {len(keys)} (batch, condition) units done")
        todo = [b.number for b in self.prompts.batches
                if any((b.number, c.name) not in done for c in conditions)]
        bar = tqdm(desc=desc, unit="batch", total=len(self.prompts.batches),
                   initial=len(self.prompts.batches) - len(todo),
                   disable=not progress or not process_info().is_main)

        def one(b: int, _end: int) -> dict:
            return self._batch(self.prompts.batches[b],
                               [c for c in conditions if (b, c.name) not in done], reduce, spec)

        for chunk in rounds([(b, b + 1) for b in todo]):
            for (b, _), units in zip(chunk, map_ranges(one, chunk, progress=False)):
                done |= {(b, name): unit for name, unit in units.items()}
                if store is not None and per_batch:
                    store[f"{names[0]}+/{b}"] = units
                elif store is not None:
                    for name, unit in units.items():
                        store[f"{name}/{b}"] = unit
            bar.update(len(chunk))
        bar.close()
        return {c.name: [done[(b.number, c.name)] for b in self.prompts.batches]
                for c in conditions}

    @staticmethod
    def _saved(store: Store, keys: Sequence[tuple[int, str]], first: str,
               per_batch: bool) -> dict:
        """The units ``store`` keeps of ``keys`` (per batch: under the first condition's
        name and "+")."""
        if not per_batch:
            return {k: v for k in keys if (v := store.get(f"{k[1]}/{k[0]}")) is not None}
        batches = {b: store.get(f"{first}+/{b}") for b in dict.fromkeys(b for b, _ in keys)}
        return {(b, name): unit for b, units in batches.items() if units is not None
                for name, unit in units.items()}

    def _check_layout(self, store: Store, key: str) -> None:
        """Units are per batch: a run resumed under another batching is one sentence."""
        layout = self.prompts.layout()
        saved = broadcast_object(store.get(key) if process_info().is_main else None)
        if saved is None:
            store[key] = layout
        elif saved != layout:
            size = saved.get("batch_size") if isinstance(saved, dict) else None
            raise UserError(f"the saved units of this run were computed in batches of {size} "
                            "prompts; run it again with --batch-size "
                            f"{size}, or start over with --restart.")

    def _batch(self, batch: Batch, conditions: Sequence[Condition], reduce, spec) -> dict:
        """Every condition of one batch (see the module doc)."""
        with torch.inference_mode():
            on_prefix = [c for c in conditions if c.positions == "last" and not c.patches]
            prefix = self._prefix(batch, spec["stop_after"]) if batch.length > 1 and on_prefix \
                else None
            together = [c for c in on_prefix if prefix is not None and c.hooks is None]
            per, outs = max(1, self.stack_rows // len(batch.rows)), {}
            for i in range(0, len(together), per):
                outs |= self._group(batch, together[i:i + per], prefix, spec)
            at: dict[int, list] = {}  # patches: stacked on the prefix up to their first token
            for c in conditions:
                if c not in together and (start := patch_start(c, batch, self.cached)):
                    at.setdefault(start, []).append(c)
                elif c not in together:
                    outs |= self._group(batch, [c], prefix if c in on_prefix else None, spec)
            for start, conds in at.items():
                outs |= self._group(batch, conds, self._prefix(batch, spec["stop_after"], start),
                                    spec, start)
            return {c.name: reduce(batch, c, outs[c.name]) for c in conditions}

    def _prefix(self, batch: Batch, stop_after: int | None, upto: int = -1):
        """The KV cache of every prompt token before the last (before column ``upto``),
        unedited (up to the layer ``stop_after`` when set)."""
        cache = DynamicCache(config=self.lm.model.config)
        enc = {k: v[:, :upto] for k, v in batch.enc.items()}
        last = self.lm.n_layers - 1 if stop_after is None else stop_after  # no logits here
        with ExitStack() as stack, suppress(_Stop):
            stack.callback(_stopper(self.lm, last).remove)
            self.lm.model(**enc, use_cache=True, **{self.cache: cache})
        return cache

    # ------------------------------------------------------------------ conditions
    def _forward(self, ids: Tensor, mask: Tensor, pos: Tensor, cache, keep: int,
                 edits: Edits, hooks, spec: dict, capture_last: int = 0,
                 blocks: int = 1):
        """One forward of ``ids`` after ``cache`` with ``edits`` at every position given
        and ``hooks`` (context-manager factories): (logits of the last ``keep`` positions,
        rows of the last ``capture_last`` positions, cache), logits and rows per block:
        blocks x N x S x ... ``blocks`` > 1: ``ids`` are that many conditions' runs side by
        side (``_queries``); edits see them stacked along the batch."""
        lm = self.lm
        if blocks > 1:
            edits = {key: on_rows(fn, blocks) for key, fn in edits.items()}
            keep, capture_last = keep * blocks, capture_last * blocks
        with ExitStack() as stack:
            if edits:
                stack.enter_context(edit(lm, edits, "all"))
            for h in hooks:
                stack.enter_context(h())
            where = "last" if capture_last == 1 else "all"  # left padded: last = last column
            cap = stack.enter_context(capture(lm, spec["roles"], spec["layers"], where,
                                              spec["rows_device"])) \
                if spec["roles"] and capture_last else None
            if spec["stop_after"] is not None:
                stack.callback(_stopper(lm, spec["stop_after"]).remove)
            out = None
            with suppress(_Stop):
                out = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                               use_cache=True, **{self.cache: cache},
                               **({"logits_to_keep": max(keep, 1)} if self.keep else {}))
        rows = {r: per_block(cap.stack(r)[:, -capture_last:] if where == "all"
                              else cap.stack(r)[:, None], blocks)
                for r in spec["roles"]} if cap else {}
        if out is None:
            return None, rows, None
        logits = per_block(out.logits[:, -keep:], blocks).float() if keep else None
        return logits, rows, out[self.cache]

    def _group(self, batch: Batch, conds: Sequence[Condition], prefix, spec,
               start: int | None = None) -> dict:
        """Conditions in one forward (side by side, or stacked along the batch) from the
        first edited position (``start``; default: the last prompt token with ``prefix``,
        else position 0)."""
        enc, n, k = batch.enc, len(batch.rows), len(conds)
        if start is None or prefix is None:
            start = batch.length - 1 if prefix is not None else 0
        ids, mask, pos = enc["input_ids"], enc["attention_mask"], enc["position_ids"]
        m = max(len(a) for a in batch.answers) if spec["answers"] else 1
        if spec["answers"]:  # [last prompt token, answer tokens]: position s predicts token s
            fed = m if spec["greedy"] is not None else m - 1  # the last one only to see the end
            extra = torch.tensor([(list(a) + [self.pad] * m)[:fed] for a in batch.answers],
                                 dtype=ids.dtype, device=ids.device).view(n, fed)
            ids = torch.cat([ids, extra], 1)
            mask = torch.cat([mask, torch.ones_like(extra)], 1)
            pos = torch.cat([pos, pos[:, -1:] + torch.arange(1, fed + 1, device=pos.device)], 1)
        reads = ids.shape[1] - batch.length + 1
        patched = [with_patches(c, batch, range(n), start) for c in conds]
        edits, hooks = stacked(patched, n)
        keep = reads if spec["logits"] else 0
        if self._queries(conds, prefix, start, batch, reads):
            logits, rows, _ = self._forward(
                ids[:, start:].repeat(1, k), block_mask(mask[:, :start], k, reads, self.dtype),
                pos[:, start:].repeat(1, k), fork(prefix), keep, edits, hooks, spec,
                capture_last=reads, blocks=k)
        else:  # k x N rows, condition-major
            cache = fork(prefix, torch.arange(n, device=ids.device).repeat(k)
                          if k > 1 else None) if start else None
            logits, rows, _ = self._forward(
                ids[:, start:].repeat(k, 1), mask.repeat(k, 1), pos[:, start:].repeat(k, 1),
                cache, keep, edits, hooks, spec, capture_last=reads)
            logits = None if logits is None else logits[0].unflatten(0, (k, n))
            rows = {r: x[0].unflatten(0, (k, n)) for r, x in rows.items()}
        greedy = [None] * k if spec["greedy"] is None else \
            self._greedy(batch, conds, prefix, start, list(logits), spec["greedy"])
        return {c.name: Output(None if logits is None else logits[i, :, :m],
                               {r: x[i, :, :m] for r, x in rows.items()}, greedy[i])
                for i, c in enumerate(conds)}

    def _queries(self, conds: Sequence[Condition], prefix, start: int, batch: Batch,
                 reads: int) -> bool:
        """Whether ``conds`` run side by side on the prefix's own cache: several, from the
        last prompt token, edits only, on a model that takes the block mask (see stacking)."""
        return (self.stack_queries and len(conds) > 1 and prefix is not None
                and start == batch.length - 1
                and batch.length + reads - 1 <= self.window
                and all(c.hooks is None and c.row_hooks is None for c in conds)
                and shares_tensors(prefix))

    # ------------------------------------------------------------------ greedy answers
    @staticmethod
    def _choose(logits: Tensor, g: Greedy) -> Tensor:
        if g.allowed is None:
            return logits.argmax(-1).cpu()
        return g.allowed[logits[..., g.allowed.to(logits.device)].argmax(-1).cpu()]

    @staticmethod
    def _replay(tokens: list[int], answer: tuple[int, ...], g: Greedy) -> int | None:
        """The greedy answer of one row read from its teacher-forced argmax ``tokens``, or
        None when it leaves the answer (or does not end within the answer's positions)."""
        parser, limit = NumberParser(g.fmt), len(g.fmt.digit_part(answer))
        for s, t in enumerate(tokens[:g.max_tokens]):
            if s and (s - 1 >= len(answer) or tokens[s - 1] != answer[s - 1]):
                return None  # the context is no longer the teacher-forced one
            if parser.feed(t) or (g.allowed is not None and s + 1 >= limit):
                return parser.value
        return None

    def _greedy(self, batch: Batch, conds: Sequence[Condition], prefix, start: int,
                logits: Sequence[Tensor], g: Greedy) -> list[np.ndarray]:
        """Greedy predictions per condition: read from the teacher-forced
        ``logits`` where they write the answer and end it, the other rows of every
        condition decoded together, step by step."""
        results, todo = [], []
        for c, lg in zip(conds, logits):
            toks = self._choose(lg, g).tolist()  # N x (m + 1)
            got = [self._replay(toks[i][:len(a) + 1], a, g) for i, a in enumerate(batch.answers)]
            results.append(got)
            need = [i for i, x in enumerate(got) if x is None]
            # edits at every position may depend on the row (an operand's token, a patch):
            # such a condition decodes its whole batch, as its edits were written for
            todo.append(list(range(len(got))) if need and c.positions == "all" else need)
        if any(todo):
            decoded = iter(self._decode(batch, conds, todo, prefix, start, g))
            for got, rows in zip(results, todo):
                for i, one in zip(rows, decoded):  # zip takes from rows first
                    got[i] = one if got[i] is None else got[i]
        return [np.array(got, dtype=np.int64) for got in results]

    def _decode(self, batch: Batch, conds: Sequence[Condition], rows: Sequence[list[int]],
                prefix, start: int, g: Greedy) -> list[int]:
        """Step-by-step greedy decoding of ``rows[i]`` of ``batch`` under ``conds[i]``,
        stacked, on the prefix cache."""
        todo = [(with_patches(c, batch, r, start), r) for c, r in zip(conds, rows) if r]
        flat = [j for _, r in todo for j in r]
        idx = torch.tensor(flat, device=batch.enc["input_ids"].device)
        enc = {k: v[idx.to(v.device)] for k, v in batch.enc.items()}
        cache = fork(prefix, idx) if start else None
        ids, mask, pos = enc["input_ids"][:, start:], enc["attention_mask"], \
            enc["position_ids"][:, start:]
        parsers = [NumberParser(g.fmt) for _ in flat]
        limits = [len(g.fmt.digit_part(batch.answers[i])) for i in flat]
        edits, hooks = stacked([c for c, _ in todo], [len(r) for _, r in todo])
        spec = dict(roles=(), layers=None, stop_after=None)
        for s in range(g.max_tokens):
            logits, _, cache = self._forward(ids, mask, pos, cache, 1, edits, hooks, spec)
            nxt = self._choose(logits[0, :, -1], g)
            for j, t in enumerate(nxt.tolist()):  # feed() on an ended parser changes nothing
                if parsers[j].feed(t) or (g.allowed is not None and s + 1 >= limits[j]):
                    parsers[j].done = True
            if all(p.done for p in parsers):
                break
            ids = nxt.to(mask.device).view(-1, 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = pos[:, -1:] + 1
        return [p.value for p in parsers]
