"""Fourier probes on hidden states: collect, probe, control (ablate: ``hidden_ablation``).

``collect`` reads the per-layer residual (block output), attention and MLP outputs at one token
of each prompt: the last token of operand a or b (found through the tokenizer's offsets, so
digit-splitting tokenizers work) or the last prompt token. A causal model's state at token j
depends on tokens <= j only, so the prompt is cut after that token and the engine reads the
last position, stopping after the deepest layer read. ``probe_layers`` fits mod-T probes and
helix fits per (role, layer) with baselines, intervals over numbers and p-values;
``token_identity`` and ``frequency_control`` are its controls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llm_fourier.errors import UserError
from llm_fourier.model.engine import Condition, Engine, PromptSet
from llm_fourier.model.loading import LoadedModel
from llm_fourier.model.tasks import Example
from llm_fourier.output.progress import tqdm
from llm_fourier.output.reading import finite_numbers, read_data, read_text
from probes import FourierBasis, spectrum
from probes.linear import fit_helix, mod_probes
from probes.stats import StatsConfig

TOKENS = ("a", "b", "last")
TARGETS = ("a", "b", "answer")
ROLES = ("block", "attn", "mlp")
CONTROLS = ("auto", "always", "never")
MOD_STAT_KEYS = ("accuracy_ci_low", "accuracy_ci_high", "accuracy_p_value", "kappa_ci_low",
                 "kappa_ci_high", "kappa_p_value", "ci_inflation")
HELIX_STAT_KEYS = ("r2_test_ci_low", "r2_test_ci_high", "r2_test_p_value",
                   "decode_accuracy_ci_low", "decode_accuracy_ci_high",
                   "decode_accuracy_p_value")


def operand_spans(example: Example) -> dict[str, tuple[int, int]]:
    """Character spans of the query's operands: the last two digit runs of the prompt."""
    runs = [m.span() for m in re.finditer(r"\d+", example.prompt)]
    if len(runs) < 2:
        raise UserError(f"cannot find two operands in the prompt {example.prompt!r}; use "
                        "templates that write {a} and {b} as digits.")
    (a0, a1), (b0, b1) = runs[-2], runs[-1]
    if int(example.prompt[a0:a1]) != example.a or int(example.prompt[b0:b1]) != example.b:
        raise UserError(f"the last two numbers of {example.prompt!r} are not a={example.a}, "
                        f"b={example.b}; put {{a}} and {{b}} last in the template.")
    return {"a": (a0, a1), "b": (b0, b1)}


def _last_token_in(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> int:
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < span[1] and e > span[0]]
    if not hits:
        raise UserError(f"no token covers characters {span} of the prompt; the tokenizer's "
                        "offsets do not match its text.")
    return hits[-1]


def read_positions(tokenizer, examples: Sequence[Example], token: str = "last"
                   ) -> tuple[list[list[int]], list[int]]:
    """Each prompt's token ids and the index of the token read (``token`` in a, b, last)."""
    if token not in TOKENS:
        raise UserError(f"--token must be one of {', '.join(TOKENS)}, got {token!r}.")
    prompts = [e.prompt for e in examples]
    if token == "last":
        ids = [list(x) for x in tokenizer(prompts)["input_ids"]]
        return ids, [len(x) - 1 for x in ids]
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("finding an operand's token needs a fast tokenizer (offsets); load "
                        "the model's tokenizer with use_fast=True or probe --token last.")
    enc = tokenizer(prompts, return_offsets_mapping=True)
    return [list(x) for x in enc["input_ids"]], [
        _last_token_in(offs, operand_spans(ex)[token])
        for offs, ex in zip(enc["offset_mapping"], examples)]


def cut_after(ids: Sequence[Sequence[int]], at: Sequence[int]) -> list[list[int]]:
    """Each prompt's ids cut after its read token (the pair ``read_positions`` gives)."""
    return [x[:i + 1] for x, i in zip(ids, at)]


def token_ids_at(tokenizer, examples: Sequence[Example], token: str = "last") -> list[list[int]]:
    """Token ids of each prompt, cut after the chosen token (``token`` in a, b, last)."""
    return cut_after(*read_positions(tokenizer, examples, token))


