"""Helix activation patching (Kantamneni & Tegmark 2025): does the model use the fitted helix?

At one (role, layer) the state h(a) at the operand's last token is replaced, inside the full
prompt, by a reconstruction fitted on training prompts (``probes.reconstruct``: the helix and
its baselines with the same parameter count: circle, polynomial, top-PCA, shuffled numbers):

* same: h(a) <- R(a). ``kept = (LD_same - LD_mean) / (LD_clean - LD_mean)``: 1 = the fit
  carries everything the model reads from that state, 0 = no more than the mean ablation
  (h(a) <- the mean training state: the operand's information removed).
* swap: h(a) <- R(a') for another operand a'. ``moved = (LD_mean - LD_swap) /
  (LD_mean - LD_actual)``, where LD_actual patches the real state of the prompt with a' (the
  paper's layer patch): 1 = the fit moves the answer as far as the real state does, 0 = no
  further than removing a. (Measured from the clean run instead, a patch that merely
  destroys a would score about 1/2.)

``LD = score(answer) - score(answer')`` with ``answer' = a' op b``, averaged over prompts
(fractions are ratios of means; NaN where the denominator vanishes: the layer's state at that
token does not reach the answer). Accuracies: of the answer under "same", and the fraction
of prompts that then predict answer' under "swap". a' is drawn uniformly from the training
numbers' range (a' != a, answer' within ``max_answer``). By default only prompts the model
answers correctly are used (as the paper does).

Scoring is a parameter: ``scorer(lm, examples, targets) -> (scores N x m, predictions N)``
runs the forward itself (any padding side, answer tokens appended, generation); the patch
finds the operand's token from each row's first real token and checks its id. The default
``NextTokenScorer`` reads the answers' single-token logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from llm_fourier.analyses.ablation import score_batch
from llm_fourier.analyses.hidden_states import HiddenStates, collect, operand_spans, token_ids_at
from llm_fourier.errors import UserError
from llm_fourier.model.hooks import edit, last_token_logits
from llm_fourier.model.numbers import NumberTokens, require_numbers
from llm_fourier.model.tasks import OPS, Example, tokenize_prompts
from llm_fourier.output.files import save_figure
from llm_fourier.output.plots import pyplot
from llm_fourier.output.progress import tqdm
from probes.reconstruct import METHODS, MODES, fit_reconstructions

OPERANDS = ("a", "b")
Scorer = Callable[[object, Sequence[Example], np.ndarray], tuple[np.ndarray, np.ndarray]]


class NextTokenScorer:
    """Single-token answers: the next-token logit of each target number, and the predicted
    number (``prediction``: "vocab" = argmax over the vocabulary, a non-number is -1;
    "numbers" = argmax over the number tokens)."""

    def __init__(self, numbers: NumberTokens, prediction: str = "vocab") -> None:
        self.numbers = numbers
        self.prediction = prediction
        self.max_answer = numbers.max_number

    def __call__(self, lm, examples: Sequence[Example], targets: np.ndarray):
        enc = tokenize_prompts(lm.tokenizer, [e.prompt for e in examples],
                               device=lm.input_device)
        with torch.inference_mode():
            logits = last_token_logits(lm.model, enc).to(torch.float32)
        ids = torch.as_tensor(self.numbers.token_ids, device=logits.device)
        t = torch.as_tensor(np.asarray(targets), device=logits.device)
        scores = logits.gather(1, ids[t])
        answers = torch.tensor([e.answer for e in examples])
        pred, _ = score_batch(logits, answers.clamp(max=self.numbers.max_number),
                              self.numbers, self.prediction)
        return scores.cpu().numpy().astype(np.float64), pred.numpy()


@contextmanager
def patch_positions(lm, role: str, layer: int, positions: Sequence[int], vectors: Tensor,
                    token_ids: Sequence[int]) -> Iterator[None]:
    """Replace the (role, layer) output of row i at ``positions[i]`` (counted from the row's
    first real token) by ``vectors[i]``; every other position and row is left as it is.

    The token there must be ``token_ids[i]`` (a forward whose tokens differ is refused).
    Forwards whose length differs from their ``input_ids`` (cached decoding steps) pass.
    """
    seen: dict = {}
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    want = torch.as_tensor(list(token_ids), dtype=torch.long)

    def pre_hook(module, args, kwargs) -> None:
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)
        seen["mask"] = kwargs.get("attention_mask")

    def replace(out: Tensor) -> Tensor:
        ids, mask = seen.get("ids"), seen.get("mask")
        if ids is None or out.shape[:2] != ids.shape[:2]:
            return out
        if out.shape[0] != len(pos):
            raise UserError(f"the patch has {len(pos)} rows but the forward has "
                            f"{out.shape[0]}; score one batch of examples per forward.")
        first = (mask.to(torch.long).argmax(-1) if mask is not None
                 else torch.zeros(len(pos), dtype=torch.long, device=ids.device))
        where = (first.cpu() + pos).to(out.device)
        rows = torch.arange(len(pos), device=out.device)
        if bool((where >= out.shape[1]).any()) or not torch.equal(
                ids[rows.to(ids.device), where.to(ids.device)].cpu(), want):
            raise UserError("the patched position does not hold the operand's token; the "
                            "scorer must tokenize each prompt as the tokenizer does by "
                            "default, prompt first.")
        return out.index_put((rows, where), vectors.to(out.device, out.dtype))

    handle = lm.model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        with edit(lm, {(role, layer): replace}, positions="all"):
            yield
    finally:
        handle.remove()


def counterfactuals(examples: Sequence[Example], operand: str, op: str, lo: int, hi: int,
                    max_answer: int, seed: int = 0) -> list[Example]:
    """Each example with its ``operand`` replaced by another number of lo..hi (uniform, the
    new answer <= ``max_answer``), in the prompt text too."""
    if operand not in OPERANDS:
        raise UserError(f"operand must be a or b, got {operand!r}.")
    if op not in OPS:
        raise UserError(f"unknown operation {op!r}; choose one of {', '.join(OPS)}.")
    fn = OPS[op][0]
    rng = np.random.default_rng(seed)
    out = []
    for ex in examples:
        old = getattr(ex, operand)
        other = ex.b if operand == "a" else ex.a
        cand = [v for v in range(lo, hi + 1) if v != old and
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


class _Runner:
    """Scores the evaluation prompts under one patch at a time, batch by batch."""

    def __init__(self, lm, examples, targets, scorer, positions, token_ids, batch_size):
        self.lm, self.examples, self.targets, self.scorer = lm, examples, targets, scorer
        self.positions, self.token_ids, self.batch_size = positions, token_ids, batch_size

    def subset(self, keep: np.ndarray) -> _Runner:
        return _Runner(self.lm, [self.examples[i] for i in keep], self.targets[keep],
                       self.scorer, [self.positions[i] for i in keep],
                       [self.token_ids[i] for i in keep], self.batch_size)

    def scores(self, role: str | None = None, layer: int | None = None,
               vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores N x 2, predictions N), with row i patched by ``vectors[i]`` if given."""
        scores, preds = [], []
        for s in range(0, len(self.examples), self.batch_size):
            sl = slice(s, s + self.batch_size)
            with torch.inference_mode(), (nullcontext() if vectors is None else patch_positions(
                    self.lm, role, layer, self.positions[sl],
                    torch.tensor(np.asarray(vectors[sl]), dtype=torch.float32),
                    self.token_ids[sl])):
                sc, pr = self.scorer(self.lm, self.examples[sl], self.targets[sl])
            scores.append(np.asarray(sc, dtype=np.float64))
            preds.append(np.asarray(pr))
        return np.concatenate(scores), np.concatenate(preds)

    def run(self, role: str | None = None, layer: int | None = None,
            vectors: np.ndarray | None = None) -> dict:
        return _summary(*self.scores(role, layer, vectors), self.targets)


