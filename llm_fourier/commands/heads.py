"""``llm-fourier heads``: every attention head's spectrum, attention to the operands, direct
effect on the answer and (unless ``--no-ablation``) the cost of mean-ablating it, then the
``--top-k`` heads ablated together beside ``--n-random`` draws of random heads
(``analyses.heads``, ``analyses.head_ablation``). Writes ``results.json``, ``heads.csv``
and ``heads.png``; the engine's units are kept in the run folder, so a killed run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_fourier.analyses.head_ablation import (
    ablate,
    effect,
    random_heads,
    single_heads,
    top_heads,
)
from llm_fourier.analyses.heads import collect, head_rows
from llm_fourier.commands.base import Command, JobView, finish
from llm_fourier.commands.options import (
    ModelOptions,
    OutputOptions,
    PredictionOptions,
    ReadoutOptions,
    SeedOptions,
    SplitOptions,
    TaskOptions,
    model_layers,
    record_inputs,
)
from llm_fourier.commands.settings import option
from llm_fourier.errors import UserError
from llm_fourier.model.engine import PromptSet
from llm_fourier.output.head_plots import head_heatmaps
from llm_fourier.output.html import html_table, percent
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from probes.stats import StatsConfig

CONSOLE = ("layer", "head", "periods", "peak_share", "attn_a", "attn_b", "attn_prefix",
           "direct_effect", "accuracy", "accuracy_drop", "loss_increase")


@dataclass(kw_only=True)
class HeadsSettings(ModelOptions, TaskOptions, SplitOptions, ReadoutOptions, SeedOptions,
                    PredictionOptions, OutputOptions):
    command = "heads"
    layers: list[int] | None = option(None, min=0, help="layers whose heads are read "
                                      "(default: all)")
    top: int = option(3, min=1, help="periods (peaks at k >= tau) kept per head")
    top_k: int = option(5, min=1, help="heads with the largest ablation effect, ablated "
                        "together beside as many random heads of the same layers")
    n_random: int = option(5, min=1, help="random draws of as many heads per layer")
    bootstrap: int = option(1000, min=0, identity=False, help="bootstrap draws over prompts "
                            "for each interval (0: none)")
    ci_level: float = option(0.95, above=0, max=0.999, help="confidence level")
    no_ablation: bool = option(False, help="spectra, attention and direct effects only")

    def validate(self) -> None:
        self.check_tau(self.max_answer + 1)


def csv_row(row: dict) -> dict:
    """One head as a flat CSV / console row."""
    return {"layer": row["layer"], "head": row["head"],
            "periods": " ".join(f"{p:.3g}" for p in row["periods"]),
            **{k: row[k] for k in ("peak_share", "low_fraction", "lens_accuracy", "attn_a",
                                   "attn_b", "attn_prefix", "attn_rest", "direct_effect",
                                   "direct_effect_centred")},
            **(row.get("ablation") or {})}


def panels(rows: list[dict], layers: list[int], n_heads: int) -> dict[str, np.ndarray]:
    """L x H matrices of each measure, for ``heads.png``."""
    keys = {"top peak's energy share": "peak_share", "attention to a": "attn_a",
            "attention to b": "attn_b", "direct effect (centred)": "direct_effect_centred"}
    if any(r.get("ablation") for r in rows):
        keys["loss increase when ablated"] = "loss_increase"
    out = {name: np.full((len(layers), n_heads), np.nan) for name in keys}
    for r in rows:
        values = {**r, **(r.get("ablation") or {})}
        for name, key in keys.items():
            out[name][layers.index(r["layer"]), r["head"]] = values[key]
    return out


def ranked(rows: list[dict], n: int = 10) -> list[dict]:
    """The top ``n`` heads: by loss increase when ablated, else by |direct effect|."""
    if any(r.get("ablation") for r in rows):
        key = lambda r: -r["ablation"]["loss_increase"]  # noqa: E731
    else:
        key = lambda r: -abs(r["direct_effect_centred"])  # noqa: E731
    return [csv_row(r) for r in sorted(rows, key=key)[:n]]


class HeadsCommand(Command):
    help = "attention heads: each head's number spectrum, where it looks, its direct effect " \
           "on the answer and what mean-ablating it costs"
    Settings, section, heading, order = HeadsSettings, "heads", "Attention heads", 47
    intro = ("What each attention head adds to the residual stream at the last prompt token, "
             "read through the unembedding of the numbers (its Fourier periods), where it "
             "attends (operand a, operand b, the answer prefix), its direct effect on the "
             "answer's logit, and the accuracy and loss with it mean-ablated.")
    captions = {"heads": "Heads (columns) x layers (rows): the top peak's share of each "
                         "head's number-logit energy, its attention to operands a and b, its "
                         "direct effect on the answer (against the mean number), and the loss "
                         "increase when it is mean-ablated."}

    def run(self, s: HeadsSettings, run: RunDir) -> dict:
        task = s.task()
        examples = s.examples(task)
        space = s.answer_space(s.answer_format(task.max_answer), task.max_answer)
        if space.kind is None:
            raise UserError(
                f"heads: answers up to {task.max_answer} are written as {space.fmt.family} "
                f"tokens (single tokens only up to {space.fmt.numbers.max_number}), which no "
                "readout reads; use --max-operand so that answers stay single tokens.")
        lm = s.load_model(tokenizer=space.fmt.tokenizer)
        record_inputs(run, lm, examples)
        layers = model_layers(s, lm)
        progress = not s.quiet
        prompts = PromptSet.build(lm, examples, s.batch_size, fmt=space.fmt, offsets=True)
        measures = collect(lm, prompts, space, layers, prediction=s.prediction,
                           store=run.store("collect"), progress=progress)
        base = (measures.correct, measures.loss)
        cfg = StatsConfig(n_boot=s.bootstrap, level=s.ci_level, seed=s.seed)
        effects, together = None, None
        if not s.no_ablation:
            single = ablate(lm, prompts, space, measures,
                            single_heads(layers, measures.n_heads), prediction=s.prediction,
                            store=run.store("ablate"), progress=progress)
            effects = {name: effect(*v, *base, cfg) for name, v in single.items()}
        rows = head_rows(measures, space.tau, effects, top=s.top)
        if effects is not None:
            k = min(s.top_k, len(rows))
            top = top_heads(rows, k)
            chosen = {"top": top, **random_heads(top, measures.n_heads, s.n_random, s.seed)}
            both = ablate(lm, prompts, space, measures, chosen, prediction=s.prediction,
                          store=run.store("together"), progress=progress)
            draws = [{"heads": chosen[n], **effect(*both[n], *base, cfg)} for n in chosen
                     if n != "top"]
            acc, loss = ([d[key] for d in draws] for key in ("accuracy", "loss_increase"))
            together = {"k": k, "top": {"heads": top, **effect(*both["top"], *base, cfg)},
                        "random": {"accuracy_mean": float(np.mean(acc)),
                                   "accuracy_std": float(np.std(acc)),
                                   "loss_increase_mean": float(np.mean(loss)), "draws": draws}}
        results = {"model": lm.name, "settings": s.identity(), "n_examples": len(examples),
                   **space.describe(space.readout(lm)), "tau": space.tau, "layers": layers,
                   "n_heads": measures.n_heads,
                   "baseline": {"accuracy": float(base[0].mean()),
                                "loss": float(base[1].mean())},
                   "heads": rows, "together": together,
                   "files": ["heads.csv", "heads.png"]}
        if run.helper:
            return results
        run.write_csv("heads.csv", [csv_row(r) for r in rows])
        if run.writes:
            head_heatmaps(panels(rows, layers, measures.n_heads), layers,
                          run.file("heads.png"), f"{Path(lm.name).name}: attention heads")
        top = ranked(rows)
        return finish(run, results, format_table(top, [c for c in CONSOLE if c in top[0]]),
                      None if together is None else format_table(together_rows(results)))

    # -------------------------------------------------------------- report view
    def job_html(self, job: JobView) -> str:
        res = job.results
        rows = ranked(res.get("heads") or [])
        if not rows:
            return ""
        parts = [html_table(rows, [c for c in CONSOLE if c in rows[0]], caption=(
            "The heads whose mean-ablation raises the loss most (or, without ablations, "
            "with the largest direct effect): their periods, where they look, their direct "
            "effect and what ablating them costs."))]
        if res.get("together"):
            parts.append(html_table(together_rows(res), caption=(
                "The top heads ablated together beside as many random heads of the same "
                "layers (mean of the draws).")))
        return "\n".join(parts)

    def findings(self, job: JobView) -> list[str]:
        r = (ranked(job.results.get("heads") or [], 1) or [{}])[0]
        if "loss_increase" not in r:
            return []
        return [f"{job.id}: mean-ablating head {r['head']} of layer {r['layer']} (periods "
                f"{r['periods'] or 'none'}; attention to a {r['attn_a']:.2f}, to b "
                f"{r['attn_b']:.2f}) leaves {percent(r['accuracy'])} accuracy "
                f"(unablated {percent(job.results['baseline']['accuracy'])})."]


def together_rows(results: dict) -> list[dict]:
    t = results["together"]
    return [{"heads": f"top {t['k']}", "accuracy": t["top"]["accuracy"],
             "accuracy_low": t["top"]["accuracy_low"], "accuracy_high": t["top"]["accuracy_high"],
             "loss_increase": t["top"]["loss_increase"]},
            {"heads": f"{t['k']} random (mean of {len(t['random']['draws'])})",
             "accuracy": t["random"]["accuracy_mean"], "accuracy_low": None,
             "accuracy_high": None, "loss_increase": t["random"]["loss_increase_mean"]},
            {"heads": "none", "accuracy": results["baseline"]["accuracy"],
             "accuracy_low": None, "accuracy_high": None, "loss_increase": 0.0}]


COMMAND = HeadsCommand()
