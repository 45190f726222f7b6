"""Server processes in tests and benchmarks: a free loopback port, and waiting for one.

Shared by the serve tests, the serving benchmark and the Infinity integration tests, which
each start a server process on 127.0.0.1 and must not talk to it before it is ready.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

__all__ = ["free_port", "wait_until_healthy"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until_healthy(
    url: str,
    process: subprocess.Popen[bytes],
    *,
    log: Path | None = None,
    seconds: float = 300.0,
    interval: float = 0.3,
    name: str = "server",
) -> None:
    """Poll ``url`` until it answers 200. ``RuntimeError`` (with the end of ``log``) if
    ``process`` exits first or ``seconds`` pass."""
    import httpx

    def tail() -> str:
        if log is None or not log.exists():
            return ""
        return "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:])

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:{tail()}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"{name} not ready after {seconds:.0f}s:{tail()}")