@dataclass
class HiddenStates:
    """``states[role]``: N x L x D float32 rows at one token of each example."""

    states: dict[str, np.ndarray]
    layers: list[int]
    examples: list[Example]
    token: str
    read_ids: np.ndarray  # the id of the token read in each example
    ids: list[list[int]] | None = field(default=None, repr=False)  # as collect cut them

    def numbers(self, target: str) -> np.ndarray:
        if target not in TARGETS:
            raise UserError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}.")
        return np.array([getattr(e, target) for e in self.examples], dtype=np.int64)

    @property
    def roles(self) -> list[str]:
        return list(self.states)

    def at(self, role: str, layer: int) -> np.ndarray:
        return self.states[role][:, self.layers.index(layer)]


def collect(lm: LoadedModel, examples: Sequence[Example], token: str = "last",
            roles: Sequence[str] = ROLES, layers: Sequence[int] | None = None,
            batch_size: int = 32, progress: bool = True,
            ids: Sequence[Sequence[int]] | None = None) -> HiddenStates:
    """Hidden states at ``token`` of every example, per role and layer (see the module doc);
    ``ids``: the prompts' tokens cut after that token, when another collect has them."""
    if not examples:
        raise UserError("no examples to probe; use a larger operand range or --limit.")
    layers = list(range(lm.n_layers)) if layers is None else sorted(set(int(i) for i in layers))
    ids = token_ids_at(lm.tokenizer, examples, token) if ids is None else ids
    prompts = PromptSet.build(lm, examples, batch_size, ids=ids)
    units = Engine(lm, prompts).run(
        [Condition("states", positions="all")],
        lambda b, c, out: {r: x[:, 0] for r, x in out.rows.items()},
        roles=roles, layers=layers, logits=False, stop_after=max(layers), progress=progress,
        desc=f"collect ({token} token)")["states"]
    return HiddenStates({r: prompts.scatter([u[r] for u in units]) for r in roles}, layers,
                        list(examples), token, np.array([x[-1] for x in ids], np.int64),
                        [list(x) for x in ids])


def random_copy(lm: LoadedModel, seed: int = 0) -> LoadedModel:
    """A randomly initialised model of the same config (built locally, nothing downloaded)."""
    from transformers import AutoModelForCausalLM

    dtype = next(lm.model.parameters()).dtype
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(lm.model.config, dtype=dtype)
    return LoadedModel(model.to(lm.input_device).eval(), lm.tokenizer, lm.roles,
                       f"{lm.name} (random init, seed {seed})")


def token_identity(token_ids, numbers, periods: Sequence[int],
                   threshold: float = 0.9) -> dict[int, dict]:
    """Per period T: how far the token id at the read position alone tells ``n mod T`` for
    numbers it never saw. With a digit-splitting tokenizer the state at an operand's last
    token sits on that digit, so ``a mod 10`` (and mod 2, mod 5) *is* the token's identity:
    any probe, even on a random model, decodes it, saying nothing about Fourier features.
    ``token_accuracy``: each number's rows get the residue most common among the rows of
    *other* numbers at the same token id (none: wrong), as a probe knowing only the token
    would on held-out numbers; ``function_of_token``: every token id carries one residue;
    ``confounded``: ``token_accuracy >= threshold`` (never with single-token numbers).
    """
    tok, n = np.asarray(token_ids), np.asarray(numbers, dtype=np.int64)
    _, t_idx = np.unique(tok, return_inverse=True)
    # rows sharing both number and token: a number's own rows at its token
    _, pair_idx, pair_count = np.unique(np.stack([n, t_idx]), axis=1, return_inverse=True,
                                        return_counts=True)
    own = pair_count[pair_idx.ravel()]
    out = {}
    for T in periods:
        r = np.mod(n, int(T))
        table = np.zeros((t_idx.max() + 1, int(T)))
        np.add.at(table, (t_idx, r), 1.0)
        others = table[t_idx]  # rows at this token, minus the number's own (all residue r)
        others[np.arange(len(r)), r] -= own
        acc = float(((others.sum(1) > 0) & (others.argmax(1) == r)).mean())
        out[int(T)] = {"period": int(T), "token_accuracy": acc,
                       "function_of_token": bool(((table > 0).sum(1) == 1).all()),
                       "chance": float(np.bincount(r).max() / len(r)),
                       "n_token_ids": int(t_idx.max() + 1), "confounded": acc >= threshold}
    return out


