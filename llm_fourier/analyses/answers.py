"""Whole answers of any length: batched greedy decoding and teacher-forced scoring.

Answer position s is the position whose next-token logits predict answer token s: the last
prompt token for s = 0, then answer token s - 1. ``run_steps`` runs one left-padded prompt
forward (``tokenize_prompts``) and then one token per step on the model's KV cache, so each
step's last position is the next answer position. That makes ``hooks`` exact at the answer
positions: ``capture(positions="last")`` reads N x L x D rows there (never N x T x L x D),
and ``edit(positions="last")`` changes exactly the answer positions (``positions="all"``
changes every prompt and answer position).

* ``greedy_answers``: feed each row's argmax (over the vocabulary, or over the digit /
  number tokens for ``prediction="numbers"``) until every row's number has ended (a stop
  token, a non-digit token, a token starting a new word) or has as many tokens as the
  longest answer plus one; the prediction is the integer the generated tokens start with.
* ``teacher_forced``: feed the correct answer tokens; per example the log-probability of
  the whole answer (sum over its tokens, softmax over the vocabulary) and whether every
  answer token is the argmax.
* ``evaluate_answers``: both, plus ``scores.Scores``' value- and digit-space summary.

Batches are sharded across processes when a process group is active
(``distributed.map_batches``) and gathered in order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from contextlib import ExitStack

import numpy as np
import torch
from torch import Tensor

from llm_fourier.errors import UserError
from llm_fourier.model.distributed import map_batches
from llm_fourier.model.hooks import capture, edit
from llm_fourier.model.number_format import NumberFormat, NumberParser
from llm_fourier.model.scores import Scores
from llm_fourier.model.tasks import Example, tokenize_prompts

PREDICTIONS = ("vocab", "numbers")
POSITIONS = ("last", "answer", "all")  # "last" = "answer": every answer position

Edits = dict[tuple[str, int], Callable[[Tensor], Tensor]]


def _accepted(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - exotic wrapped forwards
        return set()


def run_steps(
    lm,
    prompts: Sequence[str],
    n_positions: int,
    visit: Callable[[int, Tensor, dict[str, Tensor]], Tensor | None],
    *,
    edits: Edits | None = None,
    positions: str = "answer",
    roles: Sequence[str] = (),
    layers: Sequence[int] | None = None,
) -> None:
    """Run answer positions 0..``n_positions``-1 of ``prompts`` (one batch).

    ``visit(s, logits, rows)`` gets position s's next-token logits (N x V, model dtype and
    device) and the captured ``rows[role]`` (N x L x D, CPU float32) there, and returns the
    tokens (N,) to feed next, or None to stop. ``edits`` apply at the answer positions
    (``positions`` "answer" or its alias "last") or at every position ("all").
    """
    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}.")
    model = lm.model
    params = _accepted(model)
    cache_name = "cache" if "cache" in params else "past_key_values"
    enc = tokenize_prompts(lm.tokenizer, prompts, device=lm.input_device)
    mask, pos = enc["attention_mask"], enc["position_ids"][:, -1:]
    first = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    with ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if edits:
            stack.enter_context(edit(lm, edits, "all" if positions == "all" else "last"))
        cap = stack.enter_context(capture(lm, roles, layers, "last")) if roles else None
        out = model(**enc, use_cache=True, **first)
        for s in range(n_positions):
            rows = {r: cap.stack(r) for r in roles} if cap is not None else {}
            if cap is not None:
                cap.clear()
            nxt = visit(s, out.logits[:, -1], rows)
            if nxt is None or s == n_positions - 1:
                return
            cache = out[cache_name]  # transformers 5 names it "cache", 4.x "past_key_values"
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos + 1
            out = model(input_ids=nxt.to(mask.device).view(-1, 1), attention_mask=mask,
                        position_ids=pos, use_cache=True, **{cache_name: cache})


def _answer_ids(fmt: NumberFormat, examples: Sequence[Example]) -> list[tuple[int, ...]]:
    return fmt.encode_many(e.answer for e in examples)


def _constrained_ids(fmt: NumberFormat) -> np.ndarray:
    """Tokens an answer position may take with ``prediction="numbers"``."""
    if fmt.family == "single":
        return fmt.numbers.token_ids
    if fmt.family == "digits":
        return fmt.digit_ids
    raise UserError(f"prediction 'numbers' needs single-token answers or one token per "
                    f"digit; this tokenizer writes them as {fmt.family}; use prediction "
                    "'vocab'.")


def greedy_batch(lm, fmt: NumberFormat, examples: Sequence[Example], max_tokens: int,
                 *, edits: Edits | None = None, positions: str = "answer",
                 prediction: str = "vocab") -> tuple[np.ndarray, list[list[int]]]:
    """(predicted integers, generated token ids per row) of one batch."""
    if prediction not in PREDICTIONS:
        raise UserError(f"prediction must be one of {', '.join(PREDICTIONS)}, got "
                        f"{prediction!r}.")
    parsers = [NumberParser(fmt) for _ in examples]
    generated: list[list[int]] = [[] for _ in examples]
    allowed = None
    if prediction == "numbers":
        allowed = torch.as_tensor(_constrained_ids(fmt), dtype=torch.long)
        lengths = [len(fmt.digit_part(s)) for s in _answer_ids(fmt, examples)]

    def visit(s: int, logits: Tensor, rows) -> Tensor | None:
        if allowed is None:
            nxt = logits.argmax(-1).cpu()
        else:
            nxt = allowed[logits[:, allowed.to(logits.device)].argmax(-1).cpu()]
        for i, t in enumerate(nxt.tolist()):
            if parsers[i].done:
                continue
            generated[i].append(t)
            if parsers[i].feed(t) or (allowed is not None and s + 1 >= lengths[i]):
                parsers[i].done = True  # constrained: exactly the answer's digit count
        return None if all(p.done for p in parsers) else nxt

    run_steps(lm, [e.prompt for e in examples], max_tokens, visit, edits=edits,
              positions=positions)
    return np.array([p.value for p in parsers], dtype=np.int64), generated


def teacher_forced_batch(lm, fmt: NumberFormat, examples: Sequence[Example],
                         *, edits: Edits | None = None, positions: str = "answer"
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(log p(answer) summed over its tokens, all answer tokens are the argmax) per row."""
    targets = _answer_ids(fmt, examples)
    m = max(len(t) for t in targets)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    table = torch.tensor([list(t) + [pad] * (m - len(t)) for t in targets])  # N x m
    valid = torch.tensor([[j < len(t) for j in range(m)] for t in targets])
    logp = torch.zeros(len(examples), dtype=torch.float64)
    top = torch.ones(len(examples), dtype=torch.bool)

    def visit(s: int, logits: Tensor, rows) -> Tensor:
        lp = torch.log_softmax(logits.float(), dim=-1).cpu()
        want = table[:, s]
        ok = valid[:, s]
        logp.add_(torch.where(ok, lp.gather(1, want[:, None])[:, 0].double(), 0.0))
        top.logical_and_(~ok | (lp.argmax(-1) == want))
        return want

    run_steps(lm, [e.prompt for e in examples], m, visit, edits=edits, positions=positions)
    return logp.numpy(), top.numpy()


