"""Subcommands of the toy side, registered with ``llm-fourier`` through the
``llm_fourier.commands`` entry point (see pyproject.toml)."""

from llm_fourier.commands.base import Command
from toy.grok_cli import COMMANDS as GROK_COMMANDS
from toy.transplant_cli import COMMAND as TRANSPLANT

COMMANDS: list[Command] = [*GROK_COMMANDS, TRANSPLANT]
