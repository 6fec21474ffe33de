"""``llm-fourier transplant``: from-scratch GPT-2 adders with and without transplanted
number embeddings, over seeds, reported side by side (Zhou et al., section 4.2).

Arms: ``scratch`` (random init) and ``transplant`` (number rows of W_E, tied to W_U, set
from ``--source``; frozen unless ``--trainable``). Sources: ``synthetic`` (Fourier features
at ``--periods`` plus ``--n-low`` smooth components), the controls ``synthetic:low`` and
``synthetic:random`` (matched norms), a Hugging Face id or folder (``gpt2``, Llama-3,
BERT, ...; projected to the adder's width by ``--projection``) or another run's folder.
Each (seed, arm) trains with ``llm_fourier.analyses.finetuning.FineTuner`` into
``OUT/seedS/ARM/`` and is analysed from its saved folder by the code of ``probe`` and
``ablate``. Running the same command again skips finished arms and resumes the one in
progress from its checkpoint.

``--preset cpu`` (default): operands 0..50 (ordered pairs), 2 layers, width 64, 60 epochs
(about 4k steps of batch 32 per arm; minutes on 2 cores). At this width the high band's
filter spans all 64 dimensions, so those ablation rows are flagged as uninformative (use
``--d-model`` above p - 1 = 100 for them). ``--preset paper``: GPT-2 small, operands
0..260 (a <= b), source ``gpt2``, LR 5e-5, 700 epochs, batch 16: for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llm_fourier.analyses.finetuning import FinetuneConfig, FineTuner
from llm_fourier.commands.base import Command, JobView
from llm_fourier.commands.options import OutputOptions
from llm_fourier.commands.settings import option, seed_option
from llm_fourier.model.loading import load_model
from llm_fourier.model.numbers import task_numbers
from llm_fourier.model.tasks import make_task
from llm_fourier.output.files import read_json, write_json
from llm_fourier.output.html import flat_record, html_table, percent
from llm_fourier.output.paths import remove
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from toy.adders import AdderConfig, adder_tokenizer, build_adder, max_answer
from toy.transplant import (
    PROJECTIONS,
    SYNTHETIC_KINDS,
    project_rows,
    rescale_rows,
    source_number_rows,
    synthetic_embeddings,
    transplant_rows,
)
from toy.transplant_report import (
    analyse_model,
    arm_summary,
    embedding_spectrum,
    summary_row,
    write_report,
)

ARMS = ("scratch", "transplant")
PRESETS = {
    "cpu": dict(max_operand=50, ordered=True, layers=2, d_model=64, heads=4, dropout=0.0,
                epochs=60, lr=1e-3, batch_size=32, weight_decay=0.01, warmup_steps=50,
                eval_every=10, source="synthetic"),
    "paper": dict(max_operand=260, ordered=False, layers=12, d_model=768, heads=12,
                  dropout=0.1, epochs=700, lr=5e-5, batch_size=16, weight_decay=0.01,
                  warmup_steps=0, eval_every=10, source="gpt2"),
}
_PRESET_HELP = "(default: the preset's)"


@dataclass(kw_only=True)
class TransplantSettings(OutputOptions):
    command = "transplant"
    source: str | None = option(None, help="synthetic (default on cpu), synthetic:low, "
                                "synthetic:random, a hub id or folder (gpt2 on the paper "
                                "preset), or a run folder")
    seeds: list[int] = seed_option([0, 1, 2], help="training seeds; every arm trains once per seed")
    preset: str = option("cpu", choices=tuple(PRESETS), help="cpu: minutes on 2 cores; paper: "
                         "GPT-2 small, operands <= 260")
    trainable: bool = option(False, help="let the transplanted rows train (default: frozen, as "
                             "the paper)")
    projection: str = option("pca", choices=PROJECTIONS, help="width change for HF sources: "
                             "PCA or a fixed random orthonormal map")
    norm: float | None = option(None, above=0, help="rescale transplanted rows to this mean "
                                "row norm (default: source scale; synthetic rows: 1)")
    periods: list[float] | None = option(None, min=2, help="periods of the synthetic source "
                                         "(default: 2 2.5 5 10)")
    n_low: int = option(4, min=0, help="smooth components of the synthetic source")
    op: str = option("+", choices=("+", "*"), help="operation")
    task_seed: int = seed_option(0, help="seed of the pair shuffle, templates and split")
    tau: int | None = option(None, min=1, help="low/high threshold on k (default: 50 scaled "
                             "to p)")
    max_operand: int | None = option(None, min=1, help=f"operands 0..N {_PRESET_HELP}")
    layers: int | None = option(None, min=1, help=f"transformer layers {_PRESET_HELP}")
    d_model: int | None = option(None, min=2, help=f"width {_PRESET_HELP}")
    heads: int | None = option(None, min=1, help=f"attention heads {_PRESET_HELP}")
    dropout: float | None = option(None, min=0, max=0.99, help=f"dropout {_PRESET_HELP}")
    epochs: int | None = option(None, min=1, help=f"epochs {_PRESET_HELP}")
    lr: float | None = option(None, above=0, help=f"peak learning rate {_PRESET_HELP}")
    batch_size: int | None = option(None, min=1, help=f"batch size {_PRESET_HELP}")
    weight_decay: float | None = option(None, min=0, help=f"weight decay {_PRESET_HELP}")
    warmup_steps: int | None = option(None, min=0, help=f"warmup steps {_PRESET_HELP}")
    eval_every: int | None = option(None, min=1, help=f"epochs between validations "
                                    f"{_PRESET_HELP}")
    ordered: bool | None = option(None, help="ordered pairs (default: the preset's; cpu yes, "
                                  "paper a <= b)")
    grad_accum: int = option(1, min=1, help="gradient accumulation steps")
    mixed_precision: str = option("no", choices=("no", "fp16", "bf16"), help="mixed-precision "
                                  "compute")
    threads: int | None = option(None if torch.cuda.is_available() else 1, min=1,
                                 identity=False, help="CPU threads (1 without a GPU: tiny "
                                 "models run fastest on one thread)")

    def validate(self) -> None:
        if self.out is None:
            raise self.fail("out", "is needed: every arm trains into its own folder there")
        if len(set(self.seeds)) != len(self.seeds):
            raise self.fail("seeds", "must be distinct; give each seed once")
        r = self.resolved()
        if r["heads"] > r["d_model"] or r["d_model"] % r["heads"]:
            raise self.fail("heads", f"must divide --d-model {r['d_model']}, got {r['heads']}")
        kind = r["source"].partition(":")[2] if r["source"].startswith("synthetic:") else None
        if kind is not None and kind not in SYNTHETIC_KINDS:
            raise self.fail("source", f"{r['source']!r} is no synthetic source; use synthetic, "
                            "synthetic:low or synthetic:random")
        p = max_answer(r["op"], r["max_operand"]) + 1
        if self.tau is not None and not self.tau <= (p - 1) // 2:
            raise self.fail("tau", f"must lie in 1..{(p - 1) // 2} for the numbers 0..{p - 1}, "
                            f"got {self.tau}")

    def resolved(self) -> dict:
        """The preset's values overridden by the options given."""
        fields = ("max_operand", "ordered", "layers", "d_model", "heads", "dropout", "epochs",
                  "lr", "batch_size", "weight_decay", "warmup_steps", "eval_every", "source")
        r = {**PRESETS[self.preset],
             **{k: getattr(self, k) for k in fields if getattr(self, k) is not None}}
        r.update(op=self.op, task_seed=self.task_seed, trainable=self.trainable,
                 projection=self.projection, norm=self.norm, n_low=self.n_low,
                 periods=[float(x) for x in self.periods or (2, 2.5, 5, 10)],
                 grad_accum=self.grad_accum, mixed_precision=self.mixed_precision)
        return r