def probe_states(x: np.ndarray, numbers: np.ndarray, periods: Sequence[int],
                 helix_periods: Sequence[float], *, pca_dim: int = 100, mod_pca_dim: int = 64,
                 n_splits: int = 5, seed: int = 0, shuffled: bool = True,
                 stats: StatsConfig | None = None, groups: np.ndarray | None = None) -> dict:
    """Mod-T probes and a helix fit of one (role, layer), with shuffled-label baselines.
    Every score carries ``*_ci_low``, ``*_ci_high`` (bootstrap over numbers) and ``*_p_value``
    (permutation) unless ``stats`` has ``n_boot = n_perm = 0``. ``groups`` (e.g. the token id
    at the read position) are regressed out first: the token-identity control."""
    stats = StatsConfig(seed=seed) if stats is None else stats
    out: dict = {"mod": {}, "n_numbers": int(len(np.unique(numbers)))}
    for r in mod_probes(x, numbers, periods, n_splits=n_splits, pca_dim=mod_pca_dim,
                        seed=seed, shuffled=shuffled, stats=stats, groups=groups):
        row = out["mod"].setdefault(r.period, {})
        if r.shuffled:
            row |= {"accuracy_shuffled": r.accuracy, "kappa_shuffled": r.kappa,
                    "kappa_shuffled_std": r.kappa_std}
        else:
            row |= {"accuracy": r.accuracy, "kappa": r.kappa, "chance": r.chance_accuracy,
                    "block": r.block, **{k: getattr(r, k) for k in MOD_STAT_KEYS}}
    fit = fit_helix(x, numbers, helix_periods, pca_dim=pca_dim, seed=seed, stats=stats,
                    groups=groups)
    out["helix"], out["fit"] = fit.summary(), fit
    if shuffled:
        base = fit_helix(x, numbers, helix_periods, pca_dim=pca_dim, seed=seed, shuffle=True,
                         groups=groups)
        out["helix"] |= {"r2_test_shuffled": base.r2_test,
                         "decode_accuracy_shuffled": base.decode_accuracy}
    return out


def probe_layers(hs: HiddenStates, target: str, periods: Sequence[int],
                 helix_periods: Sequence[float], *, progress: bool = True,
                 token_ids: np.ndarray | None = None, control: str = "auto",
                 **kwargs) -> dict[tuple[str, int], dict]:
    """``probe_states`` for every captured (role, layer). With ``token_ids`` (``hs.read_ids``)
    each result also gets ``"control"``, the same probes with the token-identity means regressed
    out, for ``control="always"`` or, with ``"auto"``, when ``token_identity`` finds a period
    confounded."""
    numbers = hs.numbers(target)
    if len(np.unique(numbers)) < 10:
        raise UserError(f"only {len(np.unique(numbers))} distinct values of {target}; probes "
                        "need at least 10 (raise --max-operand or --limit).")
    if control not in CONTROLS:
        raise UserError(f"--token-control must be one of {', '.join(CONTROLS)}, "
                        f"got {control!r}.")
    run_control = token_ids is not None and (control == "always" or (
        control == "auto" and any(v["confounded"] for v in
                                  token_identity(token_ids, numbers, periods).values())))
    out = {}
    for r, i in tqdm([(r, i) for r in hs.states for i in hs.layers], desc=f"probe {target}",
                     unit="module", disable=not progress):
        res = probe_states(hs.at(r, i), numbers, periods, helix_periods, **kwargs)
        if run_control:
            res["control"] = without_fit(probe_states(
                hs.at(r, i), numbers, periods, helix_periods, **{**kwargs, "shuffled": False},
                groups=token_ids))
        out[(r, i)] = res
    return out


def without_fit(result: dict) -> dict:
    """A probe result for results.json: everything but the fitted probe object."""
    return {k: v for k, v in result.items() if k != "fit"}


