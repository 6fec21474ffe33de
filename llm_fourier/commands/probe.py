"""``llm-fourier probe``: per-layer logit-lens accuracy and Fourier spectra on addition prompts.

Loads a model, builds the task split, captures every layer's attention, MLP and residual
(block) outputs at the last token, reads them through ``W_U[numbers]`` and writes
``results.json`` (per-layer accuracy and, for attention, MLP and the residual stream,
per-layer outliers with periods and low/high energy; the same for the spectrum averaged
over layers), ``accuracy.csv``, ``spectra.csv`` and PNGs: component x layer heatmaps,
layer-averaged spectra with their outliers, lens accuracy per layer. The lens sums are kept
after every batch, so a killed run resumes where it stopped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_fourier.commands.base import Command, JobView
from llm_fourier.commands.options import (
    ModelOptions,
    OutputOptions,
    SpectrumOptions,
    SplitOptions,
    TaskOptions,
    record_inputs,
)
from llm_fourier.commands.settings import option
from llm_fourier.distributed import broadcast_object
from llm_fourier.lens import LENS_ROLES, layer_summary, run_lens, spectra_matrix
from llm_fourier.numbers import task_numbers
from llm_fourier.output.html import html_table, periods_text
from llm_fourier.output.plots import component_layer_heatmap, layer_accuracy_plot, spectrum_plot
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from probes import Spectrum


@dataclass(kw_only=True)
class ProbeSettings(ModelOptions, TaskOptions, SplitOptions, SpectrumOptions, OutputOptions):
    command = "probe"
    final_norm: bool = option(False, help="apply the model's final norm before W_U (the "
                              "standard logit lens; default off: logits = W_U[numbers] x, as "
                              "the paper's filters)")
    top: int = option(10, min=1, help="keep at most this many outliers per layer")

    def validate(self) -> None:
        self.check_tau(self.max_answer + 1)


def lens_unit(state: dict) -> tuple[dict, dict]:
    """A ``run_lens`` state as (JSON data, named tensors) for ``RunDir.save_unit``."""
    data = {"batches_done": state["batches_done"], "n": {}, "hits": {}}
    tensors = {}
    for role, acc in state["roles"].items():
        data["n"][role] = acc["n"]
        data["hits"][role] = list(acc["hits"])  # in order: results keep it
        tensors[f"{role}.magnitude_sum"] = acc["magnitude_sum"]
        for name, counts in acc["hits"].items():
            tensors[f"{role}.hits.{name}"] = counts
    return data, tensors


def lens_state(data: dict, tensors: dict) -> dict:
    """The inverse of ``lens_unit``."""
    return {"batches_done": data["batches_done"],
            "roles": {role: {"n": n, "magnitude_sum": tensors[f"{role}.magnitude_sum"],
                             "hits": {h: tensors[f"{role}.hits.{h}"]
                                      for h in data["hits"][role]}}
                      for role, n in data["n"].items()}}


class ProbeCommand(Command):
    name = "probe"
    help = "per-layer logit lens and Fourier spectra of attention and MLP outputs on addition " \
           "prompts"
    Settings = ProbeSettings
    shards = True
    section, heading, order = "probe", "Per-layer Fourier analysis", 30
    intro = ("Logit lens on the number tokens: each layer's attention and MLP output at the last "
             "position, read through the unembedding of the numbers and transformed to the "
             "Fourier basis. Heatmaps show the magnitude of each Fourier component per layer; "
             "MLPs tend to carry the low-frequency (approximate magnitude) part, attention the "
             "high-frequency (modular) part.")
    captions = {
        "heatmap_attn": "Attention outputs read through the number unembedding: mean |Fourier "
                        "component| (colour) per component k (vertical; periods marked on the "
                        "right) and layer (horizontal).",
        "heatmap_mlp": "MLP outputs read through the number unembedding: mean |Fourier "
                       "component| per component k (vertical) and layer (horizontal).",
        "heatmap_block": "Residual stream after each layer, read through the number "
                         "unembedding: mean |Fourier component| per component k and layer.",
        "spectrum": "Spectrum averaged over layers: magnitude per component k, outliers "
                    "labelled by period.",
        "lens_accuracy": "Logit-lens accuracy per layer (exact, within 2, within 10) of the "
                         "attention, MLP and residual-stream outputs read through the numbers.",
    }

    def run(self, s: ProbeSettings, run: RunDir) -> dict:
        task = s.task()
        examples = s.examples(task)
        lm = s.load_model()
        record_inputs(run, lm, examples)
        numbers = task_numbers(lm.tokenizer, task.max_answer, lm.name)
        saved = run.load_unit("lens")
        state = broadcast_object(lens_state(*saved) if saved else None)
        if state:
            print(f"resuming the lens from {run.path} ({state['batches_done']} batches done)")
        accs = run_lens(lm, examples, numbers, final_norm=s.final_norm, basis_kind=s.basis,
                        batch_size=s.batch_size, state=state,
                        on_batch=lambda done, st: run.save_unit("lens", *lens_unit(st)))
        results = {"model": lm.name, "settings": s.identity(), "n_examples": len(examples),
                   "numbers": {"p": numbers.p, "leading_space": numbers.leading_space},
                   "n_layers": lm.n_layers, "accuracy": {}, "layers": {},
                   "mean_over_layers": {}}
        acc_rows, spec_rows, plots = [], [], {}
        for role in LENS_ROLES:
            spectra = accs[role].spectra()
            results["accuracy"][role] = accs[role].accuracy()
            results["layers"][role] = layer_summary(spectra, s.tau, top=s.top)
            acc_rows += [{"role": role, **r} for r in results["accuracy"][role]]
            spec_rows += [{"role": role, "layer": i, **rec}
                          for i, sp in enumerate(spectra) for rec in sp.records()]
            mean = Spectrum(spectra[0].basis, np.mean([sp.magnitude for sp in spectra], axis=0))
            results["mean_over_layers"][role] = {
                "outliers": [o.as_dict() for o in mean.outliers(top=s.top)],
                **mean.low_high(s.tau)}
            plots[role] = (spectra, mean)
        if run.helper:
            return results  # a helper process of a launch: the main one writes and prints
        if run.writes:
            for role, (spectra, mean) in plots.items():
                component_layer_heatmap(spectra_matrix(spectra), run.file(f"heatmap_{role}.png"),
                                        f"{role} number logits: mean |Fourier component|",
                                        spectra[0].basis.periods)
                spectrum_plot(mean.nonconstant, run.file(f"spectrum_{role}.png"),
                              results["mean_over_layers"][role]["outliers"],
                              f"{role} number logits, mean over layers", "mean magnitude")
            layer_accuracy_plot(results["accuracy"], run.file("lens_accuracy.png"),
                                f"logit lens onto numbers 0..{numbers.p - 1}")
            run.write_csv("accuracy.csv", acc_rows)
            run.write_csv("spectra.csv", spec_rows)
            results["files"] = sorted(p.name for p in run.path.iterdir()
                                      if p.suffix in (".png", ".csv"))
        run.finish(results)
        print(format_table(console_rows(results)))
        if run.writes:
            print(f"results: {run.file('results.json')} (plots in {run.path}: heatmap_attn.png, "
                  "heatmap_mlp.png, spectrum_attn.png, spectrum_mlp.png, lens_accuracy.png)")
        return results

    # -------------------------------------------------------------- report view
    def job_html(self, job: JobView) -> str:
        if not job.results.get("layers"):
            return ""
        return html_table(layer_rows(job.results), caption="Per layer: logit-lens accuracy of "
                          "the residual stream; Fourier outlier periods (largest first) and "
                          "low-frequency energy fraction of attention and MLP outputs.")

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        rows = []
        for job in jobs:
            res = job.results
            row: dict = {"job": job.id, "model": Path(job.model).name,
                         "examples": res.get("n_examples")}
            block = res.get("accuracy", {}).get("block", [])
            if block:
                row["last-layer resid exact"] = block[-1].get("exact")
            for role, name in (("attn", "attn"), ("mlp", "MLP")):
                count = Counter(round(o["period"], 2)
                                for layer in res.get("layers", {}).get(role, [])
                                for o in (layer.get("outliers") or [])[:4] if "period" in o)
                row[f"{name}: most frequent periods"] = " ".join(
                    f"{p:g}" for p, _ in count.most_common(5))
            rows.append(row)
        return html_table(rows, caption="Per job: final-layer lens accuracy and the outlier "
                          "periods seen most often across layers.")


def console_rows(results: dict) -> list[dict]:
    acc, layers = results["accuracy"], results["layers"]
    return [{"layer": i, "resid exact": acc["block"][i]["exact"],
             "resid within_10": acc["block"][i]["within_10"],
             "attn exact": acc["attn"][i]["exact"], "mlp exact": acc["mlp"][i]["exact"],
             "attn periods": periods_text(layers["attn"][i]["outliers"]),
             "mlp periods": periods_text(layers["mlp"][i]["outliers"])}
            for i in range(results["n_layers"])]


def layer_rows(results: dict) -> list[dict]:
    """Per layer: residual lens accuracy and, for attention and MLP, the top outlier periods
    and the low-frequency energy fraction."""
    acc, layers = results.get("accuracy", {}), results.get("layers", {})
    rows = []
    for i in range(int(results.get("n_layers", 0))):
        row: dict = {"layer": i}
        block = acc.get("block", [])
        if i < len(block):
            row["resid exact"] = block[i].get("exact")
            row["resid within 10"] = block[i].get("within_10")
        for role, name in (("attn", "attn"), ("mlp", "MLP")):
            info = layers.get(role, [])
            if i < len(info):
                row[f"{name} periods"] = periods_text(info[i].get("outliers"))
                row[f"{name} low frac"] = info[i].get("low_fraction")
        rows.append(row)
    return rows


COMMAND = ProbeCommand()
