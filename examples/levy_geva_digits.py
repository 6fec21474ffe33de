"""Levy & Geva (NAACL 2025), "Language models encode numbers using digit representations in
base 10": circular probes (cos/sin of 2 pi d/10) decode each digit of an operand where a
value probe fails, and rotating a digit's circle by +k moves that digit of the answer by +k.

    python examples/levy_geva_digits.py --model mistralai/Mistral-7B-v0.1 --n-probe 1000
"""

from __future__ import annotations

import argparse

import llm_fourier as lf


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2", help="hub id or local folder")
    ap.add_argument("--max-operand", type=int, default=None, help="default: from the tokenizer")
    ap.add_argument("--n-probe", type=int, default=1000, help="prompts the probes are fitted on")
    ap.add_argument("--n-eval", type=int, default=100, help="prompts the intervention edits")
    ap.add_argument("--shift", type=int, default=1, help="rotate the units digit by +k")
    ap.add_argument("--out", default=None, help="folder for the run (default: nothing written)")
    a = ap.parse_args(argv)

    res = lf.hidden(model=a.model, max_operand=a.max_operand, token="a", n_probe=a.n_probe,
                    n_eval=a.n_eval, intervene_place=0, intervene_shift=a.shift,
                    bootstrap=0, permutations=0, refits=0, no_random_baseline=True, quiet=True,
                    out=a.out)
    best: dict[tuple, dict] = {}
    for row in res["digit_probes"]:
        key = (row["place"], row["kind"])
        if key not in best or row["accuracy"] > best[key]["accuracy"]:
            best[key] = row
    for (place, kind), row in sorted(best.items()):
        print(f"digit place {place} {kind:<8} best accuracy {row['accuracy']:.3f} "
              f"({row['role']} layer {row['layer']})")
    iv = res["intervention"]
    print(f"rotating a's units digit by +{iv['shift']} at {iv['role']} layer {iv['layer']}: "
          f"the answer's digit moved in {iv['rate_shifted']:.1%} of prompts "
          f"(random direction: {iv['rate_shifted_random']:.1%})")
    return {"hidden": res, "best": best}


if __name__ == "__main__":
    main()
