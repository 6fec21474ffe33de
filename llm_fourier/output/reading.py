"""Reading files a user hands the toolkit: text (whole, or line by line for a corpus of any
size), JSON, TOML and YAML, as data only.

Every problem is one sentence naming the file (``UserError``): bytes that are not UTF-8 (with
the byte offset), syntax errors (the parser's line and column), nesting too deep, YAML
aliases that would expand past ``MAX_NODES`` values (a config is data, never a program: a
"billion laughs" file is refused before it is expanded) or that refer to themselves, and
keys that are not strings. YAML is read with ``yaml.safe_load``'s loader (no Python tags).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

from llm_fourier.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MAX_NODES = 100_000  # values in a structured file once its YAML aliases are expanded
MAX_BYTES = 64 * 2**20  # a user's text file read whole


def _unreadable(path: Path, what: str, err: OSError) -> UserError:
    return UserError(f"cannot read {what} {path} ({err.strerror or err}); check the path and "
                     "its permissions.")


def _not_utf8(path: Path, what: str, offset: int, byte: bytes) -> UserError:
    return UserError(f"{what} {path} is not UTF-8 text (byte {offset}: {byte!r}); save it "
                     "as UTF-8.")


def read_text(path: str | Path, what: str = "file") -> str:
    """A user's text file as UTF-8 (a leading byte-order mark dropped)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise UserError(f"{what} {path} is larger than {MAX_BYTES // 2**20} MiB; give a "
                            "smaller file.")
        data = path.read_bytes()
    except OSError as err:
        raise _unreadable(path, what, err) from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, what, err.start, data[err.start:err.start + 1]) from None


def read_lines(path: str | Path, what: str = "file") -> Iterator[str]:
    """A user's text file of any size, line by line, read as ``read_text`` reads it (the
    same sentences, the byte offset counted from the start of the file)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            offset = 0
            for raw in f:  # b"\n" is never part of a UTF-8 sequence: lines split cleanly
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _not_utf8(path, what, offset + err.start,
                                    raw[err.start:err.start + 1]) from None
                yield line.removeprefix("\ufeff") if offset == 0 else line
                offset += len(raw)
    except OSError as err:
        raise _unreadable(path, what, err) from None


def _fail(path: Path, what: str, problem: str) -> UserError:
    return UserError(f"{what} {path}: {problem}.")


def check_data(value, path: Path, what: str = "file") -> None:
    """Keys must be strings, nesting bounded; raises one sentence naming the first bad key."""
    seen: set[int] = set()
    stack = [(value, "(top level)", 0)]
    while stack:
        item, at, depth = stack.pop()
        if depth > 100:
            raise _fail(path, what, f"{at} is nested more than 100 levels deep")
        if isinstance(item, (dict, list)):
            if id(item) in seen:
                continue
            seen.add(id(item))
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise _fail(path, what, f"the key {k!r} under {at} is not a string; "
                                "quote it")
                stack.append((v, k if at == "(top level)" else f"{at}.{k}", depth + 1))
        elif isinstance(item, list):
            stack += [(v, f"{at}[{i}]", depth + 1) for i, v in enumerate(item)]


def _yaml_size(node, sizes: dict, visiting: set, path: Path, what: str) -> int:
    """Values under a YAML node with every alias expanded (refused past ``MAX_NODES``)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in visiting:
        raise _fail(path, what, f"the YAML alias at line {node.start_mark.line + 1} refers to "
                    "itself; write the value out")
    visiting.add(key)
    children = node.value if isinstance(node.value, list) else []
    total = 1
    for child in children:
        for part in child if isinstance(child, tuple) else (child,):
            total += _yaml_size(part, sizes, visiting, path, what)
            if total > MAX_NODES:
                raise _fail(path, what, f"its YAML aliases expand to more than {MAX_NODES} "
                            "values; write the values out instead of nesting aliases")
    visiting.discard(key)
    sizes[key] = total
    return total


def parse_yaml(text: str, path: Path, what: str = "file"):
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _yaml_size(node, {}, set(), path, what)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_data(path: str | Path, what: str = "file", kind: str | None = None):
    """A JSON, TOML or YAML file (``kind``, else by suffix: .json, .yaml/.yml, else TOML)
    as plain data with string keys."""
    path = Path(path)
    text = read_text(path, what)
    kind = kind or {".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(
        path.suffix.lower(), "toml")
    try:
        if kind == "json":
            data = json.loads(text, parse_constant=_no_constant)
        elif kind == "yaml":
            data = parse_yaml(text, path, what)
        else:
            data = tomllib.loads(text)
    except UserError:
        raise
    except RecursionError:
        raise _fail(path, what, "it is nested too deeply; flatten it") from None
    except Exception as err:  # the parsers' messages carry line and column
        detail = " ".join(str(err).split())[:200]
        raise _fail(path, what, f"cannot parse the {what.split()[-1]} as {kind.upper()} "
                    f"({detail}); fix the syntax") from None
    check_data(data, path, what)
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def finite_numbers(values, path: str | Path, what: str = "file") -> list[float]:
    """Values as finite floats; null, text and NaN / inf are one sentence naming the first."""
    out = []
    for i, v in enumerate(values):
        try:
            if isinstance(v, bool) or v is None:
                raise TypeError
            x = float(v)
        except (TypeError, ValueError):
            raise _fail(path, what, f"value {i} ({v!r}) is not a number; give a number for "
                        "every entry") from None
        if not math.isfinite(x):
            raise _fail(path, what, f"value {i} is {x}; give a finite number for every entry")
        out.append(x)
    return out
