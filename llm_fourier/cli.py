"""The ``llm-fourier`` command: build the parser from the commands' settings, parse, run,
and turn user errors into one sentence on stderr with exit code 2."""

from __future__ import annotations

import argparse
import sys

from transformers.utils import logging as hf_logging

from llm_fourier.batch.commands import BATCH_COMMANDS
from llm_fourier.commands import all_commands
from llm_fourier.commands.base import Command
from llm_fourier.errors import RunFailed, UserError


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help).\n")


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The ``llm-fourier`` parser; nested names ("toy train") become sub-subcommands."""
    if commands is None:
        commands = {**all_commands(), **{c.name: c for c in BATCH_COMMANDS}}
    parser = _Parser(prog="llm-fourier",
                     description="Find and test Fourier number features in LLMs and toy models.")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, command in commands.items():
        head, _, tail = name.partition(" ")
        if tail:
            if head not in groups:
                group = top.add_parser(head, help=f"{head} subcommands")
                groups[head] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND",
                                                    required=True, parser_class=_Parser)
            sub = groups[head].add_parser(tail, help=command.help, description=command.help)
        else:
            sub = top.add_parser(name, help=command.help, description=command.help)
        command.Settings.add_arguments(sub, {"out": f"runs/{name.replace(' ', '-')}"})
        sub.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers' bars for loading checkpoint shards would crowd stderr, where a user
    # error is one line; downloads (huggingface_hub) and our own bars keep theirs
    hf_logging.disable_progress_bar()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a parse error already printed as one line
        return int(done.code or 0)
    command: Command = args._command
    try:
        command.execute(command.Settings.from_namespace(args))
    except UserError as err:
        print(f"llm-fourier: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"llm-fourier: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llm-fourier: interrupted; finished outputs are kept and the same command "
              "resumes.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
