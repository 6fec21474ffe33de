"""``llm-fourier ablate``: Fourier filter ablations in the layout of Zhou et al.'s Table 1.

Rows: none; attn+MLP / attn / MLP with low frequencies removed (high-pass, k < tau); the
same with high frequencies removed (low-pass, k >= tau); with ``--keep K ...`` also the
keep-only-those-components filter. Writes ``results.json`` (the table with loss, accuracy,
signed-error histograms, fraction of errors that are multiples of 10, mod-2 / mod-10
accuracy), ``table.csv``, ``predictions.csv`` and ``error_histograms.png``. Finished rows
are kept in ``rows/`` and skipped when the command is run again with the same settings.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from llm_fourier.ablate import PREDICTIONS, ablation_table
from llm_fourier.commands import Command
from llm_fourier.commands.probe import add_model_arguments, add_task_arguments, prepare
from llm_fourier.distributed import broadcast_object, init_distributed
from llm_fourier.errors import UserError
from llm_fourier.report.files import read_json, write_csv, write_json
from llm_fourier.report.plots import error_histograms
from llm_fourier.report.tables import format_table
from probes import FourierBasis

SUMMARY = ("row", "loss", "accuracy", "n_errors", "frac_errors_mult_10", "mod2_accuracy",
           "mod10_accuracy", "max_abs_error")


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    """"all" (or None) -> every layer; "0,3,8-11" -> those layers."""
    if text is None or text.strip() == "all":
        return list(range(n_layers))
    layers: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(-?\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UserError(f"cannot read --layers {text!r}; write e.g. 'all' or '0,3,8-11'.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        layers.update(range(lo, hi + 1))
    bad = sorted(i for i in layers if not 0 <= i < n_layers)
    if bad or not layers:
        raise UserError(f"--layers {text!r} names layers outside 0..{n_layers - 1}.")
    return sorted(layers)


def check_components(args: argparse.Namespace, p: int) -> None:
    """Refuse --tau / --keep outside the components 1..K of the basis over p numbers."""
    k_max = FourierBasis(p, args.basis).n_components
    if not 1 <= args.tau <= k_max:
        raise UserError(f"--tau must lie in 1..{k_max} for numbers 0..{p - 1}, got "
                        f"{args.tau}; pass a smaller --tau.")
    bad = [k for k in args.keep or [] if not 1 <= k <= k_max]
    if bad:
        raise UserError(f"--keep components must lie in 1..{k_max} for numbers 0..{p - 1}, "
                        f"got {bad}.")


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


def run(args: argparse.Namespace) -> dict:
    """Under ``accelerate launch`` / ``torchrun`` the ranks share the prompts; rank 0 writes."""
    out = Path(args.out)
    main = init_distributed().is_main
    settings = {k: v for k, v in sorted(vars(args).items()) if not k.startswith("_")
                and k not in ("out", "batch_size")}
    key = json.dumps(settings, sort_keys=True, default=str)
    lm, examples, numbers = prepare(args, lambda p: check_components(args, p))
    layers = parse_layers(args.layers, lm.n_layers)

    rows_dir = out / "rows"
    done = {}
    for path in sorted(rows_dir.glob("*.json")) if main and rows_dir.exists() else []:
        saved = read_json(path)
        if saved.get("settings") == key:
            done[saved["label"]] = saved["result"]
    if done:
        print(f"resuming: {len(done)} finished row(s) in {rows_dir}")
    done = broadcast_object(done)  # every rank runs the same rows

    def keep_row(label: str, result: dict) -> None:
        if main:
            write_json(rows_dir / f"{_slug(label)}.json",
                       {"settings": key, "label": label, "result": result})

    table = ablation_table(lm, examples, numbers, tau=args.tau, basis_kind=args.basis,
                           keep=args.keep, layers=layers, positions=args.positions,
                           prediction=args.prediction, batch_size=args.batch_size, done=done,
                           on_row=keep_row)
    results = {
        "model": lm.name, "settings": settings, "n_examples": len(examples),
        "numbers": {"p": numbers.p, "leading_space": numbers.leading_space},
        "layers": layers,
        "prediction": ("argmax over the whole vocabulary (the model's next token)"
                       if args.prediction == "vocab" else "argmax over the number tokens"),
        "table": [{k: v for k, v in r.items() if k != "predictions"} for r in table],
        "files": ["table.csv", "predictions.csv", "error_histograms.png"],
    }
    if not main:  # the other ranks helped with the prompts; rank 0 writes and prints
        return results
    write_csv(out / "table.csv", [{c: r[c] for c in SUMMARY} for r in table])
    preds = [{"a": e.a, "b": e.b, "answer": e.answer,
              **{r["row"]: r["predictions"][i] for r in table}} for i, e in enumerate(examples)]
    write_csv(out / "predictions.csv", preds)
    error_histograms({r["row"]: r["error_histogram"] for r in table},
                     out / "error_histograms.png", "signed errors (prediction - answer)")
    write_json(out / "results.json", results)
    print(format_table(results["table"], list(SUMMARY)))
    print(f"results: {out / 'results.json'} (error histograms: "
          f"{out / 'error_histograms.png'})")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_task_arguments(parser)
    parser.add_argument("--layers", default="all",
                        help="layers to filter: 'all' (default) or e.g. '0,3,8-11'")
    parser.add_argument("--positions", default="last", choices=("last", "all"),
                        help="filter the last token only (default) or every position")
    parser.add_argument("--keep", type=int, nargs="+", default=None, metavar="K",
                        help="also run the filter keeping only components K (e.g. 52 104)")
    parser.add_argument("--prediction", default="vocab", choices=PREDICTIONS,
                        help="vocab: the model's own next token (the paper's; default); "
                             "numbers: argmax over the number tokens only")


COMMAND = Command("ablate", "low/high-frequency filter ablations of attention and MLP "
                  "outputs (Table 1 of Zhou et al.)", add_arguments, run)
