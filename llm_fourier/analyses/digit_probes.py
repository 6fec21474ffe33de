"""Digit probes on hidden states and the digit intervention (Levy & Geva, NAACL 2025).

* ``probe_digit_layers``: on states collected by ``hidden_states.collect`` (a token of each prompt:
  the last token of operand a or b, or the last prompt token), for every (role, layer),
  target number (a, b or the answer) and digit place: the circular, linear 10-class and
  value probes of ``probes.circular`` on the same held-out numbers, each beside its
  shuffled-label baseline. Works for every tokenizer.
* ``digit_intervention``: rotate each prompt's state at an operand's last token by +k digits
  of a circular probe (``CircularProbe.rotation``: the smallest change that turns the probe's
  read-out by 2 pi k/10), decode the answer greedily and measure how often its digit moved
  by +k, beside a random direction of the same norm. The state is read once (``collect``,
  stopping after that layer) and the turned state patched in (an engine ``Patch``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from llm_fourier.analyses.answers import max_answer_tokens
from llm_fourier.analyses.hidden_states import HiddenStates, collect, cut_after, read_positions
from llm_fourier.errors import UserError
from llm_fourier.model.engine import Condition, Engine, Greedy, Patch, PromptSet, Store
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.scores import n_digits
from llm_fourier.model.tasks import Example
from llm_fourier.output.progress import tqdm
from probes.circular import CircularProbe, digit_at, digit_probes, fit_circular
from probes.stats import StatsConfig, classification_estimates

TARGETS = ("a", "b", "answer")


def probe_digit_layers(hs: HiddenStates, targets: Sequence[str] = TARGETS,
                       places: Sequence[int] | None = None, *, progress: bool = True,
                       **kwargs) -> dict[tuple[str, int, str], list]:
    """``probes.circular.digit_probes`` for every (role, layer, target); ``places``
    defaults to every place of the target's largest value. ``kwargs`` go to
    ``digit_probes`` (``kinds``, ``n_splits``, ``pca_dim``, ``alpha``, ``C``, ``seed``,
    ``shuffled``, ``n_shuffles``)."""
    out = {}
    keys = [(r, i, t) for r in hs.roles for i in hs.layers for t in targets]
    for r, i, t in tqdm(keys, desc="digit probes", unit="probe", disable=not progress):
        numbers = hs.numbers(t)
        if len(np.unique(numbers)) < 10:
            raise UserError(f"only {len(np.unique(numbers))} distinct values of {t}; digit "
                            "probes need at least 10 (raise the operand range or the count).")
        ps = range(n_digits(numbers)) if places is None else places
        out[(r, i, t)] = digit_probes(hs.at(r, i), numbers, ps, **kwargs)
    return out


def digit_rows(results: dict[tuple[str, int, str], list],
               stats: StatsConfig | None = None) -> list[dict]:
    """One CSV row per (role, layer, target, place, kind): accuracy beside its baseline and,
    with ``stats``, its bootstrap interval over the held-out numbers and permutation p-value
    (``probes.stats``, the statistics of the other hidden-state probes)."""
    rows = []
    for (role, layer, target), res in results.items():
        for r in res:
            if r.shuffled:
                rows[-1] |= {"accuracy_shuffled": r.accuracy,
                             "accuracy_shuffled_std": r.accuracy_std}
                continue
            rows.append({"role": role, "layer": layer, "target": target, "place": r.place,
                         "kind": r.kind, "accuracy": r.accuracy, "chance": r.chance,
                         "n_numbers": r.n_numbers, **({"r2": r.r2} if r.r2 is not None else {})})
            if stats is not None and len(r.numbers) and (stats.n_boot or stats.n_perm):
                est = classification_estimates(r.labels, r.predictions, r.numbers, 10, stats)
                rows[-1] |= {k: v for k, v in est["accuracy"].as_dict("accuracy").items()
                             if k != "accuracy"}
    return rows


def fit_operand_probe(hs: HiddenStates, role: str, layer: int, target: str, place: int,
                      **kwargs) -> CircularProbe:
    """The circular probe of ``target``'s digit ``place`` on all states of (role, layer)."""
    return fit_circular(hs.at(role, layer), hs.numbers(target), place, **kwargs)


