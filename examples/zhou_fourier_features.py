"""Zhou et al. (NeurIPS 2024), "Pre-trained LLMs use Fourier features to compute addition":
the Fourier spectrum of the number embeddings (Fig. 3), per-layer spectra of attention and
MLP outputs read through W_U[numbers] (Fig. 2), and Table 1 (low/high-frequency filters).

    python examples/zhou_fourier_features.py --model gpt2 --limit 300
"""

from __future__ import annotations

import argparse

import llm_fourier as lf


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2", help="hub id or local folder")
    ap.add_argument("--limit", type=int, default=300, help="test prompts for probe and ablate")
    ap.add_argument("--max-operand", type=int, default=None, help="default: from the tokenizer")
    ap.add_argument("--bootstrap", type=int, default=200, help="draws of the embedding probes")
    ap.add_argument("--out", default=None, help="folder for the runs (default: nothing written)")
    a = ap.parse_args(argv)
    out = (lambda name: f"{a.out}/{name}") if a.out else (lambda name: None)
    common = dict(model=a.model, quiet=True)

    emb = lf.embed(**common, bootstrap=a.bootstrap, permutations=a.bootstrap, out=out("embed"))
    print("embedding outliers at periods:", [round(o["period"], 2) for o in emb["outliers"]])

    task = dict(max_operand=a.max_operand, limit=a.limit)
    probe = lf.probe(**common, **task, out=out("probe"))
    print(f"probe: readout {probe['readout']['readout']}, tau {probe['tau']}, model accuracy "
          f"{probe['model_accuracy']:.3f}")

    table = lf.ablate(**common, **task, out=out("ablate"))["table"]
    print("Table 1:")
    for row in table:
        print(f"  {row['row']:<28} accuracy {row['accuracy']:.3f}")
    return {"embed": emb, "probe": probe, "table": table}


if __name__ == "__main__":
    main()
