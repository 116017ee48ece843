"""Option defaults for the typer commands, read from the library's option dataclasses (their one home)."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any


def default(options: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``options``."""
    for f in fields(options):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise KeyError(f"{options.__name__}.{name} has no default")
    raise KeyError(f"{options.__name__} has no field {name}")
