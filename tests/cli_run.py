"""Running the command line in-process, with a stdin that says whether it is a terminal."""

from __future__ import annotations

import io

from rerank_plugins.cli import main

DOCS = ["w1 w2 w3", "w9 w8", "w1 w50 w51 w52", "w200"]


class FakeStdin(io.StringIO):
    def __init__(self, text: str = "", tty: bool = False) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def run(argv: list[str], stdin: str = "", tty: bool = True) -> tuple[int, str]:
    """``main(argv)``'s exit status and stdout; ``tty``: whether stdin is a terminal."""
    out = io.StringIO()
    code = main(argv, stdout=out, stdin=FakeStdin(stdin, tty))
    return code, out.getvalue()