def flat_row(result: dict, prefix: str = "") -> dict:
    """One CSV/table row's scores: per period kappa/accuracy with interval and p-value, helix
    R^2 and decoding with theirs, the baselines, and the token-identity control (``control_``)."""
    row = {}
    for T, m in result["mod"].items():
        for key, v in m.items():
            if key not in ("chance", "block"):  # kappa_ci_low -> kappa_mod10_ci_low
                head, sep, tail = key.partition("_")
                if head not in ("accuracy", "kappa"):  # ci_inflation -> ci_inflation_mod10
                    head, sep, tail = key, "", ""
                row[f"{prefix}{head}_mod{T}{sep}{tail}"] = v
    h = result["helix"]
    row |= {f"{prefix}{key}": h[key] for key in ("r2_test", "r2_test_shuffled", "decode_accuracy",
                                                 "decode_accuracy_shuffled", *HELIX_STAT_KEYS)
            if key in h}
    if "control" in result:
        row |= flat_row(result["control"], f"{prefix}control_")
    return row


def load_scalar(path: str | Path, p: int | None = None) -> np.ndarray:
    """One value per number 0..n-1 from .npy, .json (a list, or {number: value}) or .csv
    (one column of values, or columns number,value; a header line is skipped). Read through
    ``output.reading``: text that is not UTF-8, null, text or non-finite values are one
    sentence naming the file."""
    path, what = Path(path), "control file"
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; give a CSV, JSON or NPY file "
                        "with one value per number.")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            if array.dtype.kind not in "biuf":
                raise ValueError(f"it holds {array.dtype} values, not numbers")
            values = array.ravel().tolist()
        elif path.suffix == ".json":
            data = read_data(path, what, "json")
            if isinstance(data, dict):
                data = _by_number(path, list(data.items()))
            if not isinstance(data, list):
                raise ValueError("it holds neither a list nor a table of values")
            values = [v for row in data for v in row] \
                if data and all(isinstance(row, list) for row in data) else data
        else:
            rows = [r for r in (line.strip().split(",") for line in
                                read_text(path, what).splitlines()) if r and r[0]]
            if rows:  # a header line: its last field is no number
                try:
                    float(rows[0][-1])
                except ValueError:
                    rows = rows[1:]
            values = _by_number(path, [(r[0], r[-1]) for r in rows]) \
                if rows and len(rows[0]) >= 2 else [r[-1] for r in rows]
    except (ValueError, KeyError, EOFError, OverflowError, IndexError) as err:
        raise UserError(f"cannot read numbers from {what} {path} ({err}); write one value per "
                        "number 0..n-1.") from err
    values = np.asarray(finite_numbers(values, path, what), dtype=float)
    if p is not None and len(values) < p:
        raise UserError(f"{path} has {len(values)} values but numbers go up to {p - 1}; give "
                        f"one value for each number 0..{p - 1}.")
    return values[:p]


def _by_number(path: Path, pairs) -> list:
    """Values of (number, value) pairs placed by number; the numbers must be 0..n-1."""
    placed = {int(float(k)): v for k, v in pairs}
    if sorted(placed) != list(range(len(placed))):
        missing = [n for n in range(len(placed) + 5) if n not in placed][:5]
        raise UserError(f"{path} gives values for numbers with gaps (missing e.g. {missing}); "
                        "give one value for every number 0..n-1.")
    return [placed[n] for n in range(len(placed))]


def spectrum_report(values: np.ndarray, basis_kind: str = "paper", tau: int = 50) -> dict:
    """Spectrum over the number axis (axis 0), its outliers and low/high energy."""
    values = np.asarray(values, dtype=float).reshape(len(values), -1)  # numbers x features
    spec = spectrum(values, FourierBasis(len(values), basis_kind), axis=0)
    return {"p": len(values), "basis": basis_kind, "magnitude": spec.nonconstant.tolist(),
            "outliers": [o.as_dict() for o in spec.outliers()],
            "low_high": spec.low_high(min(tau, spec.basis.n_components))}


def frequency_control(values: np.ndarray, beside: np.ndarray | None = None,
                      basis_kind: str = "paper") -> dict:
    """The control scalar's spectrum beside ``beside``'s (p x D, e.g. W_E number rows)."""
    n = len(values) if beside is None else min(len(values), len(beside))
    if n < 3:
        raise UserError(f"a spectrum needs at least 3 numbers, the control covers {n}.")
    out = {"control": spectrum_report(np.asarray(values)[:n], basis_kind)}
    if beside is not None:
        out["beside"] = spectrum_report(np.asarray(beside)[:n], basis_kind)
        periods = [{round(o["period"], 3) for o in out[k]["outliers"]} for k in out]
        out["shared_outlier_periods"] = sorted(periods[0] & periods[1])
    return out
