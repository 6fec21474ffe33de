"""``llm-fourier report CONFIG`` and ``llm-fourier demo``: grids of jobs into one report.

Each job runs once into ``OUT/jobs/<id>/``; running the same command again skips finished
jobs and resumes the others where they stopped. The report ends with ``OUT/index.html``
(plots embedded), ``OUT/tables/*.csv`` and ``OUT/manifest.json``; the report folder is
locked while it runs. When a job failed the command lists it and exits with code 1.
CONFIG is a file or the name of a preset shipped in ``llm_fourier/batch/presets``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llm_fourier.batch.any_model import SCALES, any_model_config
from llm_fourier.batch.config import Report, load_config, parse_config
from llm_fourier.batch.demo import NEXT_STEPS, demo_config
from llm_fourier.batch.html import build_html
from llm_fourier.batch.runner import MANIFEST, read_manifest, run_report, select, status_rows
from llm_fourier.commands.base import Command
from llm_fourier.commands.options import OutputOptions
from llm_fourier.commands.settings import option
from llm_fourier.errors import RunFailed, UserError
from llm_fourier.model.distributed import process_info
from llm_fourier.output.progress import quiet
from llm_fourier.output.rundir import RunDir
from llm_fourier.output.tables import format_table

PRESETS = Path(__file__).resolve().parent / "presets"
DISCARD = (MANIFEST, "jobs")  # what --restart removes of a report (under its lock)


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


def run_batch(report: Report, run: RunDir, only: list[str] | None = None,
              html_only: bool = False, progress: bool = True) -> dict:
    """Run (or just re-render) a parsed report in its (locked) folder; print the job table;
    return the summary. Raises ``RunFailed`` after the page is written if a job failed."""
    if run.path is None:
        raise UserError("a report needs an output folder; pass out=...")
    if run.writes and run.previous_command not in ("report", "demo") and (
            os.path.lexists(run.path / MANIFEST) or os.path.lexists(run.path / "jobs")):
        raise UserError(f"{run.path} holds a {MANIFEST} or jobs/ that no report wrote; choose "
                        "another --out (nothing was changed there).")
    out = run.workspace() or run.path
    if html_only:
        if not (out / MANIFEST).is_file():
            raise UserError(f"{out} holds no report yet; run without --html-only first.")
        manifest = read_manifest(out)
    else:
        manifest = run_report(report, out, only=only, progress=progress)
    if not process_info().is_main:
        return {"out": str(out)}
    index = build_html(out)
    rows = status_rows(manifest)
    print(format_table(rows, ["job", "command", "status", "seconds", "error"]))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "blocked")}
    summary = {"out": str(out), "index": str(index), "jobs": rows, **counts}
    run.finish(summary)
    print(f"report: {index.resolve()}")
    if counts["failed"] or counts["blocked"]:
        bad = [r["job"] for r in rows if r["status"] in ("failed", "blocked")]
        raise RunFailed(f"{counts['failed']} job(s) failed and {counts['blocked']} could not "
                        f"start ({', '.join(bad)}); tracebacks in {out / 'jobs'}/<job>/"
                        "error.txt. Run the same command again to retry them (finished jobs "
                        "are skipped).")
    return summary


@dataclass(kw_only=True)
class ReportSettings(OutputOptions):
    command = "report"
    config: str | None = option(None, positional=True, identity=False,
                                help="report config (.toml/.yaml) or preset name")
    only: list[str] | None = option(None, metavar="GLOB", identity=False,
                                    help="run only jobs whose id matches a glob (and the jobs "
                                         "they need)")
    model: list[str] | None = option(None, metavar="NAME=ID_OR_FOLDER", identity=False,
                                     help="replace models of the config's [models] table")
    dry_run: bool = option(False, identity=False, help="list the jobs and exit")
    html_only: bool = option(False, identity=False, help="rebuild index.html from finished "
                             "jobs without running any")
    list_presets: bool = option(False, identity=False, help="list the shipped presets")
    trust_remote_code: bool = option(False, identity=False, help="let jobs whose config "
                                     "settings ask for trust_remote_code run their model "
                                     "folder's own Python code (only for code you trust)")
    scale: str = option("auto", choices=SCALES, identity=False, help="sizes of the any-model "
                        "preset: laptop (a CPU: minutes for a 0.5B model), gpu, or paper (the "
                        "papers' sizes); auto: gpu when CUDA is available, else laptop")

    def validate(self) -> None:
        if not self.config and not self.list_presets:
            raise UserError("report: name a config file or a preset (see --list-presets).")


class ReportCommand(Command):
    name = "report"
    help = "run a grid of analyses from a config and write one HTML report"
    Settings = ReportSettings

    def execute(self, s: ReportSettings) -> dict:
        with quiet(s.quiet):
            if s.list_presets:
                for name in preset_names():
                    first = (PRESETS / f"{name}.toml").read_text().splitlines()[0].lstrip("# ")
                    print(f"{name:24s} {first}")
                return {"presets": preset_names()}
            if s.config == "any-model":  # a preset sized to its model: built, not only read
                raw, _ = any_model_config(parse_overrides(s.model), s.scale)
                report = parse_config(raw, source=str(PRESETS / "any-model.toml"),
                                      trust_remote_code=s.trust_remote_code)
            else:
                if s.scale != "auto":
                    raise UserError("report: --scale sizes the any-model preset only; set sizes "
                                    "in the config's settings instead.")
                report = load_config(config_path(s.config), parse_overrides(s.model),
                                     trust_remote_code=s.trust_remote_code)
            if s.dry_run:
                jobs = select(report, s.only)
                print(format_table([{"job": j.id, "command": j.command, "needs": " ".join(j.needs)}
                                    for j in jobs]))
                return {"jobs": [j.id for j in jobs]}
            with RunDir(s.out, self.name, {}, restart=s.restart, main=process_info().is_main,
                        discard=DISCARD) as run:  # --restart discards under the lock
                return run_batch(report, run, s.only, s.html_only)


@dataclass(kw_only=True)
class DemoSettings(OutputOptions):
    command = "demo"
    model: str | None = option(None, identity=False, help="run the LLM parts on this pretrained "
                               "causal LM (hub id or local folder; needs its weights) instead "
                               "of the trained adders")
    quick: bool = option(False, identity=False, help="test-sized settings (seconds; for "
                         "checking an installation)")


class DemoCommand(Command):
    name = "demo"
    help = "the built-in offline report: adders with and without Fourier embeddings, probed " \
           "and ablated, plus a grokking run"
    Settings = DemoSettings

    def execute(self, s: DemoSettings) -> dict:
        with quiet(s.quiet):
            report = parse_config(demo_config(s.model, s.quick), source="(built-in demo)")
            with RunDir(s.out, self.name, {}, restart=s.restart, main=process_info().is_main,
                        discard=DISCARD) as run:
                summary = run_batch(report, run, progress=not s.quick)
            if "index" in summary:
                print(NEXT_STEPS.format(index=Path(summary["index"]).resolve()))
            return summary


REPORT, DEMO = ReportCommand(), DemoCommand()
BATCH_COMMANDS: list[Command] = [REPORT, DEMO]
