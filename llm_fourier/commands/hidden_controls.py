"""The controls of ``llm-fourier hidden``: token identity (where the read token alone decodes
``n mod T``, the probes also run with its directions removed) and the frequency control (a
per-number scalar's spectrum beside the embedding's, ``--control`` or ``--corpus``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from llm_fourier.analyses.corpus import corpus_counts
from llm_fourier.analyses.hidden_states import (
    HiddenStates,
    frequency_control,
    load_scalar,
    read_token_ids,
    token_identity,
)
from llm_fourier.errors import UserError
from llm_fourier.model.numbers import find_number_tokens, number_rows
from probes.common import per_number_means

if TYPE_CHECKING:
    from llm_fourier.commands.hidden_units import HiddenRun


def token_identity_result(s, lm, examples, hs: HiddenStates, target: str
                          ) -> tuple[np.ndarray, dict]:
    """(token id read per example, per-period token-identity report); prints a warning for
    every period that the token alone decodes."""
    ids = read_token_ids(lm.tokenizer, examples, s.token)
    report = {int(T): r for T, r in token_identity(ids, hs.numbers(target), s.periods).items()}
    confounded = [T for T, r in report.items() if r.get("confounded")]
    if confounded:
        print(f"warning: at the {s.token} token, {target} mod "
              f"{', '.join(map(str, confounded))} is the identity of the token itself (a "
              "digit-splitting tokenizer): a probe decodes it even on a random model; read "
              "the control_ columns (token-identity directions removed) for what remains.")
    return ids, report


def _beside(lm, hs: HiddenStates, numbers, n_values: int, target: str):
    """The number rows of W_E (single-token numbers), else the mean states per number."""
    if numbers.p >= n_values:
        return number_rows(lm.embedding(), numbers).float().cpu().numpy(), "embedding"
    uniq, means = per_number_means(hs.at(hs.roles[0], hs.layers[0]), hs.numbers(target))
    if not np.array_equal(uniq, np.arange(len(uniq))):
        return None, None
    return means, f"mean {hs.roles[0]} state, layer {hs.layers[0]}"


def control_spectrum(h: HiddenRun) -> None:
    """The ``--control`` values (or ``--corpus`` counts) per number: their spectrum in the
    results, the values in ``control_values.csv``."""
    s, p = h.s, h.task.max_answer + 1
    numbers = find_number_tokens(h.lm.tokenizer, max_number=h.task.max_answer)
    if s.control is not None:
        values, source = load_scalar(s.control), f"--control {s.control}"
    else:
        values = corpus_counts(s.corpus, p, s.corpus_count, h.lm.tokenizer, numbers.token_ids)
        source = f"number {s.corpus_count} counts in {s.corpus}"
    beside, what = _beside(h.lm, h.hs, numbers, min(len(values), p), h.target)
    if beside is not None and len(values) < len(beside):
        raise UserError(f"{source} holds {len(values)} values but the numbers beside it run "
                        f"0..{len(beside) - 1}; give one value per number.")
    h.results["frequency_control"] = {**frequency_control(values, beside, s.basis),
                                      "source": source, "beside_what": what}
    h.run.write_csv("control_values.csv",
                    [{"number": n, "value": float(v)} for n, v in enumerate(values)])
