"""Typed settings: one dataclass per command declares its options once.

A field made with ``option(default, help=..., min=..., choices=...)`` is at once an
``argparse`` option (``--max-operand`` for ``max_operand``, typed by its annotation such as
``list[int] | None``), a key of a report config's ``settings`` table (``from_dict``) and a
checked value: ranges and choices are verified when the object is made, ``validate()`` adds
checks between fields. Every failure is a ``UserError`` naming the option, so the CLI, the
report config and the Python API refuse a mistake with the same sentence, before any heavy
work. Fields with ``identity=False`` (batch sizes, progress bars, ``--restart``) do not count
as a change of the run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from llm_fourier.errors import UserError

_META = "llm_fourier"
SEED_MAX = 2**32 - 1  # what numpy, torch and Python's random all take


def option(default: Any = dataclasses.MISSING, *, help: str, min: float | None = None,
           max: float | None = None, above: float | None = None,
           choices: typing.Sequence | None = None, positional: bool = False,
           identity: bool = True, metavar: str | None = None,
           flag: str | None = None, empty: bool = False) -> Any:
    """A settings field: ``min``/``max`` inclusive bounds, ``above`` an exclusive lower bound
    (``above=0`` for learning rates and fractions), ``choices`` the allowed values (of each
    element for lists), ``identity=False`` for options that do not change results,
    ``empty=True`` for list options that may be given without values (none)."""
    meta = {_META: {"help": help, "min": min, "max": max, "above": above,
                    "choices": tuple(choices) if choices is not None else None,
                    "positional": positional, "identity": identity, "metavar": metavar,
                    "flag": flag, "empty": empty}}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda d=default: list(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def seed_option(default: Any = 0, *, help: str, **kw) -> Any:
    """A seed option: an integer in 0..2**32-1 (a negative seed is refused, not mapped)."""
    return option(default, help=help, min=0, max=SEED_MAX, **kw)


def _kind(annotation) -> tuple[type, bool, bool]:
    """(element type, is a list, may be None) of an annotation such as ``list[int] | None``."""
    optional = False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        optional = type(None) in args
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True, optional
    return annotation, False, optional


def _flag(name: str, meta: dict) -> str:
    return meta["flag"] or "--" + name.replace("_", "-")


@dataclasses.dataclass(kw_only=True)
class Settings:
    """Base of every command's settings (see the module docstring). Each class may define
    ``validate`` (checks between its fields) and ``model_defaults`` (fill options left at None
    whose default depends on the model): every class's runs, base first, no ``super()``."""

    command: ClassVar[str] = "command"

    def __post_init__(self) -> None:
        self.chosen: dict[str, dict] = {}  # defaults chosen from the model (not options)
        for f in dataclasses.fields(self):
            self._check_field(f)
        self._each_class("validate")

    def _each_class(self, hook: str) -> None:
        """Run ``hook`` of every class of the MRO that defines one, base first."""
        for klass in reversed(type(self).__mro__):
            if hook in klass.__dict__:
                klass.__dict__[hook](self)

    def fill_defaults(self) -> dict[str, dict]:
        """Run every group's ``model_defaults`` once (``Command.execute`` calls it before the
        run folder opens, so the chosen values are part of the run's identity)."""
        if not getattr(self, "_filled", False):
            self._each_class("model_defaults")
            self._filled = True
        return self.chosen

    def defaults_tokenizer(self):
        """The tokenizer model-dependent defaults are read from (None: no model)."""
        return None

    def choose(self, name: str, value, why: str, apply: bool = True) -> None:
        """Set option ``name`` (left unset) to ``value`` and record why: printed now, and
        written to results.json under ``defaults`` (``apply=False``: only recorded)."""
        if apply:
            setattr(self, name, value)
        self.chosen[name] = {"value": value, "why": why}
        print(f"{self.command}: {self._label(name)} {_show(value)} (default for this model: "
              f"{why})")

    def fail(self, name: str, problem: str) -> UserError:
        """A ``UserError`` about option ``name``, e.g. ``fail("tau", "must be ...")``."""
        return UserError(f"{self.command}: {self._label(name)} {problem}.")

    @contextlib.contextmanager
    def named_errors(self) -> Iterator[None]:
        """A ``UserError`` raised inside, prefixed with the command's name."""
        try:
            yield
        except UserError as e:
            raise UserError(f"{self.command}: {e}") from None

    @classmethod
    def _label(cls, name: str) -> str:
        """How errors name option ``name``: its flag, or its name if positional."""
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        meta = field.metadata.get(_META, {"positional": False, "flag": None})
        return name if meta["positional"] else _flag(name, meta)

    def _check_field(self, f: dataclasses.Field) -> None:
        meta = f.metadata.get(_META)
        if meta is None:
            return
        value = getattr(self, f.name)
        elem, many, optional = _kind(typing.get_type_hints(type(self))[f.name])
        if value is None:
            if not optional:
                raise self.fail(f.name, "is required" if f.default is dataclasses.MISSING
                                else "needs a value")
            return
        values = value if many else [value]
        if many and not isinstance(value, (list, tuple)):
            raise self.fail(f.name, f"must be a list, got {value!r}")
        if many and not values and not meta["empty"]:
            raise self.fail(f.name, "needs at least one value")
        for v in values:
            if elem is bool and not isinstance(v, bool):
                raise self.fail(f.name, f"must be true or false, got {v!r}")
            if elem in (int, float) and (isinstance(v, bool) or not isinstance(v, (int, float))
                                        or (elem is int and not float(v).is_integer())):
                raise self.fail(f.name, f"must be a{'n integer' if elem is int else ' number'}, "
                                f"got {v!r}")
            if elem is float and not math.isfinite(v):
                raise self.fail(f.name, f"must be a finite number, got {v!r}")
            if elem is str and not isinstance(v, str):
                raise self.fail(f.name, f"must be text, got {v!r}")
            if meta["choices"] is not None and v not in meta["choices"]:
                raise self.fail(f.name, f"must be one of {', '.join(map(str, meta['choices']))}, "
                                f"got {v!r}")
            if meta["min"] is not None and v < meta["min"]:
                raise self.fail(f.name, f"must be at least {_num(meta['min'])}, got {v!r}")
            if meta["max"] is not None and v > meta["max"]:
                raise self.fail(f.name, f"must be at most {_num(meta['max'])}, got {v!r}")
            if meta["above"] is not None and not v > meta["above"]:
                raise self.fail(f.name, f"must be above {_num(meta['above'])}, got {v!r}")

    def identity(self) -> dict:
        """The settings that change a run's results (what resume compares)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get(_META, {}).get("identity", True)}

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if _META in f.metadata]

    @classmethod
    def is_list(cls, name: str) -> bool:
        return _kind(typing.get_type_hints(cls)[name])[1]

    @classmethod
    def convert(cls, values: Mapping, source: str = "") -> dict:
        """``values`` keyed by field name (dashes become underscores), numbers written as text
        converted to the option's type; an unknown key is a ``UserError`` naming it."""
        known = cls.option_names()
        hints = typing.get_type_hints(cls)
        where = f"{source}: " if source else ""
        out = {}
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise UserError(f"{where}{cls.command} has no setting {key!r} (known: "
                                f"{', '.join(sorted(known))}).")
            out[name] = _convert(hints[name], value, f"{where}{cls.command}: {name}")
        return out

    @classmethod
    def from_dict(cls, values: Mapping, source: str = "") -> Settings:
        """Settings from a mapping (a report config's table, Python keyword arguments)."""
        values = cls.convert(values, source)
        for f in dataclasses.fields(cls):
            if f.name not in values and _required(f):
                raise UserError(f"{cls.command}: {cls._label(f.name)} is required.")
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser,
                      defaults: Mapping | None = None) -> None:
        """One argparse option per field; ``defaults`` override the dataclass defaults
        shown by the CLI (e.g. ``out``)."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata.get(_META)
            if meta is None:
                continue
            elem, many, _ = _kind(hints[f.name])
            default = (defaults or {}).get(f.name, _default(f))
            kw: dict[str, Any] = {"help": meta["help"] + (
                f" (default: {_show(default)})" if default not in (None, False, [])
                and elem is not bool else "")}
            if meta["metavar"] and not meta["positional"]:
                kw["metavar"] = meta["metavar"]
            if elem is bool and not many:
                kw["action"] = argparse.BooleanOptionalAction if default else "store_true"
            else:
                kw["type"] = elem
                kw["choices"] = meta["choices"]
                if many:
                    kw["nargs"] = "*" if meta["empty"] else "+"
            if meta["positional"]:
                if not _required(f):
                    kw["nargs"] = "?"
                parser.add_argument(f.name, default=default, **kw)
            else:
                parser.add_argument(_flag(f.name, meta), dest=f.name, default=default,
                                    required=_required(f), **kw)

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> Settings:
        return cls(**{n: getattr(namespace, n) for n in cls.option_names()
                      if hasattr(namespace, n)})


def _num(bound: float) -> str:
    """A bound as written: ``4294967295``, not ``4.29497e+09``."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _convert(annotation, value, label: str):
    """Numbers written as text in a config ("1e-3") to the option's type; lists element-wise.
    Anything else is left for the field checks to refuse with their sentence."""
    elem, many, _ = _kind(annotation)

    def one(v):
        if isinstance(v, str) and elem in (int, float):
            try:
                return elem(v)
            except ValueError:
                raise UserError(f"{label} must be a number, got {v!r}.") from None
        if elem is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        return v

    if many and value is not None:  # a single value for a list option becomes a list
        return [one(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return one(value)
