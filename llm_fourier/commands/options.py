"""Option groups shared by commands, declared once with one default each.

``OutputOptions`` (``--out``, ``--restart``) belong to every command; ``ModelOptions`` load a
causal LM, or only its tokenizer (``answer_format``: how it writes the task's answers);
``TaskOptions`` build the arithmetic prompts; ``SplitOptions`` pick the examples;
``SpectrumOptions`` choose the Fourier basis and the low/high threshold tau, checked against
the number range before anything loads; ``ReadoutOptions`` also check tau against the
answers' readout (numbers or digits) once the tokenizer is known, with a default for each,
and build the run's ``AnswerSpace`` (``answer_space``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from llm_fourier.analyses.ablation import PREDICTIONS
from llm_fourier.commands.settings import Settings, option, seed_option
from llm_fourier.model.answer_space import AnswerSpace, fitting_operands
from llm_fourier.model.distributed import device_map_kwargs
from llm_fourier.model.fingerprint import (
    examples_fingerprint,
    model_fingerprint,
    tokenizer_fingerprint,
)
from llm_fourier.model.loading import LoadedModel, load_model
from llm_fourier.model.number_format import NumberFormat, number_format
from llm_fourier.model.readout import check_tau
from llm_fourier.model.sources import load_tokenizer
from llm_fourier.model.tasks import OPS, TaskSplits, check_task_size, largest_answer, make_task
from llm_fourier.output.rundir import RunDir
from probes import FourierBasis
from probes.stats import CI_METHODS, StatsConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
SPLITS = ("train", "val", "test")
BASES = ("paper", "unit", "dft")


@dataclass(kw_only=True)
class OutputOptions(Settings):
    out: str | None = option(None, help="output folder for results.json, CSV and plots "
                             "(the Python API writes nothing without it)", identity=False)
    restart: bool = option(False, help="discard an unfinished run in --out (with other "
                           "settings or inputs) and start over", identity=False)
    quiet: bool = option(False, identity=False, help="no progress bars (results and the "
                         "console summary are unchanged)")


@dataclass(kw_only=True)
class BatchOptions(Settings):
    batch_size: int = option(16, min=1, identity=False, help="prompts per forward (memory "
                             "and speed only: results do not depend on it)")


@dataclass(kw_only=True)
class SeedOptions(Settings):
    seed: int = seed_option(0, help="seed of every random draw the command makes (folds, "
                            "held-out numbers, random baselines, training order)")


@dataclass(kw_only=True)
class PredictionOptions(Settings):
    prediction: str = option("vocab", choices=PREDICTIONS, help="vocab: the model's own next "
                             "token (the paper's); numbers: argmax over the number tokens only "
                             "(over the ten digit tokens where answers are written digit by "
                             "digit)")


@dataclass(kw_only=True)
class SourceOptions(Settings):
    model: str = option(help="hub id, local folder or .gguf file of the model")
    revision: str | None = option(None, help="hub branch, tag or commit (e.g. Pythia's "
                                  "step1000)")
    dtype: str = option("auto", choices=DTYPES, help="weights' dtype (auto: the checkpoint's)")
    trust_remote_code: bool = option(False, help="run the model repository's own code (off "
                                     "by default: only for repositories you trust)")
    device_map: str | None = option(None, identity=False, help="accelerate device map "
                                    "(default: auto on GPU, else CPU)")

    def validate(self) -> None:
        if self.device_map and "cuda" in self.device_map and not torch.cuda.is_available():
            raise self.fail("device_map", f"{self.device_map!r} needs a GPU, but no CUDA device "
                            "is available; leave --device-map out to run on the CPU")


@dataclass(kw_only=True)
class ModelOptions(SourceOptions):
    tokenizer: str | None = option(None, help="tokenizer id or folder (default: the model's)")
    skip_roles_check: bool = option(False, identity=False, help="experts only: skip the load "
                                    "check that attention and MLP outputs add up to the "
                                    "residual stream")

    def load_model(self, tokenizer=None, **overrides) -> LoadedModel:
        """The model, with ``tokenizer`` (an object already loaded) or the configured one, on
        this process's GPUs under a launcher (``device_map_kwargs``)."""
        kwargs = dict(device_map=self.device_map, dtype=self.dtype,
                      trust_remote_code=self.trust_remote_code)
        if self.device_map is None:
            kwargs.update(device_map_kwargs())
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if self.skip_roles_check:
            kwargs["verify"] = False
        return load_model(self.model, tokenizer if tokenizer is not None else self.tokenizer,
                          **{**kwargs, **overrides})

    def load_tokenizer(self):
        """The tokenizer ``load_model`` would use, without loading any weights."""
        own = self.tokenizer is None
        return load_tokenizer(self.model if own else self.tokenizer, self.trust_remote_code,
                              self.revision if own else None)

    def defaults_tokenizer(self):
        if getattr(self, "_tokenizer", None) is None:
            self._tokenizer = self.load_tokenizer()
        return self._tokenizer

    def answer_format(self, max_answer: int) -> NumberFormat:
        """How the tokenizer alone writes the answers 0..``max_answer`` (its family); pass
        ``fmt.tokenizer`` to ``load_model`` to load the model with it."""
        return number_format(self.load_tokenizer(), max_answer)


