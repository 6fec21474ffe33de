"""The ``llm-fourier`` console script and ``python -m llm_fourier``: import the command line
(``cli``: torch, transformers, every command) only inside the guard, so a Ctrl-C at any
moment, start-up included, ends with one line and exit code 130, never a traceback."""

from __future__ import annotations

import importlib
import os
import signal
import sys

INTERRUPTED = ("llm-fourier: interrupted; finished outputs are kept and the same command "
               "resumes.")


def main(argv: list[str] | None = None) -> int:
    try:
        cli = importlib.import_module("llm_fourier.cli")  # the heavy imports, guarded
        return cli.main(argv)
    except KeyboardInterrupt:
        return interrupted()


def interrupted() -> int:
    """Say so in one line; further Ctrl-Cs while exiting are ignored (no second traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(INTERRUPTED, file=sys.stderr)
    return 130


def run() -> None:
    """Exit with ``main``'s code. After a Ctrl-C the process leaves at once (streams
    flushed, outputs already written atomically): an interpreter that saw a
    KeyboardInterrupt inside an import may otherwise re-raise SIGINT at its own exit and
    end with -2 instead of 130."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # teardown of torch & co. stays quiet
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
