"""Option fields: a dataclass field that carries its help text, so the options' dataclass is their one home
(name, type, default, help) and a command line can be derived from it (``chs.options_cli``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any

from chs.runtime.errors import ChsError


def option(default: Any = MISSING, help: str = "", *, flag: str | None = None,
           parse: Callable[[str], Any] | None = None, show: Callable[[Any], str] | None = None) -> Any:
    """A field on the command line, with ``help``. ``flag``: its spelling there (e.g. ``--json``, or ``--fp16``
    for an on-only switch); ``parse``/``show``: typed there as text. Plain fields stay library-only."""
    meta = {"help": help, "flag": flag, "parse": parse, "show": show}
    return field(default=default, metadata=meta)


def finite_number(value: Any, name: str) -> float:
    """``value`` as a float, for settings checked when made: a string, bool, NaN or infinity would otherwise pass a
    ``< 0`` check (or raise TypeError) and fail later, far from the cause."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ChsError(f"{name} must be a finite number, got {value!r:.40}")
    return float(value)


def whole_number(value: Any, name: str, low: int) -> int:
    """``value`` as an int >= ``low`` (ints and numpy integers; not bools, floats or strings)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ChsError(f"{name} must be a whole number, got {value!r:.40}")
    if value < low:
        raise ChsError(f"{name} must be >= {low}, got {value}")
    return int(value)


def comma_list(text: str, flag: str) -> list[str]:
    """``a,b,c`` typed for ``flag``: its items, stripped, once each, in order; empty items are refused."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ChsError(f"{flag} must be a comma list, got '{text}'")
    return list(dict.fromkeys(items))
