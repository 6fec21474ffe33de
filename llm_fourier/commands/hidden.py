"""``llm-fourier hidden``: Fourier probes on hidden states, with their controls.

Per (role, layer) at one token of each prompt (``--token``): mod-T probes (Cohen's kappa) and a
helix fit (held-out R^2) of ``--target``, each beside its shuffled-label baseline and the same
probe on a random-init copy, and the Fourier spikes of the per-number mean states, computed in
``hidden_units``, whose kept states and units let a killed run resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llm_fourier.analyses.corpus import COUNT_MODES
from llm_fourier.analyses.hidden_ablation import GROUPS
from llm_fourier.analyses.hidden_states import CONTROLS, ROLES, TARGETS, TOKENS, load_scalar
from llm_fourier.commands.base import Command, JobView
from llm_fourier.commands.digit_views import DIGIT_CAPTIONS, best_probe_rows
from llm_fourier.commands.emergence import emergence_html
from llm_fourier.commands.hidden_units import analyse
from llm_fourier.commands.kept import StatesOptions
from llm_fourier.commands.options import (
    BASES,
    BatchOptions,
    ModelOptions,
    OutputOptions,
    SeedOptions,
    StatsOptions,
    TaskOptions,
    model_layers,
    record_inputs,
)
from llm_fourier.commands.settings import option
from llm_fourier.model.scores import n_digits
from llm_fourier.output.files import save_figure
from llm_fourier.output.html import esc, html_table, percent, record_tables
from llm_fourier.output.plots import pyplot
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table
from probes.circular import KINDS


@dataclass(kw_only=True)
class HiddenSettings(ModelOptions, TaskOptions, StatsOptions, SeedOptions, BatchOptions,
                     StatesOptions, OutputOptions):
    command = "hidden"
    n_probe: int = option(1000, min=1, help="training-split prompts whose states are probed")
    keep_states: bool = option(True, identity=False, help="keep the collected states in "
                               "OUT/states/ (safetensors + index; lf.load_states reads them)")
    token: str = option("a", choices=TOKENS, help="where to read the state: last token of "
                        "operand a or b, or the last prompt token")
    target: str | None = option(None, choices=TARGETS, help="number to probe for (default: "
                                "the --token operand, else the answer)")
    roles: list[str] = option(list(ROLES), choices=ROLES, help="block = residual stream after "
                              "the layer")
    layers: list[int] | None = option(None, min=0, help="layers to probe (default: all)")
    periods: list[int] = option([2, 5, 10], min=2, help="T of the mod-T probes")
    helix_periods: list[float] = option([2, 5, 10, 100], min=2, help="periods of the helix fit "
                                        "(Kantamneni & Tegmark)")
    pca_dim: int = option(100, min=1, help="PCA dimension of the helix")
    mod_pca_dim: int = option(64, min=1, help="PCA dimension of the mod-T probes")
    folds: int = option(5, min=2, help="cross-validation folds")
    no_random_baseline: bool = option(False, help="skip the randomly initialised copy (it "
                                      "needs a second model in memory)")
    control: str | None = option(None, metavar="FILE", help="per-number scalar (CSV/JSON/NPY, "
                                 "e.g. token counts): its spectrum beside the embedding's")
    corpus: str | None = option(None, metavar="FILE", help="without --control: count the "
                                "numbers 0..p-1 in this text file and show the spectrum of "
                                "their frequency beside the embedding's (the convergent-"
                                "evolution control)")
    corpus_count: str = option("text", choices=COUNT_MODES, help="text: whole numbers written "
                               "in the text; tokens: each number's own token")
    token_control: str = option("auto", choices=CONTROLS, help="probe again with the "
                                "token-identity directions removed: auto (where the read token "
                                "alone decodes n mod T), always, or never")
    basis: str = option("paper", choices=BASES, help="Fourier basis of the control spectra")
    ablate_periods: list[float] | None = option(None, min=2, help="remove the fitted directions "
                                                "of these periods (a subset of --helix-periods) "
                                                "and measure accuracy")
    ablate_groups: list[str] = option(["attn+MLP", "attn", "MLP"], choices=tuple(GROUPS),
                                      help="module outputs to ablate")
    ablate_positions: str | None = option(None, choices=("all", "last"), help="where to ablate "
                                          "(default: last for --token last, else all)")
    digit_kinds: list[str] = option(list(KINDS), choices=KINDS, empty=True, help="digit "
                                    "probes per place of --target: circular (cos/sin of "
                                    "2 pi d/10), linear (10 classes), value (the number); "
                                    "give none to skip them")
    digit_places: list[int] | None = option(None, min=0, help="digit places to probe (0 = "
                                            "units; default: every place of --target)")
    digit_alpha: float = option(1.0, above=0, help="ridge penalty of the circular and value "
                                "probes (scaled PCA features)")
    intervene_place: int | None = option(None, min=0, help="rotate digit place P (0 = units) "
                                         "of operand --token by --intervene-shift along its "
                                         "circular probe and measure the answer's digit P "
                                         "(Levy & Geva; + only)")
    intervene_shift: int = option(1, min=1, max=9, help="digits to rotate by")
    intervene_layer: int | None = option(None, min=0, help="layer of the rotation (default: "
                                         "the probed layer whose circular probe of that place "
                                         "is most accurate)")
    intervene_role: str = option("block", choices=ROLES, help="module output to rotate")
    n_eval: int = option(200, min=1, help="test prompts to evaluate (ablations, intervention)")

    @property
    def probed(self) -> str:
        return self.target or (self.token if self.token in ("a", "b") else "answer")

    @property
    def scored(self) -> bool:
        """Whether answers are scored (ablation, intervention): the run needs their format."""
        return bool(self.ablate_periods) or self.intervene_place is not None

    def validate(self) -> None:
        if self.control is not None:  # a bad file is one sentence before anything loads
            if not Path(self.control).is_file():
                raise self.fail("control", f"names no file ({self.control})")
            load_scalar(self.control)
        unfitted = [T for T in self.ablate_periods or [] if T not in self.helix_periods]
        if unfitted:
            raise self.fail("ablate_periods", f"{unfitted} were not fitted; choose among "
                            f"--helix-periods {self.helix_periods}")
        top = self.max_answer if self.probed == "answer" else self.operands
        bad = [p for p in self.digit_places or [] if p >= n_digits([top])]
        if bad:
            raise self.fail("digit_places", f"{bad} leave the places 0..{n_digits([top]) - 1} "
                            f"of {self.probed} (at most {top})")
        if self.intervene_place is None:
            return
        if self.token not in ("a", "b"):
            raise self.fail("intervene_place", "rotates a digit of an operand; pass --token a "
                            "or --token b")
        if self.op != "+":
            raise self.fail("intervene_place", f"expects the answer's digit to move with the "
                            f"operand's, which holds for + only (got --op {self.op})")
        if self.intervene_place >= n_digits([self.operands]):
            raise self.fail("intervene_place", f"must be a place of the operands 0.."
                            f"{self.operands} (0..{n_digits([self.operands]) - 1})")
        if self.intervene_role not in self.roles:
            raise self.fail("intervene_role", f"{self.intervene_role} is not among --roles "
                            f"{self.roles}")
        if self.intervene_layer is None and ("circular" not in self.digit_kinds
                                             or self.probed != self.token
                                             or self.intervene_place not in
                                             (self.digit_places or [self.intervene_place])):
            raise self.fail("intervene_place", "needs --intervene-layer when no circular "
                            f"probe of {self.token}'s digit {self.intervene_place} runs "
                            "(see --digit-kinds, --target, --digit-places)")
        if self.intervene_layer is not None and self.layers is not None \
                and self.intervene_layer not in self.layers:
            raise self.fail("intervene_layer", f"{self.intervene_layer} is not among --layers "
                            f"{self.layers}")


def _plot(rows: list[dict], periods, roles, run: RunDir) -> None:
    """kappa_by_layer.png and r2_by_layer.png: one panel per role."""
    plt = pyplot()
    for name, metrics in (("kappa_by_layer", [f"kappa_mod{T}" for T in periods]),
                          ("r2_by_layer", ["r2_test"])):
        fig, axes = plt.subplots(1, len(roles), figsize=(4.2 * len(roles), 3.2), squeeze=False)
        for ax, role in zip(axes[0], roles):
            sel = [r for r in rows if r["role"] == role]
            x = [r["layer"] for r in sel]
            for j, m in enumerate(metrics):
                c = f"C{j}"
                ax.plot(x, [r[m] for r in sel], "o-", color=c, label=m.replace("kappa_", ""))
                if sel[0].get(m + "_ci_low") is not None:  # the interval over numbers
                    ax.fill_between(x, [r[m + "_ci_low"] for r in sel],
                                    [r[m + "_ci_high"] for r in sel], color=c, alpha=0.15, lw=0)
                ax.plot(x, [r[m + "_shuffled"] for r in sel], ":", color=c, alpha=0.7)
                if f"random_{m}" in sel[0]:
                    ax.plot(x, [r[f"random_{m}"] for r in sel], "--", color=c, alpha=0.7)
            ax.set(title=role, xlabel="layer", ylabel=metrics[0].split("_")[0])
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.axhline(0, color="grey", lw=0.5)
        axes[0, 0].legend(fontsize=7, title="solid: model (band: its interval over numbers), "
                          "dashed: random init, dotted: shuffled", title_fontsize=6)
        save_figure(fig, run.file(f"{name}.png"))


class HiddenCommand(Command):
    name = "hidden"
    help = "mod-T and helix probes on hidden states, with shuffled and random-init " \
           "baselines, frequency control and probe-direction ablation"
    Settings = HiddenSettings
    section, heading, order = "hidden", "Hidden-state probes", 50
    intro = ("Linear probes on hidden states: mod-T classification (Cohen's kappa) and circle or "
             "helix regression per layer, beside the Fourier spectra they should agree with.")
    captions = {"kappa_by_layer": "Cohen's kappa of the mod-T probes per layer (solid: model, "
                                  "with its confidence interval over numbers as a band; dashed: "
                                  "random init, dotted: shuffled labels).",
                "r2_by_layer": "Held-out R^2 of the helix fit per layer, with its confidence "
                               "interval over numbers.",
                "digit_probes": DIGIT_CAPTIONS["digit_probes"]}

    def run(self, s: HiddenSettings, run: RunDir) -> dict:
        task = s.task()
        examples = task.train[:s.n_probe]
        # answers are scored (ablation, intervention): how the tokenizer writes them
        fmt = s.answer_format(task.max_answer) if s.scored else None
        lm = s.load_model(tokenizer=fmt.tokenizer if fmt is not None else None)
        record_inputs(run, lm, examples)
        layers = model_layers(s, lm)
        if s.intervene_layer is not None and s.intervene_layer not in layers:
            raise s.fail("intervene_layer", f"{s.intervene_layer} is not among the probed "
                         f"layers 0..{lm.n_layers - 1}")
        h = analyse(s, run, lm, task, examples, layers, fmt)
        rows, results = h.rows, h.results
        run.write_csv("probes.csv", rows)
        if run.writes:
            _plot(rows, s.periods, s.roles, run)
        run.finish(results)
        T0 = s.periods[0]
        cols = ["role", "layer"] + [f"kappa_mod{T}" for T in s.periods[:3]] + \
            [f"kappa_mod{T0}_ci_low", f"kappa_mod{T0}_ci_high", f"kappa_mod{T0}_p_value",
             f"kappa_mod{T0}_shuffled", "r2_test", "r2_test_ci_low", "r2_test_ci_high"]
        if any(f"control_kappa_mod{T0}" in r for r in rows):
            cols.append(f"control_kappa_mod{T0}")
        if h.random_hs is not None:
            cols += [f"random_kappa_mod{T0}", "random_r2_test"]
        print(format_table(rows, cols))
        if h.digit:
            print(format_table(best_probe_rows(h.digit)))
        if "ablation" in results:
            print(format_table(results["ablation"], ["row", "rank", "accuracy", "method"]))
        if "intervention" in results:
            iv = results["intervention"]
            print(f"digit intervention ({iv['role']} layer {iv['layer']}, {s.token}'s digit "
                  f"{iv['probe_place']} +{iv['shift']}): answer digit moved by +{iv['shift']} "
                  f"in {percent(iv['rate_shifted'])} of {iv['n_scored']} prompts, random "
                  f"direction {percent(iv['rate_shifted_random'])}")
        if run.writes:
            print(f"results: {run.file('results.json')}")
        return results

    def job_html(self, job: JobView) -> str:
        res = job.results
        confounded = [T for T, r in (res.get("token_identity") or {}).items()
                      if r.get("confounded")]
        parts = [f"<p class='failed'>Token identity: at the {esc(res.get('token'))} token, "
                 f"{esc(res.get('target'))} mod {esc(', '.join(confounded))} is what the token "
                 "itself says (a digit-splitting tokenizer), so those probes decode it on any "
                 "model; the control_ columns of probes.csv remove the token-identity "
                 "directions and show what remains.</p>" if confounded else ""]
        if res.get("digit_probes"):
            parts.append(html_table(best_probe_rows(res["digit_probes"]), caption=(
                "Digit probes (Levy & Geva): per role, digit place and kind, the layer with the "
                "best held-out accuracy, beside shuffled labels, the random-init model and the "
                "most frequent digit's share (chance).")))
        iv = res.get("intervention")
        if iv:
            parts.append(html_table([{k: iv.get(k) for k in (
                "token", "role", "layer", "probe_place", "shift", "n_scored", "rate_shifted",
                "rate_shifted_random", "rate_target", "rate_changed", "rate_changed_random",
                "probe_moved")}], caption=(
                f"Digit intervention: {iv.get('token')}'s digit {iv.get('probe_place')} rotated "
                f"by +{iv.get('shift')} along its circular probe; rate_shifted = share of "
                "prompts whose answer digit moved by the same shift, against a random direction "
                "of the same norm (rate_shifted_random).")))
        if res.get("ablation"):
            parts.append(html_table([{k: r.get(k) for k in (
                "row", "rank", "accuracy", "loss", "teacher_forced_accuracy", "method")}
                for r in res["ablation"]], caption="Probe-direction ablation: task accuracy "
                "with the fitted Fourier directions removed, beside a random subspace of the "
                "same rank and the logit filter of the answers' readout."))
        parts.append(record_tables(res, skip=("digit_probes",)))
        return "\n".join(p for p in parts if p)

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        return emergence_html(jobs, out, "hidden")  # mod-T kappa against training step

    def findings(self, job: JobView) -> list[str]:
        iv = job.results.get("intervention")
        if not iv:
            return []
        return [f"{job.id}: rotating {iv['token']}'s digit {iv['probe_place']} by "
                f"+{iv['shift']} ({iv['role']} layer {iv['layer']}) moved the answer's digit by "
                f"+{iv['shift']} in {percent(iv['rate_shifted'])} of prompts (random direction: "
                f"{percent(iv['rate_shifted_random'])})."]


COMMAND = HiddenCommand()
