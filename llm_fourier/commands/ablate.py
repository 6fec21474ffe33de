"""``llm-fourier ablate``: Fourier filter ablations in the layout of Zhou et al.'s Table 1.

Rows: none; attn+MLP / attn / MLP with low frequencies removed (high-pass, k < tau); the
same with high frequencies removed (low-pass, k >= tau); with ``--keep K ...`` also the
keep-only-those-components filter. The filters act on the readout the answers get
(``readout.readout_for``, named in ``results.json["readout"]``):

* single-token numbers: ``W_U[numbers]`` at the last position, scored on the next token
  (the paper's; tau 50 by default);
* one token per digit: ``W_U[digits 0..9]`` (DFT over ten digits, tau 3 by default) at every
  answer position, scored on the whole answer: greedy decoding and the teacher-forced
  log-probability (``loss`` = mean -log p(answer), ``teacher_forced_accuracy``);
* chunks of digits or BPE merges: no readout, so only the ``none`` row (whole-answer scores).

Writes ``results.json`` (the table: loss, accuracy and the rest of ``scores.Scores``),
``table.csv``, ``predictions.csv`` (each prompt, its answer and every row's prediction) and
``error_histograms.png`` (plus ``digit_errors.png`` for whole answers). Every finished
(batch, row) unit is kept in the run folder, so a killed run resumes there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from llm_fourier.analyses.ablation import ablation_table
from llm_fourier.analyses.answers import condition, score_conditions
from llm_fourier.commands.base import Command, JobView, finish, section_table
from llm_fourier.commands.digit_views import (
    DIGIT_CAPTIONS,
    flat_table_row,
    readout_kind,
    whole_answer_rows,
)
from llm_fourier.commands.options import (
    ModelOptions,
    OutputOptions,
    PredictionOptions,
    ReadoutOptions,
    SplitOptions,
    TaskOptions,
    record_inputs,
)
from llm_fourier.commands.settings import option
from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.model.number_format import NumberFormat
from llm_fourier.output.digit_plots import digit_error_panels
from llm_fourier.output.html import esc, html_table, percent
from llm_fourier.output.plots import error_histograms
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from probes import FourierBasis

SUMMARY = ("row", "rank", "loss", "accuracy", "n_errors", "frac_errors_mult_10",
           "mod2_accuracy", "mod10_accuracy", "max_abs_error")
# whole-answer and digit-space columns of table.csv (digit_accuracy_<place> follow)
EXTRA = ("teacher_forced_accuracy", "frac_errors_one_digit", "n_non_number", "method")
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
class AblateSettings(ModelOptions, TaskOptions, SplitOptions, ReadoutOptions,
                     PredictionOptions, OutputOptions):
    command = "ablate"
    layers: str = option("all", help="layers to filter: 'all' or e.g. '0,3,8-11'")
    positions: str = option("last", choices=("last", "all"), help="last: filter at the answer "
                            "positions only (the last prompt token; for answers of several "
                            "tokens every answer position); all: at every position")
    keep: list[int] | None = option(None, min=1, metavar="K", help="also run the filter "
                                    "keeping only components K (e.g. 52 104)")

    def validate(self) -> None:
        p = self.max_answer + 1
        self.check_tau(p)
        k_max = FourierBasis(p, self.basis).n_components
        bad = [k for k in self.keep or [] if k > k_max]
        if bad:
            raise self.fail("keep", f"components must lie in 1..{k_max} for the numbers "
                            f"0..{p - 1}, got {bad}")
        parse_layers(self.layers)

    def space(self, fmt: NumberFormat) -> AnswerSpace:
        """The answers' space (tau checked there), --keep and --prediction checked on it."""
        space = self.answer_space(fmt, self.max_answer)
        if space.kind is not None:
            with self.named_errors():
                space.check_keep(self.keep)
        elif self.prediction == "numbers":
            raise self.fail("prediction", f"numbers needs single-token answers or one token "
                            f"per digit; this tokenizer writes answers up to {self.max_answer} "
                            f"as {fmt.family} tokens, so use --prediction vocab")
        return space


