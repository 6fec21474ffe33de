"""``llm-fourier embed``: Fourier spectrum of the number-token embeddings of any HF model.

Takes the rows of W_E (or W_U with ``--unembed``) for the numbers 0..p-1 that the tokenizer
keeps as single tokens, ordered by value, and pools the per-column Fourier magnitudes by
their L2 norm (Zhou et al. 2024, Fig. 3). Works on causal LMs and on encoders (BERT,
RoBERTa). Beside the spectrum it reports linear mod-T probes (accuracy, Cohen's kappa),
since a spike at period T does not by itself make n mod T linearly decodable.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from llm_fourier.commands import Command
from llm_fourier.embeddings import load_embedding_matrix
from llm_fourier.errors import UserError
from llm_fourier.numbers import find_number_tokens, number_rows
from llm_fourier.report.files import save_figure, write_csv, write_json
from llm_fourier.report.plots import pyplot
from llm_fourier.report.tables import format_table
from probes import FourierBasis, spectrum

DEFAULT_SEARCH = 1000  # numbers searched when --max-number is not given


def parse_periods(text: str) -> list[int]:
    try:
        periods = [int(t) for t in text.replace(",", " ").split()]
    except ValueError as err:
        raise UserError(f"--mod-periods {text!r} must be whole numbers such as 2,5,10.") from err
    if any(t < 2 for t in periods):
        raise UserError(f"--mod-periods {text!r}: every period must be at least 2.")
    return periods


def mod_probes(rows: np.ndarray, periods: list[int], seed: int = 0) -> list[dict]:
    """Cross-validated linear probes for n mod T on the number rows (one row per number)."""
    from probes.linear import mod_probe

    numbers = np.arange(len(rows))
    out = []
    for period in tqdm(periods, desc="mod-T probes", leave=False, disable=len(periods) < 2):
        if period >= len(rows) // 2:  # too few numbers per class to cross-validate
            continue
        r = mod_probe(rows, numbers, period, seed=seed)
        out.append({"period": period, "accuracy": r.accuracy, "kappa": r.kappa,
                    "chance_accuracy": r.chance_accuracy})
    return out


def plot_spectrum(spec, outliers: list[dict], title: str, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(spec.ks, spec.nonconstant, lw=0.8, color="tab:blue")
    for o in outliers:
        ax.plot(o["k"], o["magnitude"], "o", color="tab:red", ms=4)
        ax.annotate(f"T={o['period']:g}", (o["k"], o["magnitude"]), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="Fourier component k", ylabel="L2 norm over columns", title=title)
    save_figure(fig, path)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if args.max_number is not None and args.max_number < 2:
        raise UserError(f"--max-number must be at least 2, got {args.max_number}.")
    W, tokenizer = load_embedding_matrix(args.model, unembed=args.unembed, dtype=args.dtype,
                                         trust_remote_code=args.trust_remote_code)
    search = DEFAULT_SEARCH if args.max_number is None else args.max_number
    numbers = find_number_tokens(tokenizer, search, leading_space=args.leading_space)
    if numbers.p < 3:
        raise UserError(f"the tokenizer of {args.model} keeps only {numbers.p} numbers "
                        "(from 0) as single tokens; a spectrum needs at least 0..2 (try "
                        "without --leading-space, or use the hidden-state probes).")
    if args.max_number is not None and numbers.max_number < args.max_number:
        print(f"note: single-token numbers stop at {numbers.max_number}; using 0.."
              f"{numbers.max_number} instead of 0..{args.max_number}")
    rows = number_rows(W, numbers).float().cpu().numpy()
    basis = FourierBasis(numbers.p, args.basis)
    spec = spectrum(rows, basis, axis=0, pool="l2")
    outliers = [o.as_dict() for o in spec.outliers()]
    matrix = "unembedding" if args.unembed else "embedding"
    probes = mod_probes(rows, parse_periods(args.mod_periods))
    results = {
        "model": str(args.model),
        "matrix": matrix,
        "basis": args.basis,
        "numbers": numbers.describe(),
        "d_model": int(rows.shape[1]),
        "spectrum": spec.records(),
        "outliers": outliers,
        "low_high": spec.low_high(args.tau),
        "mod_probes": probes,
    }
    write_json(out / "results.json", results)
    write_csv(out / "spectrum.csv", spec.records())
    title = (f"{Path(str(args.model)).name}: {'W_U' if args.unembed else 'W_E'} rows of "
             f"numbers 0..{numbers.max_number} ({args.basis} basis)")
    plot_spectrum(spec, outliers, title, out / f"{matrix}_spectrum.png")

    print(f"{args.model}: {matrix} rows of numbers 0..{numbers.max_number} "
          f"(p={numbers.p}, D={rows.shape[1]})")
    print(format_table(outliers, ["k", "period", "magnitude"]) if outliers
          else "no outlier components")
    if probes:
        print(format_table(probes, ["period", "accuracy", "kappa", "chance_accuracy"]))
    lh = results["low_high"]
    print(f"low (k<{lh['tau']}) / high energy: {lh['low_fraction']:.3f} / "
          f"{lh['high_fraction']:.3f}")
    print(f"results: {out / 'results.json'}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="hub id or local folder of any model with an input embedding")
    parser.add_argument("--max-number", type=int, default=None,
                        help="analyse numbers 0..N, capped to the single-token range "
                             f"(default: the whole range found up to {DEFAULT_SEARCH})")
    parser.add_argument("--leading-space", action="store_true",
                        help='number tokens written with a leading space (" 17")')
    parser.add_argument("--basis", choices=("paper", "dft"), default="paper",
                        help="paper: w_k = 2 pi k/(p-1) (default); dft: exact DFT over p")
    parser.add_argument("--unembed", action="store_true",
                        help="analyse the unembedding W_U instead of the input embedding")
    parser.add_argument("--tau", type=int, default=50,
                        help="low/high split on component index k (default: 50)")
    parser.add_argument("--mod-periods", default="2,5,10",
                        help='linear mod-T probes on the rows (default: 2,5,10; "" for none)')
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model's own code from the hub (off by default)")


COMMAND = Command("embed", "Fourier spectrum of the number-token embeddings of any HF model",
                  add_arguments, run)
