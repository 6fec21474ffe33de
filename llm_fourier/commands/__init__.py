"""Registry of subcommands.

A command is a name (``"embed"``, or ``"toy train"`` for a nested one), a help line, a
function adding its arguments to an ``argparse`` parser, and a function running it on the
parsed namespace. ``run`` writes into ``args.out`` and returns the results dictionary, so
the batch report can run any command as a job. Built-in commands are listed below;
packages outside ``llm_fourier`` (``toy``) register theirs through the
``llm_fourier.commands`` entry-point group, so ``llm_fourier`` never imports them.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from llm_fourier.errors import UserError

BUILTIN_MODULES = (
    "llm_fourier.commands.demo",
    "llm_fourier.commands.report",
    "llm_fourier.commands.probe",
    "llm_fourier.commands.ablate",
    "llm_fourier.commands.embed",
    "llm_fourier.commands.hidden",
    "llm_fourier.commands.finetune",
)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict]


def _as_list(obj) -> list[Command]:
    return list(obj) if isinstance(obj, (list, tuple)) else [obj]


def all_commands() -> dict[str, Command]:
    """Every registered command by name, built-ins first, then entry-point plugins."""
    found: list[Command] = []
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        found += _as_list(getattr(module, "COMMANDS", None) or module.COMMAND)
    for ep in entry_points(group="llm_fourier.commands"):
        found += _as_list(ep.load())
    return {c.name: c for c in found}


def get_command(name: str) -> Command:
    commands = all_commands()
    if name not in commands:
        raise UserError(f"unknown command {name!r}; known commands: {', '.join(sorted(commands))}.")
    return commands[name]


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The ``llm-fourier`` parser; nested names ("toy train") become sub-subcommands."""
    commands = all_commands() if commands is None else commands
    parser = argparse.ArgumentParser(
        prog="llm-fourier",
        description="Find and test Fourier number features in LLMs and toy models.",
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, command in commands.items():
        head, _, tail = name.partition(" ")
        if tail:
            if head not in groups:
                group = top.add_parser(head, help=f"{head} subcommands")
                groups[head] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND",
                                                    required=True)
            sub = groups[head].add_parser(tail, help=command.help, description=command.help)
        else:
            sub = top.add_parser(name, help=command.help, description=command.help)
        sub.add_argument("--out", default=f"runs/{name.replace(' ', '-')}",
                         help="output folder for results.json, CSV and plots "
                              "(default: %(default)s)")
        command.add_arguments(sub)
        sub.set_defaults(_command=command)
    return parser


def namespace_for(command: Command, settings: dict) -> argparse.Namespace:
    """Parser defaults of ``command`` overridden by ``settings`` (for jobs run in-process).

    Unknown keys raise a ``UserError`` naming them.
    """
    parser = argparse.ArgumentParser(prog=command.name, add_help=False)
    parser.add_argument("--out")
    command.add_arguments(parser)
    defaults = {a.dest: a.default for a in parser._actions if a.dest != "help"}
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise UserError(f"{command.name}: unknown setting(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(defaults))}.")
    return argparse.Namespace(**{**defaults, **settings})
