"""The LLM side of llm-fourier: load Hugging Face causal LMs, hook their layers, read module
outputs through the number-token unembedding, take Fourier spectra and run filter ablations.

From Python, ``import llm_fourier as lf`` gives the steps a notebook uses and every command
as a function of its settings that returns the results the CLI writes::

    lm = lf.load_model("gpt2")
    task = lf.make_task("+", max_operand=260)
    res = lf.probe(model="gpt2", limit=200)            # out=None: nothing written
    lf.run("toy train", p=31, epochs=2000, out="runs/grok")

Names are imported on first use, so ``import llm_fourier`` stays light. Imports ``probes``;
never imports ``toy`` (its commands are reached through the registry by name).
"""

from __future__ import annotations

import importlib

from llm_fourier.errors import RunFailed, UserError

__version__ = "0.1.0"

# module -> the library steps it gives under their own names
_STEPS = {
    "llm_fourier.model.loading": ("load_model", "LoadedModel"),
    "llm_fourier.model.tasks": ("make_task", "tokenize_prompts"),
    "llm_fourier.model.numbers": ("find_number_tokens",),
    "llm_fourier.model.number_format": ("number_format",),
    "llm_fourier.model.hooks": ("capture", "edit", "edit_heads"),
    "llm_fourier.model.readout": ("number_readout",),
    "llm_fourier.analyses.lens": ("run_lens",),
    "llm_fourier.analyses.ablation": ("number_filters", "filter_edits", "evaluate",
                                      "ablation_table"),
    "llm_fourier.analyses.answers": ("evaluate_answers",),
    "llm_fourier.analyses.hidden_states": ("collect", "probe_layers"),
    "llm_fourier.output.states": ("load_states", "States"),
}
# name -> (module, attribute): the library steps and the built-in commands
_API = {
    **{name: (module, name) for module, names in _STEPS.items() for name in names},
    **{name: (f"llm_fourier.commands.{name}", "COMMAND") for name in
       ("probe", "ablate", "embed", "hidden", "finetune", "patch", "neurons", "heads")},
    "report": ("llm_fourier.batch.commands", "REPORT"),
    "demo": ("llm_fourier.batch.commands", "DEMO"),
}

__all__ = ["RunFailed", "UserError", "run", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'llm_fourier' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def run(command: str, **settings) -> dict:
    """Run any registered command by name (``"probe"``, ``"toy train"``, ``"transplant"``...)
    with keyword settings, checked as on the command line; returns its results."""
    if command in ("report", "demo"):
        return __getattr__(command)(**settings)
    return importlib.import_module("llm_fourier.commands").get_command(command)(**settings)
