"""``llm-fourier probe``: per-layer logit-lens accuracy and Fourier spectra on addition prompts.

Every layer's attention, MLP and residual (block) output is read through the readout the
answers get (``readout.readout_for``; ``results.json`` names it in ``readout``, and how
numbers are written in ``numbers``):

* numbers that are single tokens (GPT-2 up to 520, Llama-3 up to 999): the number lens at
  the last token through ``W_U[numbers]`` (``lens.run_lens``): per-layer accuracy, outliers
  with periods and low/high energy per role and for the layer-averaged spectrum, in
  ``results.json``, ``accuracy.csv``, ``spectra.csv`` and PNGs;
* one token per digit (Llama-2, Mistral, Qwen, ...): the digit lens at every answer
  position, teacher forced, through ``W_U[digits 0..9]`` (``digits.run_digit_lens``; DFT
  over the ten digits), per role, pooled and per digit place: ``results.json["digit_lens"]``,
  ``digit_accuracy.csv``, ``digit_spectra.csv`` and PNGs;
* chunks of digits or BPE merges (Llama-3 above 999, GPT-2 above 520): no readout exists,
  so the command refuses and says what runs instead.

Both write ``predictions.csv``: each prompt, its answer and the model's own prediction (the
next token, or the greedy whole answer). The lens sums are kept after every batch, so a
killed run resumes where it stopped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_fourier.analyses.digits import run_digit_lens
from llm_fourier.analyses.hidden_states import ROLES, HiddenStates
from llm_fourier.analyses.lens import LENS_ROLES, PEAK_RULE, layer_summary, run_lens, spectra_matrix
from llm_fourier.commands.base import Command, JobView, finish
from llm_fourier.commands.digit_views import (
    DIGIT_CAPTIONS,
    digit_console_rows,
    digit_layer_rows,
    is_digit_run,
    lens_headline,
)
from llm_fourier.commands.kept import StatesOptions, keep_states
from llm_fourier.commands.options import (
    ModelOptions,
    OutputOptions,
    ReadoutOptions,
    SplitOptions,
    TaskOptions,
    record_inputs,
)
from llm_fourier.commands.settings import option
from llm_fourier.errors import UserError
from llm_fourier.output.digit_plots import digit_lens_accuracy_plot
from llm_fourier.output.html import html_table, percent, periods_text
from llm_fourier.output.plots import component_layer_heatmap, layer_accuracy_plot, spectrum_plot
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from probes import Spectrum


@dataclass(kw_only=True)
class ProbeSettings(ModelOptions, TaskOptions, SplitOptions, ReadoutOptions, StatesOptions,
                    OutputOptions):
    command = "probe"
    final_norm: bool = option(False, help="apply the model's final norm before W_U (the "
                              "standard logit lens; default off: logits = W_U[numbers] x, as "
                              "the paper's filters)")
    top: int = option(10, min=1, help="keep at most this many outliers per layer")
    keep_rows: bool = option(False, identity=False, help="also keep the lens rows (every "
                             "layer's block, attn and mlp output at the last prompt token) "
                             "in OUT/states/ for lf.load_states")

    def validate(self) -> None:
        self.check_tau(self.max_answer + 1)


class ProbeCommand(Command):
    help = "per-layer logit lens and Fourier spectra of attention and MLP outputs on addition " \
           "prompts (number tokens, or digit tokens for digit-splitting tokenizers)"
    Settings, section, heading, order = ProbeSettings, "probe", "Per-layer Fourier analysis", 30
    shards = True
    intro = ("Logit lens on the number tokens: each layer's attention and MLP output at the last "
             "position, read through the unembedding of the numbers and transformed to the "
             "Fourier basis. Heatmaps show the magnitude of each Fourier component per layer; "
             "MLPs tend to carry the low-frequency (approximate magnitude) part, attention the "
             "high-frequency (modular) part. Models whose tokenizers write one token per digit "
             "get the digit lens instead: every answer position (teacher forced) read through "
             "the ten digit tokens, whose spectrum has five components (periods 10, 5, 3.33, "
             "2.5, 2).")
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
        **DIGIT_CAPTIONS,
    }

    def run(self, s: ProbeSettings, run: RunDir) -> dict:
        task = s.task()
        examples = s.examples(task)
        space = s.answer_space(s.answer_format(task.max_answer), task.max_answer)
        fmt, tau = space.fmt, space.tau
        if space.kind is None:
            raise UserError(
                f"probe: answers up to {task.max_answer} are written as {fmt.family} tokens "
                f"(single tokens only up to {fmt.numbers.max_number}), so there is no lens "
                f"readout; use --max-operand so that answers stay <= "
                f"{fmt.numbers.max_number}, or run ablate (whole-answer scores) and hidden "
                "(hidden-state and digit probes), which work on any tokenizer.")
        lm = s.load_model(tokenizer=fmt.tokenizer)
        readout = space.readout(lm, s.final_norm)  # before any output: checks the rows
        record_inputs(run, lm, examples)
        results = {"model": lm.name, "settings": s.identity(), "n_examples": len(examples),
                   **space.describe(readout), "tau": tau, "n_layers": lm.n_layers,
                   "outlier_rule": PEAK_RULE}
        # each batch's sums (with --keep-rows also its rows): a killed run resumes there
        store = run.store("lens-rows" if s.keep_rows else "lens")
        predictions: list[int] = []
        kept: dict | None = {} if s.keep_rows else None
        number = readout.kind == "number"
        lens = (run_lens if number else run_digit_lens)(
            lm, examples, space, final_norm=s.final_norm, batch_size=s.batch_size, store=store,
            predictions=predictions, rows=kept)
        if number:
            plots = self._number_results(s, results, lens, tau)
        else:
            results["digit_lens"] = lens.summary(tau)
        answers = np.array([e.answer for e in examples])
        results["model_accuracy"] = float(np.mean(np.asarray(predictions) == answers))
        results["prediction"] = ("the model's next token (argmax over the vocabulary)" if number
                                 else "the model's greedy whole answer")
        if kept is not None:  # the rows the lens read, from its own forward
            keep_states(run, s, lm, HiddenStates({r: kept[r] for r in ROLES}, list(range(
                lm.n_layers)), list(examples), "last", kept["token_ids"]), "probe")
        if run.helper:
            return results  # a helper process of a launch: the main one writes and prints
        if run.writes:
            run.write_csv("predictions.csv", [
                {"prompt": e.prompt, "a": e.a, "b": e.b, "answer": e.answer, "prediction": p}
                for e, p in zip(examples, predictions)])
            if number:
                self._number_files(run, results, plots)
            else:
                self._digit_files(run, results, lens)
            results["files"] = sorted(p.name for p in run.path.iterdir()
                                      if p.suffix in (".png", ".csv"))
        rows = console_rows if number else digit_console_rows
        return finish(run, results, format_table(rows(results)),
                      f"model accuracy ({results['prediction']}): "
                      f"{percent(results['model_accuracy'])}",
                      where=f" (plots, CSVs and predictions.csv in {run.path})")

    @staticmethod
    def _number_results(s: ProbeSettings, results: dict, accs: dict, tau: int) -> dict:
        results |= {"accuracy": {}, "layers": {}, "mean_over_layers": {}}
        plots = {}
        for role in LENS_ROLES:
            spectra = accs[role].spectra()
            results["accuracy"][role] = accs[role].accuracy()
            results["layers"][role] = layer_summary(spectra, tau, top=s.top)
            mean = Spectrum(spectra[0].basis, np.mean([sp.magnitude for sp in spectra], axis=0),
                            np.mean([sp.mean_energy for sp in spectra], axis=0))
            results["mean_over_layers"][role] = {
                "outliers": [o.as_dict() for o in mean.peaks(min_k=tau, top=s.top)],
                **mean.low_high(tau)}
            plots[role] = (spectra, mean)
        return plots

    @staticmethod
    def _number_files(run: RunDir, results: dict, plots: dict) -> None:
        acc_rows, spec_rows = [], []
        for role, (spectra, mean) in plots.items():
            acc_rows += [{"role": role, **r} for r in results["accuracy"][role]]
            spec_rows += [{"role": role, "layer": i, **rec}
                          for i, sp in enumerate(spectra) for rec in sp.records()]
            component_layer_heatmap(spectra_matrix(spectra), run.file(f"heatmap_{role}.png"),
                                    f"{role} number logits: mean |Fourier component|",
                                    spectra[0].basis.periods)
            spectrum_plot(mean.nonconstant, run.file(f"spectrum_{role}.png"),
                          results["mean_over_layers"][role]["outliers"],
                          f"{role} number logits, mean over layers", "mean magnitude")
        layer_accuracy_plot(results["accuracy"], run.file("lens_accuracy.png"),
                            f"logit lens onto numbers 0..{results['numbers']['p'] - 1}")
        run.write_csv("accuracy.csv", acc_rows)
        run.write_csv("spectra.csv", spec_rows)

    @staticmethod
    def _digit_files(run: RunDir, results: dict, lens) -> None:
        acc_rows, spec_rows = [], []  # per role, place ("all" or 0, 1, ...) and layer
        for role in (r for r in LENS_ROLES if r in lens.pooled):
            for place, acc in [("all", lens.pooled[role]), *enumerate(lens.by_place[role])]:
                acc_rows += [{"role": role, "place": place, "layer": r["layer"],
                              "exact": r["exact"]} for r in acc.accuracy()]
                spec_rows += [{"role": role, "place": place, "layer": i, **rec}
                              for i, sp in enumerate(acc.spectra()) for rec in sp.records()]
            spectra = lens.pooled[role].spectra()
            component_layer_heatmap(spectra_matrix(spectra), run.file(f"digit_heatmap_{role}.png"),
                                    f"{role} digit logits: mean |Fourier component|",
                                    spectra[0].basis.periods)
        run.write_csv("digit_accuracy.csv", acc_rows)
        run.write_csv("digit_spectra.csv", spec_rows)
        digit_lens_accuracy_plot(results["digit_lens"], run.file("digit_lens_accuracy.png"),
                                 "digit lens at the answer positions (teacher forced)")

    # -------------------------------------------------------------- report view
    def job_html(self, job: JobView) -> str:
        if is_digit_run(job.results):
            return html_table(digit_layer_rows(job.results), caption=(
                "Per layer: digit-lens accuracy (teacher forced, every answer digit) of the "
                "residual stream, attention and MLP; the period with most of each module's "
                "digit-logit energy and the low-frequency share (periods 10 and 5 at the "
                "default tau 3)."))
        if not job.results.get("layers"):
            return ""
        return html_table(layer_rows(job.results), caption="Per layer: logit-lens accuracy of "
                          "the residual stream; Fourier outlier periods (largest first) and "
                          "low-frequency energy fraction of attention and MLP outputs.")

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        rows = []
        digits = any(is_digit_run(job.results) for job in jobs)
        for job in jobs:
            res = job.results
            row: dict = {"job": job.id, "model": Path(job.model).name,
                         "examples": res.get("n_examples")}
            if digits:
                row["readout"] = (res.get("readout") or {}).get("readout", "number")
            if is_digit_run(res):
                rows.append({**row, **lens_headline(res)})
                continue
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
                          "periods seen most often across layers (number lens), or the "
                          "periods with most digit-logit energy (digit lens).")

    def findings(self, job: JobView) -> list[str]:
        if not is_digit_run(job.results):
            return []
        head = lens_headline(job.results)
        return [f"{job.id}: the digit lens reads the answer digits off the last layer's "
                f"residual stream with {percent(head.get('last-layer resid exact'))} "
                f"accuracy (teacher forced); MLP digit logits put most energy at period "
                f"{head.get('MLP: most frequent periods', '').split(' ')[0] or 'n/a'}."]


def console_rows(results: dict) -> list[dict]:
    acc, layers = results["accuracy"], results["layers"]
    return [{"layer": i, "resid exact": acc["block"][i]["exact"],
             "resid within_10": acc["block"][i]["within_10"],
             "attn exact": acc["attn"][i]["exact"], "mlp exact": acc["mlp"][i]["exact"],
             "attn periods": periods_text(layers["attn"][i]["outliers"]),
             "mlp periods": periods_text(layers["mlp"][i]["outliers"])}
            for i in range(results["n_layers"])]


def layer_rows(results: dict) -> list[dict]:
    """Per layer: residual lens accuracy; attention and MLP periods and low-frequency share."""
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
