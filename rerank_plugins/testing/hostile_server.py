"""A rerank server that misbehaves on purpose, on 127.0.0.1, for fault tests and benchmarks.

It speaks raw HTTP/1.1 over a socket (no framework to tidy its answers up). The first path
segment picks the fault: ``http://127.0.0.1:PORT/drip`` as the base URL of a
:class:`~rerank_plugins.remote.RemoteScorer` (cohere dialect) gets a server that drips one
byte every 0.25 s. :data:`FAULTS` lists them; ``ok`` answers correctly (scores from
:func:`~rerank_plugins.testing.fake_server.fake_probability`), as a control.

>>> with HostileServer() as server:  # doctest: +SKIP
...     RemoteScorer(server.url("gzip-bomb")).score("q", ["d"])
"""

from __future__ import annotations

import functools
import json
import random
import socket
import socketserver
import threading
import time
import zlib
from collections.abc import Callable
from types import TracebackType

from rerank_plugins.testing.fake_server import fake_probability

__all__ = ["FAULTS", "HostileServer", "gzip_bomb"]

_CHUNK = 64 * 1024
_MAX_SECONDS = 60.0  # no fault outlives a minute, whatever the client does

Send = Callable[[bytes], None]


@functools.lru_cache(maxsize=2)
def gzip_bomb(decoded_bytes: int = 256 << 20) -> bytes:
    """A gzip body of ``decoded_bytes`` spaces (256 MiB → about 250 KiB on the wire)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    parts = [compressor.compress(block) for _ in range(decoded_bytes // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def _scores(query: str, documents: list[str]) -> bytes:
    results = [
        {"index": i, "relevance_score": fake_probability(query, d)} for i, d in enumerate(documents)
    ]
    return json.dumps({"results": results}).encode()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        try:
            head, body = self._read_request(sock)
        except (OSError, ValueError):
            return
        path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
        fault = path.strip("/").split("/", 1)[0]
        try:
            payload = json.loads(body or b"{}")
            query, documents = str(payload.get("query", "")), list(payload.get("documents", []))
        except ValueError:
            query, documents = "", []
        self.server.seen.append(fault)
        try:
            FAULTS.get(fault, _not_found)(self.server, sock.sendall, query, documents)
        except OSError:  # the client gave up (as it should): nothing more to send
            pass

    @staticmethod
    def _read_request(sock: socket.socket) -> tuple[bytes, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(_CHUNK)
            if not chunk:
                raise ValueError("closed before the headers ended")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = sock.recv(_CHUNK)
            if not chunk:
                break
            rest += chunk
        return head, rest


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stop = threading.Event()
        self.seen: list[str] = []
        self.rng = random.Random(0)
        self.rng_lock = threading.Lock()


def _json(status: str, body: bytes, **extra: str) -> bytes:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), **extra}
    return _head(status, headers) + body


def _ok(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    send(_json("200 OK", _scores(query, documents)))


def _not_found(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    send(_json("404 Not Found", b'{"detail": "no such fault"}'))


def _drip(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    """Headers, then one byte of a valid-looking body every 0.25 s, for up to a minute."""
    send(_head("200 OK", {"Content-Type": "application/json", "Content-Length": "100000"}))
    end = time.monotonic() + _MAX_SECONDS
    while not server.stop.is_set() and time.monotonic() < end:
        send(b" ")
        server.stop.wait(0.25)


def _stall(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    """Accepts the request and never answers."""
    server.stop.wait(_MAX_SECONDS)


def _endless(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    """A chunked body that never ends (spaces: a JSON parser would still be waiting)."""
    send(_head("200 OK", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
    chunk = f"{_CHUNK:x}\r\n".encode() + b" " * _CHUNK + b"\r\n"
    end = time.monotonic() + _MAX_SECONDS
    while not server.stop.is_set() and time.monotonic() < end:
        send(chunk)


def _large(declared: bool) -> Callable[[_Server, Send, str, list[str]], None]:
    def fault(server: _Server, send: Send, query: str, documents: list[str]) -> None:
        """A 300 MiB body (declared with Content-Length, or chunked without one)."""
        total = 300 << 20  # 300 MiB: a whole number of 64 KiB chunks
        if declared:
            send(
                _head("200 OK", {"Content-Type": "application/json", "Content-Length": str(total)})
            )
            block = b" " * _CHUNK
        else:
            send(
                _head(
                    "200 OK", {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
                )
            )
            block = f"{_CHUNK:x}\r\n".encode() + b" " * _CHUNK + b"\r\n"
        for _ in range(total // _CHUNK):
            if server.stop.is_set():
                return
            send(block)

    return fault


def _bomb(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    """256 MiB of spaces, gzip-compressed to about 250 KiB."""
    body = gzip_bomb()
    headers = {
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
        "Content-Length": str(len(body)),
    }
    send(_head("200 OK", headers) + body)


def _fixed(
    status: str, body: bytes, **headers: str
) -> Callable[[_Server, Send, str, list[str]], None]:
    def fault(server: _Server, send: Send, query: str, documents: list[str]) -> None:
        send(_json(status, body, **headers))

    return fault


def _huge_number(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    results = ", ".join(
        f'{{"index": {i}, "relevance_score": 1{"0" * 400}}}' for i in range(len(documents))
    )
    send(_json("200 OK", f'{{"results": [{results}]}}'.encode()))


def _utf16(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    """A correct answer, encoded as UTF-16 and declared so."""
    body = _scores(query, documents).decode().encode("utf-16")
    send(_json("200 OK", body, **{"Content-Type": "application/json; charset=utf-16"}))


def _mixed(server: _Server, send: Send, query: str, documents: list[str]) -> None:
    """Mostly correct answers; 10% drip, 5% a 300 MB chunked body, 5% 503 (seeded)."""
    with server.rng_lock:
        draw = server.rng.random()
    if draw < 0.10:
        server.seen.append("mixed:drip")
        _drip(server, send, query, documents)
    elif draw < 0.15:
        server.seen.append("mixed:large-chunked")
        _large(declared=False)(server, send, query, documents)
    elif draw < 0.20:
        server.seen.append("mixed:503")
        send(_json("503 Service Unavailable", b'{"detail": "busy"}'))
    else:
        _ok(server, send, query, documents)


FAULTS: dict[str, Callable[[_Server, Send, str, list[str]], None]] = {
    "ok": _ok,
    "drip": _drip,
    "stall": _stall,
    "endless": _endless,
    "large-declared": _large(declared=True),
    "large-chunked": _large(declared=False),
    "gzip-bomb": _bomb,
    "gzip-lie": _fixed(  # says gzip, sends plain JSON
        "200 OK",
        b'{"results": [{"index": 0, "relevance_score": 0.5}]}',
        **{"Content-Encoding": "gzip"},
    ),
    "unknown-encoding": _fixed("200 OK", b"{}", **{"Content-Encoding": "compress-9000"}),
    "malformed-json": _fixed("200 OK", b'{"results": [{"index": 0, "relevance_'),
    "deep-nesting": _fixed("200 OK", b"[" * 200_000),
    "huge-number": _huge_number,
    "nan-score": _fixed("200 OK", b'{"results": [{"index": 0, "relevance_score": NaN}]}'),
    "latin1-body": _fixed(
        "200 OK",
        '{"results": [], "detail": "caf\xe9"}'.encode("latin-1"),
        **{"Content-Type": "application/json; charset=utf-8"},
    ),
    "bogus-charset-error": _fixed(
        "500 Internal Server Error",
        b"\xff\xfe oops \x80",
        **{"Content-Type": "text/plain; charset=no-such-codec"},
    ),
    "utf16-body": _utf16,
    "close-early": _fixed("200 OK", b"", **{"Content-Length": "5000"}),
    "mixed": _mixed,
}
"""Fault name → behaviour. Each ends within a minute or when the server stops."""


class HostileServer:
    """Serves :data:`FAULTS` on ``127.0.0.1`` (a free port) until :meth:`close`."""

    def __init__(self) -> None:
        gzip_bomb()  # built before serving (seconds of CPU), not inside a client's deadline
        self._server = _Server()
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hostile-server", daemon=True
        )
        self._thread.start()

    def url(self, fault: str) -> str:
        """The base URL whose requests get ``fault``."""
        if fault not in FAULTS:
            raise KeyError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        return f"http://127.0.0.1:{self.port}/{fault}"

    @property
    def seen(self) -> list[str]:
        """The fault of every request received, in order."""
        return list(self._server.seen)

    def close(self) -> None:
        self._server.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
