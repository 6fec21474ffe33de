"""Probe-direction ablation: remove fitted Fourier directions from module outputs.

For each (role, layer) the helix fit (``probes.linear.HelixFit``) gives the cos/sin columns
of C for the chosen periods; mapped back from PCA space to model space and orthonormalised
they span a subspace that ``probes.FourierFilter`` projects out (x - R R^T x), inside
``hooks.edit``. Beside it: a random subspace of the same rank (control), and, when the
numbers are single tokens, the logit-space filter of Zhou et al. removing the same periods'
components of ``W_U[numbers]`` (cross-check). Accuracy comes from ``ablate.evaluate`` for
single-token numbers, else from greedy generation of the answer's tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from llm_fourier.ablate import MODULES, evaluate
from llm_fourier.errors import UserError
from llm_fourier.hooks import edit
from llm_fourier.models import LoadedModel
from llm_fourier.numbers import NumberTokens, number_rows
from llm_fourier.tasks import Example
from probes import FourierBasis, FourierFilter, remove_components
from probes.linear import HelixFit

GROUPS = {**MODULES, "block": ("block",)}  # the paper's module groups, and the residual


def probe_filters(fits: dict[tuple[str, int], HelixFit], periods: Sequence[float]
                  ) -> dict[tuple[str, int], FourierFilter]:
    """One filter per (role, layer) removing the fitted directions of ``periods``."""
    label = "probe T=" + ",".join(f"{T:g}" for T in periods)
    return {key: FourierFilter(fit.directions(periods), (), label) for key, fit in fits.items()}


def random_filters(filters: dict[tuple[str, int], FourierFilter], seed: int = 0
                   ) -> dict[tuple[str, int], FourierFilter]:
    """Random orthonormal subspaces of the same ranks (the ablation's control)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, f in filters.items():
        q, _ = np.linalg.qr(rng.standard_normal((f.dim, max(f.rank, 1))))
        out[key] = FourierFilter(q[:, : f.rank], (), "random")
    return out


def logit_filter(lm: LoadedModel, numbers: NumberTokens, periods: Sequence[float],
                 basis_kind: str = "paper") -> FourierFilter:
    """Zhou et al.'s filter removing the components nearest ``periods`` of W_U[numbers]."""
    basis = FourierBasis(numbers.p, basis_kind)
    ks = sorted({min(max(basis.k_of_period(T), 1), basis.n_components) for T in periods})
    W = number_rows(lm.unembedding(), numbers).detach().to("cpu", torch.float64).numpy()
    return remove_components(W, basis, ks, "logit T=" + ",".join(
        f"{basis.period(k):g}" for k in ks))


def _parse_digits(tokenizer, new_ids: Sequence[int]) -> int:
    """The integer written by the first digit tokens of a generation (-1 if none)."""
    digits = ""
    for t in new_ids:
        if t in (tokenizer.eos_token_id, tokenizer.pad_token_id):
            break
        raw = tokenizer.decode([int(t)], skip_special_tokens=True)
        text = raw.strip()
        if not text and not digits:
            continue  # a lone word-start marker before the number
        if not text.isdigit() or (digits and raw[:1].isspace()):
            break
        digits += text
    return int(digits) if digits else -1


def generate_answers(
    lm: LoadedModel,
    examples: Sequence[Example],
    edits: dict[tuple[str, int], Callable] | None = None,
    *,
    positions: str = "all",
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generate",
) -> np.ndarray:
    """Greedy answers (as integers, -1 if none) with ``edits`` applied at every step."""
    tok = lm.tokenizer
    max_new = len(str(max(e.answer for e in examples))) + 2
    ids = tok([e.prompt for e in examples])["input_ids"]
    by_length: dict[int, list[int]] = {}
    for i, seq in enumerate(ids):
        by_length.setdefault(len(seq), []).append(i)
    batches = [idx[j:j + batch_size] for idx in by_length.values()
               for j in range(0, len(idx), batch_size)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    preds = np.full(len(examples), -1, dtype=np.int64)
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
        x = torch.tensor([ids[i] for i in batch], device=lm.input_device)
        with torch.inference_mode(), edit(lm, edits or {}, positions=positions):
            out = lm.model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                    max_new_tokens=max_new, do_sample=False,
                                    pad_token_id=pad)
        for i, row in zip(batch, out[:, x.shape[1]:].tolist()):
            preds[i] = _parse_digits(tok, row)
    return preds


def answer_summary(answers: np.ndarray, preds: np.ndarray) -> dict:
    """Accuracy and signed errors of integer predictions (-1 = no number)."""
    is_num, wrong = preds >= 0, preds != answers
    err = (preds - answers)[is_num & wrong]
    n = max(len(answers), 1)
    return {"n": int(len(answers)), "accuracy": float((~wrong).sum() / n),
            "n_non_number": int((~is_num).sum()),
            "error_histogram": {int(k): int(v) for k, v in sorted(Counter(err.tolist()).items())},
            "frac_errors_mult_10": float((err % 10 == 0).mean()) if err.size else float("nan"),
            "mod10_accuracy": float((is_num & (preds % 10 == answers % 10)).sum() / n)}


def accuracy(lm: LoadedModel, examples: Sequence[Example], edits=None, *,
             numbers: NumberTokens | None = None, positions: str = "all",
             batch_size: int = 16, progress: bool = True, desc: str = "evaluate") -> dict:
    """Task accuracy: next-token over number tokens when ``numbers`` covers every answer
    (``ablate.evaluate``), else greedy generation of the answer's digits."""
    max_answer = max(e.answer for e in examples)
    if numbers is not None and numbers.p > max_answer:
        res = evaluate(lm, examples, numbers, edits, positions=positions,
                       batch_size=batch_size, progress=progress, desc=desc)
        res.pop("predictions", None)
        return {**res, "method": "next token"}
    preds = generate_answers(lm, examples, edits, positions=positions, batch_size=batch_size,
                             progress=progress, desc=desc)
    return {**answer_summary(np.array([e.answer for e in examples]), preds),
            "method": "greedy generation"}


def probe_ablation(
    lm: LoadedModel,
    examples: Sequence[Example],
    fits: dict[tuple[str, int], HelixFit],
    periods: Sequence[float],
    *,
    groups: Sequence[str] = ("attn+MLP", "attn", "MLP"),
    numbers: NumberTokens | None = None,
    positions: str = "all",
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    done: dict | None = None,
    on_row: Callable[[str, dict], None] | None = None,
) -> list[dict]:
    """Accuracy with no edit, then per module group: the probe directions removed, a random
    subspace of the same rank removed, and (single-token numbers) the logit-space filter.

    ``done`` maps row labels to finished results (resume); ``on_row`` is called after each.
    """
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise UserError(f"unknown module group(s) {unknown}; choose among {', '.join(GROUPS)}.")
    probe = probe_filters(fits, periods)
    rand = random_filters(probe, seed)
    single = numbers is not None and numbers.p > max(e.answer for e in examples)
    logit = logit_filter(lm, numbers, periods) if single else None
    plan: list[tuple[str, str, str, dict]] = [("none", "-", "none", {})]
    for g in groups:
        keys = [k for k in probe if k[0] in GROUPS[g]]
        if not keys:
            raise UserError(f"no probe was fitted on the {g} outputs; add their roles to "
                            "--roles to ablate them.")
        plan += [(f"{g} {kind}", g, kind, {k: filt[k] for k in keys})
                 for kind, filt in (("probe", probe), ("random", rand))]
        if logit is not None:
            plan.append((f"{g} logit", g, "logit", {k: logit for k in keys}))
    done = dict(done or {})
    rows = []
    for label, group, kind, edits in plan:
        if label not in done:
            done[label] = accuracy(lm, examples, edits, numbers=numbers, positions=positions,
                                   batch_size=batch_size, progress=progress, desc=label)
            if on_row is not None:
                on_row(label, done[label])
        rank = int(np.mean([f.rank for f in edits.values()])) if edits else 0
        name = next(iter(edits.values())).name if edits else "none"
        rows.append({"row": label, "modules": group, "kind": kind, "filter": name,
                     "rank": rank, **done[label]})
    return rows
