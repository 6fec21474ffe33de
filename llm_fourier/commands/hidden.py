"""``llm-fourier hidden``: Fourier probes on hidden states, with their controls.

Collects every chosen layer's residual (block), attention and MLP outputs at one token of
addition prompts (``--token a|b|last``), then per (role, layer): mod-T probes (accuracy,
Cohen's kappa) and a helix fit (held-out R^2, phases, decoding) of ``--target``, each beside
its shuffled-label baseline and the same probe on a randomly initialised copy of the model,
and whether the per-number mean states show a Fourier spike at each T. Optional:
``--control FILE`` (a per-number scalar such as token counts: its spectrum beside the
embedding's) and ``--ablate-periods`` (remove the fitted Fourier directions and measure
task accuracy, beside a random subspace and, for single-token numbers, the logit filter).

Writes ``results.json``, ``probes.csv``, ``ablation.csv`` and PNGs (kappa and R^2 by layer).
Collected states are cached in the output folder and ablation rows are saved as they
finish, so an interrupted run resumes when run again with the same settings.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from llm_fourier.commands import Command
from llm_fourier.commands.probe import add_model_arguments
from llm_fourier.errors import UserError
from llm_fourier.hidden import (
    ROLES,
    TARGETS,
    TOKENS,
    HiddenStates,
    collect,
    flat_row,
    frequency_control,
    load_scalar,
    probe_layers,
    random_copy,
)
from llm_fourier.hidden_ablate import GROUPS, probe_ablation
from llm_fourier.models import load_model
from llm_fourier.numbers import find_number_tokens, number_rows
from llm_fourier.report.files import (
    atomic_write_bytes,
    read_json,
    save_figure,
    write_csv,
    write_json,
)
from llm_fourier.report.plots import pyplot
from llm_fourier.report.tables import format_table
from llm_fourier.tasks import make_task
from probes.fourier import FourierBasis, spectrum
from probes.linear import per_number_means

STATE_KEYS = ("model", "tokenizer", "op", "max_operand", "shots", "seed", "token", "roles",
              "layers", "n_probe")


def _cached_collect(lm, examples, args, layers, path: Path, progress: bool) -> HiddenStates:
    """``collect`` with the states cached in ``path`` (.npz) for the same settings."""
    key = repr(sorted((k, str(getattr(args, k, None))) for k in STATE_KEYS) + [("layers", layers)])
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key:
                return HiddenStates({r: z[r] for r in args.roles}, layers, list(examples),
                                    args.token)
    hs = collect(lm, examples, args.token, args.roles, layers, args.batch_size, progress)
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), **hs.states)
    atomic_write_bytes(path, buf.getvalue())
    return hs


def _spikes(hs: HiddenStates, target: str, periods) -> dict:
    """Per (role, layer): outlier periods of the per-number mean states (numbers 0..p-1)."""
    uniq, _ = per_number_means(hs.at(hs.roles[0], hs.layers[0]), hs.numbers(target))
    if len(uniq) < 3 or not np.array_equal(uniq, np.arange(len(uniq))):
        return {}
    basis = FourierBasis(len(uniq), "dft")
    out = {}
    for r in hs.states:
        for i in hs.layers:
            _, means = per_number_means(hs.at(r, i), hs.numbers(target))
            outl = spectrum(means, basis, axis=0).outliers()
            ks = {o.k for o in outl}
            out[(r, i)] = {"outlier_periods": [round(o.period, 3) for o in outl[:8]],
                           **{f"spike_mod{T}": basis.k_of_period(T) in ks for T in periods}}
    return out


def _plot(rows: list[dict], periods, roles, path_kappa: Path, path_r2: Path) -> None:
    plt = pyplot()

    for path, metrics in ((path_kappa, [f"kappa_mod{T}" for T in periods]),
                          (path_r2, ["r2_test"])):
        fig, axes = plt.subplots(1, len(roles), figsize=(4.2 * len(roles), 3.2), squeeze=False)
        for ax, role in zip(axes[0], roles):
            sel = [r for r in rows if r["role"] == role]
            x = [r["layer"] for r in sel]
            for j, m in enumerate(metrics):
                c = f"C{j}"
                ax.plot(x, [r[m] for r in sel], "o-", color=c, label=m.replace("kappa_", ""))
                ax.plot(x, [r[m + "_shuffled"] for r in sel], ":", color=c, alpha=0.7)
                if f"random_{m}" in sel[0]:
                    ax.plot(x, [r[f"random_{m}"] for r in sel], "--", color=c, alpha=0.7)
            ax.set(title=role, xlabel="layer", ylabel=metrics[0].split("_")[0])
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.axhline(0, color="grey", lw=0.5)
        axes[0, 0].legend(fontsize=7, title="solid: model, dashed: random init, "
                          "dotted: shuffled", title_fontsize=6)
        save_figure(fig, path)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    target = args.target or (args.token if args.token in ("a", "b") else "answer")
    for name in ("n_probe", "n_eval", "batch_size", "pca_dim", "mod_pca_dim"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1.")
    if any(T < 2 for T in args.periods):
        raise UserError(f"--periods must be integers >= 2, got {args.periods}.")
    lm = load_model(args.model, args.tokenizer, device_map=args.device_map, dtype=args.dtype,
                    trust_remote_code=args.trust_remote_code,
                    verify=not args.skip_roles_check)
    task = make_task(args.op, args.max_operand, seed=args.seed, shots=args.shots)
    layers = list(range(lm.n_layers)) if args.layers is None else sorted(set(args.layers))
    if not all(0 <= i < lm.n_layers for i in layers):
        raise UserError(f"--layers {args.layers} leave the model's layers 0..{lm.n_layers - 1}.")
    progress = not args.quiet
    kw = {"pca_dim": args.pca_dim, "mod_pca_dim": args.mod_pca_dim, "n_splits": args.folds,
          "seed": args.seed, "progress": progress}
    examples = task.train[:args.n_probe]
    hs = _cached_collect(lm, examples, args, layers, out / "states.npz", progress)
    main = probe_layers(hs, target, args.periods, args.helix_periods, **kw)
    spikes = _spikes(hs, target, args.periods)
    rows = [{**flat_row(r, i, res), **spikes.get((r, i), {})} for (r, i), res in main.items()]
    random_res = None
    if not args.no_random_baseline:
        rand = random_copy(lm, args.seed)
        rhs = _cached_collect(rand, examples, args, layers, out / "states_random.npz", progress)
        random_res = probe_layers(rhs, target, args.periods, args.helix_periods,
                                  **{**kw, "progress": False}, shuffled=False)
        del rand
        for row, res in zip(rows, random_res.values()):
            row.update({k: v for k, v in flat_row(row["role"], row["layer"], res,
                                                  "random_").items()
                        if k not in ("role", "layer")})
    results: dict = {
        "model": lm.name, "token": args.token, "target": target, "layers": layers,
        "roles": list(args.roles), "periods": args.periods, "helix_periods": args.helix_periods,
        "n_examples": len(examples), "task": task.settings,
        "probes": [{"role": r, "layer": i, **{k: v for k, v in res.items() if k != "fit"},
                    "random_init": None if random_res is None else
                    {k: v for k, v in random_res[(r, i)].items() if k != "fit"},
                    "spectrum": spikes.get((r, i))}
                   for (r, i), res in main.items()],
    }
    numbers = find_number_tokens(lm.tokenizer, max_number=task.max_answer)
    if args.control:
        values = load_scalar(args.control)
        if numbers.p >= min(len(values), task.max_answer + 1):  # numbers are single tokens
            beside, what = number_rows(lm.embedding(), numbers).float().cpu().numpy(), \
                "embedding"
        else:
            uniq, beside = per_number_means(hs.at(hs.roles[0], layers[0]), hs.numbers(target))
            beside = beside if np.array_equal(uniq, np.arange(len(uniq))) else None
            what = f"mean {hs.roles[0]} state, layer {layers[0]}"
        results["frequency_control"] = {**frequency_control(values, beside, args.basis),
                                        "beside_what": what if beside is not None else None}
    if args.ablate_periods:
        results["ablation"] = _ablate(lm, task, main, args, numbers, out, progress)
    write_json(out / "results.json", results)
    write_csv(out / "probes.csv", rows)
    _plot(rows, args.periods, list(args.roles), out / "kappa_by_layer.png",
          out / "r2_by_layer.png")
    cols = ["role", "layer"] + [f"kappa_mod{T}" for T in args.periods[:3]] + \
        [f"kappa_mod{args.periods[0]}_shuffled", "r2_test", "r2_test_shuffled"]
    if random_res is not None:
        cols += [f"random_kappa_mod{args.periods[0]}", "random_r2_test"]
    print(format_table(rows, cols))
    if "ablation" in results:
        print(format_table(results["ablation"], ["row", "rank", "accuracy", "method"]))
    print(f"results: {out / 'results.json'}")
    return results


def _ablate(lm, task, main, args, numbers, out: Path, progress: bool) -> list[dict]:
    partial = out / "ablation_partial.json"
    settings = {"periods": args.ablate_periods, "groups": args.ablate_groups,
                "n_eval": args.n_eval, "model": args.model, "token": args.token,
                "target": args.target, "layers": args.layers, "seed": args.seed}
    done = {}
    if partial.is_file():
        saved = read_json(partial)
        done = saved["rows"] if saved.get("settings") == settings else {}

    def on_row(label: str, res: dict) -> None:
        done[label] = res
        write_json(partial, {"settings": settings, "rows": done})

    positions = args.ablate_positions or ("last" if args.token == "last" else "all")
    fits = {k: v["fit"] for k, v in main.items()}
    rows = probe_ablation(lm, task.test[:args.n_eval], fits, args.ablate_periods,
                          groups=args.ablate_groups, numbers=numbers, positions=positions,
                          batch_size=args.batch_size, seed=args.seed, progress=progress,
                          done=done, on_row=on_row)
    write_csv(out / "ablation.csv", [{k: v for k, v in r.items() if k != "error_histogram"}
                                     for r in rows])
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--op", default="+", choices=("+", "*"), help="operation")
    parser.add_argument("--max-operand", type=int, default=99,
                        help="operands 0..N (default: %(default)s)")
    parser.add_argument("--shots", type=int, default=0, help="in-context examples per prompt")
    parser.add_argument("--seed", type=int, default=0, help="task, CV and random-init seed")
    parser.add_argument("--n-probe", type=int, default=1000,
                        help="training-split prompts whose states are probed")
    parser.add_argument("--token", default="a", choices=TOKENS,
                        help="where to read the state: last token of operand a or b, or the "
                             "last prompt token (default: a)")
    parser.add_argument("--target", default=None, choices=TARGETS,
                        help="number to probe for (default: the --token operand, else answer)")
    parser.add_argument("--roles", nargs="+", default=list(ROLES), choices=ROLES,
                        help="block = residual stream after the layer")
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="layers to probe (default: all)")
    parser.add_argument("--periods", type=int, nargs="+", default=[2, 5, 10],
                        help="T of the mod-T probes")
    parser.add_argument("--helix-periods", type=float, nargs="+", default=[2, 5, 10, 100],
                        help="periods of the helix fit (Kantamneni & Tegmark)")
    parser.add_argument("--pca-dim", type=int, default=100, help="PCA dimension of the helix")
    parser.add_argument("--mod-pca-dim", type=int, default=64,
                        help="PCA dimension of the mod-T probes")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--no-random-baseline", action="store_true",
                        help="skip the randomly initialised copy (it needs a second model "
                             "in memory)")
    parser.add_argument("--control", default=None, metavar="FILE",
                        help="per-number scalar (CSV/JSON/NPY, e.g. token counts): its "
                             "spectrum beside the embedding's")
    parser.add_argument("--basis", default="paper", choices=("paper", "dft"),
                        help="Fourier basis of the control spectra")
    parser.add_argument("--ablate-periods", type=float, nargs="+", default=None,
                        help="remove the fitted directions of these periods and measure "
                             "accuracy (default: no ablation)")
    parser.add_argument("--ablate-groups", nargs="+", default=["attn+MLP", "attn", "MLP"],
                        choices=list(GROUPS), help="module outputs to ablate")
    parser.add_argument("--ablate-positions", default=None, choices=("all", "last"),
                        help="where to ablate (default: last for --token last, else all)")
    parser.add_argument("--n-eval", type=int, default=200, help="test prompts to evaluate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


COMMAND = Command("hidden", "mod-T and helix probes on hidden states, with shuffled and "
                  "random-init baselines, frequency control and probe-direction ablation",
                  add_arguments, run)
