"""What a :class:`~rerank_plugins.remote.RemoteScorer` sends, checked once at construction.

:func:`configure` turns the scorer's options into an :class:`Endpoint`: the URL (credentials
moved out of it), the dialect and its request options, headers, auth (a ``SecretStr`` key
behind ``Authorization: Bearer``), timeouts, the response cap and the retry policy. Bad
options raise :class:`~rerank_plugins.errors.InvalidInputError` here, not on the first call.
The secrets it finds (key, URL password and query values, credential headers) are
registered with :mod:`~rerank_plugins.remote.redaction` so that no log record shows them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import SecretStr

from rerank_plugins.errors import InvalidInputError
from rerank_plugins.remote import redaction
from rerank_plugins.remote.dialects import (
    Dialect,
    RequestOptions,
    endpoint_url,
    get_dialect,
    redact,
)
from rerank_plugins.remote.limits import default_response_cap
from rerank_plugins.remote.retry import RetryPolicy
from rerank_plugins.scoring import OverflowPolicy, ScoreKind

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_TIMEOUT",
    "Endpoint",
    "check_instruction",
    "check_positive",
    "check_positive_number",
    "configure",
    "is_loopback",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=300.0)
"""Generous read timeout: a CPU server can take minutes for a batch of long documents.
The pool timeout covers waiting behind the other requests of a large call."""

DEFAULT_DEADLINE = 900.0
"""Seconds one ``score``/``ascore`` call may take in all, retries and waits included: a
server that drips bytes or keeps answering 503 cannot hold a call for longer."""

_FORBIDDEN_EXTRA = frozenset({"top_n", "top_k"})
_USER_AGENT = "rerank-plugins/0.1.0"
# Headers whose values are credentials: kept out of logs like the API key.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie", "x-auth-token"}
)


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer`` from a ``SecretStr``, set on each request as it leaves:
    the key is in no plain attribute, dict or repr of the scorer."""

    def __init__(self, key: SecretStr) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request

    def __repr__(self) -> str:
        return "BearerAuth(SecretStr('**********'))"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint as the transport and the outcome classification see it.

    ``url`` is the one requests go to (no userinfo); ``display_url`` is it with query
    values redacted, the form every message uses.
    """

    dialect: Dialect
    display_url: str
    score_kind: ScoreKind
    overflow: OverflowPolicy
    retry: RetryPolicy
    instruction: str | None
    url: httpx.URL = field(repr=False)
    options: RequestOptions = field(repr=False)
    extra_body: Mapping[str, Any] = field(repr=False)
    headers: Mapping[str, str] = field(repr=False)
    auth: httpx.Auth | Any = field(repr=False)
    timeout: httpx.Timeout | None = field(repr=False)
    max_batch_size: int = field(repr=False)
    max_response_bytes: int | None = field(repr=False)
    # SecretStr: the values stay out of vars(scorer) and its reprs. Longest first.
    secrets: tuple[SecretStr, ...] = field(repr=False)

    @property
    def name(self) -> str:
        return self.dialect.name

    def body(self, query: str, documents: list[str], *, instruction: str | None = None) -> bytes:
        """The JSON request body for one batch; ``instruction`` (else the endpoint's own)
        in the dialect's instruction field."""
        if instruction is None:
            instruction = self.instruction
        request = self.dialect.request(query, documents, self.options, instruction=instruction)
        body = {**self.extra_body, **request}
        return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")

    def cap(self, content: bytes, n_documents: int) -> int:
        """The largest decoded answer accepted for a request of ``content``."""
        if self.max_response_bytes is not None:
            return self.max_response_bytes
        return default_response_cap(len(content), n_documents)

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this endpoint replaced by ``***``."""
        for secret in self.secrets:
            text = text.replace(secret.get_secret_value(), "***")
        return text


def configure(
    base_url: str,
    *,
    dialect: str,
    model: str | None,
    api_key: str | SecretStr | None,
    api_key_env: str | None,
    overflow: OverflowPolicy,
    score_kind: ScoreKind | None,
    max_batch_size: int | None,
    timeout: float | httpx.Timeout | None,
    max_response_bytes: int | None,
    retry: RetryPolicy | None,
    headers: Mapping[str, str] | None,
    extra_body: Mapping[str, Any] | None,
    instruction: str | None = None,
) -> tuple[Endpoint, SecretStr | None, list[str]]:
    """Check the options and build the endpoint.

    Returns the endpoint, the resolved key and the secrets registered for redaction
    (hand them to :func:`redaction.forget` when the scorer goes).
    """
    chosen = get_dialect(dialect)
    url = endpoint_url(base_url, chosen)
    display_url = redact(url)
    _check_overflow(overflow, chosen)
    kind = _pick_score_kind(score_kind, chosen)
    if max_batch_size is None:
        max_batch_size = chosen.max_documents
    check_positive("max_batch_size", max_batch_size)
    if max_response_bytes is not None:
        check_positive("max_response_bytes", max_response_bytes)
    extra = _check_extra_body(extra_body, chosen)
    check_instruction(instruction, chosen)
    key = _resolve_key(api_key, api_key_env)
    all_headers = {
        "User-Agent": _USER_AGENT,
        "Accept": "application/json",
        "Accept-Encoding": "gzip, deflate",  # decoded here, with a bound on the output
        "Content-Type": "application/json",
    }
    all_headers.update(headers or {})
    _check_header_values(all_headers)
    url, auth, secrets = _credentials(url, display_url, key, api_key_env, all_headers)
    checked_timeout = _check_timeout(timeout)
    registered = redaction.register(secrets)  # last: nothing below can fail
    endpoint = Endpoint(
        dialect=chosen,
        display_url=display_url,
        score_kind=kind,
        overflow=overflow,
        retry=retry or RetryPolicy(),
        instruction=instruction,
        url=url,
        options=RequestOptions(model=model, truncate=overflow == "truncate", score_kind=kind),
        extra_body=extra,
        headers=all_headers,
        auth=auth,
        timeout=checked_timeout,
        max_batch_size=max_batch_size,
        max_response_bytes=max_response_bytes,
        secrets=tuple(SecretStr(v) for v in sorted(registered, key=len, reverse=True)),
    )
    return endpoint, key, registered


def _check_overflow(overflow: object, dialect: Dialect) -> None:
    if overflow not in ("truncate", "error"):
        raise InvalidInputError(f"overflow must be 'truncate' or 'error', got {overflow!r}")
    if overflow == "error" and not dialect.refuses_overflow:
        raise InvalidInputError(
            f"the {dialect.name!r} API has no switch that makes the server refuse "
            "over-length documents (the server decides), so overflow='error' cannot be "
            "honoured; use overflow='truncate' or a dialect with one "
            "(tei, voyage, nim, vllm-score)"
        )


def _pick_score_kind(score_kind: ScoreKind | None, dialect: Dialect) -> ScoreKind:
    kinds = dialect.score_kinds
    if score_kind is None:
        return kinds[0]
    if score_kind not in kinds:
        raise InvalidInputError(
            f"the {dialect.name!r} API returns {list(kinds)} scores, not {score_kind!r}"
        )
    return score_kind


def check_instruction(instruction: object, dialect: Dialect) -> None:
    """``None``, or a str that ``dialect`` has a request field for; else
    :class:`InvalidInputError` (an instruction is never sent to be dropped)."""
    if instruction is None:
        return
    if not isinstance(instruction, str):
        raise InvalidInputError(f"instruction must be a str, got {type(instruction).__name__}")
    dialect.check_instruction()


def _check_extra_body(extra_body: Mapping[str, Any] | None, dialect: Dialect) -> dict[str, Any]:
    extra = dict(extra_body or {})
    try:  # NaN, infinities and non-JSON values fail here, not on the first call
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(f"extra_body is not plain JSON: {exc}") from exc
    forbidden = sorted(_FORBIDDEN_EXTRA & extra.keys())
    if forbidden:
        raise InvalidInputError(
            f"extra_body must not set {forbidden}: a scorer returns every document; "
            "top_n is applied after scoring (rank(..., top_n=...) or the adapters' top_n)"
        )
    if dialect.instruction_field is not None and dialect.instruction_field in extra:
        raise InvalidInputError(
            f"extra_body must not set {dialect.instruction_field!r}: pass instruction=... "
            "(it is part of the scorer's identity and may be replaced per call)"
        )
    return extra


def _credentials(
    url: httpx.URL,
    display_url: str,
    key: SecretStr | None,
    api_key_env: str | None,
    headers: Mapping[str, str],
) -> tuple[httpx.URL, httpx.Auth | Any, list[str]]:
    """Where the credentials go (URL userinfo -> Basic auth, key -> Bearer) and which
    values are secret."""
    auth: httpx.Auth | Any = httpx.USE_CLIENT_DEFAULT
    secrets = [v for k, v in headers.items() if k.lower() in _SECRET_HEADERS]
    if url.username or url.password:
        if key is not None:
            raise InvalidInputError(
                f"{display_url} carries credentials and an API key is set (argument or "
                f"${api_key_env}); give one or the other"
            )
        # Moved into an auth header: a URL with userinfo ends up in httpx's logs.
        username, password = url.username, url.password
        auth = httpx.BasicAuth(username, password)
        url = url.copy_with(userinfo=b"")
        secrets += [password, f"{username}:{password}"]
    secrets += [v for _, v in url.params.multi_items()]
    if url.query:
        secrets.append(url.query.decode("ascii", "replace"))
    if key is not None:
        secrets.append(key.get_secret_value())
        auth = BearerAuth(key)
        if url.scheme == "http" and not is_loopback(url.host):
            logger.warning("sending an API key over unencrypted http to %s; use https", url.host)
    return url, auth, secrets


def check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive int, got {value!r}")


def check_positive_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise InvalidInputError(f"{name} must be a positive number of seconds, got {value!r}")


def _check_timeout(timeout: object) -> httpx.Timeout | None:
    """A positive finite number or an ``httpx.Timeout`` whose parts are (or are ``None``)."""
    if timeout is None:
        return None
    if isinstance(timeout, httpx.Timeout):
        for part, value in timeout.as_dict().items():
            if value is not None:
                check_positive_number(f"timeout.{part}", value)
        return timeout
    check_positive_number("timeout", timeout)
    return httpx.Timeout(float(timeout))  # type: ignore[arg-type]


def _check_header_values(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not isinstance(value, str) or not all(" " <= c <= "~" for c in value):
            raise InvalidInputError(
                f"header {name!r} must be printable ASCII without control characters"
            )


def _resolve_key(api_key: str | SecretStr | None, env: str | None) -> SecretStr | None:
    if api_key is None and env:
        api_key = os.environ.get(env)
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if api_key is None or not api_key.strip():
        return None
    key = api_key.strip()
    if not all("!" <= c <= "~" for c in key):
        # A NUL or newline would be quoted back (as a bytes repr) in transport errors,
        # past any scrubbing, and cannot be a valid Bearer token anyway.
        raise InvalidInputError(
            "the API key must be printable ASCII without spaces or control characters"
        )
    return SecretStr(key)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``, bracketed or not).

    >>> [is_loopback(h) for h in ("localhost", "127.0.0.1", "[::1]", "10.0.0.1", "example.com")]
    [True, True, True, False, False]
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
