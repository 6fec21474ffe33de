"""Scores of answers under conditions: next tokens, greedy whole answers, teacher forcing.

Answer position s is the position whose next-token logits predict answer token s: the last
prompt token for s = 0, then answer token s - 1. ``model.engine`` runs one teacher-forced
forward of [last prompt token, answer tokens] per batch and condition on the unedited
prompt prefix's KV cache; edits at the answer positions (``positions`` "last", alias
"answer") change exactly those positions, ``"all"`` every prompt and answer position.

* single-token answers (``NumberTokens``): the next-token loss over the vocabulary and the
  prediction (the model's own next token, or the argmax over the number tokens).
* whole answers (``NumberFormat``): greedy answers, the argmax over the vocabulary (or over
  the digit / number tokens for ``prediction="numbers"``, for exactly the answer's digit
  count) until the number has ended or has as many tokens as the longest answer plus one;
  the prediction is the integer the tokens start with (rows whose teacher-forced argmax
  writes and ends the answer need no decoding). Teacher forcing gives log p(answer) (summed
  over its tokens) and whether every answer token is the argmax.

``score_conditions`` scores several conditions in one pass of the engine (resume units in
``store``); ``evaluate_answers`` and ``greedy_answers`` are its one-condition forms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from llm_fourier.errors import UserError
from llm_fourier.model.engine import Condition, Edits, Engine, Greedy, PromptSet, Store
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.numbers import NumberTokens, require_numbers, value_of_token
from llm_fourier.model.scores import Scores
from llm_fourier.model.tasks import Example

PREDICTIONS = ("vocab", "numbers")
POSITIONS = ("last", "answer", "all")  # "last" = "answer": every answer position


def _constrained_ids(fmt: NumberFormat) -> np.ndarray:
    """Tokens an answer position may take with ``prediction="numbers"``."""
    if fmt.family == "single":
        return fmt.numbers.token_ids
    if fmt.family == "digits":
        return fmt.digit_ids
    raise UserError(f"prediction 'numbers' needs single-token answers or one token per "
                    f"digit; this tokenizer writes them as {fmt.family}; use prediction "
                    "'vocab'.")


def max_answer_tokens(fmt: NumberFormat, examples: Sequence[Example]) -> int:
    """Tokens greedy decoding may write per row: the longest answer's, plus one to see the
    number end (the same for every batch, so results do not depend on the batch size)."""
    return max(len(t) for t in fmt.encode_many(e.answer for e in examples)) + 1


def condition(name: str = "none", edits: Edits | None = None, positions: str = "last"
              ) -> Condition:
    """An engine ``Condition`` from edits and ``positions`` ("answer" = "last")."""
    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}.")
    return Condition(name, dict(edits or {}), "all" if positions == "all" else "last")


def score_batch(logits: Tensor, answers: Tensor, numbers: NumberTokens,
                prediction: str = "vocab") -> tuple[Tensor, Tensor]:
    """(predicted numbers, per-example loss) from last-position logits (N x vocab); the
    loss is the cross-entropy of the answer token over the whole vocabulary."""
    if prediction not in PREDICTIONS:
        raise UserError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}.")
    logits = logits.to(torch.float32)
    ids = torch.as_tensor(numbers.token_ids, dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, ids[answers.to(logits.device)], reduction="none")
    if prediction == "numbers":
        pred = logits[:, ids].argmax(-1)
    else:
        pred = value_of_token(numbers, logits.shape[-1]).to(logits.device)[logits.argmax(-1)]
    return pred.cpu(), loss.cpu()


def _teacher_forced(logits: Tensor, answers: Sequence[tuple[int, ...]]) -> tuple[Tensor, Tensor]:
    """(log p(answer), every answer token the argmax) from N x m x V answer logits."""
    m = logits.shape[1]
    table = torch.tensor([list(a) + [0] * (m - len(a)) for a in answers])
    valid = torch.tensor([[j < len(a) for j in range(m)] for a in answers])
    lp = torch.log_softmax(logits.float(), -1).cpu()
    got = lp.gather(2, table[..., None])[..., 0].double()
    return torch.where(valid, got, 0.0).sum(1), (~valid | (lp.argmax(-1) == table)).all(1)


def score_conditions(lm, examples: Sequence[Example], target: NumberTokens | NumberFormat,
                     conditions: Sequence[Condition], *, prediction: str = "vocab",
                     batch_size: int = 16, store: Store | None = None, progress: bool = True,
                     desc: str = "evaluate", ids: Sequence[Sequence[int]] | None = None
                     ) -> dict[str, dict]:
    """Per condition: ``Scores.summary`` of the predictions and ``predictions``; whole
    answers also ``teacher_forced_accuracy`` and ``method`` (see the module doc). ``ids``:
    the prompts' tokens when the caller has them."""
    if not examples:
        raise UserError("no examples to evaluate; use a larger operand range or another split.")
    if prediction not in PREDICTIONS:
        raise UserError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}.")
    answers = np.array([e.answer for e in examples], dtype=np.int64)
    single = isinstance(target, NumberTokens)
    if single:
        require_numbers(target, int(answers.max()), getattr(lm, "name", ""))
        prompts = PromptSet.build(lm, examples, batch_size, ids=ids)
        greedy = None

        def reduce(batch, cond, out) -> dict:
            pred, loss = score_batch(out.logits[:, 0], torch.from_numpy(answers[batch.rows]),
                                     target, prediction)
            return {"pred": pred, "loss": loss}
    else:
        allowed = None if prediction == "vocab" else \
            torch.as_tensor(_constrained_ids(target), dtype=torch.long)
        prompts = PromptSet.build(lm, examples, batch_size, target, ids=ids)
        greedy = Greedy(target, max_answer_tokens(target, examples), allowed)

        def reduce(batch, cond, out) -> dict:
            logp, top = _teacher_forced(out.logits, batch.answers)
            return {"pred": torch.from_numpy(out.predictions), "loss": -logp, "top": top}

    units = Engine(lm, prompts).run(conditions, reduce, greedy=greedy, store=store,
                                    progress=progress, desc=desc)
    results = {}
    for name, parts in units.items():
        got = {k: prompts.scatter([p[k] for p in parts]) for k in parts[0]}
        scores = Scores(answers, got["pred"].astype(np.int64), got["loss"])
        res = {**scores.summary(), "predictions": scores.predictions.tolist()}
        if not single:
            res |= {"teacher_forced_accuracy": float(got["top"].mean()),
                    "method": "greedy generation"}
        results[name] = res
    return results


