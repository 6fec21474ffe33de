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

# name -> (module, attribute): the library steps and the built-in commands
_API = {
    "load_model": ("llm_fourier.model.loading", "load_model"),
    "LoadedModel": ("llm_fourier.model.loading", "LoadedModel"),
    "make_task": ("llm_fourier.model.tasks", "make_task"),
    "tokenize_prompts": ("llm_fourier.model.tasks", "tokenize_prompts"),
    "find_number_tokens": ("llm_fourier.model.numbers", "find_number_tokens"),
    "number_format": ("llm_fourier.model.number_format", "number_format"),
    "capture": ("llm_fourier.model.hooks", "capture"),
    "edit": ("llm_fourier.model.hooks", "edit"),
    "edit_heads": ("llm_fourier.model.hooks", "edit_heads"),
    "number_readout": ("llm_fourier.model.readout", "number_readout"),
    "run_lens": ("llm_fourier.analyses.lens", "run_lens"),
    "number_filters": ("llm_fourier.analyses.ablation", "number_filters"),
    "filter_edits": ("llm_fourier.analyses.ablation", "filter_edits"),
    "evaluate": ("llm_fourier.analyses.ablation", "evaluate"),
    "ablation_table": ("llm_fourier.analyses.ablation", "ablation_table"),
    "evaluate_answers": ("llm_fourier.analyses.answers", "evaluate_answers"),
    "collect": ("llm_fourier.analyses.hidden_states", "collect"),
    "probe_layers": ("llm_fourier.analyses.hidden_states", "probe_layers"),
    "load_states": ("llm_fourier.output.states", "load_states"),
    "States": ("llm_fourier.output.states", "States"),
    "probe": ("llm_fourier.commands.probe", "COMMAND"),
    "ablate": ("llm_fourier.commands.ablate", "COMMAND"),
    "embed": ("llm_fourier.commands.embed", "COMMAND"),
    "hidden": ("llm_fourier.commands.hidden", "COMMAND"),
    "finetune": ("llm_fourier.commands.finetune", "COMMAND"),
    "patch": ("llm_fourier.commands.patch", "COMMAND"),
    "neurons": ("llm_fourier.commands.neurons", "COMMAND"),
    "heads": ("llm_fourier.commands.heads", "COMMAND"),
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
    commands = importlib.import_module("llm_fourier.commands")
    if command in ("report", "demo"):
        return __getattr__(command)(**settings)
    return commands.get_command(command)(**settings)
