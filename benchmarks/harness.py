"""What every benchmark script shares: workloads, interleaved timing, tables, JSON output.

A benchmark script keeps only what is specific to its model (the checkpoint it builds, the
engines it compares, the columns it derives); the scaffolding lives here, so that every
script times the same way and writes the same kind of results file. Run a script as
``python benchmarks/<script>.py``: its folder is then on ``sys.path`` and ``import harness``
finds this module. Importing it loads no torch (CUDA calls import torch lazily) and not
``rerank_plugins`` either, so a worker running in another virtualenv can import it too.

The pieces, in the order a script uses them:

- :func:`add_common_args` / :func:`apply_threads`: ``--threads``, ``--repeats``,
  ``--clock``, ``--seed``, ``--json``, ``--smoke`` with one meaning everywhere;
- :func:`print_header`: date, machine, torch, command (the lines RESULTS.md records);
- :class:`Workload`, :func:`long_tailed_lengths`, :func:`pair_workloads`: seeded
  documents; each workload is drawn from its own seed, so a subset run scores the same
  documents as a full run;
- :func:`round_robin`: best-of-N timing where every round times every engine once, with
  wall and process-CPU seconds and, optionally, peak memory (:class:`PeakMemory`); these
  come from ``rerank_plugins.testing.timing``, imported on first use;
- :class:`Column`, :func:`format_table`, :func:`ratio`: fixed-width or markdown tables
  whose rows are the same dicts that go to JSON;
- :func:`write_json`: ``{"benchmark", "created", "command", "machine", "args", "results"}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Benchmarks time the steady state: the CPU fast path compiles inline on a script's first
# large forward (its warm-up), not in the background from the second (the default, "auto",
# which would let a timed round run eagerly while it compiles). Set it to measure otherwise.
os.environ.setdefault("RERANK_PLUGINS_COMPILE", "inline")

# The timer (round_robin, time_call(s), Run, PeakMemory, ...) is the package's own
# (rerank_plugins.testing.timing: notebooks use it from an installed package). It is looked
# up on first use, so that importing this module still imports no rerank_plugins (a worker
# in another virtualenv imports it for its tables).
_TIMING = frozenset(
    {
        "Clock",
        "PeakMemory",
        "Run",
        "round_robin",
        "rss_bytes",
        "time_call",
        "time_calls",
        "trim_heap",
    }
)


def __getattr__(name: str) -> Any:
    if name in _TIMING:
        from rerank_plugins.testing import timing

        return getattr(timing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}

# --- arguments and header -------------------------------------------------------------


def add_common_args(
    parser: argparse.ArgumentParser,
    *,
    repeats: int | None = 1,
    clock: bool = False,
    seed: bool = True,
    threads: bool = True,
) -> None:
    """Add the options every benchmark spells the same way.

    ``--json PATH`` and ``--smoke`` always; ``--repeats N`` (rounds, best kept) unless
    ``repeats`` is None; ``--clock wall|cpu`` (which clock picks the best round) when
    ``clock``; ``--seed`` and ``--threads`` (torch intra-op threads) unless turned off.
    """
    if repeats is not None:
        parser.add_argument(
            "--repeats", type=int, default=repeats, help="rounds; each engine's best is kept"
        )
    if clock:
        parser.add_argument(
            "--clock",
            choices=sorted(CLOCKS),
            default="wall",
            help="wall: elapsed time; cpu: this process's CPU time (steadier on a shared "
            "machine,\nwith --threads 1 it is single-core time)",
        )
    if threads:
        parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    if seed:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here (JSON)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes and workloads, one round: checks the script runs (figures mean nothing)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    """``torch.set_num_threads(args.threads)`` when ``--threads`` was given; one thread
    under ``--smoke`` otherwise (tiny shapes gain nothing from more, and smoke runs share
    the machine with each other and with the test suite)."""
    threads = getattr(args, "threads", None) or (1 if getattr(args, "smoke", False) else None)
    if threads:
        import torch

        torch.set_num_threads(threads)


def machine_line() -> str:
    """``node arch cpus=N`` plus torch's version and threads when torch is loaded."""
    line = f"{platform.node()} {platform.machine()} cpus={os.cpu_count()}"
    torch = sys.modules.get("torch")
    if torch is not None:
        line += f" torch={torch.__version__} threads={torch.get_num_threads()}"
    return line


def command_line() -> str:
    """The command as typed, with the interpreter's base name."""
    return " ".join([Path(sys.executable).name, *sys.argv])


def print_header(name: str, *, device: str = "cpu", lines: Iterable[str] = ()) -> None:
    """Print ``# name  date``, ``# machine: ...``, ``# gpu: ...`` on CUDA, ``# command: ...``
    and one ``# ...`` line per entry of ``lines``."""
    print(f"# {name}  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# machine: {machine_line()}")
    if device.startswith("cuda"):
        import torch

        print(f"# gpu: {torch.cuda.get_device_name(torch.device(device))}")
    print(f"# command: {command_line()}")
    for line in lines:
        print(f"# {line}")


# --- workloads --------------------------------------------------------------------------


@dataclass
class Workload:
    """One query and its documents; ``pair_lengths`` are the tokens of each (query, doc) pair."""

    name: str
    query: str
    docs: list[str]
    pair_lengths: list[int] = field(default_factory=list)


def long_tailed_lengths(rng: random.Random, n: int, *, median: int, longest: int) -> list[int]:
    """Log-normal lengths (sigma 1.1) around ``median``, clipped to [8, ``longest``], one of
    them (at a random index) set to ``longest``."""
    lengths = [
        max(8, min(longest, round(math.exp(rng.gauss(math.log(median), 1.1))))) for _ in range(n)
    ]
    lengths[rng.randrange(n)] = longest
    return lengths