@dataclass(kw_only=True)
class TaskOptions(Settings):
    op: str = option("+", choices=tuple(OPS), help="operation")
    default_operand: ClassVar[int] = 260  # Zhou et al.'s range
    max_operand: int | None = option(None, min=1, help="operands 0..N, answers 0..2N for + "
                                     "(default: 260, or the largest range whose answers stay "
                                     "single tokens when the tokenizer keeps fewer whole)")
    ordered: bool = option(False, help="ordered pairs (a, b), not only a <= b")
    shots: int = option(0, min=0, help="solved examples before each prompt")
    task_seed: int = seed_option(0, help="seed of the pair shuffle, templates and split")

    def validate(self) -> None:
        # instant, before any file or model: a task that cannot fit in memory is refused
        check_task_size(self.operands, self.ordered, self.shots,
                        getattr(self, "max_pairs", None),
                        flag=f"{self.command}: --max-operand")

    @property
    def operands(self) -> int:
        """The operand range: as given or chosen, else the default (which bounds the chosen)."""
        return self.default_operand if self.max_operand is None else self.max_operand

    @property
    def max_answer(self) -> int:
        return largest_answer(self.op, self.operands)

    def model_defaults(self) -> None:
        """Choose --max-operand from the tokenizer when left unset (``fitting_operands``)."""
        tokenizer = self.defaults_tokenizer()
        if self.max_operand is None and tokenizer is not None:
            self.choose("max_operand", *fitting_operands(tokenizer, self.op,
                                                         self.default_operand))

    def task(self, **extra) -> TaskSplits:
        return make_task(self.op, self.operands, ordered=self.ordered, seed=self.task_seed,
                         shots=self.shots, **extra)


@dataclass(kw_only=True)
class SplitOptions(BatchOptions):
    split: str = option("test", choices=SPLITS, help="split to run on")
    limit: int | None = option(None, min=1, help="use the first N examples of the split")

    def examples(self, task: TaskSplits) -> list:
        return task.split(self.split)[:self.limit]


@dataclass(kw_only=True)
class SpectrumOptions(Settings):
    basis: str = option("paper", choices=BASES, help="Fourier basis: paper (Zhou et al.'s "
                        "Def. A.3: w_k = 2 pi k/(p-1), factors sqrt(1/(p-1)), sqrt(2/(p-1)); "
                        "figures use it), unit (the same rows scaled to unit norm) or dft (the "
                        "exact orthonormal DFT over p points, period p/k)")
    tau: int | None = option(None, min=1, help="low/high threshold on the component index k "
                             "(low: k < tau; default: 50, Zhou et al.'s, or the component of "
                             "the same period when the numbers have fewer components)")

    def check_tau(self, p: int, what: str = "numbers") -> None:
        """Refuse a tau outside the components 1..K of the basis over ``p`` numbers (before
        loading: the number readout has the most components, so this bounds every readout)."""
        if self.tau is not None:
            with self.named_errors():
                check_tau(self.tau, FourierBasis(p, self.basis), f"the {what} 0..{p - 1}")


