"""``llm-fourier patch``: does the model use the helix? Helix activation patching.

At each (role, layer) the operand's state is replaced by the helix fit (or a baseline with as
many parameters) of the same number (``kept``) or of another one (``moved``); the metrics are
defined in ``llm_fourier.analyses.patching``. Writes ``results.json``, ``patching.csv`` (one
row per role, layer and method), ``fits.csv``, ``pairs.csv`` (the counterfactual operands)
and ``patching.png``. The training states and every finished (batch, patch) unit of the
engine are kept in the run folder, so a killed run resumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from llm_fourier.analyses.hidden_states import ROLES
from llm_fourier.analyses.patching import OPERANDS, helix_patching, patching_plot
from llm_fourier.commands.base import Command, JobView, finish, section_table
from llm_fourier.commands.kept import collect_kept
from llm_fourier.commands.options import (
    BatchOptions,
    ModelOptions,
    OutputOptions,
    PredictionOptions,
    SeedOptions,
    TaskOptions,
    model_layers,
    record_inputs,
)
from llm_fourier.commands.settings import option
from llm_fourier.errors import UserError
from llm_fourier.model.answer_space import AnswerSpace
from llm_fourier.output.html import html_table
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from probes.reconstruct import METHODS, MODES

CONSOLE = ("role", "layer", "method", "n_params", "r2_heldout", "kept", "moved",
           "accuracy_same", "to_counterfactual")


@dataclass(kw_only=True)
class PatchSettings(ModelOptions, TaskOptions, SeedOptions, BatchOptions, PredictionOptions,
                    OutputOptions):
    command = "patch"
    default_operand = 99  # Kantamneni & Tegmark's range
    max_operand: int | None = option(None, min=1, help="operands 0..N (default: 0..99, the "
                                     "paper's, or the largest range whose answers stay single "
                                     "tokens when the tokenizer keeps fewer whole)")
    operand: str = option("a", choices=OPERANDS, help="operand whose token is patched")
    roles: list[str] = option(["block"], choices=ROLES, help="states to patch: block = the "
                              "residual stream after the layer; attn / mlp = that module's "
                              "output")
    layers: list[int] | None = option(None, min=0, help="layers to patch (default: all)")
    periods: list[float] = option([2, 5, 10, 100], min=2, help="periods T of the helix and "
                                  "the circle")
    methods: list[str] = option(list(METHODS), choices=METHODS, help="helix and its "
                                "baselines with as many parameters")
    mode: str = option("replace", choices=MODES, help="replace the whole state (the paper) or "
                       "only its component in the method's span")
    pca_dim: int = option(100, min=1, help="PCA dimension the helix, circle and polynomial "
                          "are fitted in")
    all_prompts: bool = option(False, help="patch every test prompt, not only those the "
                               "model answers correctly (the paper's choice)")
    train_limit: int = option(2000, min=1, help="training prompts whose operand states the "
                              "reconstructions are fitted on")
    test_limit: int = option(200, min=1, help="test prompts to patch")

    def validate(self) -> None:
        for name in ("periods", "roles", "methods"):
            values = getattr(self, name)
            if len(set(values)) < len(values):
                raise self.fail(name, f"names a value twice ({values})")
        if self.operands < 4:
            raise self.fail("max_operand", "must be at least 4: the fits hold out a fifth of "
                            f"the operand's values, got {self.operands}")
        if self.train_limit < 10:
            raise self.fail("train_limit", f"must be at least 10 prompts to fit on, got "
                            f"{self.train_limit}")

    @property
    def token(self) -> str:
        """The token whose states are patched (``collect_kept`` reads it)."""
        return self.operand


class PatchCommand(Command):
    help = "helix activation patching: does the model use the fitted helix? (Kantamneni & " \
           "Tegmark 2025), beside circle, polynomial, PCA and shuffled fits"
    Settings, section, heading, order = PatchSettings, "patch", "Helix activation patching", 55
    intro = ("Does the model use the helix? At each layer the state at the operand's token is "
             "replaced by a fit: of the same number (kept: the fraction of the clean logit "
             "difference that survives, 0 = mean ablation, 1 = all of it) or of another number "
             "a' (moved: how far the answer moves toward a' op b, 1 = as far as patching in the "
             "real state of the prompt with a'). Baselines have as many parameters: a circle, a "
             "polynomial in a, the top PCA components, a helix fitted to shuffled numbers "
             "(Kantamneni & Tegmark 2025).")
    captions = {"patching": "Fraction of the effect restored per layer and method. Left: the "
                            "same number's fit (1 = the clean logit difference, 0 = mean "
                            "ablation). Right: another number's fit (1 = as far toward its "
                            "answer as patching in the real state)."}

    def run(self, s: PatchSettings, run: RunDir) -> dict:
        task = s.task()
        train, test = task.train[:s.train_limit], task.test[:s.test_limit]
        space = AnswerSpace(s.answer_format(task.max_answer), task.max_answer)
        if space.fmt.family != "single" and s.prediction == "numbers" and space.kind is None:
            raise s.fail("prediction", f"numbers needs single-token answers or one token per "
                         f"digit; this tokenizer writes answers up to {task.max_answer} as "
                         f"{space.fmt.family} tokens, so use --prediction vocab")
        lm = s.load_model(tokenizer=space.fmt.tokenizer)
        record_inputs(run, lm, list(train) + list(test))
        layers = model_layers(s, lm)
        values = {getattr(e, s.operand) for e in train}
        if len(values) < 5:
            raise UserError(f"the {len(train)} training prompts hold only {len(values)} values "
                            f"of {s.operand}; raise --train-limit or --max-operand.")
        out = helix_patching(
            lm, train, test, space, operand=s.operand, op=s.op, roles=s.roles, layers=layers,
            periods=s.periods, methods=s.methods, mode=s.mode, pca_dim=s.pca_dim,
            prediction=s.prediction, correct_only=not s.all_prompts,
            train_states=collect_kept(run, "train-states", lm, train, s, layers), seed=s.seed,
            batch_size=s.batch_size, progress=not s.quiet, store=run.store("patch")).as_dict()
        results = {"model": lm.name, "revision": s.revision, "task": task.settings,
                   "numbers": space.fmt.describe(), **out,
                   "files": ["patching.csv", "fits.csv", "pairs.csv", "patching.png"]}
        run.write_csv("patching.csv", out["rows"])
        run.write_csv("fits.csv", out["fits"])
        run.write_csv("pairs.csv", out["pairs"])
        if run.writes:
            patching_plot(out["rows"], run.file("patching.png"),
                          f"{Path(lm.name).name}: helix patching at operand {s.operand}")
        clean = out["clean"]
        return finish(run, results, f"clean: accuracy {clean['accuracy']:.4g}, ld_clean "
                      f"{clean['ld']:.4g}, n {clean['n']}",
                      format_table(out["rows"], list(CONSOLE)),
                      where=f" (plot: {run.file('patching.png')})")

    # -------------------------------------------------------------- report view
    def job_html(self, job: JobView) -> str:
        clean = job.results.get("clean") or {}
        acc = "n/a" if clean.get("accuracy") is None else f"{clean['accuracy']:.3g}"
        return html_table(best_rows(job.results), caption=f"Per role and method: the layer "
                          f"where the same number's fit keeps the most of the clean logit "
                          f"difference, and the layer where another number's fit moves the "
                          f"answer furthest (clean accuracy {acc} on {clean.get('n')} prompts).")

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        rows = [{"job": job.id, **row} for job in jobs for row in best_rows(job.results)]
        return section_table(rows, out, "patching_best", "Per job, role and method: best layer "
                             "for keeping the logit difference (same number) and for moving it "
                             "(another number); tables/patching_best.csv.")

    def findings(self, job: JobView) -> list[str]:
        table = best_rows(job.results)
        rows = [r for r in table if r["method"] == "helix"]
        if not rows or rows[0].get("kept") is None:
            return []
        best = max(rows, key=lambda r: r["kept"] if r["kept"] is not None else -math.inf)
        beside = ", ".join(f"{r['method']} {_pct(r['kept'])}" for r in table
                           if r["role"] == best["role"] and r["method"] != "helix")
        operand = (job.results.get("settings") or {}).get("operand", "a")
        return [f"{job.id}: the helix fit of {operand} keeps up to {_pct(best['kept'])} of the "
                f"logit difference ({best['role']}, layer {best['kept_layer']}"
                f"{'; ' + beside + ', each at its best layer' if beside else ''}) and moves the "
                f"answer up to {_pct(best.get('moved'))} of the way to the counterfactual "
                f"(layer {best['moved_layer']})."]


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def best_rows(results: dict) -> list[dict]:
    """Per (role, method): the layer with the largest ``kept`` and the one with the largest
    ``moved`` (NaN / missing values skipped), and the method's mean held-out R^2."""
    groups: dict[tuple, list[dict]] = {}
    for r in results.get("rows") or []:
        groups.setdefault((r.get("role"), r.get("method")), []).append(r)
    out = []
    for (role, method), rows in groups.items():
        row: dict = {"role": role, "method": method, "n_params": rows[0].get("n_params")}
        for key in ("kept", "moved"):
            best = max((r for r in rows if isinstance(r.get(key), (int, float))
                        and not math.isnan(r[key])), key=lambda r: r[key], default={})
            row[key], row[f"{key}_layer"] = best.get(key), best.get("layer")
        r2 = [r["r2_heldout"] for r in rows if isinstance(r.get("r2_heldout"), (int, float))]
        row["mean r2_heldout"] = sum(r2) / len(r2) if r2 else None
        out.append(row)
    return out


COMMAND = PatchCommand()
