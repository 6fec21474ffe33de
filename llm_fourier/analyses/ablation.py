"""Fourier filter ablations inside edit hooks, evaluation and error analysis (Zhou et al.).

Filters are ``probes.filters`` projections built once from a readout
(``readout.NumberReadout``: ``W_U[numbers]``, or ``W_U[digits 0..9]`` for one token per
digit) and a Fourier basis, applied to attention and/or MLP outputs at chosen layers and
positions (conditions of ``model.engine``). Single-token answers are scored on the next
token (loss, accuracy and the rest of ``scores.Scores``); the prediction is the model's own
next token (argmax over the vocabulary, as in the paper; a non-number token is wrong) or the
argmax over the number tokens. Answers of several tokens are scored whole
(``answers.score_conditions``: greedy answers, teacher-forced loss; filters at every answer
position). Batches are sharded under a process group and gathered in order, so every rank
gets the single-process result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor

from llm_fourier.analyses.answers import PREDICTIONS, condition, score_batch, score_conditions
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.engine import Edits, Store
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.numbers import NumberTokens
from llm_fourier.model.readout import NumberReadout, default_tau, number_readout
from llm_fourier.model.scores import Scores
from llm_fourier.model.tasks import Example
from probes import FourierFilter

__all__ = ["MODULES", "PREDICTIONS", "Scores", "ablation_table", "evaluate", "evaluate_task",
           "filter_edits", "number_filters", "row_label", "score_batch", "table_readout",
           "table_rows"]

MODULES = {"attn+MLP": ("attn", "mlp"), "attn": ("attn",), "MLP": ("mlp",)}


def number_filters(lm, numbers: NumberTokens, basis_kind: str = "paper", tau: int = 50,
                   keep: Iterable[int] | None = None) -> dict[str, FourierFilter]:
    """The paper's filters from ``W_U[numbers]``: ``"low removed"`` (1 <= k < tau),
    ``"high removed"`` (k >= tau) and, with ``keep``, ``"keep k=..."`` (only those)."""
    return number_readout(lm, numbers).filters(basis_kind, tau, keep)


def filter_edits(filt: Callable[[Tensor], Tensor], roles: Iterable[str],
                 layers: Iterable[int]) -> Edits:
    """One edit per (role, layer), all applying the same (pre-built) filter."""
    return {(r, i): filt for r in roles for i in layers}


def evaluate_task(lm, examples: Sequence[Example],
                  target: NumberTokens | NumberFormat | AnswerSpace, edits: Edits | None = None,
                  *, positions: str = "last", prediction: str = "vocab", batch_size: int = 16,
                  progress: bool = True, desc: str = "evaluate") -> dict:
    """The next token's scores when the answers are single tokens (``NumberTokens``, or a
    "single" ``NumberFormat``), else whole answers (greedy, teacher forced; edits at every
    answer position for ``positions`` "last" / "answer"). Both return ``predictions``."""
    return score_conditions(lm, examples, answer_target(target),
                            [condition("c", edits, positions)], prediction=prediction,
                            batch_size=batch_size, progress=progress, desc=desc)["c"]


evaluate = evaluate_task  # the single-token name (lf.evaluate): one implementation


def _as_space(target: NumberTokens | NumberFormat | AnswerSpace
              ) -> NumberTokens | AnswerSpace:
    """A ``NumberFormat`` as the space of its numbers 0..max_number; the others as given."""
    return AnswerSpace(target, target.max_number) if isinstance(target, NumberFormat) else target


def table_readout(lm, target: NumberTokens | NumberFormat | AnswerSpace) -> NumberReadout:
    """The readout whose filters the ablation table applies: ``W_U[numbers]`` for
    single-token answers, ``W_U[digits]`` for one token per digit."""
    target = _as_space(target)
    return number_readout(lm, target) if isinstance(target, NumberTokens) else target.readout(lm)


def answer_target(target: NumberTokens | NumberFormat | AnswerSpace
                  ) -> NumberTokens | NumberFormat:
    """What answers are scored against: the single-token numbers or the format."""
    target = _as_space(target)
    if isinstance(target, AnswerSpace):
        return target.numbers if target.single else target.fmt
    return target


def table_rows(filter_names: Iterable[str]) -> list[tuple[str, str]]:
    """(filter, modules) rows in Table 1 order: none, then each filter on attn+MLP, attn, MLP."""
    return [("none", "-")] + [(f, m) for f in filter_names for m in MODULES]


def row_label(filter_name: str, modules: str) -> str:
    return "none" if filter_name == "none" else f"{modules} {filter_name}"


def ablation_table(lm, examples: Sequence[Example],
                   numbers: NumberTokens | NumberFormat | AnswerSpace, *,
                   tau: int | None = None, basis_kind: str = "paper",
                   keep: Iterable[int] | None = None, layers: Iterable[int] | None = None,
                   positions: str = "last", prediction: str = "vocab", batch_size: int = 16,
                   store: Store | None = None, progress: bool = True) -> list[dict]:
    """Table 1 of Zhou et al.: loss and accuracy with each filter on attn+MLP, attn, MLP.

    ``numbers``: an ``AnswerSpace`` (its tau and basis), the single-token numbers, or a
    ``NumberFormat`` (digit-splitting tokenizers get filters from the digit readout at every
    answer position, and whole answers are scored); without a space ``tau`` defaults to 50
    for the number readout and 3 for digits. Every row runs in one pass of the engine (the
    prompt prefix once per batch); ``store`` keeps its (batch, row) units for resume. Each
    row carries its filter's ``rank`` (dimensions removed) and ``knockout`` = the rank
    reaches the width ``d_model``: then the filter removes the whole module output.
    """
    readout = table_readout(lm, numbers)
    if isinstance(numbers, AnswerSpace):
        filters = numbers.filters(lm, keep)
    else:
        tau = default_tau(readout.kind) if tau is None else tau
        filters = readout.filters(basis_kind, tau, keep)
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(layers))
    rows = table_rows(filters)
    conditions = [condition(row_label(f, m), {} if f == "none" else
                            filter_edits(filters[f], MODULES[m], layers), positions)
                  for f, m in rows]
    done = score_conditions(lm, examples, answer_target(numbers), conditions,
                            prediction=prediction, batch_size=batch_size, store=store,
                            progress=progress, desc="ablations")
    ranks = {f: filters[f].rank if f != "none" else 0 for f, _ in rows}
    # a filter whose removed rows span the whole width removes everything: a knockout
    return [{"row": row_label(f, m), "filter": f, "modules": m, "rank": ranks[f],
             "width": lm.d_model, "knockout": bool(ranks[f] >= lm.d_model),
             **done[row_label(f, m)]} for f, m in rows]