def build_source(r: dict, numbers, dim: int) -> tuple[np.ndarray, dict]:
    """The rows to transplant (q x dim, row n = number n) and a description."""
    src = r["source"]
    if src == "synthetic" or src.startswith("synthetic:"):
        kind = src.partition(":")[2] or "fourier"
        rows = synthetic_embeddings(numbers.p, dim, kind, r["periods"], r["n_low"],
                                    1.0 if r["norm"] is None else r["norm"], seed=0)
        return rows, {"source": src, "kind": kind, "periods": r["periods"], "n_low": r["n_low"]}
    rows, info = source_number_rows(src, numbers.p, leading_space=numbers.leading_space)
    if len(rows) < numbers.p:
        print(f"note: {src} keeps only 0..{len(rows) - 1} as single tokens; numbers "
              f"{len(rows)}..{numbers.p - 1} keep their random initialisation.")
    projected = rescale_rows(project_rows(rows, dim, r["projection"], seed=0), r["norm"])
    return projected, {**info, "projection": r["projection"] if info["source_dim"] != dim
                       else "none (same width)"}


def run_arm(arm: str, seed: int, r: dict, task, rows: np.ndarray | None, folder: Path,
            tau: int, resume: bool) -> dict:
    """Train one (seed, arm) (resuming), then analyse it from its saved folder."""
    done = folder / "analysis.json"
    if resume and done.exists():
        try:
            return read_json(done)
        except (OSError, ValueError):  # unreadable: analyse the trained arm again
            print(f"note: {done} cannot be read; the arm is analysed again.")
    config = AdderConfig(max_number=max_answer(r["op"], r["max_operand"]), n_layer=r["layers"],
                         d_model=r["d_model"], n_head=r["heads"], dropout=r["dropout"])
    model, tok = build_adder(config, seed)
    numbers = task_numbers(tok, task.max_answer)
    frozen = None
    if arm == "transplant":
        ids = transplant_rows(model, numbers, rows)
        frozen = None if r["trainable"] else ids
    cfg = FinetuneConfig(epochs=r["epochs"], lr=r["lr"], batch_size=r["batch_size"],
                         grad_accum=r["grad_accum"], weight_decay=r["weight_decay"],
                         warmup_steps=r["warmup_steps"], mixed_precision=r["mixed_precision"],
                         seed=seed, save_every=200, eval_every_epochs=r["eval_every"])
    lm = load_model(model, tok)
    state = FineTuner(lm, task, numbers, folder, cfg, frozen_token_ids=frozen).train(
        resume=resume)
    trained = load_model(folder / "model", dtype="float32")  # as probe / ablate would load it
    analysis = analyse_model(trained, task.test, numbers, state["test"], tau, batch_size=64)
    analysis.update(arm=arm, seed=seed, steps=state["step"], history=state["history"],
                    model_dir=str(folder / "model"))
    write_json(done, analysis)
    return analysis


