"""``llm-fourier finetune``: fine-tune a causal LM on addition (or multiplication) prompts.

The loss is on the answer token only (see ``llm_fourier.analyses.finetuning``). Writes ``model/`` (a
Hugging Face folder that ``probe`` / ``ablate`` take as ``--model``), ``results.json``
(settings, validation metrics per epoch, test metrics), ``history.csv``,
``predictions.csv``, ``history.png`` and ``test_errors.png``. Checkpoints in
``checkpoints/``: running the same command again continues a killed run exactly. Paper
settings (Zhou et al.): ``--epochs 50 --batch-size 16 --lr 1e-5``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llm_fourier.analyses.finetuning import MIXED_PRECISION, FinetuneConfig, FineTuner
from llm_fourier.commands.base import Command, JobView
from llm_fourier.commands.options import (
    ModelOptions,
    OutputOptions,
    SeedOptions,
    TaskOptions,
    record_inputs,
)
from llm_fourier.commands.settings import option
from llm_fourier.model.numbers import task_numbers
from llm_fourier.output.files import save_figure
from llm_fourier.output.html import html_table
from llm_fourier.output.plots import error_histograms, pyplot
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table

HISTORY_COLUMNS = ("epoch", "step", "loss", "accuracy", "frac_errors_mult_10", "mod10_accuracy")


@dataclass(kw_only=True)
class FinetuneSettings(ModelOptions, TaskOptions, SeedOptions, OutputOptions):
    command = "finetune"
    dtype: str = option("float32", choices=("float32", "bfloat16", "float16"),
                        help="dtype of the trained weights (use --mixed-precision for "
                             "bf16/fp16 compute)")
    max_pairs: int | None = option(None, min=3, help="use the first N shuffled pairs before "
                                   "splitting")
    epochs: int = option(3, min=1, help="epochs (paper: 50)")
    lr: float = option(1e-5, above=0, help="peak learning rate, linear decay to 0 (the paper's)")
    batch_size: int = option(16, min=1, help="prompts per device and step (paper: 16)")
    grad_accum: int = option(1, min=1, help="gradient accumulation steps")
    weight_decay: float = option(0.01, min=0, help="AdamW weight decay")
    warmup_steps: int = option(0, min=0, help="linear warmup steps")
    max_grad_norm: float = option(1.0, min=0, help="gradient clipping norm (0: none)")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="mixed-precision "
                                  "compute")
    eval_batch_size: int = option(64, min=1, identity=False, help="prompts per evaluation "
                                  "forward")
    save_every: int = option(200, min=0, identity=False, help="checkpoint every N optimizer "
                             "steps (and every epoch); 0: epochs only")
    stop_after: int | None = option(None, min=1, identity=False, metavar="STEPS",
                                    help="stop after this many optimizer steps (checkpoint "
                                    "kept; run the same command again to continue)")

    def validate(self) -> None:
        if self.out is None:
            raise self.fail("out", "is needed: fine-tuning writes checkpoints and the model "
                            "folder there")

    def config(self) -> FinetuneConfig:
        return FinetuneConfig(
            epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            grad_accum=self.grad_accum, weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps, max_grad_norm=self.max_grad_norm or None,
            mixed_precision=self.mixed_precision, seed=self.seed,
            eval_batch_size=self.eval_batch_size, save_every=self.save_every)


def history_plot(history: list[dict], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h.get("loss") for h in history], marker=".")
    ax1.set(xlabel="epoch", ylabel="validation loss (answer token)")
    ax2.plot(epochs, [h.get("accuracy") for h in history], marker=".")
    ax2.set(xlabel="epoch", ylabel="validation accuracy", ylim=(-0.02, 1.02))
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def write_training_report(run: RunDir, state: dict, task, title: str) -> dict:
    """history.csv, predictions.csv and the two PNGs of a finished (or stopped) run."""
    history = state.get("history", [])
    run.write_csv("history.csv", [{c: h.get(c) for c in HISTORY_COLUMNS} for h in history])
    files = ["history.csv"]
    if history and run.writes:
        history_plot(history, run.file("history.png"), title)
        files.append("history.png")
    test = state.get("test") or {}
    if test:
        run.write_csv("predictions.csv", [
            {"a": e.a, "b": e.b, "answer": e.answer, "prediction": p}
            for e, p in zip(task.test, test.get("predictions", []))])
        if run.writes:
            error_histograms({"test": test["error_histogram"]}, run.file("test_errors.png"),
                             "signed errors on the test split (prediction - answer)")
        files += ["predictions.csv", "test_errors.png"]
    return {"history": history, "test": {k: v for k, v in test.items() if k != "predictions"},
            "files": files}


class FinetuneCommand(Command):
    help = "fine-tune a causal LM on addition prompts (loss on the answer token; accelerate; " \
           "checkpoints, resumable)"
    Settings, section, heading, order = FinetuneSettings, "finetune", "Fine-tuning", 20
    intro = "Models fine-tuned on the addition task: training loss and held-out accuracy."
    captions = {"history": "Validation loss and accuracy over training.",
                "test_errors": "Histogram of signed errors (prediction - answer) on the test "
                               "split."}

    def run(self, s: FinetuneSettings, run: RunDir) -> dict:
        task = s.task(limit=s.max_pairs)
        # weights in float32 on the CPU; accelerate moves them and runs mixed precision
        lm = s.load_model(device_map={"": "cpu"}, verify=False)  # training hooks no roles
        record_inputs(run, lm, task.train)
        numbers = task_numbers(lm.tokenizer, task.max_answer, lm.name)
        state = FineTuner(lm, task, numbers, run.workspace(), s.config()).train(
            resume=run.resumed, stop_after_steps=s.stop_after)
        report = write_training_report(run, state, task, f"fine-tuning {lm.name}")
        results = {"model": lm.name, "settings": s.identity(), "task": task.settings,
                   "finished": state["finished"], "steps": state["step"],
                   "model_dir": state.get("model_dir"), **report}
        print(format_table(report["history"], list(HISTORY_COLUMNS)))
        if not state["finished"]:
            run.write_json("results.json", results)
            print(f"stopped after {state['step']} steps; run the same command again to "
                  "continue")
            return results
        run.finish(results)
        print(f"test accuracy {report['test'].get('accuracy', float('nan')):.4f}; model: "
              f"{state['model_dir']} (pass it to probe / ablate as --model)")
        return results

    def job_html(self, job: JobView) -> str:
        history = job.results.get("history", [])
        return html_table([{c: h.get(c) for c in HISTORY_COLUMNS} for h in history],
                          caption="Validation metrics after each epoch.")


COMMAND = FinetuneCommand()