def max_answer_tokens(fmt: NumberFormat, examples: Sequence[Example]) -> int:
    """Tokens greedy decoding may write per row: the longest answer's, plus one to see the
    number end (the same for every batch, so results do not depend on the batch size)."""
    return max(len(t) for t in _answer_ids(fmt, examples)) + 1


def greedy_answers(lm, fmt: NumberFormat, examples: Sequence[Example],
                   edits: Edits | None = None, *, positions: str = "answer",
                   prediction: str = "vocab", batch_size: int = 16, progress: bool = True,
                   desc: str = "generate") -> np.ndarray:
    """Greedy whole-answer predictions (integers, -1 = no number) of ``examples``."""
    if not examples:
        raise UserError("no examples to evaluate; use a larger operand range or another split.")
    cap = max_answer_tokens(fmt, examples)
    parts = map_batches(
        lambda a, b: greedy_batch(lm, fmt, examples[a:b], cap, edits=edits,
                                  positions=positions, prediction=prediction)[0],
        len(examples), batch_size, desc=desc, progress=progress)
    return np.concatenate(parts)


def evaluate_answers(
    lm,
    examples: Sequence[Example],
    fmt: NumberFormat,
    edits: Edits | None = None,
    *,
    positions: str = "answer",
    prediction: str = "vocab",
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict:
    """Whole-answer scores of ``examples`` with ``edits`` applied (see the module doc).

    ``loss`` is the mean over examples of -log p(answer) (teacher forced, summed over the
    answer's tokens); ``teacher_forced_accuracy`` the share whose every answer token is the
    argmax given the correct prefix; the rest is ``Scores.summary`` of the greedy answers;
    ``predictions`` lists them.
    """
    if not examples:
        raise UserError("no examples to evaluate; use a larger operand range or another split.")
    cap = max_answer_tokens(fmt, examples)

    def run_batch(a: int, b: int):
        batch = examples[a:b]
        preds, _ = greedy_batch(lm, fmt, batch, cap, edits=edits, positions=positions,
                                prediction=prediction)
        logp, top = teacher_forced_batch(lm, fmt, batch, edits=edits, positions=positions)
        return torch.from_numpy(preds), torch.from_numpy(logp), torch.from_numpy(top)

    parts = map_batches(run_batch, len(examples), batch_size, desc=desc, progress=progress)
    preds, logp, top = (torch.cat([p[i] for p in parts]).numpy() for i in range(3))
    answers = np.array([e.answer for e in examples], dtype=np.int64)
    summary = Scores(answers, preds, -logp).summary()
    return {**summary, "teacher_forced_accuracy": float(top.mean()),
            "method": "greedy generation", "predictions": preds.tolist()}
