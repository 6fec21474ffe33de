"""Where the toolkit may write and delete: every path stays inside its run folder.

A run folder is the outermost folder holding ``run.json`` or ``MARK``; it may itself be a
link (``--out`` is the user's choice), but a link planted below it is never written or
deleted through. Refusals are ``UnsafePath`` (a ``UserError``: one sentence).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

from llm_fourier.errors import UserError

RUN_FILE = "run.json"
RUN_FORMAT = "llm-fourier-run/"  # prefix of run.json's "format"
MARK = ".llm-fourier"  # a folder the toolkit made and may delete
MAX_COMPONENT = 100
SAFE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+\-]*")
UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_.+\-]")


class UnsafePath(UserError):
    """A link planted in a run folder, or a delete outside it: the whole run stops."""


def path_component(name: str) -> str:
    """Any string (a model, task or job name from a config) as one safe file name: letters,
    digits, ``_ . + -``, not starting with ``.`` or ``-``, at most 100 characters. A safe
    name is kept; any other gets its unsafe characters replaced and a hash of the whole name
    appended, so distinct names stay distinct ids."""
    name = str(name)
    if SAFE.fullmatch(name) and len(name) <= MAX_COMPONENT:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    body = UNSAFE_CHAR.sub("_", name)[:MAX_COMPONENT - 9]
    body = re.sub(r"^[.\-]", "_", body) or "_"
    return f"{body}-{digest}"


def _lexical(path: str | Path) -> Path:
    return Path(os.path.normpath(os.path.abspath(path)))


def _is_run_folder(folder: Path) -> bool:
    """``folder`` holds ``MARK`` or a plain ``run.json`` that is not the JSON of another tool
    (a damaged record of ours still counts, so ``--restart`` can clear it)."""
    with contextlib.suppress(OSError):
        if stat.S_ISREG(os.lstat(folder / MARK).st_mode):
            return True
    record = folder / RUN_FILE
    try:
        info = os.lstat(record)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_size > 2**24:
        return False
    try:
        data = json.loads(record.read_bytes())
    except (OSError, ValueError):
        return True
    return not isinstance(data, dict) or str(data.get("format", "")).startswith(RUN_FORMAT)


def _link_below_run(path: Path) -> Path | None:
    """The first symbolic link among ``path``'s folders below its outermost run folder."""
    folders = [path.parent, *path.parent.parents]
    runs = [i for i, f in enumerate(folders) if _is_run_folder(f)]
    return next((f for f in folders[:runs[-1]] if f.is_symlink()), None) if runs else None


def check_no_links(path: str | Path) -> None:
    """Refuse to write ``path`` through a link planted inside a run folder."""
    link = _link_below_run(_lexical(path))
    if link is not None:
        raise UnsafePath(f"{link} is a symbolic link inside a run folder; remove it (the "
                         "toolkit never writes through links) and run again.")


def open_private(path: str | Path, mode: str = "a+"):
    """Open a lock (``"a+"``) or log (``"a"``) file for appending, never through a link
    (``O_NOFOLLOW``), refusing anything but a plain file with a single name."""
    path = Path(path)
    check_no_links(path)
    flags = os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
    flags |= os.O_RDWR if "+" in mode else os.O_WRONLY
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if path.is_symlink():
            raise UnsafePath(f"{path} is a symbolic link; remove it (the toolkit never writes "
                             "through links) and run again.") from None
        raise UserError(f"cannot open {path} ({err.strerror or err}); check the folder's "
                        "permissions.") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise UnsafePath(f"{path} is not a plain file of this run folder (a "
                         f"{'hard link' if stat.S_ISREG(info.st_mode) else 'special file'}); "
                         "remove it and run again.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode)


def make_own_dir(path: str | Path) -> Path:
    """Make a folder (and parents); one this call creates is marked as the toolkit's (``MARK``),
    so ``remove`` may delete it later. A folder that exists is left as it is."""
    path = Path(path)
    check_no_links(path / MARK)
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        open_private(path / MARK, "a").close()
    return path


def remove(target: str | Path, root: str | Path, *, made_here: bool = False) -> bool:
    """The toolkit's one delete: the file or folder ``target`` inside the run folder ``root``
    (no ``..``, no link on the way; a link as target is removed, never followed), and only
    what the toolkit wrote: ``root``, a folder on the way (or up to 3 above ``root``) holds
    ``run.json`` of a run or ``MARK`` (``make_own_dir``), or the caller made the target in
    this process (``made_here``). False when there was nothing to delete."""
    root, target = _lexical(root), _lexical(target)
    rel = target.relative_to(root) if target.is_relative_to(root) else None
    if rel is None or not rel.parts or ".." in rel.parts:
        raise UnsafePath(f"refusing to delete {target}: it is not inside the run folder {root}; "
                         "this is a bug, please report it.")
    if not os.path.lexists(target):
        return False
    way = [root / Path(*rel.parts[:i]) for i in range(1, len(rel.parts))]
    link = next((f for f in way if f.is_symlink()), None)
    if link is not None:
        raise UnsafePath(f"{link} is a symbolic link inside the run folder {root}; remove it "
                         "(the toolkit never deletes through links) and run again.")
    is_link = target.is_symlink()
    own = made_here or is_link or any(
        _is_run_folder(f) for f in [*root.parents[:3][::-1], root, *way]) \
        or (target.is_dir() and _is_run_folder(target))
    if not own:
        raise UnsafePath(f"refusing to delete {target}: llm-fourier did not write it (no run "
                         f"record in {root}); move it away or choose another --out.")
    if target.is_dir() and not is_link:
        shutil.rmtree(target)
    else:
        target.unlink()
    return True
