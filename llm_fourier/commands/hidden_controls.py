"""The controls of ``llm-fourier hidden``: what a probe result must be read beside.

* ``token_identity_result``: with a digit-splitting tokenizer, at the last digit token of an
  operand, ``a mod 10`` (and mod 2, 5) *is* the token's identity; ``hidden.token_identity``
  measures it per period from the data, and the probes then also run with the token-identity
  means regressed out (``"control"`` in each probe result).
* ``frequency_control_result``: the spectrum of a per-number scalar beside the embedding's
  (or the mean states'): ``--control FILE``, or number frequencies counted in a text the user
  names (``--corpus FILE``), the convergent-evolution control; ``check_control_file`` reads
  ``--control`` before the model loads.
"""

from __future__ import annotations

from pathlib import Path

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


def _beside(lm, hs: HiddenStates, numbers, n_values: int, layers, target):
    """The number rows of W_E (single-token numbers), else the mean states per number."""
    if numbers.p >= n_values:
        return number_rows(lm.embedding(), numbers).float().cpu().numpy(), "embedding"
    uniq, means = per_number_means(hs.at(hs.roles[0], layers[0]), hs.numbers(target))
    if not np.array_equal(uniq, np.arange(len(uniq))):
        return None, None
    return means, f"mean {hs.roles[0]} state, layer {layers[0]}"


def check_control_file(s) -> None:
    """``--control FILE`` read once before any heavy work: a missing file, text that is not
    UTF-8, null, text or non-finite values are one sentence (``hidden_states.load_scalar``
    reads through ``output.reading``)."""
    if not Path(s.control).is_file():
        raise s.fail("control", f"names no file ({s.control})")
    load_scalar(s.control)


def frequency_control_result(s, lm, hs: HiddenStates, task, layers, target
                             ) -> tuple[dict, list[dict]] | None:
    """(results entry, CSV rows of the per-number values) for ``--control`` or ``--corpus``;
    None when neither is given."""
    if s.control is None and s.corpus is None:
        return None
    p = task.max_answer + 1
    numbers = find_number_tokens(lm.tokenizer, max_number=task.max_answer)
    if s.control is not None:
        values, source = load_scalar(s.control), f"--control {s.control}"
    else:
        values = corpus_counts(s.corpus, p, s.corpus_count, lm.tokenizer, numbers.token_ids)
        source = f"number {s.corpus_count} counts in {s.corpus}"
    beside, what = _beside(lm, hs, numbers, min(len(values), p), layers, target)
    if beside is not None and len(values) < len(beside):
        raise UserError(f"{source} holds {len(values)} values but the numbers beside it run "
                        f"0..{len(beside) - 1}; give one value per number.")
    entry = {**frequency_control(values, beside, s.basis), "source": source,
             "beside_what": what}
    return entry, [{"number": n, "value": float(v)} for n, v in enumerate(values)]
