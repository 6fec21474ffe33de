"""``llm-fourier neurons``: Fourier neurons of an LLM's MLPs, and what knocking them out does.

Each chosen MLP layer's neurons: the spectrum of the output direction read through the
answers' readout (``llm_fourier.analyses.fourier_neurons``); those whose top share is at
least ``--min-share`` are Fourier neurons of that period. Then, unless ``--no-knockout``, the
accuracy with each of ``--periods``' top ``--n-neurons`` neurons zeroed, beside
``--n-random`` draws of as many random neurons of the same layers. Writes ``results.json``,
``neurons.csv`` (neurons with share >= --min-share), ``knockout.csv``, ``neurons.png`` and
``knockout.png``; every finished (batch, knockout) unit is kept, so a killed run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llm_fourier.analyses.fourier_neurons import knockout_rows, knockout_table, neuron_spectra
from llm_fourier.commands.base import Command, JobView, finish, section_table
from llm_fourier.commands.options import (
    BASES,
    ModelOptions,
    OutputOptions,
    PredictionOptions,
    SeedOptions,
    SplitOptions,
    TaskOptions,
    model_layers,
    record_inputs,
)
from llm_fourier.commands.settings import option
from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.output.html import html_table, percent
from llm_fourier.output.neuron_plots import knockout_plot, neuron_period_heatmap
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table

KNOCKOUT_CONSOLE = ("period", "component", "n_neurons", "accuracy_none", "accuracy_top",
                    "accuracy_random", "accuracy_random_std", "accuracy_random_min",
                    "accuracy_random_max")


@dataclass(kw_only=True)
class NeuronsSettings(ModelOptions, TaskOptions, SplitOptions, SeedOptions, PredictionOptions,
                      OutputOptions):
    command = "neurons"
    layers: list[int] | None = option(None, min=0, help="MLP layers to read (default: all)")
    basis: str = option("paper", choices=BASES, help="Fourier basis: paper (period (p-1)/k, "
                        "Zhou et al.) or dft (exact, period p/k)")
    min_share: float = option(0.5, min=0, max=1, help="a Fourier neuron's top component holds "
                              "at least this share of its non-constant energy")
    periods: list[float] = option([2, 2.5, 5, 10], min=2, help="periods whose top neurons are "
                                  "knocked out")
    n_neurons: int = option(20, min=1, help="neurons knocked out per period, pooled over the "
                            "chosen layers")
    n_random: int = option(5, min=1, help="random draws of as many neurons per layer")
    allow_post_norm: bool = option(False, help="read the directions before a post-MLP norm "
                                   "(Gemma 2/3, OLMo 2): the spectrum is then of the direction "
                                   "before the norm")
    no_knockout: bool = option(False, help="spectra only, no knockouts")

    def validate(self) -> None:
        if len(set(self.periods)) < len(self.periods):
            raise self.fail("periods", f"names a period twice ({self.periods})")


def summary_rows(summary: list[dict], n: int = 4) -> list[dict]:
    """Per layer: neurons, Fourier neurons and their most frequent periods as text."""
    return [{"layer": r["layer"], "n_neurons": r["n_neurons"], "n_fourier": r["n_fourier"],
             "top periods": " ".join(f"{t['period']:.3g} ({t['n']})"
                                     for t in r["top_periods"][:n])}
            for r in summary]


class NeuronsCommand(Command):
    help = "Fourier neurons: the spectrum of every MLP neuron's output direction through " \
           "W_U[numbers], and knockouts of each period's top neurons against random ones"
    Settings, section, heading, order = NeuronsSettings, "neurons", "Fourier neurons", 45
    intro = ("Each MLP neuron's output direction read through the unembedding of the numbers, "
             "in the Fourier basis: which period it writes (its top component) and how "
             "exclusively (that component's share of its energy). Knocking out the neurons that "
             "write most at a period, beside as many random neurons of the same layers, tests "
             "whether the task needs them.")
    captions = {"neurons": "Fourier neurons per top component k (rows) and layer (columns): "
                           "neurons whose top component holds at least the --min-share of "
                           "their non-constant energy.",
                "knockout": "Accuracy with each period's top neurons knocked out (red) beside "
                            "random neurons of the same layers (blue: mean of the draws, std "
                            "as error bar, min..max as a line); dashed: nothing knocked out."}

    def run(self, s: NeuronsSettings, run: RunDir) -> dict:
        task = s.task()
        examples = [] if s.no_knockout else s.examples(task)
        space = AnswerSpace(s.answer_format(task.max_answer), task.max_answer, s.basis)
        if space.kind is None:
            raise UserError(f"{s.command}: answers up to {task.max_answer} are written as "
                            f"{space.fmt.family} tokens, with no readout to read neuron "
                            "directions through; use smaller operands.")
        lm = s.load_model(tokenizer=space.fmt.tokenizer)
        record_inputs(run, lm, examples or None)
        layers = model_layers(s, lm)
        with s.named_errors():
            spectra = neuron_spectra(lm, space, layers, basis_kind=s.basis, periods=s.periods,
                                     allow_post_norm=s.allow_post_norm)
        total = int(spectra.top_k.size)
        if not s.no_knockout and s.n_neurons > total:
            raise s.fail("n_neurons", f"must be at most {total} (the neurons of layers "
                         f"{layers}), got {s.n_neurons}")
        knock = None if s.no_knockout else knockout_table(
            lm, examples, space, s.periods, s.n_neurons, spectra=spectra, n_random=s.n_random,
            seed=s.seed, prediction=s.prediction, batch_size=s.batch_size,
            progress=not s.quiet, store=run.store("knockout"))
        summary = spectra.summary(s.min_share)
        results = {"model": lm.name, "revision": s.revision, "settings": s.identity(),
                   **space.describe(space.readout(lm)),
                   "basis": s.basis, "layers": layers, "post_norm": spectra.post_norm,
                   "min_share": s.min_share, "summary": summary, "knockout": knock,
                   "n_examples": len(examples),
                   "files": ["neurons.csv", "neurons.png"]
                   + ([] if knock is None else ["knockout.csv", "knockout.png"])}
        run.write_csv("neurons.csv", spectra.table(s.min_share))
        name = Path(lm.name).name
        if run.writes:
            neuron_period_heatmap(spectra, run.file("neurons.png"), s.min_share,
                                  f"{name}: Fourier neurons per component and layer")
        if knock is not None:
            run.write_csv("knockout.csv", knockout_rows(knock))
            if run.writes:
                knockout_plot(knock, run.file("knockout.png"),
                              f"{name}: {s.n_neurons} neurons knocked out per period")
        return finish(run, results, format_table(summary_rows(summary, 3)), None if knock is None
                      else format_table(knockout_rows(knock), list(KNOCKOUT_CONSOLE)))

    # -------------------------------------------------------------- report view
    def job_html(self, job: JobView) -> str:
        res = job.results
        parts = [html_table(summary_rows(res.get("summary") or [], 5), caption=(
            f"Per layer: neurons, Fourier neurons (top component's share >= "
            f"{res.get('min_share')}) and their most frequent periods (count)."))]
        if res.get("knockout"):
            parts.append(html_table(knockout_rows(res["knockout"]), list(KNOCKOUT_CONSOLE),
                                    caption="Accuracy with each period's top neurons knocked "
                                    "out, beside random neurons of the same layers."))
        return "\n".join(parts)

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        rows = []
        for job in jobs:
            res = job.results
            fourier = sum(r.get("n_fourier", 0) for r in res.get("summary") or [])
            total = sum(r.get("n_neurons", 0) for r in res.get("summary") or [])
            for r in knockout_rows(res["knockout"]) if res.get("knockout") else [{}]:
                rows.append({"job": job.id, "Fourier neurons": fourier, "neurons": total,
                             **{k: r.get(k) for k in KNOCKOUT_CONSOLE if k in r}})
        return section_table(rows, out, "neurons_knockout", "Per job: Fourier neurons among "
                             "all neurons of the chosen layers, and accuracy with each period's "
                             "top neurons knocked out beside random ones "
                             "(tables/neurons_knockout.csv).")

    def findings(self, job: JobView) -> list[str]:
        knock = job.results.get("knockout")
        if not knock or not knock.get("periods"):
            return []
        rows = knockout_rows(knock)
        worst = max(rows, key=lambda r: (r["accuracy_random"] or 0) - (r["accuracy_top"] or 0))
        return [f"{job.id}: knocking out the top {worst['n_neurons']} neurons of period "
                f"{worst['period']:g} leaves {percent(worst['accuracy_top'])} accuracy (none "
                f"knocked out: {percent(worst['accuracy_none'])}; as many random neurons: "
                f"{percent(worst['accuracy_random'])} +/- "
                f"{100 * (worst['accuracy_random_std'] or 0):.1f} points)."]


COMMAND = NeuronsCommand()
