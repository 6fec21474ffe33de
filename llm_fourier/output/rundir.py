"""One run folder for every command: settings, input fingerprints, lock, partial units, resume.

``RunDir(path, command, settings)`` opens a command's ``--out`` folder before any heavy work:

* it makes the folder and checks that it can write there (one sentence if not);
* it takes an exclusive lock (``.lock``, ``flock``, opened without following a link;
  released by the OS when the process dies), so a second run on the same folder says who
  holds it instead of mixing files; ``--restart`` discards only under that lock;
* ``run.json`` records the command, its settings (those that change results), their hash,
  the fingerprints of its inputs (model weights, tokenizer, task) and the status. Running
  the same command again resumes an unfinished run; a run with other settings or other
  inputs is refused with a sentence naming what changed, unless ``restart=True`` (``--restart``)
  discards it. Settings a command declares safe to change (e.g. more epochs of a constant-LR
  run) are taken over and recorded in ``run.json``'s history;
* units (``save_unit`` / ``load_unit``) are partial results, JSON plus optional tensors in
  safetensors, kept under ``.partial/`` until ``finish`` writes ``results.json``; a unit
  that cannot be read is discarded and recomputed (with a note), so a run never gets stuck;
* every file goes through ``output.files``: atomic, with the user's umask; every delete
  through ``output.paths.remove`` (inside the folder, only what a run wrote).

``path=None`` (the Python API without ``out``) writes nothing and resumes nothing. Processes
other than the main one of a launch (``main=False``) write nothing either.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from llm_fourier.errors import UserError
from llm_fourier.output.files import (
    atomic_write_bytes,
    read_json,
    to_jsonable,
    write_csv,
    write_json,
)
from llm_fourier.output.paths import (
    RUN_FILE,
    RUN_FORMAT,
    check_no_links,
    open_private,
    remove,
)

LOCK_FILE = ".lock"
PARTIAL = ".partial"
FORMAT = "llm-fourier-run/1"


def settings_hash(settings: Mapping) -> str:
    """A short sha256 of settings (JSON with sorted keys)."""
    blob = json.dumps(to_jsonable(dict(settings)), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _changes(old: Mapping, new: Mapping) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_writable(path: Path) -> None:
    """Make ``path`` (a folder) and check that files can be created there."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder; pass a folder path.")
    try:
        probe = path / f".write-test-{os.getpid()}"
        check_no_links(probe)
        path.mkdir(parents=True, exist_ok=True)
        remove(probe, path, made_here=True)  # a stale one (or a planted link) goes first
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        remove(probe, path, made_here=True)
    except OSError as err:
        raise UserError(f"cannot write to --out {path} ({err.strerror or err}); choose a "
                        "folder you can write to.") from err