def _summary(scores: np.ndarray, preds: np.ndarray, targets: np.ndarray) -> dict:
    """Mean logit difference (answer minus counterfactual answer) and hit rates."""
    return {"ld": float((scores[:, 0] - scores[:, 1]).mean()),
            "accuracy": float((preds == targets[:, 0]).mean()),
            "to_counterfactual": float((preds == targets[:, 1]).mean())}


def _metrics(clean: dict, mean: dict, actual: dict, same: dict, swap: dict) -> dict:
    scale = abs(clean["ld"])
    return {
        "kept": _ratio(same["ld"] - mean["ld"], clean["ld"] - mean["ld"], scale),
        "moved": _ratio(mean["ld"] - swap["ld"], mean["ld"] - actual["ld"], scale),
        "accuracy_same": same["accuracy"],
        "accuracy_kept": _ratio(same["accuracy"] - mean["accuracy"],
                                clean["accuracy"] - mean["accuracy"], 1.0),
        "to_counterfactual": swap["to_counterfactual"],
        "ld_same": same["ld"], "ld_swap": swap["ld"],
    }


def helix_patching(
    lm,
    train: Sequence[Example],
    test: Sequence[Example],
    numbers: NumberTokens | None = None,
    *,
    operand: str = "a",
    op: str = "+",
    roles: Sequence[str] = ("block",),
    layers: Sequence[int] | None = None,
    periods: Sequence[float] = (2, 5, 10, 100),
    methods: Sequence[str] = METHODS,
    mode: str = "replace",
    pca_dim: int = 100,
    scorer: Scorer | None = None,
    max_answer: int | None = None,
    prediction: str = "vocab",
    correct_only: bool = True,
    train_states: HiddenStates | None = None,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    done: Mapping[tuple[str, int], dict] | None = None,
    on_unit: Callable[[str, int, dict], None] | None = None,
) -> PatchResult:
    """Fit the reconstructions on ``train`` prompts' operand states at each (role, layer) and
    patch them into the ``test`` prompts (see the module docstring for the metrics).

    ``scorer`` defaults to ``NextTokenScorer(numbers, prediction)``; ``max_answer`` (largest
    answer the scorer can score) to ``numbers.max_number``. ``train_states``: states of
    ``train`` at the operand's token already collected (``hidden_states.collect``).
    ``done``: finished (role, layer) units, ``{"rows": [...], "fits": {method: summary}}``,
    taken as they are (a resumed run); ``on_unit(role, layer, unit)`` is called after each
    (role, layer) is computed.
    """
    if mode not in MODES:
        raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise UserError(f"unknown method(s) {bad}; choose among {', '.join(METHODS)}.")
    if scorer is None:
        if numbers is None:
            raise UserError("pass the number tokens (find_number_tokens) or a scorer.")
        scorer = NextTokenScorer(numbers, prediction)
    if max_answer is None:
        max_answer = getattr(scorer, "max_answer", None)
        if max_answer is None:
            raise UserError("pass max_answer: the largest answer the scorer can score.")
    if not test:
        raise UserError("no prompts to patch; use a larger operand range or another split.")
    if numbers is not None:
        require_numbers(numbers, max(e.answer for e in test), getattr(lm, "name", ""))
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
    targets = np.array([[e.answer, s.answer] for e, s in zip(test, swapped)], dtype=np.int64)
    cut = token_ids_at(lm.tokenizer, test, operand)
    runner = _Runner(lm, test, targets, scorer, [len(c) - 1 for c in cut],
                     [c[-1] for c in cut], batch_size)
    scores, preds = runner.scores()
    keep = np.flatnonzero(preds == targets[:, 0]) if correct_only else np.arange(len(test))
    if len(keep) == 0:
        raise UserError("the model answers none of the test prompts correctly; patch all "
                        "prompts (correct_only=False, --all-prompts) or use a better model.")
    clean = _summary(scores[keep], preds[keep], targets[keep])
    test, swapped, runner = [test[i] for i in keep], [swapped[i] for i in keep], \
        runner.subset(keep)
    current = collect(lm, test, token=operand, roles=roles, layers=layers, progress=False)
    other = collect(lm, swapped, token=operand, roles=roles, layers=layers, progress=False)
    n_same = np.array([getattr(e, operand) for e in test], dtype=np.float64)
    n_swap = np.array([getattr(e, operand) for e in swapped], dtype=np.float64)

    rows, fits = [], {}
    keys = [(r, i) for r in roles for i in layers]
    done = done or {}
    for role, layer in tqdm(keys, desc="helix patching", unit="module", disable=not progress):
        if (role, layer) in done:
            fits[(role, layer)] = dict(done[(role, layer)]["fits"])
            rows += done[(role, layer)]["rows"]
            continue
        x_train = train_states.at(role, layer)
        recs = fit_reconstructions(x_train, n_train, periods, methods,
                                   pca_dim=pca_dim, seed=seed)
        fits[(role, layer)] = {m: rec.summary() for m, rec in recs.items()}
        h_now, h_other = current.at(role, layer), other.at(role, layer)
        mean = runner.run(role, layer, np.broadcast_to(x_train.mean(axis=0), h_now.shape))
        actual = runner.run(role, layer, h_other)
        refs = {"ld_clean": clean["ld"], "ld_mean": mean["ld"], "ld_actual": actual["ld"],
                "accuracy_clean": clean["accuracy"], "accuracy_mean": mean["accuracy"],
                "to_counterfactual_actual": actual["to_counterfactual"]}
        unit = []
        for method, rec in recs.items():
            same = runner.run(role, layer, rec.patched(n_same, h_now, h_now, mode))
            swap = runner.run(role, layer, rec.patched(n_swap, h_other, h_now, mode))
            unit.append({"role": role, "layer": layer, "method": method,
                         "n_params": rec.n_params, "r2_heldout": rec.r2_heldout,
                         **_metrics(clean, mean, actual, same, swap), **refs})
        rows += unit
        if on_unit is not None:
            on_unit(role, layer, {"rows": unit, "fits": fits[(role, layer)]})
    pairs = [{"a": e.a, "b": e.b, "answer": e.answer, f"{operand}_counterfactual":
              getattr(s, operand), "answer_counterfactual": s.answer}
             for e, s in zip(test, swapped)]
    settings = {"operand": operand, "op": op, "roles": list(roles), "layers": layers,
                "periods": [float(T) for T in periods], "methods": list(methods),
                "mode": mode, "pca_dim": pca_dim, "correct_only": correct_only,
                "seed": seed, "n_train": len(n_train), "n_test": len(test),
                "counterfactual_range": [lo, hi], "max_answer": int(max_answer)}
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
        for j, (key, label) in enumerate([("kept", "same number: LD kept"),
                                          ("moved", "other number: LD moved")]):
            ax = axes[i, j]
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
