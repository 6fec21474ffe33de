"""Run a report's jobs once each into ``OUT/jobs/<job-id>/``, resumably.

``OUT/manifest.json`` records, per job, the command, its resolved settings, a hash of the
settings (and of the jobs it needs), the status (``done``, ``failed``, ``blocked``,
``running``), the time taken and the error. A re-run skips every job that is ``done`` with
the same hash; a job whose settings changed is run again into a fresh folder; a job left
``running`` by a killed report is run again into its folder, so commands that checkpoint
resume there. A failing job is recorded (``error.txt`` holds the traceback) and the others
go on; jobs that need it are ``blocked``. Jobs run in-process through the command registry.

Under ``accelerate launch`` / ``torchrun`` the jobs of commands that shard their prompts run
on every process together (their run folder is written by the main one alone); the other
jobs of a dependency wave are dealt out, one process each. The manifest is written by the
main process, atomically.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from llm_fourier.batch.config import Job, Report, resolve_refs
from llm_fourier.commands import get_command
from llm_fourier.errors import UserError
from llm_fourier.model import distributed
from llm_fourier.output.files import atomic_write_text, read_json, write_json
from llm_fourier.output.paths import (
    UnsafePath,
    make_own_dir,
    open_private,
    path_component,
    remove,
)
from llm_fourier.output.progress import tqdm

MANIFEST = "manifest.json"


def job_dir(out: str | Path, job_id: str) -> Path:
    """``OUT/jobs/<id>``; an id is always one safe path component (``config._expand``)."""
    return Path(out) / "jobs" / path_component(job_id)


def read_manifest(out: str | Path) -> dict:
    """The manifest of a report folder (an empty one when there is none yet)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return {"jobs": {}}
    try:
        manifest = read_json(path)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("jobs", {}), dict):
            raise ValueError("not a manifest")
    except (OSError, ValueError) as err:
        raise UserError(f"{path} cannot be read ({type(err).__name__}); rerun with --restart "
                        "to run every job again, or choose another --out.") from err
    manifest.setdefault("jobs", {})
    return manifest


def job_hashes(report: Report) -> dict[str, str]:
    """Each job's settings hash, chained through the jobs it needs (report order is topological)."""
    hashes: dict[str, str] = {}
    for job in report.jobs:
        hashes[job.id] = job.settings_hash(hashes)
    return hashes


def select(report: Report, only: Sequence[str] | None) -> list[Job]:
    """Jobs whose id matches any glob in ``only`` (all when empty), plus what they need."""
    if not only:
        return list(report.jobs)
    by_id = {j.id: j for j in report.jobs}
    wanted: set[str] = set()
    stack = [j.id for j in report.jobs if any(fnmatch.fnmatchcase(j.id, p) for p in only)]
    while stack:
        job_id = stack.pop()
        if job_id not in wanted:
            wanted.add(job_id)
            stack += list(by_id[job_id].needs)
    return [j for j in report.jobs if j.id in wanted]


class _Tee:
    """Writes to the console and to a log file."""

    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def _entry(job: Job, digest: str, settings: dict) -> dict:
    return {"command": job.command, "settings": settings, "hash": digest,
            "needs": list(job.needs), "model": job.model, "task": job.task,
            "revision": job.revision, "seed": job.seed,
            "caption": job.caption, "status": "pending", "seconds": None, "error": None}


def run_job(job: Job, settings: dict, target: Path, restart: bool = False) -> dict:
    """Run one job's command into ``target`` (its run folder: checked, locked, resumable;
    ``restart`` discards what a failed attempt left there)."""
    command = get_command(job.command)
    make_own_dir(target)
    with open_private(target / "log.txt", "a") as log, \
            contextlib.redirect_stdout(_Tee(sys.stdout, log)):
        return command.execute(command.Settings.from_dict(
            {**settings, "out": str(target), "restart": restart}))


def _decide(job: Job, digest: str, jobs: dict, out: Path) -> str:
    entry = jobs.get(job.id)
    if entry and entry.get("status") == "done" and entry.get("hash") == digest \
            and (job_dir(out, job.id) / "results.json").is_file():
        return "cached"
    if any(jobs.get(n, {}).get("status") != "done" for n in job.needs):
        return "blocked"
    return "run"


def waves(jobs: Sequence[Job]) -> list[list[Job]]:
    """Jobs grouped so that each wave needs only jobs of earlier waves (order kept)."""
    depth: dict[str, int] = {}
    for job in jobs:  # report order is topological
        depth[job.id] = 1 + max((depth.get(n, -1) for n in job.needs), default=-1)
    return [[j for j in jobs if depth[j.id] == d] for d in range(max(depth.values()) + 1)] \
        if jobs else []