class RunDir:
    """A command's output folder (see the module docstring)."""

    def __init__(self, path: str | Path | None, command: str, settings: Mapping, *,
                 restart: bool = False, extendable: Iterable[str] = (),
                 main: bool = True, discard: Iterable[str] = ()) -> None:
        self.path = None if path is None else Path(path)
        self.command = command
        self.settings = to_jsonable(dict(settings))
        self.writes = self.path is not None and main
        self.helper = self.path is not None and not main  # a helper process of a launch
        self.resumed = False
        self.previous: dict | None = None  # the record found in the folder, if any
        self.previous_command: str | None = None  # the command of that record
        self._lock = None
        self._record: dict = {}
        self._saved = False  # nothing written yet: a run that fails early leaves nothing
        self._made = False
        self._discard = tuple(discard)  # what --restart removes besides run.json and units
        self.annotations: dict = {}  # keys added to results.json (e.g. chosen defaults)
        if self.path is None or not main:
            return  # nothing to write: the Python API without out, or a helper process
        self._made = not self.path.exists()
        check_writable(self.path)
        self._take_lock()
        self._open(restart, set(extendable))

    # ------------------------------------------------------------ opening
    def _take_lock(self) -> None:
        lock = open_private(self.path / LOCK_FILE, "a+")  # never through a link
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise UserError(f"{self.path} is in use by {holder}; wait for it to finish or "
                            "choose another --out.") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"'{self.command}' (pid {os.getpid()} on {socket.gethostname()}, since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        lock.flush()
        self._lock = lock

    def _open(self, restart: bool, extendable: set[str]) -> None:
        record_path = self.path / RUN_FILE
        old = None
        if record_path.is_file() and not restart:
            try:
                old = read_json(record_path)
                if not isinstance(old, dict) or old.get("format") != FORMAT:
                    raise ValueError("not a run record")
            except (OSError, ValueError) as err:
                raise UserError(f"{record_path} cannot be read ({err}); rerun with --restart "
                                "to start this run over.") from err
        self.previous = old
        self.previous_command = old.get("command") if old else self._previous_command()
        if restart:  # under the lock: a running report's files are never touched
            self.clear(self._discard if self.previous_command == self.command else ())
        changed = _changes(old.get("settings", {}), self.settings) if old else []
        unsafe = [c for c in changed if c.split(" ", 1)[0] not in extendable]
        finished = old is not None and old.get("status") == "finished"
        if finished and old.get("command") == self.command and changed and not unsafe:
            finished = False  # a finished run continued with safe changes (e.g. more epochs)
        if old is not None and not finished:
            if old.get("command") != self.command:
                raise UserError(f"{self.path} holds an unfinished '{old.get('command')}' run; "
                                "choose another --out, or pass --restart to discard it.")
            if unsafe:
                raise UserError(f"{self.path} holds an unfinished '{self.command}' run with other "
                                f"settings ({'; '.join(unsafe)}); rerun with its settings to "
                                "resume it, pass --restart to discard it, or choose another "
                                "--out.")
            self._record = old
            self._record["history"] = old.get("history", []) + (
                [{"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changed}]
                if changed else [])
            self._record["settings"] = self.settings
            self.resumed = True
        else:
            self._record = {"format": FORMAT, "command": self.command,
                            "settings": self.settings, "inputs": {}, "history": [],
                            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            remove(self.path / PARTIAL, self.path)
        self._record.update(status="running", settings_hash=settings_hash(self.settings))
        if self.resumed:
            self._save_record()

    def _save_record(self) -> None:
        if self.writes:
            write_json(self.path / RUN_FILE, self._record)
            self._saved = True

    def _previous_command(self) -> str | None:
        """The command of the record in the folder; a damaged record counts as this
        command's (``--restart`` then clears what it left), another tool's as none."""
        record = self.path / RUN_FILE
        if not record.is_file() or record.is_symlink():
            return None
        try:
            old = read_json(record)
        except (OSError, ValueError):
            return self.command
        if not isinstance(old, dict):
            return self.command
        return old.get("command") if str(old.get("format", "")).startswith(RUN_FORMAT) else None

    def clear(self, discard: Iterable[str] = ()) -> None:
        """Forget the run's state (``--restart``): partial units, the ``discard`` files and
        folders of this command's run, then ``run.json`` (last: it marks what may go)."""
        if self.path is None:
            return
        for name in (PARTIAL, *discard, RUN_FILE):
            remove(self.path / name, self.path)

    def check_inputs(self, **fingerprints: str) -> None:
        """Record input fingerprints (model weights, tokenizer, task...); on a resumed run
        refuse inputs that differ from the ones its partial results were computed on."""
        recorded = self._record.setdefault("inputs", {})
        changed = [k for k, v in fingerprints.items() if k in recorded and recorded[k] != v]
        if changed:
            raise UserError(f"the {' and '.join(changed)} of this run changed since {self.path} "
                            "was started (its partial results were computed on other inputs); "
                            "pass --restart to start over, or choose another --out.")
        recorded.update(fingerprints)
        self._save_record()

    # ------------------------------------------------------------ units
    def _unit_paths(self, name: str) -> tuple[Path, Path]:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        base = self.path / PARTIAL / safe
        return base.with_suffix(".json"), base.with_suffix(".safetensors")

    def save_unit(self, name: str, data, tensors: Mapping | None = None) -> None:
        """Keep one finished unit of work (JSON ``data`` and optional named tensors)."""
        if not self.writes:
            return
        self._touch()
        meta, blob = self._unit_paths(name)
        if tensors:
            from safetensors.torch import save

            atomic_write_bytes(blob, save({k: v.contiguous() for k, v in tensors.items()}))
        write_json(meta, {"unit": name, "settings_hash": self._record["settings_hash"],
                          "tensors": bool(tensors), "data": data})

    def load_unit(self, name: str):
        """``(data, tensors)`` of a unit saved by this run, or None (missing or unreadable:
        an unreadable unit is removed and recomputed)."""
        if self.path is None or not self.resumed:
            return None
        meta, blob = self._unit_paths(name)
        if not meta.is_file():
            return None
        try:
            saved = read_json(meta)
            if saved.get("unit") != name:
                raise ValueError("unit name mismatch")
            tensors = {}
            if saved.get("tensors"):
                from safetensors.torch import load

                tensors = load(blob.read_bytes())
            return saved["data"], tensors
        except Exception as err:  # a corrupted unit is recomputed, never trusted
            print(f"note: discarding unreadable partial result {meta.name} ({type(err).__name__}"
                  "); it is computed again.")
            if self.writes:
                remove(meta, self.path)
                remove(blob, self.path)
            return None

    def store(self, prefix: str) -> UnitStore:
        """The engine's (batch, condition) units, kept as units ``prefix-<key>``."""
        return UnitStore(self, prefix)

    # ------------------------------------------------------------ outputs
    def _touch(self) -> None:
        """Before the first output: record the run, so the folder says what it holds."""
        if self.writes and not self._saved:
            self._save_record()

    def workspace(self) -> Path | None:
        """The folder, for commands that keep their own state files there (checkpoints);
        None when nothing is written."""
        self._touch()
        return self.path if self.writes else None

    def file(self, name: str) -> Path | None:
        """The path of an output file (None when nothing is written)."""
        self._touch()
        return self.path / name if self.writes else None

    def write_json(self, name: str, obj) -> None:
        if self.writes:
            write_json(self.file(name), obj)

    def write_csv(self, name: str, rows: list[dict]) -> None:
        if self.writes:
            write_csv(self.file(name), rows)

    def finish(self, results: dict) -> dict:
        """Write ``results.json`` (atomically), mark the run finished, drop partial units."""
        results.update({k: v for k, v in self.annotations.items() if v})
        if self.writes:
            write_json(self.path / "results.json", results)
            self._record.update(status="finished", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
            self._save_record()
            remove(self.path / PARTIAL, self.path)
        return results

    def close(self) -> None:
        """Release the lock; a run that wrote nothing leaves no trace (not even its folder,
        when this run made it)."""
        if self._lock is None:
            return
        if not self._saved:
            remove(self.path / LOCK_FILE, self.path, made_here=True)
            if self._made and not any(self.path.iterdir()):
                remove(self.path, self.path.parent, made_here=True)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _pack(obj, path: str, tensors: dict):
    """JSON data of nested dicts / lists, their tensors and arrays moved to ``tensors``."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu()
        return {"__tensor__": path}
    if isinstance(obj, np.ndarray):
        tensors[path] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__array__": path}
    if isinstance(obj, dict):
        return {k: _pack(v, f"{path}.{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_pack(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    return obj.item() if hasattr(obj, "item") else obj


def _unpack(data, tensors: Mapping):
    if isinstance(data, dict):
        if "__tensor__" in data:
            return tensors[data["__tensor__"]]
        if "__array__" in data:
            return tensors[data["__array__"]].numpy()
        return {k: _unpack(v, tensors) for k, v in data.items()}
    if isinstance(data, list):
        return [_unpack(v, tensors) for v in data]
    return data


class UnitStore:
    """A mapping view of a run's units (``get`` / ``store[key] = unit``) for the engine:
    units are nested dicts and lists of tensors, arrays and JSON values."""

    def __init__(self, run: RunDir, prefix: str) -> None:
        self.run, self.prefix = run, prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}-{key}".replace(".", "_")

    def get(self, key: str):
        saved = self.run.load_unit(self._name(key))
        return None if saved is None else _unpack(*saved)

    def __setitem__(self, key: str, unit) -> None:
        tensors: dict = {}
        data = _pack(unit, "u", tensors)
        self.run.save_unit(self._name(key), data, tensors or None)
