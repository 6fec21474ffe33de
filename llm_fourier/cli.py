"""The ``llm-fourier`` command: build the parser from the commands' settings, parse, run,
and turn user errors into one sentence on stderr with exit code 2: ``UserError``, and a full
disk (finished outputs are kept; the same command resumes). Ctrl-C is exit code 130 with one
line (``entry`` guards the imports too)."""

from __future__ import annotations

import argparse
import errno
import sys

from tqdm.std import tqdm
from transformers.utils import logging as hf_logging

from llm_fourier.batch.commands import BATCH_COMMANDS
from llm_fourier.commands import all_commands
from llm_fourier.commands.base import Command
from llm_fourier.entry import interrupted
from llm_fourier.errors import RunFailed, UserError

FULL = (errno.ENOSPC, errno.EDQUOT)


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
        if tail and head not in groups:
            group = top.add_parser(head, help=f"{head} subcommands")
            groups[head] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND",
                                                required=True, parser_class=_Parser)
        sub = (groups[head] if tail else top).add_parser(tail or name, help=command.help,
                                                         description=command.help)
        command.Settings.add_arguments(sub, {"out": f"runs/{name.replace(' ', '-')}"})
        sub.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # at any moment: parsing, loading, running, reporting
        _close_bars()
        return interrupted()


def _close_bars() -> None:
    """Finish the progress bars an error left open, so its sentence starts a line."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _main(argv: list[str] | None) -> int:
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
        return 0
    except UserError as err:
        code, message = 2, f"error: {err}"
    except RunFailed as err:
        code, message = 1, str(err)
    except OSError as err:
        if err.errno not in FULL:
            raise
        where = f" writing {err.filename}" if err.filename else ""  # the disk or quota is full
        code, message = 2, (f"error: no space left on the disk{where} ({err.strerror}); "
                            "finished outputs are kept: free some space (or choose another "
                            "--out) and run the same command to resume.")
    _close_bars()
    print(f"llm-fourier: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
