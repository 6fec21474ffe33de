"""Option groups shared by commands, declared once with one default each.

``OutputOptions`` (``--out``, ``--restart``) belong to every command; ``ModelOptions``
load a causal LM; ``TaskOptions`` build the arithmetic prompts; ``SplitOptions`` pick the
examples a command runs on; ``SpectrumOptions`` choose the Fourier basis and the low/high
threshold tau, checked against the number range before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_fourier.commands.settings import Settings, option
from llm_fourier.distributed import device_map_kwargs
from llm_fourier.fingerprint import examples_fingerprint, model_fingerprint, tokenizer_fingerprint
from llm_fourier.models import LoadedModel, load_model
from llm_fourier.output.rundir import RunDir
from llm_fourier.tasks import OPS, TaskSplits, make_task
from probes import FourierBasis

DTYPES = ("auto", "float32", "bfloat16", "float16")
SPLITS = ("train", "val", "test")
BASES = ("paper", "dft")


@dataclass(kw_only=True)
class OutputOptions(Settings):
    out: str | None = option(None, help="output folder for results.json, CSV and plots "
                             "(the Python API writes nothing without it)", identity=False)
    restart: bool = option(False, help="discard an unfinished run in --out (with other "
                           "settings or inputs) and start over", identity=False)


@dataclass(kw_only=True)
class SourceOptions(Settings):
    model: str = option(help="hub id, local folder or .gguf file of the model")
    revision: str | None = option(None, help="hub branch, tag or commit (e.g. Pythia's "
                                  "step1000)")
    dtype: str = option("auto", choices=DTYPES, help="weights' dtype (auto: the checkpoint's)")
    trust_remote_code: bool = option(False, help="run the model repository's own code (off "
                                     "by default: only for repositories you trust)")


@dataclass(kw_only=True)
class ModelOptions(SourceOptions):
    tokenizer: str | None = option(None, help="tokenizer id or folder (default: the model's)")
    device_map: str | None = option(None, identity=False, help="accelerate device map "
                                    "(default: auto on GPU, else CPU)")
    skip_roles_check: bool = option(False, identity=False, help="experts only: skip the load "
                                    "check that attention and MLP outputs add up to the "
                                    "residual stream")

    def validate(self) -> None:
        if self.device_map and "cuda" in self.device_map and not torch.cuda.is_available():
            raise self.fail("device_map", f"{self.device_map!r} needs a GPU, but no CUDA device "
                            "is available; leave --device-map out to run on the CPU")

    def load_model(self, **overrides) -> LoadedModel:
        """The model, on this process's GPUs under a launcher (``device_map_kwargs``)."""
        kwargs = dict(device_map=self.device_map, dtype=self.dtype,
                      trust_remote_code=self.trust_remote_code)
        if self.device_map is None:
            kwargs.update(device_map_kwargs())
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if self.skip_roles_check:
            kwargs["verify"] = False
        return load_model(self.model, self.tokenizer, **{**kwargs, **overrides})


@dataclass(kw_only=True)
class TaskOptions(Settings):
    op: str = option("+", choices=tuple(OPS), help="operation")
    max_operand: int = option(260, min=1, help="operands 0..N (answers 0..2N for +)")
    ordered: bool = option(False, help="ordered pairs (a, b), not only a <= b")
    shots: int = option(0, min=0, help="solved examples before each prompt")
    task_seed: int = option(0, help="seed of the pair shuffle, templates and split")

    @property
    def max_answer(self) -> int:
        fn = OPS[self.op][0]
        return int(fn(self.max_operand, self.max_operand))

    def task(self, **extra) -> TaskSplits:
        return make_task(self.op, self.max_operand, ordered=self.ordered, seed=self.task_seed,
                         shots=self.shots, **extra)


@dataclass(kw_only=True)
class SplitOptions(Settings):
    split: str = option("test", choices=SPLITS, help="split to run on")
    limit: int | None = option(None, min=1, help="use the first N examples of the split")
    batch_size: int = option(16, min=1, identity=False, help="prompts per forward")

    def examples(self, task: TaskSplits) -> list:
        return task.split(self.split)[:self.limit]


@dataclass(kw_only=True)
class SpectrumOptions(Settings):
    basis: str = option("paper", choices=BASES, help="Fourier basis: paper (period (p-1)/k, "
                        "Zhou et al.) or dft (exact, period p/k)")
    tau: int = option(50, min=1, help="low/high threshold on the component index k "
                      "(low: k < tau)")

    def check_tau(self, p: int, what: str = "numbers") -> None:
        """Refuse a tau outside the components 1..K of the basis over ``p`` numbers."""
        k_max = FourierBasis(p, self.basis).n_components
        if self.tau > k_max:
            raise self.fail("tau", f"must lie in 1..{k_max} for the {what} 0..{p - 1}, got "
                            f"{self.tau}; pass a smaller --tau")


def record_inputs(run: RunDir, lm: LoadedModel, examples=None) -> None:
    """Fingerprint the model, its tokenizer and (optionally) the examples in ``run``."""
    prints = {"model weights": model_fingerprint(lm.model),
              "tokenizer": tokenizer_fingerprint(lm.tokenizer)}
    if examples is not None:
        prints["task examples"] = examples_fingerprint(examples)
    run.check_inputs(**prints)
