"""Probe and ablate GPT-2 end to end (Zhou et al.'s setting: a + b, operands 0..260).

    python scripts/probe_gpt2.py [MODEL] [--out runs/gpt2] [--limit 500] [--no-ablate]

MODEL is a hub id or a local folder (default: gpt2; gpt2-xl is the paper's model). Runs
``llm-fourier probe`` (logit lens and per-layer spectra) and ``llm-fourier ablate`` (Table 1)
through the library and prints where the results and figures went. Without the weights it
ends with one sentence saying how to pass a local folder (exit code 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llm_fourier.cli import main as cli


def run(default_model: str, default_out: str, default_shots: int) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=default_model, help="hub id or local folder")
    ap.add_argument("--out", default=default_out)
    ap.add_argument("--limit", type=int, default=None, help="first N test prompts (default: all)")
    ap.add_argument("--shots", type=int, default=default_shots, help="in-context examples")
    ap.add_argument("--max-operand", type=int, default=260, help="operands 0..N (default: 260)")
    ap.add_argument("--tau", type=int, default=None, help="low/high threshold on k (default: "
                    "50 for number tokens, 3 for digits)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--no-ablate", action="store_true", help="probe only")
    args = ap.parse_args()
    common = ["--model", args.model, "--max-operand", str(args.max_operand),
              "--shots", str(args.shots), "--batch-size", str(args.batch_size)]
    common += ["--limit", str(args.limit)] if args.limit else []
    common += ["--tau", str(args.tau)] if args.tau else []
    out = Path(args.out)
    code = cli(["probe", "--out", str(out / "probe"), *common])
    if code == 0 and not args.no_ablate:
        code = cli(["ablate", "--out", str(out / "ablate"), *common])
    if code == 0:
        print(f"figures and predictions.csv: {out / 'probe'} (heatmaps, lens accuracy), "
              f"{out / 'ablate'} (error histograms)")
    return code


if __name__ == "__main__":
    sys.exit(run("gpt2", "runs/gpt2", 0))
