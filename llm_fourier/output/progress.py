"""Progress bars that one switch silences: ``--quiet`` on every command.

``tqdm`` here is ``tqdm.auto.tqdm`` that starts disabled inside ``quiet()`` (a context
variable, so a report's jobs and nested calls inherit it); every bar of the package is made
through it. ``Command.execute`` enters ``quiet(settings.quiet)``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm as _tqdm

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("llm_fourier_quiet",
                                                              default=False)


@contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Silence every bar made through this module while inside (``on=False``: no change,
    so a quiet report stays quiet in its jobs)."""
    if not on:
        yield
        return
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


class tqdm(_tqdm):  # noqa: N801 (the name every caller knows)
    """``tqdm.auto.tqdm``, disabled inside ``quiet()``."""

    def __init__(self, *args, **kwargs):
        if _QUIET.get():
            kwargs["disable"] = True
        super().__init__(*args, **kwargs)