def _execute(job: Job, entry: dict, out: Path, owner: bool, save: Callable[[], None],
             echo: Callable[[str], None]) -> None:
    """Run one job, updating ``entry``; ``owner`` writes error.txt. A job that failed
    before starts over (its partial state may be why it failed); one that was killed while
    running resumes."""
    folder = job_dir(out, job.id)
    restart = entry.pop("failed_before", False)
    entry.update(status="running", started=time.strftime("%Y-%m-%d %H:%M:%S"))
    save()
    start = time.perf_counter()
    try:
        results = run_job(job, entry["settings"], folder, restart)
        finished = results.get("finished", True) if isinstance(results, dict) else True
        entry.update(status="done" if finished else "stopped")
    except UnsafePath:  # a planted link: the report stops with one sentence
        raise
    except Exception as err:  # one failing job must not stop the report
        message = f"{type(err).__name__}: {err}".strip()
        entry.update(status="failed", error=message)
        if owner:
            atomic_write_text(folder / "error.txt", traceback.format_exc())
        echo(f"job {job.id} failed: {message}")
    entry["seconds"] = round(time.perf_counter() - start, 2)
    save()
    if entry["seconds"] > 1:  # free a big job's model before the next (gc costs ~0.2 s)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_report(report: Report, out: str | Path, *, only: Sequence[str] | None = None,
               progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Run every (selected) job that is not already done; returns the manifest. With several
    processes (see the module docstring) one-rank jobs run inside ``distributed.solo()``, and
    the ranks exchange their manifest entries after every wave."""
    out = Path(out)
    info = distributed.process_info()
    manifest = distributed.broadcast_object(read_manifest(out) if info.is_main else None)
    hashes = job_hashes(report)
    old = manifest.get("jobs", {})
    jobs = {j.id: old[j.id] for j in report.jobs if j.id in old}  # drop jobs no longer listed
    manifest = {"title": report.title, "description": report.description,
                "source": report.source, "jobs": jobs}
    chosen = select(report, only)

    def save() -> None:
        if info.is_main:
            manifest["jobs"] = {j.id: jobs[j.id] for j in report.jobs if j.id in jobs}
            write_json(out / MANIFEST, manifest)

    save()
    bar = tqdm(total=len(chosen), desc="report", unit="job", position=0,
               disable=not progress or not info.is_main)
    # one process: one job at a time in report order; several: waves of independent jobs
    for wave in waves(chosen) if info.world_size > 1 else [[j] for j in chosen]:
        decisions = distributed.broadcast_object({j.id: _decide(j, hashes[j.id], jobs, out)
                                            for j in wave})
        todo = []
        for job in wave:
            if decisions[job.id] == "cached":
                bar.update(1)
                continue
            settings = {k: resolve_refs(v, lambda i: job_dir(out, i).resolve())
                        for k, v in job.settings.items()}
            previous = jobs.get(job.id)
            entry = jobs[job.id] = _entry(job, hashes[job.id], settings)
            if previous and previous.get("status") == "failed":
                entry["failed_before"] = True
            if decisions[job.id] == "blocked":
                bad = [n for n in job.needs if jobs.get(n, {}).get("status") != "done"]
                entry.update(status="blocked", error=f"needs {', '.join(bad)}, which did not "
                             "finish")
                bar.update(1)
                continue
            folder = job_dir(out, job.id)
            if info.is_main and folder.exists() and previous \
                    and previous.get("hash") != entry["hash"]:
                remove(folder, out)  # outputs of different settings: start afresh
            todo.append(job)
        save()
        distributed.barrier()
        together = [j for j in todo if get_command(j.command).shards or info.world_size == 1]
        spread = [j for j in todo if j not in together]
        mine: dict[str, dict] = {}
        for job in together:  # every process runs it; the main one writes (RunDir)
            bar.set_postfix_str(job.id)
            _execute(job, jobs[job.id], out, info.is_main, save, echo)
            bar.update(1)
            distributed.barrier()
        for job in spread[info.rank::info.world_size]:
            bar.set_postfix_str(job.id)
            with distributed.solo():  # this rank alone: its library loops must not wait for others
                _execute(job, jobs[job.id], out, True, save, echo)
            mine[job.id] = jobs[job.id]
        for entries in distributed.all_gather_objects(mine):
            jobs.update(entries)
        bar.update(len(spread))
        save()
    bar.close()
    return manifest


def status_rows(manifest: dict) -> list[dict]:
    """One row per job for the console table."""
    return [{"job": job_id, "command": e.get("command"), "status": e.get("status"),
             "seconds": e.get("seconds"), "error": _clip(e.get("error") or "")}
            for job_id, e in manifest.get("jobs", {}).items()]


def _clip(text: str) -> str:
    return text if len(text) < 70 else text[:67] + "..."
