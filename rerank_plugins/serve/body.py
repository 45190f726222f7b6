"""Request bodies, read off the event loop and bounded before pydantic sees them.

Every JSON route of the server uses :class:`JsonRoute`. Its request's ``json()`` runs in a
worker thread: an incremental pass (``ijson``) counts the values and the items of the
document lists, and stops at the first one over its cap (a body of millions of empty
documents is refused after a thousand of them, and ``/health`` stays responsive); then the
body is parsed strictly (no ``NaN``/``Infinity``, no lone surrogates). A body without a
JSON ``Content-Type`` is refused with a hint.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.serve.batcher import RequestTooLargeError

__all__ = ["LIST_FIELDS", "VALUES_PER_DOCUMENT", "JsonRoute", "parse_body"]

LIST_FIELDS = ("documents", "texts", "text_1", "text_2")
"""The request fields that hold one item per document (in every dialect)."""
VALUES_PER_DOCUMENT = 100
"""JSON values a body may hold per allowed document (metadata of object documents)."""
_MIN_VALUES = 100_000
_VALUE_EVENTS = frozenset({"string", "number", "boolean", "null", "start_map", "start_array"})
_ITEM_PREFIXES = {f"{field}.item": field for field in LIST_FIELDS}
_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]*\+)?json\s*(;|$)", re.IGNORECASE)


def parse_body(raw: bytes, *, max_documents: int) -> Any:
    """The parsed body, after checking it holds at most ``max_documents`` items in each
    document list and ``VALUES_PER_DOCUMENT`` values per document in all.

    Raises :class:`RequestTooLargeError` (413) over a cap, :class:`InvalidInputError`
    (422) for a body that is not strict JSON.
    """
    _check_counts(raw, max_documents=max_documents)
    try:
        parsed = json.loads(raw, parse_constant=_refuse_constant)
    except InvalidInputError:
        raise
    except RecursionError:
        raise InvalidInputError("the body nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the body is not valid JSON: {_short(exc)}") from None
    where = _surrogate_at(parsed)
    if where is not None:
        raise InvalidInputError(
            f"the body holds a lone surrogate at {where}: not valid Unicode text"
        )
    return parsed


def _check_counts(raw: bytes, *, max_documents: int) -> None:
    import ijson

    max_values = max(_MIN_VALUES, VALUES_PER_DOCUMENT * max_documents)
    values = 0
    items = dict.fromkeys(LIST_FIELDS, 0)
    try:
        for prefix, event, _ in ijson.parse(io.BytesIO(raw)):
            if event not in _VALUE_EVENTS:
                continue
            values += 1
            if values > max_values:
                raise RequestTooLargeError(
                    f"the body holds more than {max_values} JSON values "
                    f"({VALUES_PER_DOCUMENT} per allowed document)"
                )
            field = _ITEM_PREFIXES.get(prefix)
            if field is not None:
                items[field] += 1
                if items[field] > max_documents:
                    raise RequestTooLargeError(
                        f"{field} holds more than {max_documents} documents "
                        f"(maximum allowed batch size {max_documents})"
                    )
    except ijson.JSONError:
        # Not JSON ijson reads (NaN, ...): the strict parse below says why. It stops at
        # the same place, so it never reads more than was counted.
        return


def _refuse_constant(name: str) -> Any:
    raise InvalidInputError(f"the body holds {name}: NaN and Infinity are not JSON numbers")


def _surrogate_at(value: Any, path: str = "body") -> str | None:
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return where
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, f"{where} (a key)"))
                stack.append((child, f"{where}.{_name(key)}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


def _name(key: str) -> str:
    return key if key.isidentifier() and key.isascii() else "?"


def _short(exc: Exception) -> str:
    # json's and the codec's messages name a position, never the text.
    return str(exc)[:200]


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            served = self.app.state.service
            self._json = await asyncio.to_thread(
                parse_body, raw, max_documents=served.max_client_batch_size
            )
        return self._json


class JsonRoute(APIRoute):
    """An API route whose JSON body is read by :func:`parse_body`, off the event loop."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            if not _JSON_TYPE.match(request.headers.get("content-type", "")):
                raise InvalidInputError(
                    "the body must be JSON: send the header Content-Type: application/json"
                )
            strict = _JsonRequest(request.scope, request.receive)
            # Parsed here, where our errors reach their handlers (FastAPI turns any error
            # of its own body parsing into a bare 400); the handler gets the cached body.
            await strict.json()
            return await handler(strict)

        return route
