"""``llm-fourier report CONFIG``: run a grid of jobs from a TOML/YAML config into one report.

Each job runs once into ``OUT/jobs/<id>/``; re-running skips finished jobs. The report ends
with ``OUT/index.html`` (plots embedded), ``OUT/tables/*.csv`` and ``OUT/manifest.json``.
CONFIG is a file or the name of a preset shipped in ``llm_fourier/presets``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llm_fourier import distributed
from llm_fourier.commands import Command
from llm_fourier.errors import UserError
from llm_fourier.report.config import Report, load_config
from llm_fourier.report.html import build_html
from llm_fourier.report.runner import run_report, select, status_rows
from llm_fourier.report.tables import format_table

PRESETS = Path(__file__).resolve().parent.parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.toml"))


def config_path(name: str) -> Path:
    """A config file path, or the preset of that name."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS / f"{name.removesuffix('.toml')}.toml"
    if preset.is_file():
        return preset
    raise UserError(f"no config file or preset named {name!r}; pass a .toml/.yaml path or "
                    f"one of the presets: {', '.join(preset_names())}.")


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    overrides = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name or not value:
            raise UserError(f"--model expects NAME=ID_OR_FOLDER, got {pair!r}.")
        overrides[name] = value
    return overrides


def execute(report: Report, out: str | Path, only: list[str] | None = None,
            html_only: bool = False, progress: bool = True) -> dict:
    """Run (or just re-render) a parsed report; print the job table; return the summary."""
    out = Path(out)
    info = distributed.init_distributed()
    if not html_only:
        manifest = run_report(report, out, only=only, progress=progress)
    else:
        if not (out / "manifest.json").is_file():
            raise UserError(f"{out} holds no report yet; run without --html-only first.")
        from llm_fourier.report.runner import read_manifest

        manifest = read_manifest(out)
    if not info.is_main:
        return {"out": str(out)}
    index = build_html(out)
    rows = status_rows(manifest)
    print(format_table(rows, ["job", "command", "status", "seconds", "error"]))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "blocked")}
    if counts["failed"] or counts["blocked"]:
        print(f"{counts['failed']} job(s) failed and {counts['blocked']} could not start; "
              f"tracebacks in {out / 'jobs'}/<job>/error.txt. Run the same command again to "
              "retry them (finished jobs are skipped).")
    print(f"report: {index.resolve()}")
    return {"out": str(out), "index": str(index), "jobs": rows, **counts}


def run(args: argparse.Namespace) -> dict:
    if args.list_presets:
        for name in preset_names():
            first = (PRESETS / f"{name}.toml").read_text().splitlines()[0].lstrip("# ")
            print(f"{name:24s} {first}")
        return {"presets": preset_names()}
    if not args.config:
        raise UserError("name a config file or a preset (see --list-presets).")
    report = load_config(config_path(args.config), parse_overrides(args.model))
    if args.dry_run:
        jobs = select(report, args.only)
        print(format_table([{"job": j.id, "command": j.command, "needs": " ".join(j.needs)}
                            for j in jobs]))
        return {"jobs": [j.id for j in jobs]}
    return execute(report, args.out, args.only, args.html_only)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="report config (.toml/.yaml) or preset name")
    parser.add_argument("--only", action="append", metavar="GLOB",
                        help="run only jobs whose id matches (and the jobs they need); "
                             "repeatable")
    parser.add_argument("--model", action="append", metavar="NAME=ID_OR_FOLDER",
                        help="replace a model of the config's [models] table; repeatable")
    parser.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    parser.add_argument("--html-only", action="store_true",
                        help="rebuild index.html from finished jobs without running any")
    parser.add_argument("--list-presets", action="store_true", help="list the shipped presets")


COMMAND = Command("report", "run a grid of analyses from a config and write one HTML report",
                  add_arguments, run)