class TransplantCommand(Command):
    name = "transplant"
    help = "from-scratch GPT-2 adders with and without transplanted number embeddings, over " \
           "seeds"
    Settings = TransplantSettings
    section, heading, order = "transplant", "Transplanted number embeddings", 60
    intro = ("Adders trained from scratch with and without frozen pretrained (Fourier) number "
             "embeddings: test accuracy, error spread and training curves.")
    captions = {"error_histograms": "Test errors (prediction - answer) pooled over seeds, per "
                                    "arm: adders trained from scratch mostly err by one or two.",
                "embedding_spectra": "Fourier spectra of the number embeddings of each arm (and "
                                     "of the transplanted source).",
                "accuracy": "Test accuracy of each arm, per seed.",
                "heatmap": "Attention / MLP number logits of the first seed: mean |Fourier "
                           "component| per component k and layer."}

    def run(self, s: TransplantSettings, run: RunDir) -> dict:
        r = s.resolved()
        if s.threads:
            torch.set_num_threads(s.threads)
        task = make_task(r["op"], r["max_operand"], ordered=r["ordered"], seed=r["task_seed"])
        numbers = task_numbers(adder_tokenizer(max_answer(r["op"], r["max_operand"])),
                               task.max_answer)
        tau = s.tau or max(1, int(50 * (numbers.p - 1) / 520))  # the paper's 50 of 260
        r["tau"] = tau
        rows, source = build_source(r, numbers, r["d_model"])
        folder = run.workspace()
        source["spectrum"] = embedding_spectrum(rows, tau)
        if not run.resumed:  # arms of a finished or discarded run: train afresh
            for old in folder.glob("seed*"):
                remove(old, folder)
        analyses: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
        for seed in s.seeds:
            for arm in ARMS:
                arm_dir = folder / f"seed{seed}" / arm
                print(f"seed {seed}, arm {arm}: {arm_dir}")
                analyses[arm][seed] = run_arm(arm, seed, r, task, rows, arm_dir, tau,
                                              run.resumed)
        first = analyses[ARMS[0]][s.seeds[0]]
        full = sorted(n for n, rk in first.get("filter_ranks", {}).items()
                      if rk >= first["d_model"])
        note = (f"the {', '.join(full)} filter(s) remove all {first['d_model']} dimensions "
                f"(width below the {numbers.p} numbers' band); those ablation rows are not "
                "informative: use a --d-model above p - 1." if full else None)
        title = f"{r['source']} ({'trainable' if r['trainable'] else 'frozen'})"
        files = write_report(folder, analyses, source["spectrum"], title)
        results = {
            "settings": {**r, "seeds": s.seeds, "preset": s.preset}, "task": task.settings,
            "numbers": {"p": numbers.p}, "tau": tau,
            "source": {**source, "spectrum": {k: v for k, v in source["spectrum"].items()
                                              if k != "magnitude"}},
            "arms": {arm: {"summary": arm_summary(seeds),
                           "runs": [summary_row(arm, sd, a) for sd, a in sorted(seeds.items())]}
                     for arm, seeds in analyses.items()},
            "files": files, "ablation_note": note,
        }
        run.finish(results)
        print(format_table([row for arm in ARMS for row in results["arms"][arm]["runs"]],
                           ["arm", "seed", "test_accuracy", "off_by_1", "off_by_10s",
                            "embedding_periods", "attn_periods", "mlp_periods"]))
        for arm in ARMS:
            sm = results["arms"][arm]["summary"]
            print(f"{arm}: test accuracy {sm['accuracy_mean']:.3f} +- {sm['accuracy_std']:.3f} "
                  f"over seeds {sm['seeds']}")
        if note:
            print(f"note: {note}")
        print(f"results: {run.file('results.json')} (plots: accuracy.png, "
              "error_histograms.png, embedding_spectra.png, heatmap_*.png)")
        return results

    # -------------------------------------------------------------- report view
    def job_html(self, job: JobView) -> str:
        arms = job.results.get("arms", {})
        runs = [flat_record(r) for arm in arms.values() for r in arm.get("runs", [])]
        labels: list[str] = []
        for arm in arms.values():
            labels += [k for k in arm.get("summary", {}).get("ablation_accuracy_mean", {})
                       if k not in labels]
        ablation = [{"ablation": label, **{f"{name} accuracy": a.get("summary", {}).get(
            "ablation_accuracy_mean", {}).get(label) for name, a in arms.items()}}
            for label in labels]
        return (html_table(runs, caption="Each trained adder: test accuracy, error spread and "
                           "the Fourier outlier periods of its embeddings, attention and MLP.")
                + html_table(ablation, caption="Mean test accuracy per arm under each "
                             "frequency ablation."))

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        rows = []
        for job in jobs:
            source = (job.results.get("source") or {}).get("source")
            for name, arm in job.results.get("arms", {}).items():
                sm = arm.get("summary", {})
                errors = sm.get("errors", {})
                rows.append({"job": job.id, "arm": name,
                             "source": source if name != "scratch" else "-",
                             "seeds": len(sm.get("seeds", [])),
                             "accuracy mean": sm.get("accuracy_mean"),
                             "accuracy std": sm.get("accuracy_std"),
                             "errors off by 1": errors.get("off_by_1"),
                             "errors within 2": errors.get("within_2"),
                             "errors multiples of 10": errors.get("off_by_10s")})
        return html_table(rows, caption="Transplant comparison: test accuracy of adders trained "
                          "from scratch and with transplanted number embeddings (mean and std "
                          "over seeds), and how their errors spread.")

    def findings(self, job: JobView) -> list[str]:
        arms = job.results.get("arms")
        if not arms:
            return []
        text = ", ".join(f"{name} {percent(a.get('summary', {}).get('accuracy_mean'))}"
                         for name, a in arms.items())
        return [f"{job.id}: adder test accuracy {text}."]


COMMAND = TransplantCommand()
