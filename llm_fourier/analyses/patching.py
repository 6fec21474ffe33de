"""Helix activation patching (Kantamneni & Tegmark 2025): does the model use the fitted helix?

At one (role, layer) the state h(a) at the operand's last token is replaced, inside the full
prompt, by a reconstruction fitted on training prompts (``probes.reconstruct``: the helix and
its baselines with the same parameter count: circle, polynomial, top-PCA, shuffled numbers):

* same: h(a) <- R(a). ``kept = (LD_same - LD_mean) / (LD_clean - LD_mean)``: 1 = the fit
  carries everything the model reads from that state, 0 = no more than the mean ablation
  (h(a) <- the mean training state).
* swap: h(a) <- R(a') for another operand a'. ``moved = (LD_mean - LD_swap) /
  (LD_mean - LD_actual)``, where LD_actual patches in the real state of the prompt with a'
  (the paper's layer patch): 1 = as far as the real state moves the answer, 0 = no further
  than removing a. (Measured from the clean run, merely destroying a would score about 1/2.)

``LD = score(answer) - score(answer')`` with ``answer' = a' op b``, averaged over prompts
(fractions are ratios of means; NaN where the denominator vanishes). Accuracies: of the answer
under "same", and the fraction of prompts predicting answer' under "swap". a' is drawn
uniformly from the training numbers' range. By default only prompts the model answers
correctly are used (as the paper does). Answers are scored as ``ablate`` scores them
(teacher-forced log p, summed over tokens; next-token or greedy whole-answer predictions);
one engine pass per (role, layer) runs its mean, actual and per-method patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from llm_fourier.analyses.ablation import answer_target
from llm_fourier.analyses.answers import (
    _constrained_ids,
    _teacher_forced,
    max_answer_tokens,
    score_batch,
)
from llm_fourier.analyses.hidden_states import (
    HiddenStates,
    collect,
    cut_after,
    operand_spans,
    read_positions,
)
from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.engine import Condition, Engine, Greedy, Patch, PromptSet, Store
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.model.numbers import NumberTokens, require_numbers
from llm_fourier.model.tasks import OPS, Example
from llm_fourier.output.files import save_figure
from llm_fourier.output.plots import pyplot
from llm_fourier.output.progress import tqdm
from probes.reconstruct import METHODS, MODES, fit_reconstructions

OPERANDS = ("a", "b")


def counterfactuals(examples: Sequence[Example], operand: str, op: str, lo: int, hi: int,
                    max_answer: int, seed: int = 0) -> list[Example]:
    """Each example with its ``operand`` replaced by another number of lo..hi (uniform, the
    new answer <= ``max_answer``), in the prompt text too."""
    if operand not in OPERANDS:
        raise UserError(f"operand must be a or b, got {operand!r}.")
    if op not in OPS:
        raise UserError(f"unknown operation {op!r}; choose one of {', '.join(OPS)}.")
    fn, rng, out = OPS[op][0], np.random.default_rng(seed), []
    for ex in examples:
        other = ex.b if operand == "a" else ex.a
        cand = [v for v in range(lo, hi + 1) if v != getattr(ex, operand) and
                fn(*((v, other) if operand == "a" else (other, v))) <= max_answer]
        if not cand:
            raise UserError(f"no other value of {operand} in {lo}..{hi} keeps the answer of "
                            f"{ex.prompt!r} within 0..{max_answer}; use smaller operands.")
        new = int(rng.choice(cand))
        a, b = (new, ex.b) if operand == "a" else (ex.a, new)
        s, e = operand_spans(ex)[operand]
        out.append(Example(a, b, int(fn(a, b)), ex.prompt[:s] + str(new) + ex.prompt[e:]))
    return out


@dataclass
class PatchResult:
    """``rows``: one per (role, layer, method); ``clean``: the unpatched run."""

    rows: list[dict]
    clean: dict
    fits: dict = field(default_factory=dict)  # (role, layer) -> {method: summary}
    pairs: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """For results.json: ``fits`` flattened to one row per (role, layer, method)."""
        fits = [{"role": r, "layer": i, **summary} for (r, i), by_method in self.fits.items()
                for summary in by_method.values()]
        return {"settings": self.settings, "clean": self.clean, "rows": self.rows,
                "fits": fits, "pairs": self.pairs}


def _ratio(num: float, den: float, scale: float) -> float:
    return float(num / den) if abs(den) > 1e-6 * max(scale, 1.0) else float("nan")


class _Scorer:
    """Scores the evaluation prompts (answer and answer') under patch conditions."""

    def __init__(self, lm, test: Sequence[Example], swapped: Sequence[Example],
                 target: NumberTokens | NumberFormat, operand: str, prediction: str,
                 batch_size: int, tokens: tuple[list, list] | None = None) -> None:
        """``tokens``: ``read_positions`` of ``test`` when known (a subset of an earlier
        scorer's), else the prompts are tokenized here."""
        self.lm, self.target, self.prediction = lm, target, prediction
        self.targets = np.array([[e.answer, s.answer] for e, s in zip(test, swapped)])
        self.single = isinstance(target, NumberTokens)
        fmt = None if self.single else target
        # one tokenization: the ids run and patched, and the operand's token among them
        self.tokens = read_positions(lm.tokenizer, test, operand) if tokens is None else tokens
        ids, at = self.tokens
        self.prompts = PromptSet.build(lm, test, batch_size, fmt, ids=ids)
        self.positions = np.array(at)
        self.other = None if self.single else PromptSet(  # the same prompts, answer'
            test, [replace(b, answers=[fmt.encode(swapped[i].answer) for i in b.rows])
                   for b in self.prompts.batches], fmt)
        allowed = None if self.single or prediction == "vocab" else \
            torch.as_tensor(_constrained_ids(fmt), dtype=torch.long)
        self.greedy = None if self.single else \
            Greedy(fmt, max_answer_tokens(fmt, list(test) + list(swapped)), allowed)

    def condition(self, name: str, role: str, layer: int, vectors: np.ndarray) -> Condition:
        patch = Patch(self.positions, torch.tensor(np.asarray(vectors), dtype=torch.float32))
        return Condition(name, positions="all", patches={(role, layer): patch})

    def _reduce(self, batch, cond, out) -> dict:
        t = torch.as_tensor(self.targets[batch.rows])
        if self.single:
            lp = torch.log_softmax(out.logits[:, 0].float(), -1)
            ids = torch.as_tensor(self.target.token_ids, device=lp.device)
            pred, _ = score_batch(out.logits[:, 0], t[:, 0].clamp(max=self.target.max_number),
                                  self.target, self.prediction)
            return {"scores": lp.gather(1, ids[t.to(lp.device)]).double().cpu(), "pred": pred}
        return {"scores": _teacher_forced(out.logits, batch.answers)[0][:, None],
                "pred": torch.as_tensor(out.predictions if out.predictions is not None
                                        else np.full(len(batch.rows), -1))}

    def run(self, conditions: Sequence[Condition], store: Store | None) -> dict[str, dict]:
        """Per condition: mean LD (answer minus answer'), accuracy (and which prompts hit)
        and the fraction of prompts predicting answer'."""
        units = Engine(self.lm, self.prompts).run(conditions, self._reduce, store=store,
                                                  progress=False, greedy=self.greedy,
                                                  answers=not self.single)
        if self.other is not None:  # log p(answer') as units "name'": teacher forcing only
            units |= Engine(self.lm, self.other).run(
                [replace(c, name=f"{c.name}'") for c in conditions], self._reduce,
                answers=True, store=store, progress=False)

        def scattered(name: str, key: str) -> np.ndarray:  # the batches share their rows
            return self.prompts.scatter([u[key] for u in units[name]])

        out = {}
        for c in conditions:
            scores = np.concatenate([scattered(n, "scores") for n in (c.name, f"{c.name}'")
                                     if n in units], 1)
            hits = scattered(c.name, "pred")[:, None] == self.targets  # answer, answer'
            out[c.name] = {"ld": float((scores[:, 0] - scores[:, 1]).mean()),
                           "accuracy": float(hits[:, 0].mean()),
                           "to_counterfactual": float(hits[:, 1].mean()), "hits": hits[:, 0]}
        return out


def _metrics(clean: dict, mean: dict, actual: dict, same: dict, swap: dict) -> dict:
    """The references (clean, mean and actual patches), then one method's fractions."""
    scale = abs(clean["ld"])
    return {"ld_clean": clean["ld"], "ld_mean": mean["ld"], "ld_actual": actual["ld"],
            "accuracy_clean": clean["accuracy"], "accuracy_mean": mean["accuracy"],
            "to_counterfactual_actual": actual["to_counterfactual"],
            "kept": _ratio(same["ld"] - mean["ld"], clean["ld"] - mean["ld"], scale),
            "moved": _ratio(mean["ld"] - swap["ld"], mean["ld"] - actual["ld"], scale),
            "accuracy_same": same["accuracy"], "accuracy_kept": _ratio(
                same["accuracy"] - mean["accuracy"], clean["accuracy"] - mean["accuracy"], 1.0),
            "to_counterfactual": swap["to_counterfactual"],
            "ld_same": same["ld"], "ld_swap": swap["ld"]}


def helix_patching(
    lm,
    train: Sequence[Example],
    test: Sequence[Example],
    target: AnswerSpace | NumberTokens | NumberFormat,
    *,
    operand: str = "a",
    op: str = "+",
    roles: Sequence[str] = ("block",),
    layers: Sequence[int] | None = None,
    periods: Sequence[float] = (2, 5, 10, 100),
    methods: Sequence[str] = METHODS,
    mode: str = "replace",
    pca_dim: int = 100,
    prediction: str = "vocab",
    correct_only: bool = True,
    train_states: HiddenStates | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    store: Store | None = None,
) -> PatchResult:
    """Fit the reconstructions on ``train`` prompts' operand states at each (role, layer) and
    patch them into the ``test`` prompts (metrics: the module doc). ``target``: the answers'
    space (or single-token numbers / number format), which bounds the counterfactual answers.
    ``train_states``: ``train``'s states at the operand, if collected already (``collect``);
    ``store`` keeps the engine's (batch, condition) units (resume)."""
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UserError(f"unknown method(s) {bad}; choose among {', '.join(METHODS)}.")
    if not test:
        raise UserError("no prompts to patch; use a larger operand range or another split.")
    max_answer = target.max_answer if isinstance(target, AnswerSpace) else target.max_number
    target = answer_target(target)
    if isinstance(target, NumberTokens):
        require_numbers(target, max(e.answer for e in test), getattr(lm, "name", ""))
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(int(i) for i in layers))
    if train_states is None:
        train_states = collect(lm, train, token=operand, roles=roles, layers=layers,
                               progress=progress)
    elif train_states.token != operand:
        raise UserError(f"train_states were collected at token {train_states.token!r}, the "
                        f"patch is at operand {operand!r}; collect them at the operand.")
    missing = [(r, i) for r in roles for i in layers
               if r not in train_states.states or i not in train_states.layers]
    if missing:
        raise UserError(f"train_states lack {missing[:3]}; collect those roles and layers.")
    n_train = train_states.numbers(operand)
    lo, hi = int(n_train.min()), int(n_train.max())

    test = list(test)
    swapped = counterfactuals(test, operand, op, lo, hi, max_answer, seed)
    scorer = _Scorer(lm, test, swapped, target, operand, prediction, batch_size)
    clean = scorer.run([Condition("clean", positions="all")], store)["clean"]
    keep = np.flatnonzero(clean.pop("hits")) if correct_only else np.arange(len(test))
    if len(keep) == 0:
        raise UserError("the model answers none of the test prompts correctly; patch all "
                        "prompts (correct_only=False, --all-prompts) or use a better model.")
    if len(keep) < len(test):
        test, swapped = [test[i] for i in keep], [swapped[i] for i in keep]
        scorer = _Scorer(lm, test, swapped, target, operand, prediction, batch_size,
                         tuple([part[i] for i in keep] for part in scorer.tokens))
        clean = scorer.run([Condition("clean-kept", positions="all")], store)["clean-kept"]
    ids, at = scorer.tokens
    kw = dict(token=operand, roles=roles, layers=layers, progress=False)
    current = collect(lm, test, ids=cut_after(ids, at), **kw)
    other = collect(lm, swapped, **kw)
    n_same, n_swap = (np.array([getattr(e, operand) for e in x], dtype=np.float64)
                      for x in (test, swapped))

    rows, fits = [], {}
    for role, layer in tqdm([(r, i) for r in roles for i in layers], desc="helix patching",
                            unit="module", disable=not progress):
        x_train = train_states.at(role, layer)
        recs = fit_reconstructions(x_train, n_train, periods, methods,
                                   pca_dim=pca_dim, seed=seed)
        fits[(role, layer)] = {m: rec.summary() for m, rec in recs.items()}
        h_now, h_other = current.at(role, layer), other.at(role, layer)
        vectors = {"mean": np.broadcast_to(x_train.mean(axis=0), h_now.shape),
                   "actual": h_other}
        for method, rec in recs.items():
            vectors[f"{method}-same"] = rec.patched(n_same, h_now, h_now, mode)
            vectors[f"{method}-swap"] = rec.patched(n_swap, h_other, h_now, mode)
        got = scorer.run([scorer.condition(f"{role}-{layer}-{k}", role, layer, v)
                          for k, v in vectors.items()], store)
        got = {k.split("-", 2)[2]: v for k, v in got.items()}
        rows += [{"role": role, "layer": layer, "method": method, "n_params": rec.n_params,
                  "r2_heldout": rec.r2_heldout, **_metrics(clean, got["mean"], got["actual"],
                                                           got[f"{method}-same"],
                                                           got[f"{method}-swap"])}
                 for method, rec in recs.items()]
    pairs = [{"a": e.a, "b": e.b, "answer": e.answer, f"{operand}_counterfactual":
              getattr(s, operand), "answer_counterfactual": s.answer}
             for e, s in zip(test, swapped)]
    settings = {"operand": operand, "op": op, "roles": list(roles), "layers": layers,
                "periods": [float(T) for T in periods], "methods": list(methods),
                "mode": mode, "pca_dim": pca_dim, "correct_only": correct_only,
                "seed": seed, "n_train": len(n_train), "n_test": len(test),
                "counterfactual_range": [lo, hi], "max_answer": int(max_answer),
                "scores": ("next-token logit" if scorer.single else
                           "teacher-forced log p(answer); greedy whole answers")}
    clean.pop("hits", None)
    return PatchResult(rows, {**clean, "n": len(test)}, fits, pairs, settings)


def patching_plot(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Fraction of the effect restored per layer, one line per method: "same" (kept) and
    "swap" (moved) side by side, one row of panels per role."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    roles = list(dict.fromkeys(r["role"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(len(roles), 2, figsize=(10, 3.2 * len(roles)), squeeze=False)
    for i, role in enumerate(roles):
        for ax, (key, label) in zip(axes[i], [("kept", "same number: LD kept"),
                                              ("moved", "other number: LD moved")]):
            for m in methods:
                pts = sorted((r["layer"], r[key]) for r in rows
                             if r["role"] == role and r["method"] == m)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=m)
            ax.axhline(1, color="0.6", lw=0.8, ls="--")
            ax.axhline(0, color="0.6", lw=0.8)
            ax.set(xlabel="layer", ylabel="fraction of effect", title=f"{role}: {label}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
