"""The report runner: each job once, resumable after a kill, failures recorded, hashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import llm_fourier.commands as registry
from llm_fourier.batch.config import parse_config
from llm_fourier.batch.runner import read_manifest, run_report
from llm_fourier.commands.base import Command
from llm_fourier.commands.options import OutputOptions
from llm_fourier.commands.settings import option
from llm_fourier.output.files import read_json

CALLS: list[str] = []


@dataclass(kw_only=True)
class WorkSettings(OutputOptions):
    command = "fake work"
    value: float = option(1.0, help="value")
    input: str = option("", help="input folder")
    fail: bool = option(False, help="fail")
    interrupt: bool = option(False, help="interrupt")
    sleep: float = option(0.0, min=0, help="sleep")


class FakeWork(Command):
    name, help, Settings = "fake work", "work", WorkSettings

    def run(self, s: WorkSettings, run) -> dict:
        CALLS.append(run.path.name)
        if s.sleep:
            time.sleep(s.sleep)
        if s.interrupt:
            raise KeyboardInterrupt
        if s.fail:
            raise ValueError("the fake job failed on purpose")
        upstream = read_json(Path(s.input) / "results.json")["value"] if s.input else 0.0
        print(f"value {s.value}")
        return run.finish({"value": s.value + upstream})


FAKE = FakeWork()


def install(monkeypatch=None):
    real = registry.all_commands
    fake = lambda: {**real(), FAKE.name: FAKE}  # noqa: E731
    if monkeypatch is None:
        registry.all_commands = fake
    else:
        monkeypatch.setattr(registry, "all_commands", fake)


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch):
    install(monkeypatch)
    CALLS.clear()


def config(**b_settings) -> dict:
    return {"title": "runner", "jobs": [
        {"command": "fake work", "name": "a", "settings": {"value": 2}},
        {"command": "fake work", "name": "b", "settings": {"input": "{jobs.a}", **b_settings}},
        {"command": "fake work", "name": "c", "settings": {"value": 5}},
        {"command": "fake work", "name": "d", "settings": {"input": "{jobs.b}"}},
    ]}


def test_runs_each_job_once_and_skips_finished_ones(tmp_path):
    report = parse_config(config())
    manifest = run_report(report, tmp_path, progress=False)
    assert CALLS == ["a", "b", "c", "d"]
    assert {j: e["status"] for j, e in manifest["jobs"].items()} == dict.fromkeys("abcd", "done")
    # b read a's results through the {jobs.a} reference, d read b's: 2 + 1, then 3 + 1
    assert read_json(tmp_path / "jobs/b/results.json") == {"value": 3.0}
    assert read_json(tmp_path / "jobs/d/results.json") == {"value": 4.0}
    assert "value 1.0" in (tmp_path / "jobs/b/log.txt").read_text()
    assert read_json(tmp_path / "manifest.json") == manifest
    run_report(report, tmp_path, progress=False)
    assert CALLS == ["a", "b", "c", "d"]  # nothing re-run


def test_changed_settings_rerun_the_job_and_its_dependents_only(tmp_path):
    run_report(parse_config(config()), tmp_path, progress=False)
    (tmp_path / "jobs/b/stale.txt").write_text("old")
    CALLS.clear()
    manifest = run_report(parse_config(config(value=10)), tmp_path, progress=False)
    assert CALLS == ["b", "d"]
    assert not (tmp_path / "jobs/b/stale.txt").exists()  # fresh folder for new settings
    assert read_json(tmp_path / "jobs/d/results.json") == {"value": 13.0}
    assert manifest["jobs"]["b"]["settings"]["value"] == 10


def test_a_failed_job_is_recorded_and_the_others_go_on(tmp_path):
    manifest = run_report(parse_config(config(fail=True)), tmp_path, progress=False,
                          echo=lambda s: None)
    jobs = manifest["jobs"]
    assert CALLS == ["a", "b", "c"]  # d needs b: not run
    assert jobs["b"]["status"] == "failed"
    assert jobs["b"]["error"] == "ValueError: the fake job failed on purpose"
    assert "Traceback" in (tmp_path / "jobs/b/error.txt").read_text()
    assert jobs["c"]["status"] == "done"
    assert jobs["d"]["status"] == "blocked" and "needs b" in jobs["d"]["error"]
    # fixed config: only the failed and blocked jobs run
    CALLS.clear()
    manifest = run_report(parse_config(config()), tmp_path, progress=False)
    assert CALLS == ["b", "d"]
    assert all(e["status"] == "done" for e in manifest["jobs"].values())


def test_only_runs_matching_jobs_and_their_needs(tmp_path):
    manifest = run_report(parse_config(config()), tmp_path, only=["d"], progress=False)
    assert CALLS == ["a", "b", "d"] and "c" not in manifest["jobs"]


def test_interrupt_leaves_a_resumable_manifest(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_report(parse_config(config(interrupt=True)), tmp_path, progress=False)
    jobs = read_manifest(tmp_path)["jobs"]
    assert jobs["a"]["status"] == "done" and jobs["b"]["status"] == "running"
    CALLS.clear()
    run_report(parse_config(config()), tmp_path, progress=False)
    assert CALLS == ["b", "c", "d"]


KILLED = """
import sys
sys.path.insert(0, {tests!r})
from tests.llm import test_report_runner as t
t.install()
from llm_fourier.batch.config import parse_config
from llm_fourier.batch.runner import run_report
run_report(parse_config(t.config(sleep=60)), {out!r}, progress=False)
"""


def test_killed_report_rerun_skips_finished_jobs(tmp_path):
    """SIGKILL a real report process while job b runs; the re-run starts at b."""
    root = str(Path(__file__).resolve().parents[2])
    code = KILLED.format(tests=root, out=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root,
                            env={**os.environ, "PYTHONPATH": root})
    manifest_path = tmp_path / "manifest.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if manifest_path.is_file() and \
                json.loads(manifest_path.read_text())["jobs"].get("b", {}).get("status") \
                == "running":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    jobs = read_manifest(tmp_path)["jobs"]
    assert jobs["a"]["status"] == "done" and jobs["b"]["status"] == "running"
    assert "c" not in jobs
    run_report(parse_config(config()), tmp_path, progress=False)
    assert CALLS == ["b", "c", "d"]
    assert read_json(tmp_path / "jobs/d/results.json") == {"value": 4.0}


def test_report_cli_only_dry_run_html_only_and_failures(tmp_path, capsys):
    from llm_fourier.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text('title = "cli"\n'
                   '[[jobs]]\ncommand = "fake work"\nname = "a"\nsettings = { value = 2 }\n'
                   '[[jobs]]\ncommand = "fake work"\nname = "b"\n'
                   'settings = { input = "{jobs.a}", fail = true }\n'
                   '[[jobs]]\ncommand = "fake work"\nname = "c"\n')
    out = tmp_path / "out"
    assert main(["report", str(cfg), "--dry-run", "--only", "b"]) == 0
    listed = capsys.readouterr().out
    assert "a " in listed and "b " in listed and "c " not in listed and CALLS == []
    assert main(["report", str(cfg), "--out", str(out), "--html-only"]) == 2
    assert "holds no report yet" in capsys.readouterr().err
    assert main(["report", str(cfg), "--out", str(out)]) == 1  # a job failed
    printed, err = capsys.readouterr()
    assert CALLS == ["a", "b", "c"]
    assert "1 job(s) failed and 0 could not start (b)" in err
    assert f"report: {(out / 'index.html').resolve()}" in printed
    (out / "index.html").unlink()
    assert main(["report", str(cfg), "--out", str(out), "--html-only"]) == 1
    assert CALLS == ["a", "b", "c"] and (out / "index.html").is_file()
    assert main(["report", "--list-presets"]) == 0
    assert "gpt2-xl-paper" in capsys.readouterr().out
