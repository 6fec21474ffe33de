"""A command is one object: its typed settings, its run into one run folder, its report view.

Subclasses set ``help`` and ``Settings`` (with ``options.OutputOptions``; ``name`` is its
``command`` unless set) and implement ``run(settings, run)``, which writes into the
``RunDir`` and returns the results (``finish`` writes them as ``results.json`` and prints).
``shards = True``: every process of an ``accelerate launch`` / ``torchrun`` runs it on its
share of the prompts, the main one writes. The batch report places a command's jobs by
``section``, ``heading``, ``intro`` and ``order``, names its figures with ``captions`` and
draws from its results with ``job_html`` / ``section_html`` / ``findings``.

Calling the object is the Python API: ``ProbeCommand()(model="gpt2", layers=[10])`` checks
the settings exactly as the CLI does and returns the results; ``out=None`` writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from llm_fourier.commands.settings import Settings
from llm_fourier.model.distributed import process_info
from llm_fourier.output.files import write_csv
from llm_fourier.output.html import html_table
from llm_fourier.output.progress import quiet
from llm_fourier.output.rundir import RunDir, check_writable


def _fill_defaults(settings, main: bool) -> None:
    """``settings.fill_defaults()`` (it reads the tokenizer) after ``--out`` is known to be
    writable, leaving no folder behind when it fails."""
    if getattr(settings, "out", None) and main:
        path = Path(settings.out)
        made = not path.exists()
        check_writable(path)  # makes it: remove it again, RunDir makes it when it opens
        if made and not any(path.iterdir()):
            path.rmdir()
    settings.fill_defaults()


def finish(run: RunDir, results: dict, *lines: str | None, where: str = "") -> dict:
    """``run.finish(results)``, then print the console summary (``lines``, None skipped) and
    where results.json is (followed by ``where``)."""
    run.finish(results)
    print(*(line for line in lines if line is not None), sep="\n")
    if run.writes:
        print(f"results: {run.file('results.json')}{where}")
    return results


def section_table(rows: list[dict], out: Path, name: str, caption: str) -> str:
    """A report section's table, also written to ``out/tables/<name>.csv`` ("" without rows)."""
    if not rows:
        return ""
    write_csv(out / "tables" / f"{name}.csv", rows)
    return html_table(rows, caption=caption)


@dataclass
class JobView:
    """What a report knows of one finished job: its folder, manifest entry and results."""

    id: str
    folder: Path
    entry: dict
    results: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.entry.get("model") or str(self.results.get("model", self.id))


class Command:
    name: ClassVar[str]
    help: ClassVar[str]
    Settings: ClassVar[type[Settings]]
    shards: ClassVar[bool] = False
    extendable: ClassVar[tuple[str, ...]] = ()  # settings a resumed run may change
    # report view
    section: ClassVar[str] = "other"
    heading: ClassVar[str] = "Other analyses"
    intro: ClassVar[str] = ""
    order: ClassVar[int] = 100
    captions: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ and "Settings" in cls.__dict__:
            cls.name = cls.Settings.command

    def run(self, settings, run: RunDir) -> dict:
        raise NotImplementedError

    def execute(self, settings) -> dict:
        """Open the run folder (checked, locked, resumable) and run in it."""
        main = process_info().is_main if self.shards else True
        _fill_defaults(settings, main)
        with quiet(getattr(settings, "quiet", False)), \
                RunDir(settings.out, self.name, settings.identity(), restart=settings.restart,
                       extendable=self.extendable, main=main) as run:
            run.annotations["defaults"] = settings.chosen
            return self.run(settings, run)

    def __call__(self, **settings) -> dict:
        return self.execute(self.Settings.from_dict(settings))

    # report view
    def job_html(self, job: JobView) -> str:
        """Extra HTML for one job (figures and CSVs are rendered by the page already)."""
        return ""

    def section_html(self, jobs: list[JobView], out: Path) -> str:
        """HTML comparing the jobs of this command (report-level files go under ``out``)."""
        return ""

    def findings(self, job: JobView) -> list[str]:
        """Plain sentences for the page's summary."""
        return []
