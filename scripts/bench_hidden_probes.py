"""Cost of the hidden-state probes of one (role, layer), as ``llm-fourier hidden`` runs them.

Synthetic states (N prompts x D, a period-10 circle plus noise, operands 0..99) stand in
for one module's outputs. Prints seconds per module for ``probe_states`` (mod-T probes for
T = 2, 5, 10 with shuffled baselines, helix fit with its shuffled baseline) and the ratio of
the shared-fold ``mod_probes`` against one ``mod_probe`` call per period and baseline (the
same folds, PCA recomputed each time), measured in one run by process CPU time (which
resists other load on the machine). Multiply by layers x roles (x 2 with the random-init
baseline) for a whole model.

    python scripts/bench_hidden_probes.py [--n 1000] [--dims 768 4096]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from llm_fourier.analyses.hidden_states import probe_states
from probes.linear import mod_probe, mod_probes

PERIODS = (2, 5, 10)


def states(n_prompts: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 100, n_prompts)
    x = rng.standard_normal((n_prompts, dim)).astype(np.float32)
    x[:, 0] += 3 * np.cos(2 * np.pi * n / 10)
    x[:, 1] += 3 * np.sin(2 * np.pi * n / 10)
    return x, n


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="prompts per module")
    parser.add_argument("--dims", type=int, nargs="+", default=[768, 4096])
    args = parser.parse_args()
    for dim in args.dims:
        x, n = states(args.n, dim)
        t0 = time.perf_counter()
        res = probe_states(x, n, PERIODS, (2, 5, 10, 100))
        wall = time.perf_counter() - t0
        shared = cpu(lambda: mod_probes(x, n, PERIODS, shuffled=True))  # noqa: B023
        single = cpu(lambda: [mod_probe(x, n, T, shuffle=s)  # noqa: B023
                              for T in PERIODS for s in (False, True)])
        kappas = {T: round(m["kappa"], 2) for T, m in res["mod"].items()}
        print(f"N={args.n} D={dim}: probe_states {wall:.1f} s wall per module; "
              f"kappa {kappas}, helix R^2 {res['helix']['r2_test']:.3f}; mod probes "
              f"shared folds {shared:.1f} s CPU vs one call each {single:.1f} s CPU "
              f"(ratio {single / shared:.1f}x)")


if __name__ == "__main__":
    main()
