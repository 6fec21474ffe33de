"""Fourier filter ablations inside edit hooks, evaluation and error analysis (Zhou et al.).

Filters are ``probes.filters`` projections built once from a readout
(``readout.NumberReadout``: ``W_U[numbers]``, or ``W_U[digits 0..9]`` for tokenizers that
write one token per digit) and a Fourier basis, then applied to attention and/or MLP
outputs at chosen layers and positions through ``hooks.edit``. ``evaluate`` runs a split
whose answers are single tokens and reports the next-token loss of the answer, accuracy,
a signed-error histogram, the fraction of errors that are multiples of 10, mod-2 / mod-10
accuracy and the digit-space analysis of ``scores.Scores``. The prediction is either the
model's own next token (argmax over the whole vocabulary, as in the paper; a non-number
token is wrong and has no signed error) or the argmax over the number tokens only.
``evaluate_task`` and ``ablation_table`` take a ``NumberFormat`` too: single-token answers
go through ``evaluate`` (the same numbers as with ``NumberTokens``), answers of several
tokens through ``answers.evaluate_answers`` (greedy whole answers, teacher-forced loss;
filters at every answer position). ``evaluate``'s batches are sharded across processes when
a process group is active (``llm_fourier.model.distributed``) and gathered in order, so every rank
gets the single-process result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from llm_fourier.analyses.answers import evaluate_answers
from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.distributed import map_batches, process_info
from llm_fourier.model.hooks import edit, last_token_logits
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.numbers import NumberTokens, require_numbers, value_of_token
from llm_fourier.model.readout import NumberReadout, default_tau, number_readout, readout_for
from llm_fourier.model.scores import Scores
from llm_fourier.model.tasks import Example, tokenize_prompts
from probes import FourierFilter

__all__ = ["MODULES", "PREDICTIONS", "Scores", "ablation_table", "evaluate", "evaluate_task",
           "filter_edits", "number_filters", "row_label", "score_batch", "table_readout",
           "table_rows"]

PREDICTIONS = ("vocab", "numbers")  # the same choices as answers.PREDICTIONS
MODULES = {"attn+MLP": ("attn", "mlp"), "attn": ("attn",), "MLP": ("mlp",)}


def number_filters(lm, numbers: NumberTokens, basis_kind: str = "paper", tau: int = 50,
                   keep: Iterable[int] | None = None) -> dict[str, FourierFilter]:
    """The filters of the paper, built once from ``W_U[numbers]``.

    ``"low removed"`` = high-pass (removes 1 <= k < tau), ``"high removed"`` = low-pass
    (removes k >= tau); with ``keep``, ``"keep k=..."`` keeps only those components.
    """
    return number_readout(lm, numbers).filters(basis_kind, tau, keep)


def filter_edits(filt: Callable[[Tensor], Tensor], roles: Iterable[str],
                 layers: Iterable[int]) -> dict[tuple[str, int], Callable[[Tensor], Tensor]]:
    """One edit per (role, layer), all applying the same (pre-built) filter."""
    return {(r, i): filt for r in roles for i in layers}


def score_batch(logits: Tensor, answers: Tensor, numbers: NumberTokens,
                prediction: str = "vocab") -> tuple[Tensor, Tensor]:
    """(predicted numbers, per-example loss) from last-position logits (N x vocab).

    The loss is the cross-entropy of the answer token over the whole vocabulary.
    """
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


def evaluate(
    lm,
    examples: Sequence[Example],
    numbers: NumberTokens,
    edits: dict[tuple[str, int], Callable[[Tensor], Tensor]] | None = None,
    *,
    positions: str = "last",
    prediction: str = "vocab",
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict:
    """Loss, accuracy and error analysis on ``examples``, with ``edits`` applied if given."""
    if not examples:
        raise UserError("no examples to evaluate; use a larger operand range or another split.")
    answers = np.array([e.answer for e in examples])
    require_numbers(numbers, int(answers.max()), getattr(lm, "name", ""))

    def run_batch(start: int, end: int) -> tuple[Tensor, Tensor]:
        batch = examples[start:end]
        enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in batch], device=lm.input_device)
        with torch.inference_mode(), edit(lm, edits or {}, positions=positions):
            rows = last_token_logits(lm.model, enc, last_only=False)  # = a full forward
        return score_batch(rows, torch.tensor([e.answer for e in batch]), numbers, prediction)

    parts = map_batches(run_batch, len(examples), batch_size, desc=desc, progress=progress)
    scores = Scores(answers, torch.cat([p for p, _ in parts]).numpy(),
                    torch.cat([loss for _, loss in parts]).numpy())
    return {**scores.summary(), "predictions": scores.predictions.tolist()}


def _single_numbers(fmt: NumberFormat) -> NumberTokens:
    """The single-token numbers 0..max_number of a "single" format."""
    return NumberTokens(fmt.numbers.token_ids[:fmt.max_number + 1], fmt.leading_space)


def evaluate_task(
    lm,
    examples: Sequence[Example],
    target: NumberTokens | NumberFormat,
    edits: dict[tuple[str, int], Callable[[Tensor], Tensor]] | None = None,
    *,
    positions: str = "last",
    prediction: str = "vocab",
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "evaluate",
) -> dict:
    """``evaluate`` when the answers are single tokens (``NumberTokens``, or a "single"
    ``NumberFormat``), else ``answers.evaluate_answers`` (whole answers, edits at every
    answer position for ``positions`` "last" / "answer"). Both return ``predictions``."""
    positions = "last" if positions == "answer" else positions
    if isinstance(target, NumberFormat) and target.family == "single":
        target = _single_numbers(target)
    if isinstance(target, NumberTokens):
        return evaluate(lm, examples, target, edits, positions=positions,
                        prediction=prediction, batch_size=batch_size, progress=progress,
                        desc=desc)
    return evaluate_answers(lm, examples, target, edits, positions=positions,
                            prediction=prediction, batch_size=batch_size, progress=progress,
                            desc=desc)


def table_readout(lm, target: NumberTokens | NumberFormat | AnswerSpace) -> NumberReadout:
    """The readout whose filters the ablation table applies: ``W_U[numbers]`` for
    single-token answers, ``W_U[digits]`` for one token per digit."""
    if isinstance(target, AnswerSpace):
        return target.readout(lm)
    if isinstance(target, NumberTokens):
        return number_readout(lm, target)
    return readout_for(lm, target, target.max_number)


def answer_target(target: NumberTokens | NumberFormat | AnswerSpace
                  ) -> NumberTokens | NumberFormat:
    """What answers are scored against: the single-token numbers or the format."""
    if isinstance(target, AnswerSpace):
        return target.numbers if target.single else target.fmt
    return target


def table_rows(filter_names: Iterable[str]) -> list[tuple[str, str]]:
    """(filter, modules) rows in Table 1 order: none, then each filter on attn+MLP, attn, MLP."""
    return [("none", "-")] + [(f, m) for f in filter_names for m in MODULES]


def row_label(filter_name: str, modules: str) -> str:
    return "none" if filter_name == "none" else f"{modules} {filter_name}"


def ablation_table(
    lm,
    examples: Sequence[Example],
    numbers: NumberTokens | NumberFormat,
    *,
    tau: int | None = None,
    basis_kind: str = "paper",
    keep: Iterable[int] | None = None,
    layers: Iterable[int] | None = None,
    positions: str = "last",
    prediction: str = "vocab",
    batch_size: int = 16,
    done: dict | None = None,
    on_row: Callable[[str, dict], None] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Table 1 of Zhou et al.: loss and accuracy with each filter on attn+MLP, attn, MLP.

    ``numbers``: the single-token numbers, or a ``NumberFormat`` (digit-splitting
    tokenizers get filters from the digit readout at every answer position, and whole
    answers are scored). ``tau`` defaults to 50 for the number readout and
    ``readout.DIGIT_TAU`` (3) for digits. ``done`` maps row labels to results already
    computed (resume); ``on_row(label, result)`` is called after each new row. Under a
    process group every rank calls this with the same ``done`` (broadcast it from rank 0)
    and gets every row; ``on_row`` runs on every rank. Each row carries its filter's
    ``rank`` (dimensions removed) and ``knockout`` = the rank reaches the width ``d_model``:
    then the filter removes the whole module output, not a frequency band.
    """
    readout = table_readout(lm, numbers)
    if isinstance(numbers, AnswerSpace):
        filters = numbers.filters(lm, keep)
    else:
        tau = default_tau(readout.kind) if tau is None else tau
        filters = readout.filters(basis_kind, tau, keep)
    target = answer_target(numbers)
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    done = dict(done or {})
    rows = []
    for fname, modules in tqdm(table_rows(filters), desc="ablations", unit="row",
                               disable=not progress or not process_info().is_main):
        label = row_label(fname, modules)
        if label not in done:
            edits = {} if fname == "none" else filter_edits(filters[fname], MODULES[modules],
                                                            layers)
            done[label] = evaluate_task(lm, examples, target, edits, positions=positions,
                                        prediction=prediction, batch_size=batch_size,
                                        progress=progress, desc=label)
            if on_row is not None:
                on_row(label, done[label])
        rank = filters[fname].rank if fname != "none" else 0
        # a filter whose removed rows span the whole width removes everything: a knockout
        rows.append({"row": label, "filter": fname, "modules": modules, "rank": rank,
                     "width": lm.d_model, "knockout": bool(rank >= lm.d_model),
                     **done[label]})
    return rows