def evaluate_answers(lm, examples: Sequence[Example], fmt: NumberFormat,
                     edits: Edits | None = None, *, positions: str = "answer",
                     prediction: str = "vocab", batch_size: int = 16, progress: bool = True,
                     desc: str = "evaluate") -> dict:
    """Whole-answer scores of ``examples`` with ``edits`` applied: ``loss`` = mean
    -log p(answer), ``teacher_forced_accuracy``, and ``Scores.summary`` of the greedy answers
    (listed in ``predictions``)."""
    return score_conditions(lm, examples, fmt, [condition("c", edits, positions)],
                            prediction=prediction, batch_size=batch_size, progress=progress,
                            desc=desc)["c"]


def greedy_answers(lm, fmt: NumberFormat, examples: Sequence[Example],
                   edits: Edits | None = None, *, positions: str = "answer",
                   prediction: str = "vocab", batch_size: int = 16, progress: bool = True,
                   desc: str = "generate") -> np.ndarray:
    """Greedy whole-answer predictions (integers, -1 = no number) of ``examples``."""
    return np.array(evaluate_answers(lm, examples, fmt, edits, positions=positions,
                                     prediction=prediction, batch_size=batch_size,
                                     progress=progress, desc=desc)["predictions"], dtype=np.int64)


def teacher_forced(lm, fmt: NumberFormat, examples: Sequence[Example],
                   edits: Edits | None = None, *, positions: str = "answer",
                   batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(log p(answer) summed over its tokens, all answer tokens are the argmax) per row."""
    prompts = PromptSet.build(lm, examples, batch_size, fmt)
    units = Engine(lm, prompts).run([condition("c", edits, positions)],
                                    lambda b, c, out: _teacher_forced(out.logits, b.answers),
                                    answers=True, progress=False)["c"]
    logp, top = zip(*units)
    return prompts.scatter(logp), prompts.scatter(top)
