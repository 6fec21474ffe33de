"""Kantamneni & Tegmark (2025), "Language models use trigonometry to do addition": fit the
helix h(a) ~ C [a, cos(2 pi a/T), sin(2 pi a/T)] to the states at operand a, per layer, then
patch the fitted helix into the model (against a circle, a polynomial, top PCA components
and a helix of shuffled numbers with as many parameters).

    python examples/kantamneni_helix.py --model gpt2 --n-probe 1000 --test-limit 100
"""

from __future__ import annotations

import argparse

import llm_fourier as lf


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2", help="hub id or local folder")
    ap.add_argument("--max-operand", type=int, default=99, help="operands 0..N (paper: 99)")
    ap.add_argument("--n-probe", type=int, default=1000, help="prompts the helix is fitted on")
    ap.add_argument("--test-limit", type=int, default=100, help="prompts patched")
    ap.add_argument("--pca-dim", type=int, default=100, help="PCA dimension (paper: 100)")
    ap.add_argument("--all-prompts", action="store_true", help="patch wrong answers too")
    ap.add_argument("--out", default=None, help="folder for the runs (default: nothing written)")
    a = ap.parse_args(argv)
    out = (lambda name: f"{a.out}/{name}") if a.out else (lambda name: None)
    common = dict(model=a.model, max_operand=a.max_operand, pca_dim=a.pca_dim, quiet=True)

    fit = lf.hidden(**common, token="a", roles=["block"], n_probe=a.n_probe, digit_kinds=[],
                    bootstrap=0, permutations=0, refits=0, out=out("hidden"))
    best = max(fit["probes"], key=lambda r: r["helix"]["r2_test"])
    print(f"helix fit: best layer {best['layer']}, held-out R^2 {best['helix']['r2_test']:.3f}")

    patch = lf.patch(**common, layers=[best["layer"]], train_limit=a.n_probe,
                     test_limit=a.test_limit, all_prompts=a.all_prompts, out=out("patch"))
    for row in patch["rows"]:
        print(f"  {row['method']:<10} kept {row['kept']:.3f}  moved {row['moved']:.3f}")
    return {"hidden": fit, "best_layer": best["layer"], "patch": patch}


if __name__ == "__main__":
    main()
