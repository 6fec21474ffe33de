"""``llm-fourier embed``: Fourier spectrum of the number-token embeddings of any HF model.

Takes the rows of W_E (or W_U with ``--unembed``) for the numbers 0..p-1 that the tokenizer
keeps as single tokens, ordered by value, and pools the per-column Fourier magnitudes by
their L2 norm (Zhou et al. 2024, Fig. 3). Works on causal LMs and on encoders (BERT,
RoBERTa). Beside the spectrum it reports linear mod-T probes (accuracy, Cohen's kappa),
since a spike at period T does not by itself make n mod T linearly decodable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_fourier.analyses.embeddings import load_embedding_matrix
from llm_fourier.commands.base import Command, JobView, finish
from llm_fourier.commands.emergence import emergence_html
from llm_fourier.commands.options import (
    OutputOptions,
    SourceOptions,
    SpectrumOptions,
    StatsOptions,
)
from llm_fourier.commands.settings import option
from llm_fourier.errors import UserError
from llm_fourier.model.fingerprint import tokenizer_fingerprint
from llm_fourier.model.numbers import find_number_tokens, number_rows
from llm_fourier.model.readout import default_tau, tau_reason
from llm_fourier.output.files import save_figure
from llm_fourier.output.html import figure, html_table, periods_text
from llm_fourier.output.plots import pyplot, spectrum_plot
from llm_fourier.output.progress import tqdm
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from probes import FourierBasis, spectrum
from probes.linear import mod_probe
from probes.stats import StatsConfig

DEFAULT_SEARCH = 1000  # numbers searched when --max-number is not given


@dataclass(kw_only=True)
class EmbedSettings(SourceOptions, SpectrumOptions, StatsOptions, OutputOptions):
    command = "embed"
    max_number: int | None = option(None, min=2, help="analyse numbers 0..N, capped to the "
                                    "single-token range (default: the whole range found up to "
                                    f"{DEFAULT_SEARCH})")
    leading_space: bool = option(False, help='number tokens written with a leading space (" 17")')
    unembed: bool = option(False, help="analyse the unembedding W_U instead of the input "
                           "embedding")
    mod_periods: list[int] = option([2, 5, 10], min=2, empty=True, help="periods T of the "
                                    "linear mod-T probes on the rows (none: no probes)")

    def validate(self) -> None:
        if self.max_number is not None:
            self.check_tau(self.max_number + 1)


PROBE_KEYS = ("accuracy", "kappa", "chance_accuracy", "kappa_ci_low", "kappa_ci_high",
              "kappa_p_value", "accuracy_ci_low", "accuracy_ci_high", "accuracy_p_value")


def embedding_mod_probes(rows: np.ndarray, periods: list[int],
                         stats: StatsConfig | None = None) -> list[dict]:
    """Cross-validated linear probes for n mod T on the number rows (one row per number),
    each score with its bootstrap interval over numbers and permutation p-value."""
    out = []
    for period in tqdm(periods, desc="mod-T probes", leave=False, disable=len(periods) < 2):
        if period < len(rows) // 2:  # else too few numbers per class to cross-validate
            r = mod_probe(rows, np.arange(len(rows)), period, stats=stats).as_dict()
            out.append({"period": period, **{k: r.get(k) for k in PROBE_KEYS}})
    return out


def _with_interval(probe: dict) -> str:
    """A kappa with its interval, e.g. "0.82 [0.71, 0.90]" (the interval when computed)."""
    kappa, lo, hi = probe.get("kappa"), probe.get("kappa_ci_low"), probe.get("kappa_ci_high")
    if kappa is None:
        return ""
    return f"{kappa:.3g}" + (f" [{lo:.3g}, {hi:.3g}]" if lo is not None and hi is not None
                             else "")


class EmbedCommand(Command):
    help = "Fourier spectrum of the number-token embeddings of any HF model"
    Settings, section, heading, order = EmbedSettings, "embed", "Number embeddings", 10
    intro = ("Fourier spectra of the number-token rows of the embedding matrix: the DFT of each "
             "column over the numbers, L2 norm per component. Outliers at periods 2, 2.5, 5 and "
             "10 are the signature of Fourier number features (Zhou et al., Fig. 3).")
    captions = {"spectrum": "L2 norm of each Fourier component of the number embeddings; "
                            "labels mark outliers with their period T."}

    def run(self, s: EmbedSettings, run: RunDir) -> dict:
        revision = {} if s.revision is None else {"revision": s.revision}
        W, tokenizer = load_embedding_matrix(s.model, unembed=s.unembed, dtype=s.dtype,
                                             device_map=s.device_map,
                                             trust_remote_code=s.trust_remote_code, **revision)
        numbers = find_number_tokens(tokenizer, s.max_number or DEFAULT_SEARCH,
                                     leading_space=s.leading_space)
        if numbers.p < 3:
            raise UserError(f"the tokenizer of {s.model} keeps only {numbers.p} numbers (from "
                            "0) as single tokens; a spectrum needs at least 0..2 (try without "
                            "--leading-space, or use the hidden-state probes).")
        if s.max_number is not None and numbers.max_number < s.max_number:
            print(f"note: single-token numbers stop at {numbers.max_number}; using 0.."
                  f"{numbers.max_number} instead of 0..{s.max_number}")
        basis = FourierBasis(numbers.p, s.basis)
        if s.tau is None:  # from the numbers this tokenizer keeps whole
            tau = default_tau("number", basis)
            s.choose("tau", tau, tau_reason("number", tau, basis))
        s.check_tau(numbers.p, "single-token numbers")
        weight = "W_U" if s.unembed else "W_E"
        rows = number_rows(W, numbers, f"{weight} of {s.model}").float().cpu().numpy()
        run.check_inputs(tokenizer=tokenizer_fingerprint(tokenizer))
        spec = spectrum(rows, basis, axis=0, pool="l2")
        outliers = [o.as_dict() for o in spec.outliers()]
        matrix = "unembedding" if s.unembed else "embedding"
        probes = embedding_mod_probes(rows, s.mod_periods, stats=s.stats_config())
        results = {"model": str(s.model), "revision": s.revision, "matrix": matrix,
                   "basis": s.basis, "tau": s.tau,
                   "numbers": numbers.describe(), "d_model": int(rows.shape[1]),
                   "spectrum": spec.records(), "outliers": outliers,
                   "low_high": spec.low_high(s.tau), "mod_probes": probes}
        run.write_csv("spectrum.csv", spec.records())
        if run.writes:
            title = (f"{Path(str(s.model)).name}: {weight} rows of numbers 0.."
                     f"{numbers.max_number} ({s.basis} basis)")
            spectrum_plot(spec.nonconstant, run.file(f"{matrix}_spectrum.png"), outliers, title,
                          "L2 norm over columns")
        lh = results["low_high"]
        return finish(
            run, results, f"{s.model}: {matrix} rows of numbers 0..{numbers.max_number} "
            f"(p={numbers.p}, D={rows.shape[1]})",
            format_table(outliers, ["k", "period", "magnitude"]) if outliers
            else "no outlier components",
            format_table(probes, ["period", "accuracy", "kappa", "kappa_ci_low", "kappa_ci_high",
                                  "kappa_p_value", "chance_accuracy"]) if probes else None,
            f"low (k<{lh['tau']}) / high energy: {lh['low_fraction']:.3f} / "
            f"{lh['high_fraction']:.3f}")

    # -------------------------------------------------------------- report view
    def section_html(self, jobs: list[JobView], out: Path) -> str:
        plt = pyplot()
        rows, fig, ax = [], None, None
        for job in jobs:
            res = job.results
            spec = [r for r in res.get("spectrum", []) if r.get("k", 0) >= 1]
            kappas = {p.get("period"): _with_interval(p) for p in res.get("mod_probes") or []}
            rows.append({"job": job.id, "model": Path(job.model).name,
                         "outlier periods": periods_text(res.get("outliers"), 6),
                         "low frac": (res.get("low_high") or {}).get("low_fraction"),
                         **{f"mod-{t} kappa": v for t, v in kappas.items()}})
            if spec:
                if fig is None:
                    fig, ax = plt.subplots(figsize=(9, 3.2))
                mags = np.array([r["magnitude"] for r in spec], dtype=float)
                ax.plot([r["k"] for r in spec], mags / (mags.max() or 1.0), lw=0.9, label=job.id)
        parts = [html_table(rows, caption="Outliers of the number-embedding spectra and mod-T "
                            "linear probe kappa per job.")]
        if fig is not None:
            ax.set(xlabel="Fourier component k", ylabel="norm / max", yscale="log",
                   title="Number-embedding spectra, each scaled to its maximum")
            ax.legend(fontsize=7)
            path = save_figure(fig, out / "figures" / "embedding_spectra.png")
            parts.append(figure(path, "All embedding spectra on one axis (log scale): outliers "
                                      "stand above the smooth low-frequency background."))
        parts.append(emergence_html(jobs, out, "embed"))
        return "\n".join(parts)

    def findings(self, job: JobView) -> list[str]:
        if "outliers" not in job.results:
            return []
        periods = periods_text(job.results["outliers"], 6)
        return [f"{job.id}: number-embedding spectrum outliers at periods {periods}."
                if periods else f"{job.id}: no Fourier outliers in the number embeddings."]


COMMAND = EmbedCommand()
