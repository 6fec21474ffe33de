"""Hostile configs and files: every path stays inside --out, no planted link is followed, a
config never runs code by itself, and malformed inputs are one sentence (exit code 2).

Sentinels (a folder and a file outside --out) hold user data; every test checks their
contents afterwards, and the traversal test checks that nothing outside --out changed."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

import llm_fourier.commands as registry
from llm_fourier.batch.config import parse_config
from llm_fourier.batch.runner import job_dir
from llm_fourier.cli import main
from llm_fourier.commands.base import Command
from llm_fourier.commands.options import OutputOptions
from llm_fourier.commands.settings import option
from llm_fourier.errors import UserError
from llm_fourier.output.paths import make_own_dir, path_component, remove
from llm_fourier.output.rundir import RunDir

CALLS: list[str] = []
USER_DATA = "the user's own data\n"


@dataclass(kw_only=True)
class HostileSettings(OutputOptions):
    command = "hostile work"
    model: str = option("m", help="model")
    value: float = option(1.0, help="value")
    fail: bool = option(False, help="fail")
    unit: bool = option(False, help="save a partial unit first")
    trust_remote_code: bool = option(False, help="trust remote code")


class HostileWork(Command):
    name, help, Settings = "hostile work", "work", HostileSettings

    def run(self, s: HostileSettings, run) -> dict:
        CALLS.append(run.path.name)
        print(f"value {s.value}")  # into the job's log.txt
        if s.unit:
            run.save_unit("u", {"value": s.value})
        if s.fail:
            raise ValueError("the job fails on purpose")
        return run.finish({"value": s.value, "trust": s.trust_remote_code})


@pytest.fixture(autouse=True)
def fake_registry(monkeypatch):
    real = registry.all_commands
    fake = HostileWork()
    monkeypatch.setattr(registry, "all_commands", lambda: {**real(), fake.name: fake})
    CALLS.clear()


@pytest.fixture
def sentinel(tmp_path) -> tuple[Path, Path]:
    """A folder and a file of user data outside every --out."""
    folder = tmp_path / "sentinel"
    folder.mkdir()
    (folder / "keep.txt").write_text(USER_DATA)
    file = tmp_path / "sentinel.txt"
    file.write_text(USER_DATA)
    return folder, file


def intact(sentinel) -> bool:
    folder, file = sentinel
    return (sorted(os.listdir(folder)) == ["keep.txt"]
            and (folder / "keep.txt").read_text() == USER_DATA and file.read_text() == USER_DATA)


def write_config(path: Path, jobs: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"title": "hostile", **top, "jobs": jobs}))
    return path


def report(cfg: Path, out: Path, *extra: str) -> int:
    return main(["report", str(cfg), "--out", str(out), *extra])


def one_line_error(capsys) -> str:
    """The one line of stderr (a report's progress bar, drawn before the stop, left out)."""
    captured = capsys.readouterr()
    lines = [x.strip() for x in re.split(r"[\r\n]", captured.err)]
    err = "\n".join(re.sub(r"^report: .*?\|.*?\]", "", x) for x in lines if x
                    and not re.fullmatch(r"report: .*\]", x))
    assert len(err.splitlines()) == 1 and err.startswith("llm-fourier: error:"), err
    assert "Traceback" not in captured.err + captured.out
    return err


def files_outside(root: Path, out: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` but outside ``out``, with file contents (links as targets)."""
    seen: dict[str, bytes | str] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        if here == out or out in here.parents:
            dirs[:] = []
            continue
        for name in dirs + files:
            p = here / name
            if p == out:
                continue
            seen[str(p.relative_to(root))] = (os.readlink(p) if p.is_symlink() else
                                              p.read_bytes() if p.is_file() else "dir")
    return seen


# ------------------------------------------------------------------ names -> job ids
NAMES = ["..", ".", "../../x", "/abs", "/", "a/b", "a\\b", "nul\x00byte", "ctl\x01\x1f\x7f\n",
         "", "x" * 300, "ünïcødé/名前", "-rf", ".hidden", "a b", "~", "$HOME", "../" * 20,
         "a_b", "plain-name.1"]


@pytest.mark.parametrize("name", NAMES, ids=[ascii(n)[:40] for n in NAMES])
def test_any_name_becomes_one_safe_path_component(name, tmp_path):
    c = path_component(name)
    assert c not in ("", ".", "..") and "/" not in c and "\\" not in c and len(c) <= 100
    assert c.isascii() and c.isprintable() and not c.startswith((".", "-"))
    assert Path(c).parts == (c,) and path_component(c) == c
    assert (tmp_path / "jobs" / c).parent == tmp_path / "jobs"
    if name in ("a_b", "plain-name.1"):
        assert c == name  # safe names are kept as they are


def test_distinct_names_give_distinct_components():
    names = [*NAMES, "a?b", "a*b", "x" * 301, "x" * 302]
    assert len({path_component(n) for n in names}) == len(set(names))
    # a name forged to equal another's mapped id is refused, never merged into one folder
    forged = "w-a_b-" + path_component("w-a/b").rsplit("-", 1)[1]
    raw = {"models": {"a/b": "m", forged.removeprefix("w-"): "m"},
           "jobs": [{"command": "hostile work", "name": "w", "models": "*"}]}
    with pytest.raises(UserError, match="two jobs have the id"):
        parse_config(raw)


@pytest.mark.parametrize("where", ["model", "task", "job"])
@pytest.mark.parametrize("name", NAMES, ids=[ascii(n)[:40] for n in NAMES])
def test_config_names_never_become_paths(name, where, tmp_path):
    job = {"command": "hostile work", "name": name if where == "job" else "w"}
    raw = {"models": {"keep": "m"}, "tasks": {"t": {"value": 2}}, "jobs": [job]}
    if where == "model":
        raw["models"][name] = "m"
        job["models"] = "*"
    elif where == "task":
        raw["tasks"][name] = {"value": 3}
        job["tasks"] = "*"
    try:
        jobs = parse_config(raw).jobs
    except UserError as err:  # job names are checked: only '.' and '..' pass that check
        assert where == "job" and "name" in str(err)
        return
    assert len({j.id for j in jobs}) == len(jobs) == (2 if where != "job" else 1)
    for j in jobs:
        assert job_dir(tmp_path, j.id).parent == tmp_path / "jobs"
        assert job_dir(tmp_path, j.id).name == j.id == path_component(j.id)


def test_traversal_names_create_and_delete_nothing_outside_out(tmp_path, sentinel, capsys):
    out = tmp_path / "a" / "b" / "out"
    # from out/jobs/<id>, "w-x/" + 5 x ".." is tmp_path: the old ids wrote into the sentinel
    models = {"x/../../../../../sentinel": "m1", str(sentinel[0]): "m2", "..": "m3", ".": "m4"}
    cfg = tmp_path / "c.yaml"

    def jobs(value: float) -> list[dict]:
        return [{"command": "hostile work", "name": "w", "models": "*"},
                {"command": "hostile work", "name": "..", "settings": {"value": value}},
                {"command": "hostile work", "name": ".", "settings": {"value": value}}]

    write_config(cfg, jobs(1.0), models=models)
    before = files_outside(tmp_path, out)
    assert report(cfg, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["jobs"]) == 6 and len(os.listdir(out / "jobs")) == 6
    write_config(cfg, jobs(2.0), models=models)  # the '.' and '..' jobs change: rerun them
    before = files_outside(tmp_path, out)
    CALLS.clear()
    assert report(cfg, out) == 0
    assert len(CALLS) == 2  # only the changed jobs ran again
    assert files_outside(tmp_path, out) == before and intact(sentinel)
    manifest = json.loads((out / "manifest.json").read_text())
    for job_id, entry in manifest["jobs"].items():  # the manifest tells the truth
        assert entry["status"] == "done"
        assert (out / "jobs" / job_id / "results.json").is_file(), job_id
    capsys.readouterr()


# ------------------------------------------------------------------ planted links
def first_run(tmp_path, **settings) -> tuple[Path, Path]:
    cfg = write_config(tmp_path / "c.yaml", [{"command": "hostile work", "name": "w",
                                             "settings": settings}])
    out = tmp_path / "out"
    assert report(cfg, out) in (0, 1)
    return cfg, out


def plant(path: Path, target: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("planted, to", [(".lock", "file"), ("manifest.json", "file"),
                                         ("jobs", "folder"), ("jobs/w/.lock", "file"),
                                         ("jobs/w/log.txt", "file"),
                                         ("jobs/w/results.json", "file"),
                                         ("jobs/w/.partial", "folder")])
def test_planted_links_are_never_written_through(planted, to, tmp_path, sentinel, capsys):
    # a failed job that kept a partial unit: the next run works in its folder again
    cfg, out = first_run(tmp_path, fail=True, unit=True)
    capsys.readouterr()
    plant(out / planted, sentinel[0] if to == "folder" else sentinel[1])
    code = report(cfg, out)
    if code != 0:  # refused: one sentence naming the link
        assert code in (1, 2)
        err = one_line_error(capsys) if code == 2 else capsys.readouterr().err
        assert code == 1 or "link" in err or "cannot be read" in err, err
    assert intact(sentinel)
    write_config(cfg, [{"command": "hostile work", "name": "w", "settings": {"value": 3}}])
    report(cfg, out, "--restart")  # a restart removes links, never what they point to
    assert intact(sentinel)


def test_a_planted_partial_folder_link_is_refused_on_resume(tmp_path, sentinel):
    out = tmp_path / "out"
    with RunDir(out, "c", {"x": 1}) as run:
        run.save_unit("u0", {"v": 1})
    plant(out / ".partial", sentinel[0])
    with pytest.raises(UserError, match=r"\.partial is a symbolic link"), \
            RunDir(out, "c", {"x": 1}) as run:
        run.save_unit("u1", {"v": 2})
    assert intact(sentinel)
    with RunDir(out, "c", {"x": 1}, restart=True) as run:  # the link goes, not its target
        run.save_unit("u1", {"v": 2})
    assert intact(sentinel) and (out / ".partial").is_dir() and not (out / ".partial").is_symlink()


def test_a_lock_link_or_hard_link_is_refused(tmp_path, sentinel):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").symlink_to(sentinel[1])
    with pytest.raises(UserError, match=r"\.lock is a symbolic link"):
        RunDir(out, "c", {})
    (out / ".lock").unlink()
    os.link(sentinel[1], out / ".lock")
    with pytest.raises(UserError, match="hard link"):
        RunDir(out, "c", {})
    assert intact(sentinel)


# ------------------------------------------------------------------ deletes
def test_remove_refuses_outside_and_foreign_targets(tmp_path, sentinel):
    run = tmp_path / "run"
    with RunDir(run, "c", {}) as r:
        r.write_json("results.json", {})
    for target in (sentinel[0], run / ".." / "sentinel", run):
        with pytest.raises(UserError, match="not inside the run folder"):
            remove(target, run)
    foreign = tmp_path / "foreign"
    (foreign / "sub").mkdir(parents=True)
    with pytest.raises(UserError, match="did not write it"):
        remove(foreign / "sub", foreign)
    (run / "via").symlink_to(sentinel[0])
    with pytest.raises(UserError, match="symbolic link"):
        remove(run / "via" / "keep.txt", run)
    assert remove(run / "via", run) and intact(sentinel)  # the link itself goes
    made = make_own_dir(foreign / "made" / "deep")
    assert remove(made, foreign) and (foreign / "sub").is_dir()


def test_restart_against_a_locked_report_leaves_its_results(tmp_path, capsys):
    cfg, out = first_run(tmp_path, value=2)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert any(p.name == "results.json" for p in files)
    with RunDir(out, "report", {}):  # a report running in this folder holds the lock
        assert report(cfg, out, "--restart") == 2
        assert "in use" in one_line_error(capsys)
    assert {p: p.read_bytes() for p in files} == files


@pytest.mark.parametrize("user_files", [["notes.txt", ".partial/keep.json"],
                                        ["notes.txt", "manifest.json"],
                                        ["notes.txt", "jobs/mine.txt"], ["notes.txt"]])
def test_restart_on_a_folder_that_was_never_a_report_deletes_nothing(user_files, tmp_path,
                                                                     capsys):
    out = tmp_path / "out"
    for name in user_files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text('{"jobs": {}}')
    cfg = write_config(tmp_path / "c.yaml", [{"command": "hostile work", "name": "w"}])
    code = report(cfg, out, "--restart")
    assert code == (0 if user_files == ["notes.txt"] else 2)
    if code == 2:
        assert "choose another --out" in one_line_error(capsys) and CALLS == []
    for name in user_files:
        assert (out / name).read_text() == '{"jobs": {}}'


def test_restart_clears_a_report_whose_record_is_damaged(tmp_path, capsys):
    cfg, out = first_run(tmp_path, value=2)
    (out / "run.json").write_bytes(b"\x80 not json")
    assert report(cfg, out) == 2 and "--restart" in one_line_error(capsys)
    CALLS.clear()
    assert report(cfg, out, "--restart") == 0 and CALLS == ["w"]
    assert json.loads((out / "manifest.json").read_text())["jobs"]["w"]["status"] == "done"


# ------------------------------------------------------------------ remote code
@pytest.mark.parametrize("where", ["settings", "task"])
def test_trust_remote_code_in_a_config_needs_the_flag(where, tmp_path, capsys):
    job = {"command": "hostile work", "name": "w"}
    top = {}
    if where == "settings":
        job["settings"] = {"trust_remote_code": True}
    else:
        top["tasks"] = {"t": {"trust-remote-code": True}}
        job["tasks"] = ["t"]
    cfg = write_config(tmp_path / "c.yaml", [job], **top)
    out = tmp_path / "out"
    assert report(cfg, out) == 2
    err = one_line_error(capsys)
    assert "job w" in err and "--trust-remote-code" in err and CALLS == [] and not out.exists()
    assert report(cfg, out, "--trust-remote-code") == 0 and len(CALLS) == 1
    job_id = os.listdir(out / "jobs")[0]
    assert json.loads((out / "jobs" / job_id / "results.json").read_text())["trust"] is True


# ------------------------------------------------------------------ malformed inputs
LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
CONFIGS = [
    ("latin1.toml", 'title = "café"\n'.encode("latin-1"), "not UTF-8 text (byte 12"),
    ("latin1.yaml", b"title: \xff\n", "not UTF-8 text (byte 7"),
    ("intkey.yaml", b"jobs:\n  - command: hostile work\n    settings: {1: 2}\n",
     "the key 1 under jobs[0].settings is not a string"),
    ("nullkey.yaml", b"? null\n: 1\n", "the key None under (top level) is not a string"),
    ("boolkey.yaml", b"models: {yes: m}\n", "the key True under models is not a string"),
    ("listkey.yaml", b"? [a, b]\n: 1\n", "cannot parse the config as YAML"),
    ("bomb.yaml", LAUGHS.encode(), "aliases expand to more than"),
    ("self.yaml", b"a: &x [*x]\n", "refers to itself"),
    ("deep.yaml", b"[" * 3000 + b"]" * 3000, "nested"),
    ("deep.toml", b"a = " + b"[" * 3000 + b"]" * 3000, "a ="),
    ("python.yaml", b"!!python/object/apply:os.system ['touch pwned']\n", "cannot parse"),
    ("list.yaml", b"- 1\n- 2\n", "(top level): must be a table"),
    ("broken.toml", b"[[jobs]\n", "cannot parse the config as TOML"),
]


@pytest.mark.parametrize("name, data, words", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_a_malformed_config_is_one_sentence(name, data, words, tmp_path, capsys,
                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / name
    cfg.write_bytes(data)
    start = time.perf_counter()
    assert report(cfg, tmp_path / "out") == 2
    err = one_line_error(capsys)
    assert time.perf_counter() - start < 10  # bounded: never expanded
    assert (words in err or words == "a =" and ("nested" in err or "cannot parse" in err)), err
    assert str(cfg) in err and not (tmp_path / "out").exists()
    assert not (tmp_path / "pwned").exists()


def _npy(values, allow_pickle=False) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(values), allow_pickle=allow_pickle)
    return buf.getvalue()


CONTROLS = [
    ("nulls.json", b"[1, null, 3]", "value 1 (None) is not a number"),
    ("nulls-by-number.json", b'{"0": 1, "1": null}', "value 1 (None) is not a number"),
    ("nan.json", b"[1, NaN]", "NaN is not a number JSON allows"),
    ("text.json", b'[1, "two"]', "value 1 ('two') is not a number"),
    ("string.json", b'"abc"', "neither a list nor a table"),
    ("huge-key.json", b'{"100000000000": 1}', "gaps"),
    ("inf.csv", b"1\ninf\n", "value 1 is inf"),
    ("words.csv", b"1\nabc\n", "value 1 ('abc') is not a number"),
    ("latin1.csv", b"1\n\xff\n", "not UTF-8 text (byte 2"),
    ("nan.npy", _npy([1.0, np.nan]), "value 1 is nan"),
    ("objects.npy", _npy(np.array([1, "a"], dtype=object), allow_pickle=True),
     "cannot read numbers"),
]


@pytest.mark.parametrize("name, data, words", CONTROLS, ids=[c[0] for c in CONTROLS])
def test_a_malformed_control_file_is_one_sentence_before_the_model_loads(
        name, data, words, tmp_path, capsys):
    control = tmp_path / name
    control.write_bytes(data)
    missing = tmp_path / "no-such-model"  # never loaded: the control file fails first
    out = tmp_path / "out"
    assert main(["hidden", "--model", str(missing), "--control", str(control),
                 "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert words in err and str(control) in err and "no-such-model" not in err, err
    assert not out.exists()
