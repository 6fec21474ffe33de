"""Kills, hostile files, locks and file modes.

* Every resumable command (and a report of training and probing jobs) is SIGKILLed at
  random points of a run; running the same command again gives the results of an
  uninterrupted run.
* A pickle that would create a file is planted in each kind of state file a killed run
  leaves behind (every kind is tried, none skipped): nothing runs, and the command gives the
  outcome that file calls for (``planted_outcome``): it recomputes that part, or says in one
  sentence how to start over (``--restart``), which then works.
* A second run on a folder in use says who holds it; outputs follow the umask.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from tqdm.std import tqdm as tqdm_std

from llm_fourier.cli import main
from llm_fourier.output.files import read_json, write_json
from llm_fourier.output.rundir import RunDir
from tests.test_golden import RUNS, differences
from tests.tiny import tiny_model_dir

COMMANDS = ("probe", "ablate", "hidden", "finetune", "transplant", "toy-train")
STATE = (".partial", "checkpoints", "checkpoint.safetensors", "run.json", "manifest.json",
         "analysis.json", "latest.json", "state.json")
REPORT = """
title = "kill me"
[models]
tiny = "{model}"
[[jobs]]
command = "toy train"
name = "grok"
settings = {{ p = 11, epochs = 60, d_model = 16, heads = 2, d_head = 8, d_mlp = 32, \
log_every = 5, measure_every = 20, checkpoint_every = 10, seeds = [0] }}
[[jobs]]
command = "probe"
models = ["tiny"]
settings = {{ max_operand = 12, limit = 24, batch_size = 4, tau = 4 }}
[[jobs]]
command = "toy analyze"
name = "analysis"
settings = {{ checkpoint = "{{jobs.grok}}/checkpoint.safetensors" }}
"""


def _child(argv: list[str]) -> None:
    # tqdm's default lock is a multiprocessing lock inherited through fork: a child killed
    # while holding it would leave the parent waiting forever, so the child uses its own,
    # on every tqdm class that keeps one (each subclass may hold its own, e.g. the toolkit's)
    lock, classes = threading.RLock(), [tqdm_std]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        if "_lock" in vars(cls) or cls is tqdm_std:
            cls._lock = lock
    os._exit(main(argv))


def run_killed(argv: list[str], after: float) -> int:
    """Run the command in a forked process and SIGKILL it ``after`` seconds in."""
    proc = mp.get_context("fork").Process(target=_child, args=(argv,))
    proc.start()
    proc.join(after)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    return proc.exitcode


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(tiny_model_dir(tmp_path_factory.mktemp("models"), "gpt2"))


def argv_of(name: str, model: str, out: Path) -> list[str]:
    if name == "report":
        config = out.parent / "report.toml"
        config.write_text(REPORT.format(model=model))
        return ["report", str(config), "--out", str(out)]
    return [*RUNS[name](model), "--out", str(out)]


def results_of(name: str, out: Path) -> dict:
    if name != "report":
        return read_json(out / "results.json")
    jobs = read_json(out / "manifest.json")["jobs"]
    return {j: {"status": e["status"], **read_json(out / "jobs" / j / "results.json")}
            for j, e in jobs.items()}


def state_files(out: Path) -> list[Path]:
    """The files a resumed run reads (not those of a temporary folder a kill left half
    written: nothing reads them, the next checkpoint replaces them)."""
    return sorted(p for p in out.rglob("*") if p.is_file()
                  and any(part in STATE for part in p.relative_to(out).parts)
                  and not any(part.endswith(".tmp") for part in p.relative_to(out).parts)
                  and p.suffix in (".json", ".safetensors", ".bin", ".pkl"))


def planted_outcome(name: str, rel: Path, out: Path) -> int:
    """The exit code a killed, unfinished run in ``out`` gives with a pickle in ``rel``. A
    record that says what the run is (run.json, a report's manifest, a fine-tuning
    checkpoint while its training is unfinished, a toy checkpoint) cannot be guessed: one
    sentence says to use --restart (2); every other file is a partial result, recomputed,
    or belongs to a finished part that is not read again (0). In a report a job that reads
    such a record fails and the report says so (1): the job's own record while it is
    unfinished, or the grok job's checkpoint while the analysis job that reads it is not
    done."""
    if rel == Path("run.json") or rel.name == "manifest.json":
        return 2
    if name in ("finetune", "transplant") and "checkpoints" in rel.parts:
        arm = out.joinpath(*rel.parts[:rel.parts.index("checkpoints")])
        return 0 if (arm / "analysis.json").exists() else 2  # a finished arm is not read
    if name == "report":
        status = {j: e["status"] for j, e in read_json(out / "manifest.json")["jobs"].items()}
        if status.get(rel.parts[1]) != "done":
            return 1 if rel.name in ("run.json", "checkpoint.safetensors") else 0
        analysed = any(j.startswith("analysis") and s == "done" for j, s in status.items())
        return 1 if rel.name == "checkpoint.safetensors" and not analysed else 0
    return 2 if rel.name == "checkpoint.safetensors" else 0


def representatives(paths: list[Path], most: int = 5) -> list[Path]:
    """One state file per kind (its name with digits dropped, e.g. every arm's
    ``random_states_0.pkl`` is one kind), at most ``most``: each loader is tried once."""
    kinds: dict[str, Path] = {}
    for path in paths:
        kinds.setdefault("".join(c for c in path.name if not c.isdigit()), path)
    return list(kinds.values())[:most]


def evil(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps(Evil())


@pytest.mark.slow
@pytest.mark.parametrize("name", [*COMMANDS, "report"])
def test_killed_runs_resume_to_the_uninterrupted_result(name, model, tmp_path, capsys):
    reference = tmp_path / "reference"
    start = time.perf_counter()
    assert main(argv_of(name, model, reference)) == 0
    duration = time.perf_counter() - start
    expected = results_of(name, reference)
    rng = random.Random(name)
    for point in range(2):
        out = tmp_path / f"killed{point}"
        argv = argv_of(name, model, out)
        for _ in range(2):  # killed twice at random points, then run to the end
            run_killed(argv, rng.uniform(0.15, 0.85) * duration)
        capsys.readouterr()
        assert main(argv) == 0, capsys.readouterr().err
        assert differences(expected, results_of(name, out)) == [], point
        csvs = sorted(p.name for p in reference.glob("*.csv"))
        for csv in csvs:
            assert (out / csv).read_bytes() == (reference / csv).read_bytes(), csv


@pytest.mark.slow
@pytest.mark.parametrize("name", [*COMMANDS, "report"])
def test_a_planted_pickle_in_any_state_file_never_runs(name, model, tmp_path, capsys):
    out = tmp_path / "run"
    argv = argv_of(name, model, out)
    start = time.perf_counter()
    assert main(argv) == 0
    duration = time.perf_counter() - start

    def unfinished() -> bool:
        """A killed run that had not finished (a finished one reads none of its state)."""
        if name == "report":
            manifest = out / "manifest.json"
            return manifest.exists() and any(
                j["status"] != "done" for j in read_json(manifest)["jobs"].values())
        return (out / "run.json").exists() and read_json(out / "run.json")["status"] != \
            "finished"

    def killed_state() -> list[Path]:
        """A run killed part-way, freshly (as much state as a few tries leave)."""
        for attempt in range(8):
            run_killed([*argv, "--restart"], (0.3 + 0.08 * attempt) * duration)
            if state_files(out) and unfinished():
                break
        return state_files(out)

    names = representatives([p.relative_to(out) for p in killed_state()])
    assert names, "a killed run should leave state files"
    assert unfinished(), "the kills should leave an unfinished run"
    snapshot = tmp_path / "killed"
    shutil.copytree(out, snapshot, symlinks=True)
    for rel in names:  # each file planted in the same killed state (no timing involved)
        shutil.rmtree(out)
        shutil.copytree(snapshot, out, symlinks=True)
        path = out / rel
        assert path.exists() and unfinished(), rel
        expected = planted_outcome(name, rel, out)
        # a report's finished job keeps its file: the job that reads it fails again
        owner_done = name == "report" and len(rel.parts) > 2 and read_json(
            out / "manifest.json")["jobs"].get(rel.parts[1], {}).get("status") == "done"
        marker = tmp_path / f"ran-{rel.name}"
        path.write_bytes(evil(marker))
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert not marker.exists(), f"the pickle in {rel} ran"
        assert code == expected, (rel, code, err)
        if code == 1:  # the job with the file failed, the report says so
            assert "failed" in err and "Run the same command again" in err
            # a retry starts the failed job over: it mends a file of an unfinished job; a
            # finished job's file that another job reads needs --restart
            assert main(argv) == (1 if owner_done else 0)
            assert main([*argv, "--restart"]) == 0
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and "--restart" in err, (rel, err)
            assert str(path.parent) in err and "Traceback" not in err, err  # names it
            assert main([*argv, "--restart"]) == 0


def test_a_folder_in_use_says_who_holds_it(tmp_path, capsys):
    with RunDir(tmp_path / "busy", "probe", {}) as run:
        run.write_json("x.json", {})
        assert main(["toy", "train", "--epochs", "1", "--out", str(tmp_path / "busy")]) == 2
    err = capsys.readouterr().err
    assert "in use by 'probe' (pid" in err and len(err.strip().splitlines()) == 1
    # released, it still holds an unfinished probe run: refused until --restart
    tiny = ["toy", "train", "--epochs", "1", "--p", "7", "--d-model", "8", "--heads", "1",
            "--d-head", "8", "--d-mlp", "8", "--out", str(tmp_path / "busy")]
    assert main(tiny) == 2 and "unfinished 'probe' run" in capsys.readouterr().err
    assert main([*tiny, "--restart"]) == 0


def test_two_reports_on_one_folder_do_not_mix(tmp_path, capsys):
    config = tmp_path / "r.toml"
    config.write_text('[[jobs]]\ncommand = "toy train"\nsettings = { p = 7, epochs = 1, '
                      'd_model = 8, heads = 1, d_head = 8, d_mlp = 8 }\n')
    with RunDir(tmp_path / "out", "report", {}) as run:
        run.write_json("manifest.json", {"jobs": {}})
        assert main(["report", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "in use by 'report'" in capsys.readouterr().err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(umask, mode, tmp_path):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        assert main(["toy", "train", "--epochs", "2", "--p", "7", "--d-model", "8", "--heads",
                     "1", "--d-head", "8", "--d-mlp", "8", "--out", str(tmp_path / "t")]) == 0
    finally:
        os.umask(old)
    files = [tmp_path / "a.json", *[p for p in (tmp_path / "t").iterdir() if p.is_file()
                                    and p.name != ".lock"]]
    assert len(files) >= 4
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: mode for p in files}
