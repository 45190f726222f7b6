"""Reading JSON Lines that may be hostile: bounded lines, one bad row never stops the file.

:func:`lines` streams a file's non-blank lines with their 1-based numbers and never holds
more than ``max_line_bytes`` of one line in memory (a longer line is skipped in blocks and
reported); :func:`parse_object` turns one line into a JSON object or the reason it is not
one (invalid JSON, a 5,000-digit number, nesting past the parser's limit, ``NaN`` or
``Infinity`` (not JSON), a lone surrogate anywhere, not an object).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MAX_LINE_BYTES", "lines", "parse_object"]

DEFAULT_MAX_LINE_BYTES = 64 * 2**20
"""The longest line read (64 MiB): a longer one is an error row, never loaded whole."""

_BLOCK = 2**20


def lines(
    path: Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes | None]]:
    """``(number, line)`` for each non-blank line; ``line`` is ``None`` for a line longer
    than ``max_line_bytes`` (its bytes are skipped, not kept)."""
    if max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
    with path.open("rb") as f:
        number = 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                    raw = f.readline(_BLOCK)
                yield number, None
            elif raw.strip():
                yield number, raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_object(raw: bytes, number: int) -> tuple[dict[str, Any] | None, str | None]:
    """``(object, None)`` or ``(None, reason)`` for line ``number``."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        return None, f"line {number} nests deeper than the JSON parser's limit"
    except UnicodeDecodeError as exc:
        return None, f"line {number} is not UTF-8 text: {exc}"
    except ValueError as exc:  # JSONDecodeError, over-long integers, NaN/Infinity
        return None, f"line {number} is not valid JSON: {_short(str(exc))}"
    if not isinstance(value, dict):
        return None, f"line {number} is a JSON {type(value).__name__}, not an object"
    try:  # lone surrogates (\ud800) decode to str but cannot be written back as UTF-8
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None, f"line {number} holds a lone surrogate (\\ud800-\\udfff): not valid Unicode"
    except RecursionError:
        return None, f"line {number} nests deeper than the JSON parser's limit"
    return value, None


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."