@dataclass(kw_only=True)
class ReadoutOptions(SpectrumOptions):
    """``SpectrumOptions`` for the readout of a task's answers: the number tokens, or the ten
    digit tokens for tokenizers that write one token per digit (whose basis is the DFT over
    ten points, five components), so tau's default and range follow the readout."""

    tau: int | None = option(None, min=1, help="low/high threshold on the component index k "
                             "(low: k < tau); default 50 for number tokens, 3 for digits "
                             "(low: periods 10 and 5)")

    def model_defaults(self) -> None:
        """tau from the answers' readout (``AnswerSpace``), said with its reason."""
        tokenizer = self.defaults_tokenizer()
        if tokenizer is None or not isinstance(self, TaskOptions):
            return
        TaskOptions.model_defaults(self)  # the answers first (it runs after this one)
        space = self.answer_space(number_format(tokenizer, self.max_answer), self.max_answer)
        if space.kind == "digit" and self.basis != "dft":
            self.choose("basis", "dft", "the digit readout is the DFT over the ten digits; "
                        "--basis applies to number readouts", apply=False)
        if self.tau is None and space.tau is not None:
            self.choose("tau", space.tau, space.tau_chosen()["why"])

    def answer_space(self, fmt: NumberFormat, max_answer: int) -> AnswerSpace:
        """The answers' space (readout, basis, tau with its default), built and checked once."""
        with self.named_errors():
            return AnswerSpace.build(fmt, max_answer, basis_kind=self.basis, tau=self.tau)


def model_layers(s: Settings, lm: LoadedModel) -> list[int]:
    """``s.layers`` sorted without repeats (None: every layer), within the model's layers."""
    layers = list(range(lm.n_layers)) if s.layers is None else sorted(set(s.layers))
    if max(layers) >= lm.n_layers:
        raise s.fail("layers", f"{s.layers} leave the model's layers 0..{lm.n_layers - 1}")
    return layers


def record_inputs(run: RunDir, lm: LoadedModel, examples=None) -> None:
    """Fingerprint the model, its tokenizer and (optionally) the examples in ``run``."""
    prints = {"model weights": model_fingerprint(lm.model),
              "tokenizer": tokenizer_fingerprint(lm.tokenizer)}
    if examples is not None:
        prints["task examples"] = examples_fingerprint(examples)
    run.check_inputs(**prints)


@dataclass(kw_only=True)
class StatsOptions(Settings):
    """Uncertainty of probe scores: the sample is the distinct numbers, not the prompts."""

    bootstrap: int = option(1000, min=0, identity=False, help="bootstrap draws over numbers "
                            "for each score's confidence interval (0: none)")
    permutations: int = option(1000, min=0, identity=False, help="label permutations between "
                               "numbers for each score's p-value (0: none)")
    refits: int = option(20, min=0, help="refitted label shuffles that calibrate the mod-T "
                         "intervals (0, or at least 2)")
    ci_level: float = option(0.95, above=0, max=0.999, help="confidence level")
    ci_method: str = option("percentile", choices=CI_METHODS, help="bootstrap interval")

    def validate(self) -> None:
        if self.refits == 1:
            raise self.fail("refits", "must be 0 or at least 2 (a spread needs two refits)")

    def stats_config(self, seed: int = 0) -> StatsConfig:
        return StatsConfig(n_boot=self.bootstrap, n_perm=self.permutations,
                           level=self.ci_level, method=self.ci_method, seed=seed,
                           n_refit=self.refits)
