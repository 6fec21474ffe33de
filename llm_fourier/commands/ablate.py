"""``llm-fourier ablate``: Fourier filter ablations in the layout of Zhou et al.'s Table 1.

Rows: none; attn+MLP / attn / MLP with low frequencies removed (high-pass, k < tau); the
same with high frequencies removed (low-pass, k >= tau); with ``--keep K ...`` also the
keep-only-those-components filter. Writes ``results.json`` (the table with loss, accuracy,
signed-error histograms, fraction of errors that are multiples of 10, mod-2 / mod-10
accuracy), ``table.csv``, ``predictions.csv`` and ``error_histograms.png``. Every finished
row is kept in the run folder, so a killed run resumes at the next row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llm_fourier.ablate import PREDICTIONS, ablation_table
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
from llm_fourier.errors import UserError
from llm_fourier.numbers import task_numbers
from llm_fourier.output.files import write_csv
from llm_fourier.output.html import html_table, percent
from llm_fourier.output.plots import error_histograms
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from probes import FourierBasis

SUMMARY = ("row", "loss", "accuracy", "n_errors", "frac_errors_mult_10", "mod2_accuracy",
           "mod10_accuracy", "max_abs_error")
# Zhou et al., Table 1: fine-tuned GPT-2-XL test accuracy (%) per ablation row
PAPER_TABLE1 = {"none": 99.74, "attn+MLP low removed": 5.94, "attn low removed": 99.12,
                "MLP low removed": 35.89, "attn+MLP high removed": 27.08,
                "attn high removed": 78.36, "MLP high removed": 98.10}


def parse_layers(text: str | None, n_layers: int | None = None) -> list[int] | None:
    """"all" (or None) -> every layer (None without ``n_layers``); "0,3,8-11" -> those
    layers, checked against ``n_layers`` when given."""
    if text is None or text.strip() == "all":
        return None if n_layers is None else list(range(n_layers))
    layers: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UserError(f"cannot read --layers {text!r}; write e.g. 'all' or '0,3,8-11'.")
        layers.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    bad = sorted(i for i in layers if n_layers is not None and i >= n_layers)
    if bad or not layers:
        raise UserError(f"--layers {text!r} names layers outside 0..{(n_layers or 1) - 1}.")
    return sorted(layers)


@dataclass(kw_only=True)
class AblateSettings(ModelOptions, TaskOptions, SplitOptions, SpectrumOptions, OutputOptions):
    command = "ablate"
    layers: str = option("all", help="layers to filter: 'all' or e.g. '0,3,8-11'")
    positions: str = option("last", choices=("last", "all"), help="filter the last token only "
                            "or every position")
    keep: list[int] | None = option(None, min=1, metavar="K", help="also run the filter "
                                    "keeping only components K (e.g. 52 104)")
    prediction: str = option("vocab", choices=PREDICTIONS, help="vocab: the model's own next "
                             "token (the paper's); numbers: argmax over the number tokens only")

    def validate(self) -> None:
        p = self.max_answer + 1
        self.check_tau(p)
        k_max = FourierBasis(p, self.basis).n_components
        bad = [k for k in self.keep or [] if k > k_max]
        if bad:
            raise self.fail("keep", f"components must lie in 1..{k_max} for the numbers "
                            f"0..{p - 1}, got {bad}")
        parse_layers(self.layers)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")


class AblateCommand(Command):
    name = "ablate"
    help = "low/high-frequency filter ablations of attention and MLP outputs (Table 1 of " \
           "Zhou et al.)"
    Settings = AblateSettings
    shards = True
    section, heading, order = "ablate", "Frequency ablations", 40
    intro = ("Test accuracy after removing low- or high-frequency components from the attention "
             "and/or MLP outputs of every layer (Table 1 layout), and the errors those ablations "
             "leave: multiples of 10 when low frequencies go, small errors when high ones go.")
    captions = {"error_histograms": "Signed errors (prediction - answer) for each ablation: "
                                    "multiples of 10 point to lost low frequencies, small "
                                    "errors to lost high ones."}

    def run(self, s: AblateSettings, run: RunDir) -> dict:
        task = s.task()
        examples = s.examples(task)
        lm = s.load_model()
        record_inputs(run, lm, examples)
        layers = parse_layers(s.layers, lm.n_layers)
        numbers = task_numbers(lm.tokenizer, task.max_answer, lm.name)
        done = {}
        for unit in run.units("row-"):
            saved = run.load_unit(unit)
            if saved is not None:
                done[saved[0]["label"]] = saved[0]["result"]
        if done:
            print(f"resuming: {len(done)} finished row(s) in {run.path}")
        done = broadcast_object(done)  # every process runs the same rows
        table = ablation_table(
            lm, examples, numbers, tau=s.tau, basis_kind=s.basis, keep=s.keep, layers=layers,
            positions=s.positions, prediction=s.prediction, batch_size=s.batch_size, done=done,
            on_row=lambda label, res: run.save_unit(f"row-{_slug(label)}",
                                                    {"label": label, "result": res}))
        results = {
            "model": lm.name, "settings": s.identity(), "n_examples": len(examples),
            "numbers": {"p": numbers.p, "leading_space": numbers.leading_space},
            "layers": layers,
            "prediction": ("argmax over the whole vocabulary (the model's next token)"
                           if s.prediction == "vocab" else "argmax over the number tokens"),
            "table": [{k: v for k, v in r.items() if k != "predictions"} for r in table],
            "files": ["table.csv", "predictions.csv", "error_histograms.png"],
        }
        if run.helper:
            return results  # a helper process of a launch: the main one writes and prints
        run.write_csv("table.csv", [{c: r[c] for c in SUMMARY} for r in table])
        run.write_csv("predictions.csv", [
            {"a": e.a, "b": e.b, "answer": e.answer, **{r["row"]: r["predictions"][i]
                                                        for r in table}}
            for i, e in enumerate(examples)])
        if run.writes:
            error_histograms({r["row"]: r["error_histogram"] for r in table},
                             run.file("error_histograms.png"),
                             "signed errors (prediction - answer)")
        run.finish(results)
        print(format_table(results["table"], list(SUMMARY)))
        if run.writes:
            print(f"results: {run.file('results.json')} (error histograms: "
                  f"{run.file('error_histograms.png')})")
        return results

    # -------------------------------------------------------------- report view
    def job_html(self, job: JobView) -> str:
        rows = [{"ablation": r.get("row"),
                 "accuracy %": None if r.get("accuracy") is None else 100 * r["accuracy"],
                 "loss": r.get("loss"), "errors": r.get("n_errors"),
                 "errors multiple of 10": r.get("frac_errors_mult_10"),
                 "max |error|": r.get("max_abs_error"),
                 "mod-10 accuracy": r.get("mod10_accuracy")}
                for r in job.results.get("table", [])]
        return html_table(rows, caption="Filter ablations (Table 1 layout): accuracy on the "
                          "split with the named components removed at every filtered layer.")

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        labels: list[str] = []
        for job in jobs:
            labels += [r["row"] for r in job.results.get("table", []) if r["row"] not in labels]
        rows = []
        for label in labels:
            row: dict = {"ablation": label}
            for job in jobs:
                match = [r for r in job.results.get("table", []) if r.get("row") == label]
                acc = match[0].get("accuracy") if match else None
                row[job.id] = None if acc is None else 100 * acc
            row["paper (GPT-2-XL)"] = PAPER_TABLE1.get(label)
            rows.append(row)
        if not rows:
            return ""
        write_csv(out / "tables" / "ablation_table1.csv", rows)
        return html_table(rows, caption="Test accuracy (%) per ablation and job, beside Zhou et "
                          "al.'s Table 1 for fine-tuned GPT-2-XL (tables/ablation_table1.csv).")

    def findings(self, job: JobView) -> list[str]:
        rows = {r["row"]: r.get("accuracy") for r in job.results.get("table", [])}
        worst = min((r for r in rows if r != "none"), key=lambda r: rows[r] or 0, default=None)
        if worst is None:
            return []
        return [f"{job.id}: accuracy {percent(rows.get('none'))} without ablation, "
                f"{percent(rows[worst])} with {worst}."]


COMMAND = AblateCommand()
