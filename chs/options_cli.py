"""Typer commands derived from option dataclasses (fields made with ``chs.runtime.options.option``): each
option's name, type, default and help are declared once, on the field; the command only adds what is not
the library's (a positional argument's role, a CLI-only switch)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

KW = inspect.Parameter.KEYWORD_ONLY


def _parameter(f: dataclasses.Field, hint: Any, argument: bool) -> inspect.Parameter:
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else inspect.Parameter.empty
    if meta.get("parse"):
        hint = str if default is inspect.Parameter.empty or default is not None else str | None
        if default not in (inspect.Parameter.empty, None):
            default = (meta.get("show") or str)(default)
    decls = (meta["flag"],) if meta.get("flag") else ()
    info = typer.Argument(help=meta.get("help")) if argument else typer.Option(*decls, help=meta.get("help"))
    return inspect.Parameter(f.name, KW, default=default, annotation=Annotated[hint, info])


def template_parameters(*templates: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters of template functions: options declared once, shared by several commands."""
    return [p.replace(kind=KW) for t in templates for p in inspect.signature(t, eval_str=True).parameters.values()]


def with_options(*templates: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Append the templates' options to a command's own; typer passes them in its ``**opts``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
        fn.__signature__ = inspect.Signature([p.replace(kind=KW) for p in own] + template_parameters(*templates))
        return fn

    return decorate


def options_command(cls: type, *, arguments: tuple[str, ...] = (),
                    extra: Callable[..., Any] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``fn(opts, **rest)`` as a typer command whose options are ``cls``'s CLI fields (``arguments`` among them
    positional) followed by the parameters of ``extra``'s signature, which arrive in ``rest``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if "help" in f.metadata]
    own = [_parameter(f, hints[f.name], f.name in arguments) for f in fields]
    more = template_parameters(extra) if extra else []
    parsers = {f.name: f.metadata["parse"] for f in fields if f.metadata.get("parse")}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**values: Any) -> Any:
            given = {f.name: values.pop(f.name) for f in fields}
            for name, parse in parsers.items():
                if given[name] is not None:
                    given[name] = parse(given[name])
            return fn(cls(**given), **values)

        command.__signature__ = inspect.Signature(own + more)  # type: ignore[attr-defined]
        command.__annotations__ = {}
        return command

    return decorate