def _prediction_text(prediction: str, single: bool) -> str:
    if single:
        return ("argmax over the whole vocabulary (the model's next token)"
                if prediction == "vocab" else "argmax over the number tokens")
    return ("greedy decoding over the whole vocabulary (the model's whole answer)"
            if prediction == "vocab" else
            "greedy decoding over the ten digit tokens, for exactly the answer's digit count")


def _column(job: JobView) -> str:
    """A job's column in the cross-job table: its id, marked when not the number readout."""
    kind = readout_kind(job.results)
    return job.id if kind == "number" else \
        f"{job.id} ({'digit readout' if kind == 'digit' else 'whole answers, unfiltered'})"


class AblateCommand(Command):
    help = "low/high-frequency filter ablations of attention and MLP outputs (Table 1 of " \
           "Zhou et al.)"
    Settings, section, heading, order = AblateSettings, "ablate", "Frequency ablations", 40
    shards = True
    intro = ("Test accuracy after removing low- or high-frequency components from the attention "
             "and/or MLP outputs of every layer (Table 1 layout), and the errors those ablations "
             "leave: multiples of 10 when low frequencies go, small errors when high ones go.")
    captions = {"error_histograms": "Signed errors (prediction - answer) for each ablation: "
                                    "multiples of 10 point to lost low frequencies, small "
                                    "errors to lost high ones.",
                "digit_errors": DIGIT_CAPTIONS["digit_errors"]}

    def run(self, s: AblateSettings, run: RunDir) -> dict:
        task = s.task()
        examples = s.examples(task)
        space = s.space(s.answer_format(task.max_answer))
        lm = s.load_model(tokenizer=space.fmt.tokenizer)
        layers = parse_layers(s.layers, lm.n_layers)
        readout = space.readout(lm) if space.kind else None
        record_inputs(run, lm, examples)  # after the checks of the layers and the readout
        single = space.single
        store = run.store("ablate")  # (batch, row) units: a killed run resumes there
        if readout is not None:
            table = ablation_table(
                lm, examples, space, keep=s.keep, layers=layers, positions=s.positions,
                prediction=s.prediction, batch_size=s.batch_size, store=store)
        else:  # no readout to filter through: the whole answers as they are
            none = score_conditions(lm, examples, space.fmt, [condition()], prediction=s.prediction,
                                    batch_size=s.batch_size, store=store, desc="none")["none"]
            table = [{"row": "none", "filter": "none", "modules": "-", **none}]
        for row in table:
            row.setdefault("method", "next token")
        results = {
            "model": lm.name, "settings": s.identity(), "n_examples": len(examples),
            **space.describe(readout), "tau": space.tau, "layers": layers,
            "prediction": _prediction_text(s.prediction, single),
            "positions": ("every position" if s.positions == "all" else
                          "the answer position" if single else "every answer position"),
            "table": [{k: v for k, v in r.items() if k != "predictions"} for r in table],
        }
        if readout is None:
            results["note"] = (f"answers up to {task.max_answer} are written as {space.fmt.family} "
                               "tokens, which have no readout to filter through; only the "
                               "unfiltered whole answers are scored (single-token or "
                               "digit-splitting answers get the filters)")
            print(f"note: {results['note']}.")
        knockouts = [r["row"] for r in table if r.get("knockout")]
        if knockouts:
            results["warning"] = (
                f"the filters of {', '.join(knockouts)} remove all {lm.d_model} dimensions of "
                "the module output (their Fourier rows span the whole width): these rows are "
                "knockouts, not frequency ablations; use a model wider than the band, or "
                "another --tau")
            print(f"warning: {results['warning']}.")
        results["files"] = ["table.csv", "predictions.csv", "error_histograms.png"] + (
            [] if single else ["digit_errors.png"])
        if run.helper:
            return results  # a helper process of a launch: the main one writes and prints
        run.write_csv("table.csv", [flat_table_row(r, SUMMARY + EXTRA) for r in table])
        run.write_csv("predictions.csv", [
            {"prompt": e.prompt, "a": e.a, "b": e.b, "answer": e.answer,
             **{r["row"]: r["predictions"][i] for r in table}}
            for i, e in enumerate(examples)])
        if run.writes:
            error_histograms({r["row"]: r["error_histogram"] for r in table},
                             run.file("error_histograms.png"),
                             "signed errors (prediction - answer)")
            if not single:
                digit_error_panels(table, run.file("digit_errors.png"),
                                   "wrong whole answers in digit space")
        shown = list(SUMMARY) if single else list(SUMMARY[:4]) + [
            "teacher_forced_accuracy", "n_errors", "frac_errors_one_digit",
            "frac_errors_mult_10", "max_abs_error"]
        return finish(run, results, format_table(results["table"], shown), where=(
            f" (table.csv, predictions.csv and plots in {run.path})"))

    # -------------------------------------------------------------- report view
    def job_html(self, job: JobView) -> str:
        table = job.results.get("table", [])
        kind = readout_kind(job.results)
        if kind != "number":  # answers of several tokens (digits, chunks, mixed): whole answers
            where = ("through the ten digit tokens at every answer position" if kind == "digit"
                     else "(no readout: unfiltered only)")
            return html_table(whole_answer_rows(table), caption=(
                f"Filter ablations {where}, scored on whole answers: greedy accuracy, "
                "teacher-forced accuracy (every answer token the argmax given the correct "
                "prefix), mean -log p of the whole answer, and the share of wrong answers "
                "that differ from the answer in exactly one digit."))
        rows = [{"ablation": r.get("row") + (" (knockout)" if r.get("knockout") else ""),
                 "filter rank": r.get("rank"),
                 "accuracy %": None if r.get("accuracy") is None else 100 * r["accuracy"],
                 "loss": r.get("loss"), "errors": r.get("n_errors"),
                 "errors multiple of 10": r.get("frac_errors_mult_10"),
                 "max |error|": r.get("max_abs_error"),
                 "mod-10 accuracy": r.get("mod10_accuracy")}
                for r in table]
        warning = job.results.get("warning")
        note = f"<p class='failed'>Warning: {esc(warning)}.</p>" if warning else ""
        return note + html_table(rows, caption="Filter ablations (Table 1 layout): accuracy on "
                                 "the split with the named components removed at every filtered "
                                 "layer; the filter rank is the number of dimensions removed, "
                                 "and a knockout removes all of them.")

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        tables = {_column(job): {r.get("row"): r for r in job.results.get("table", [])}
                  for job in jobs}
        rows = []
        for label in dict.fromkeys(label for table in tables.values() for label in table):
            row: dict = {"ablation": label}
            for column, table in tables.items():
                r = table.get(label, {})
                value = None if r.get("accuracy") is None else 100 * r["accuracy"]
                row[column] = f"{value:.4g} (knockout)" if r.get("knockout") else value
            row["paper (GPT-2-XL)"] = PAPER_TABLE1.get(label)
            rows.append(row)
        return section_table(rows, out, "ablation_table1", "Test accuracy (%) per ablation and "
                             "job, beside Zhou et al.'s Table 1 for fine-tuned GPT-2-XL "
                             "(tables/ablation_table1.csv). Jobs marked 'digit readout' filter "
                             "W_U[digits 0..9] at every answer position and score whole answers "
                             "(low: periods 10 and 5 at tau 3).")

    def findings(self, job: JobView) -> list[str]:
        rows = {r["row"]: r.get("accuracy") for r in job.results.get("table", [])}
        worst = min((r for r in rows if r != "none"), key=lambda r: rows[r] or 0, default=None)
        kind = readout_kind(job.results)
        if worst is None:
            return [f"{job.id}: whole-answer accuracy {percent(rows['none'])} (no readout "
                    "for the filters)."] if "none" in rows and kind is None else []
        what = " (digit readout, whole answers)" if kind == "digit" else ""
        return [f"{job.id}: accuracy {percent(rows.get('none'))} without ablation, "
                f"{percent(rows[worst])} with {worst}{what}."]


COMMAND = AblateCommand()
