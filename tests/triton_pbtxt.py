"""A reader for the protobuf text format subset Triton's ``config.pbtxt`` uses, so tests can check what
chs.export.triton writes without Triton's own protobuf classes."""

from __future__ import annotations

import json
import re

from chs.runtime.errors import ChsError

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))')


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ChsError(f"pbtxt: cannot read {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group(1) is None:
            out.append(next(g for g in m.groups()[1:] if g is not None))
    return out


def _scalar(tok: str) -> object:
    if tok.startswith('"'):
        return json.loads(tok)
    for cast in (int, float):
        try:
            return cast(tok)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(tok, tok)  # enums (TYPE_FP32, KIND_GPU) stay strings


def parse_pbtxt_minimal(text: str) -> dict:
    """Parse the protobuf text format subset Triton configs use: ``key: value``, ``key { ... }``,
    ``key [ v, ... ]`` and ``key [ { ... }, ... ]``. Repeated keys collect into lists."""
    toks = _tokens(text)
    pos = 0

    def value() -> object:
        nonlocal pos
        tok = toks[pos]
        if tok == "{":
            pos += 1
            return message("}")
        if tok == "[":
            pos += 1
            items = []
            while toks[pos] != "]":
                items.append(value())
                if toks[pos] == ",":
                    pos += 1
            pos += 1
            return items
        pos += 1
        return _scalar(tok)

    def message(end: str | None) -> dict:
        nonlocal pos
        msg: dict = {}
        while pos < len(toks) and toks[pos] != end:
            key = toks[pos]
            pos += 1
            if pos < len(toks) and toks[pos] == ":":
                pos += 1
            if pos >= len(toks):
                raise ChsError(f"pbtxt: '{key}' has no value")
            v = value()
            if key in msg:
                prev = msg[key]
                msg[key] = (prev if isinstance(prev, list) else [prev]) + (v if isinstance(v, list) else [v])
            else:
                msg[key] = v
            if pos < len(toks) and toks[pos] in (",", ";"):
                pos += 1
        if end is not None:
            if pos >= len(toks):
                raise ChsError(f"pbtxt: missing '{end}'")
            pos += 1
        return msg

    try:
        return message(None)
    except IndexError:
        raise ChsError("pbtxt: unexpected end of text") from None
