"""The ``llm-fourier`` command: parse, dispatch to a registered command, and turn user
errors into one sentence on stderr with exit code 2."""

from __future__ import annotations

import sys

from llm_fourier.commands import build_parser
from llm_fourier.errors import UserError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args._command.run(args)
    except UserError as err:
        print(f"llm-fourier: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llm-fourier: interrupted; finished outputs are kept.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
