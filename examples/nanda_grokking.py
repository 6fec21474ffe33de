"""Nanda et al. (ICLR 2023), "Progress measures for grokking via mechanistic
interpretability": train a one-layer transformer on (a + b) mod p with AdamW and weight
decay, then find its key frequencies and the restricted / excluded loss.

    python examples/nanda_grokking.py --p 113 --epochs 20000 --out runs/grok   # minutes on a GPU
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import llm_fourier as lf


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="transformer", help="toy model: transformer, mlp, rnn")
    ap.add_argument("--p", type=int, default=113, help="modulus (paper: 113)")
    ap.add_argument("--epochs", type=int, default=20000, help="full-batch epochs (paper: 40k)")
    ap.add_argument("--d-model", type=int, default=128, help="width (paper: 128)")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(a.out or tmp)
        trained = lf.run("toy train", model=a.model, p=a.p, epochs=a.epochs, d_model=a.d_model,
                         quiet=True, out=str(out / "train"))
        analysis = lf.run("toy analyze", checkpoint=str(out / "train" / "checkpoint.safetensors"),
                          quiet=True, out=str(out / "analyze"))
    print(f"test accuracy {analysis['test_accuracy']:.3f}; key frequencies "
          f"{analysis['key_frequencies']}; restricted loss {analysis['restricted_loss']:.3g}, "
          f"excluded loss {analysis['excluded_loss']:.3g}; Gini of W_E's Fourier norms "
          f"{analysis['gini_embed']:.3f}")
    return {"train": trained, "analyze": analysis}


if __name__ == "__main__":
    main()
