"""Interrupting a command's engine pass after its first units, to test resume."""

from __future__ import annotations


def is_layout(key: str) -> bool:
    """The engine's record of how a pass batched its prompts, not a unit of work."""
    return key.startswith("layout/")


class Stopping:
    """A store that keeps ``after`` units and then raises KeyboardInterrupt (a kill)."""

    def __init__(self, store, after: int = 1) -> None:
        self.store, self.left = store, after

    def get(self, key: str):
        return self.store.get(key)

    def __setitem__(self, key: str, unit) -> None:
        self.store[key] = unit
        if is_layout(key):
            return
        self.left -= 1
        if self.left <= 0:
            raise KeyboardInterrupt


def interrupted(real, after: int = 1):
    """``real`` (an analysis taking ``store=``) killed after ``after`` stored units."""
    def run(*args, store, **kwargs):
        return real(*args, store=Stopping(store, after), **kwargs)

    return run


class Counting:
    """A store that records the keys of the units it is given."""

    def __init__(self, store, seen: list) -> None:
        self.store, self.seen = store, seen

    def get(self, key: str):
        return self.store.get(key)

    def __setitem__(self, key: str, unit) -> None:
        if not is_layout(key):
            self.seen.append(key)
        self.store[key] = unit


def counting(real, seen: list):
    """``real`` (an analysis taking ``store=``) whose new units' keys go to ``seen``."""
    def run(*args, store, **kwargs):
        return real(*args, store=Counting(store, seen), **kwargs)

    return run
