"""A deterministic rerank server that speaks every dialect: a test double that ships.

``FakeRerankServer`` answers like the real servers do (results sorted by score, echoed
text, limits on documents per request and on length, Bearer keys, 429/503 under load),
with scores that depend only on ``(query, document)``. Mount it wherever a server goes:

- ``httpx.MockTransport(server.handle)`` for an in-process sync or async client;
- ``httpx.ASGITransport(server)``: it is an ASGI application;
- ``python -m rerank_plugins.testing.fake_server --port 0`` serves it on loopback (stdlib
  ``http.server``) for load tests; it prints ``listening on http://127.0.0.1:PORT``.

Only loopback addresses are served.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import math
import random
import signal
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from rerank_plugins.remote.dialects import DIALECTS

__all__ = ["FakeRerankServer", "fake_logit", "fake_probability", "serve"]


def fake_logit(query: str, document: str) -> float:
    """The server's raw score: word overlap with the query plus a stable hash term.

    Depends only on the two texts, so every request order, batch split and retry gives
    the same value.

    >>> fake_logit("w1 w2", "w1 w3") == fake_logit("w1 w2", "w1 w3")
    True
    """
    words = document.split()
    query_words = set(query.split())
    overlap = sum(w in query_words for w in words) / (1 + len(words))
    digest = hashlib.blake2b(f"{query}\x00{document}".encode(), digest_size=8).digest()
    noise = int.from_bytes(digest, "big") / 2**64
    return 6.0 * overlap + 3.0 * noise - 2.0


def fake_probability(query: str, document: str) -> float:
    """``sigmoid(fake_logit(query, document))``."""
    return 1.0 / (1.0 + math.exp(-fake_logit(query, document)))


@dataclass
class _Reply:
    status: int
    body: Any
    headers: dict[str, str]


class FakeRerankServer:
    """A rerank server for one ``dialect``, deterministic apart from injected failures.

    Options: ``api_key`` (require ``Authorization: Bearer``), ``max_batch_size``
    (refuse larger requests the way that dialect's reference server does), ``max_words``
    (a window in words, query included: truncated or refused per the request's flag),
    ``fail_rate`` (fraction of requests answered 429 with ``Retry-After: 0`` or 503,
    drawn from ``seed``), ``record`` (keep every request body in ``requests``).

    A request's instruction, in the dialect's field (``instruction``: cohere, tei;
    ``instruct``: sglang), is scored with the query: ``fake_logit(f"{instruction}\n{query}",
    document)``, so a lost instruction shows in the scores; a non-string one is a 422.
    """

    def __init__(
        self,
        dialect: str = "cohere",
        *,
        api_key: str | None = None,
        max_batch_size: int | None = None,
        max_words: int | None = None,
        fail_rate: float = 0.0,
        seed: int = 0,
        record: bool = True,
    ) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {dialect!r}")
        self.dialect = dialect
        self.api_key = api_key
        self.max_batch_size = max_batch_size
        self.max_words = max_words
        self.fail_rate = fail_rate
        self.record = record
        self.requests: list[dict[str, Any]] = []
        self.served = 0
        self.documents_scored = 0
        self.failures_injected = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    # -- the three ways in ---------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        """``httpx.MockTransport`` handler (works for sync and async clients)."""
        status, headers, body = self.respond(
            request.method, request.url.path, request.headers, request.read()
        )
        return httpx.Response(status, headers=headers, content=body)

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        """ASGI application."""
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status, out_headers, body = self.respond(
            scope["method"], scope["path"], headers, b"".join(chunks)
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in out_headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def respond(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body for one request."""
        reply = self._reply(method, path, {k.lower(): v for k, v in headers.items()}, body)
        out = {"Content-Type": "application/json", **reply.headers}
        return reply.status, out, json.dumps(reply.body).encode()

    # -- behaviour -------------------------------------------------------------------------

    def _reply(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        dialect = DIALECTS[self.dialect]
        if method != "POST" or path.rstrip("/").rsplit("/", 1)[-1] != dialect.path:
            return _Reply(404, {"detail": "Not Found"}, {})
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return _Reply(401, {"detail": "Unauthorized"}, {})
        with self._lock:
            self.served += 1
            fail = self.fail_rate > 0 and self._rng.random() < self.fail_rate
            overloaded = self._rng.random() < 0.5
            if fail:
                self.failures_injected += 1
        if fail:
            if overloaded:
                return _Reply(429, {"error": "Too many requests"}, {"Retry-After": "0"})
            return _Reply(503, {"error": "Service Unavailable"}, {})
        try:
            body = json.loads(raw)
            query, documents, truncate, raw_scores = self._read(body)
            instruction = self._instruction(body)
        except (ValueError, KeyError, TypeError) as exc:
            return _Reply(422, {"detail": f"invalid request: {exc}"}, {})
        if self.record:
            with self._lock:
                self.requests.append(body)
        limit = self.max_batch_size
        if limit is not None and len(documents) > limit:
            return self._too_many(len(documents), limit)
        words = len(query.split())
        if self.max_words is not None:
            if not truncate and any(words + len(d.split()) > self.max_words for d in documents):
                return self._too_long(self.max_words)
            keep = max(0, self.max_words - words)
            documents = [" ".join(d.split()[:keep]) for d in documents]
        with self._lock:
            self.documents_scored += len(documents)
        told = query if instruction is None else f"{instruction}\n{query}"
        scores = [
            fake_logit(told, d) if raw_scores else fake_probability(told, d) for d in documents
        ]
        order = sorted(range(len(documents)), key=lambda i: -scores[i])
        top = body.get("top_n") or body.get("top_k")
        if isinstance(top, int) and top > 0:
            order = order[:top]
        return _Reply(200, self._results(order, scores, documents, body), {})

    def _instruction(self, body: dict[str, Any]) -> str | None:
        field = DIALECTS[self.dialect].instruction_field
        value = None if field is None else body.get(field)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{field} must be a string")
        return value

    def _read(self, body: dict[str, Any]) -> tuple[str, list[str], bool, bool]:
        name = self.dialect
        if name == "sglang":  # no truncation switch, no raw-score switch
            return body["query"], body["documents"], True, False
        if name == "cohere":
            return body["query"], body["documents"], True, bool(body.get("raw_scores"))
        if name == "tei":
            return (
                body["query"],
                body["texts"],
                bool(body.get("truncate")),
                bool(body.get("raw_scores")),
            )
        if name == "voyage":
            return body["query"], body["documents"], body.get("truncation", True), False
        if name == "mixedbread":
            return body["query"], body["input"], True, False
        if name == "nim":
            docs = [p["text"] for p in body["passages"]]
            return body["query"]["text"], docs, body.get("truncate", "NONE") == "END", True
        # vllm-score: vLLM refuses over-length input unless truncate_prompt_tokens is set.
        text_2 = body["text_2"]
        docs = [text_2] if isinstance(text_2, str) else text_2
        truncate = body.get("truncate_prompt_tokens") is not None
        return body["text_1"], docs, truncate, body.get("use_activation") is False

    def _results(
        self, order: list[int], scores: list[float], documents: list[str], body: dict[str, Any]
    ) -> Any:
        # Echo the wrong text on purpose: a client must map by index, never by text.
        def wrong(i: int) -> str:
            return documents[(i + 1) % len(documents)]

        name = self.dialect
        data: list[dict[str, Any]]
        if name == "cohere":
            results = [
                {"index": i, "relevance_score": scores[i], "document": {"text": wrong(i)}}
                for i in order
            ]
            return {"id": "fake", "results": results, "meta": {"api_version": {"version": "2"}}}
        if name == "tei":
            return [{"index": i, "score": scores[i], "text": wrong(i)} for i in order]
        if name == "voyage":
            data = [{"index": i, "relevance_score": scores[i]} for i in order]
            return {"object": "list", "data": data, "usage": {"total_tokens": 0}}
        if name == "mixedbread":
            data = [
                {"index": i, "score": scores[i], "input": wrong(i), "object": "rank_result"}
                for i in order
            ]
            return {"object": "list", "data": data, "top_k": len(order)}
        if name == "nim":
            return {"rankings": [{"index": i, "logit": scores[i]} for i in order]}
        if name == "sglang":
            echo = body.get("return_documents", True)
            return [
                {"index": i, "score": scores[i], **({"document": wrong(i)} if echo else {})}
                for i in order
            ]
        data = [{"index": i, "object": "score", "score": scores[i]} for i in order]
        return {"id": "score-fake", "object": "list", "data": data}

    def _too_many(self, n: int, limit: int) -> _Reply:
        if self.dialect == "tei":
            message = f"batch size {n} > maximum allowed batch size {limit}"
            return _Reply(413, {"error": message, "error_type": "Validation"}, {})
        if self.dialect == "cohere":  # Infinity's pydantic answer
            detail = f"List should have at most {limit} items after validation, not {n}"
            return _Reply(422, {"detail": [{"type": "too_long", "msg": detail}]}, {})
        return _Reply(400, {"detail": f"too many documents: {n} > {limit}"}, {})

    def _too_long(self, limit: int) -> _Reply:
        if self.dialect == "tei":
            message = f"Input validation error: `inputs` must have less than {limit} tokens"
            return _Reply(413, {"error": message, "error_type": "Validation"}, {})
        message = f"This model's maximum context length is {limit} tokens; input is longer"
        return _Reply(400, {"object": "error", "message": message}, {})


def serve(server: FakeRerankServer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Serve ``server`` over HTTP/1.1 on a loopback address (call ``serve_forever``)."""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the fake server only listens on loopback, not {host!r}")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like a real server
        disable_nagle_algorithm = True  # headers and body leave in separate writes

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            status, headers, body = server.respond(
                "POST", self.path.split("?", 1)[0], dict(self.headers.items()), raw
            )
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    return Server((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialect", default="cohere", choices=sorted(DIALECTS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--max-batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    fake = FakeRerankServer(
        args.dialect,
        max_batch_size=args.max_batch_size,
        fail_rate=args.fail_rate,
        seed=args.seed,
        record=False,
    )
    httpd = serve(fake, args.host, args.port)

    def stop(signum: int, frame: Any) -> None:
        # shutdown() waits for serve_forever(), which runs in this (the main) thread
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    # Installed, not inherited: a shell starts background jobs with SIGINT ignored, and
    # a server that ignores it never stops (the load test's smoke run hung so in CI).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    print(f"listening on http://{args.host}:{httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()
        print(
            f"served {fake.served} requests, {fake.documents_scored} documents, "
            f"{fake.failures_injected} failures injected",
            flush=True,
        )


if __name__ == "__main__":
    main()