def _shift_histogram(shift: np.ndarray) -> dict[int, int]:
    return {int(k): int(v) for k, v in zip(*np.unique(shift, return_counts=True))}


def digit_intervention(lm, examples: Sequence[Example], fmt: NumberFormat, probe: CircularProbe,
                       *, token: str = "a", role: str = "block", layer: int = 0, shift: int = 1,
                       seed: int = 0, batch_size: int = 16, progress: bool = True,
                       store: Store | None = None, tokens: tuple | None = None) -> dict:
    """Rotate the probe's digit at ``token`` by +``shift`` and measure the answer's digit.

    ``probe`` must be fitted on the states of (``role``, ``layer``) at ``token`` (see
    ``fit_operand_probe``); the answer digit compared is the one at the probe's place.
    Returns, among the ``n_scored`` examples whose unedited, rotated and random-control
    answers are all numbers, the shares whose answer digit moved by exactly +shift (mod 10)
    from the unedited answer under the rotation and under the control, the share where it
    equals (true answer digit + shift) mod 10, histograms of the digit moves, the share of
    edited states that the probe itself reads as moved by +shift, and the per-example
    predictions (``clean``, ``rotated``, ``random``). The three are conditions of one engine
    pass (``store`` keeps its units). ``tokens``: the prompts' ``read_positions`` at
    ``token`` when the caller has them.
    """
    if token not in ("a", "b"):
        raise UserError(f"the digit intervention edits an operand; token must be a or b, "
                        f"got {token!r}.")
    if not 1 <= shift % 10 <= 9:
        raise UserError(f"shift must not be a multiple of 10, got {shift}.")
    place, k = probe.place, shift % 10
    ids, at = read_positions(lm.tokenizer, examples, token) if tokens is None else tokens
    states = collect(lm, examples, token, (role,), [layer], batch_size, progress=False,
                     ids=cut_after(ids, at))
    rows = states.at(role, layer).astype(np.float64)  # the unedited states at the token
    delta = probe.rotation(rows, k)
    noise = np.random.default_rng(seed).standard_normal(delta.shape)
    noise *= np.linalg.norm(delta, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1,
                                                                          keepdims=True)
    moved = probe.decode(rows + delta) == (probe.decode(rows) + k) % 10
    conds = [Condition("clean")] + [
        Condition(name, positions="all", patches={(role, layer): Patch(
            np.array(at), torch.tensor(rows + d, dtype=torch.float32))})
        for name, d in (("rotated", delta), ("random", noise))]
    prompts = PromptSet.build(lm, examples, batch_size, fmt, ids=ids)
    units = Engine(lm, prompts).run(
        conds, lambda b, c, out: out.predictions, greedy=Greedy(fmt, max_answer_tokens(
            fmt, examples)), store=store, progress=progress, desc="digit intervention")
    clean, rotated, random = (prompts.scatter(units[c.name]) for c in conds)
    answers = np.array([e.answer for e in examples], dtype=np.int64)
    ok = (clean >= 0) & (rotated >= 0) & (random >= 0)
    base, turned, control = (digit_at(np.maximum(v, 0), place) for v in (clean, rotated, random))
    move_rot, move_rand = (turned - base) % 10, (control - base) % 10
    n_ok = max(int(ok.sum()), 1)
    return {
        "token": token, "role": role, "layer": layer, "probe_place": probe.place,
        "answer_place": place, "shift": shift, "n": len(examples), "n_scored": int(ok.sum()),
        "rate_shifted": float((ok & (move_rot == k)).sum() / n_ok),
        "rate_shifted_random": float((ok & (move_rand == k)).sum() / n_ok),
        "rate_changed": float((ok & (rotated != clean)).sum() / n_ok),
        "rate_changed_random": float((ok & (random != clean)).sum() / n_ok),
        "rate_target": float((ok & (turned == (digit_at(answers, place) + k) % 10)).sum() / n_ok),
        "probe_moved": float(moved.mean()),
        "move_histogram": _shift_histogram(move_rot[ok]),
        "move_histogram_random": _shift_histogram(move_rand[ok]),
        "clean": clean.tolist(), "rotated": rotated.tolist(), "random": random.tolist(),
    }
