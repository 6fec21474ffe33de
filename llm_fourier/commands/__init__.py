"""The analysis commands (``probe``, ``ablate``, ``embed``, ``hidden``, ``patch``,
``neurons``, ``heads``, ``finetune``) and the registry that also finds commands of other
packages (the toy side registers its own through the ``llm_fourier.commands`` entry point,
so ``llm_fourier`` never imports ``toy``).

Each command is a ``base.Command`` object owning its typed settings (``settings``), its run
folder (``output.rundir``) and its report view; see ``base``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from llm_fourier.commands.base import Command
from llm_fourier.errors import UserError

BUILTIN_MODULES = (
    "llm_fourier.commands.probe",
    "llm_fourier.commands.ablate",
    "llm_fourier.commands.embed",
    "llm_fourier.commands.hidden",
    "llm_fourier.commands.patch",
    "llm_fourier.commands.neurons",
    "llm_fourier.commands.heads",
    "llm_fourier.commands.finetune",
)


def _as_list(obj) -> list[Command]:
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def all_commands() -> dict[str, Command]:
    """Every analysis command by name: the built-ins, then entry-point plugins."""
    found: list[Command] = []
    for name in BUILTIN_MODULES:
        found += _as_list(importlib.import_module(name).COMMAND)
    for ep in entry_points(group="llm_fourier.commands"):
        found += _as_list(ep.load())
    return {c.name: c for c in found}


def get_command(name: str) -> Command:
    commands = all_commands()
    if name not in commands:
        raise UserError(f"unknown command {name!r}; known commands: {', '.join(sorted(commands))}.")
    return commands[name]
