"""Parsers for untrusted input, shared by every route: JSON with bounded nesting, and whole numbers.

Every JSON document the service reads from a request or a signed report goes through `parse_json`,
so one hostile body (60 KB of `[[[[`) cannot reach the decoder's recursion limit anywhere.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_JSON_DEPTH = 20  # xboot's own documents nest 3 deep; reports a few more
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_ASCII_DIGITS = re.compile(r"[0-9]{1,9}")


def json_depth(data: bytes) -> int:
    """The deepest nesting of arrays and objects in `data`, counting brackets outside strings."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(data: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """UTF-8 JSON (a BOM is allowed); ValueError if it is not JSON or nests deeper than `max_depth`."""
    text = data.decode("utf-8-sig")  # UnicodeDecodeError is a ValueError
    # Fewer brackets than the bound cannot nest past it: the common case skips the string scan.
    if len(data.translate(None, _NOT_BRACKET)) > max_depth and json_depth(data) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:  # cannot happen below the depth bound; kept so no parse can ever escape as a 500
        raise ValueError("JSON nested too deeply") from None


def whole_number(text: str) -> int | None:
    """ASCII digits only (`²` and `٣` are digits to str.isdigit), at most 9 of them; None otherwise."""
    return int(text) if _ASCII_DIGITS.fullmatch(text) else None