def uniform_lengths(rng: random.Random, n: int, *, low: int, high: int) -> list[int]:
    """``n`` lengths drawn uniformly from [``low``, ``high``]."""
    return [rng.randint(low, high) for _ in range(n)]


def pair_workloads(
    names: str,
    seed: int,
    *,
    specials: int,
    query_words: int = 9,
    docs: int = 100,
    fixed: int = 512,
    median: int = 300,
    longest: int = 8192,
    single: int = 32768,
) -> list[Workload]:
    """The standard cross-encoder workloads named in ``names`` (any of ``a``, ``b``, ``c``).

    With the word tokenizers of :mod:`rerank_plugins.testing` one word is one token, and a
    pair holds ``query_words + specials`` tokens besides the document:

    - ``a``: ``docs`` documents whose pairs are ``fixed`` tokens (``a: 100 x 512``);
    - ``b``: ``docs`` documents of long-tailed lengths (:func:`long_tailed_lengths`,
      ``median``), the longest pair ``longest`` tokens (``b: 100 x long-tail``);
    - ``c``: one document whose pair is ``single`` tokens (``c: 1 x 32768``).

    The query is drawn from ``seed``, workload ``a``/``b``/``c`` from ``seed + 1/2/3``.
    """
    from rerank_plugins.testing import random_text  # keeps this module free of the package

    query = random_text(random.Random(seed), query_words)

    def room(total: int) -> int:
        return total - query_words - specials

    out = []
    if "a" in names:
        rng = random.Random(seed + 1)
        text = [random_text(rng, room(fixed)) for _ in range(docs)]
        out.append(Workload(f"a: {docs} x {fixed}", query, text))
    if "b" in names:
        rng = random.Random(seed + 2)
        lengths = long_tailed_lengths(rng, docs, median=median, longest=room(longest))
        out.append(
            Workload(f"b: {docs} x long-tail", query, [random_text(rng, n) for n in lengths])
        )
    if "c" in names:
        rng = random.Random(seed + 3)
        out.append(Workload(f"c: 1 x {single}", query, [random_text(rng, room(single))]))
    for w in out:
        w.pair_lengths = [len(d.split()) + query_words + specials for d in w.docs]
    return out


def describe(workload: Workload) -> str:
    """``N docs, T pair tokens (median M, max X)``."""
    n, lengths = len(workload.docs), sorted(workload.pair_lengths)
    return f"{n} docs, {sum(lengths):,} pair tokens (median {lengths[n // 2]}, max {lengths[-1]})"


# --- memory -----------------------------------------------------------------------------


def fmt_bytes(n: int) -> str:
    """Bytes as ``1,234 MiB``."""
    return f"{n / 2**20:,.0f} MiB"


# --- timing -----------------------------------------------------------------------------


def cuda_sync(device: Any) -> Callable[[], None] | None:
    """A ``torch.cuda.synchronize`` for a CUDA ``device`` (str or torch.device), else None."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return None


def ratio(numerator: float, denominator: float | None) -> float:
    """``numerator / denominator``, NaN when the denominator is missing, zero or NaN."""
    if not denominator or math.isnan(denominator):
        return math.nan
    return numerator / denominator


# --- tables and JSON --------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One table column: ``key`` into the row dict, header, width (0 in markdown), a format
    spec (``".2f"``, ``",.0f"``, ``""``) or a function, and the alignment."""

    key: str
    header: str
    width: int = 9
    fmt: str | Callable[[Any], str] = ".2f"
    left: bool = False

    def cell(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.key)
        if value is None:
            return "-"
        if callable(self.fmt):
            return self.fmt(value)
        return format(value, self.fmt)


def format_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    *,
    markdown: bool = False,
    error_key: str = "error",
) -> str:
    """The rows as a table: fixed-width (space separated, each column ``width`` wide) or a
    markdown table. A row with ``error_key`` set prints its first column and
    ``failed: <error>`` instead of the other cells."""

    def pad(column: Column, text: str) -> str:
        if markdown:
            return text
        return f"{text:<{column.width}s}" if column.left else f"{text:>{column.width}s}"

    def join(cells: list[str]) -> str:
        return f"| {' | '.join(cells)} |" if markdown else " ".join(cells).rstrip()

    lines = [join([pad(c, c.header) for c in columns])]
    if markdown:
        lines.append("|" + "|".join("---" if c.left else "---:" for c in columns) + "|")
    for row in rows:
        if row.get(error_key):
            first = pad(columns[0], columns[0].cell(row))
            lines.append(
                f"| {first} | failed: {row[error_key]} |"
                if markdown
                else f"{first} failed: {row[error_key]}"
            )
            continue
        lines.append(join([pad(c, c.cell(row)) for c in columns]))
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; strict parsers reject them
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(
    path: Path | None,
    benchmark: str,
    results: Sequence[Mapping[str, Any]],
    *,
    args: argparse.Namespace | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``{"benchmark", "created", "command", "machine", "args", "results", **extra}``
    to ``path`` (nothing when ``path`` is None). NaN and infinities become null."""
    if path is None:
        return
    document = {
        "benchmark": benchmark,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine_line(),
        "args": vars(args) if args is not None else {},
        "results": list(results),
        **(extra or {}),
    }
    path.write_text(json.dumps(_jsonable(document), indent=2, allow_nan=False))
