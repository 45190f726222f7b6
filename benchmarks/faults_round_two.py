"""Fault figures, round two (issue 20): memory and time per hostile input, before and after.

Each probe runs in a fresh child process whose ``PYTHONPATH`` is the source tree given
(``--tree``: run once with the tree before a fix and once with the tree after it, on the
same machine); the child reports its outcome, its wall time and its peak RSS
growth over the probe (``VmHWM`` after it minus ``VmRSS`` before it, the peak reset
through ``/proc/self/clear_refs`` just before). Not a unit test: the outcomes are asserted in
``tests/local/test_tokenization_bounds.py``, ``tests/test_bulk_integrity.py`` and
``tests/local/test_checkpoint_bounds.py``.

    python benchmarks/faults_round_two.py --tree /path/to/tree [--probe NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

TOKENIZER = Path("/work/shared/fixtures/Alibaba-NLP__gte-reranker-modernbert-base")

_PRELUDE = """
import json, resource, sys, time, random
from pathlib import Path
def _status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def rss_mib():
    # Reset the peak (VmHWM) to the current RSS first: the growth is the probe's alone,
    # not hidden under an earlier peak (imports, reading the input).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status("VmRSS")
def report(outcome, started, before):
    print(json.dumps({"outcome": outcome, "seconds": round(time.perf_counter() - started, 2),
                      "peak_rss_growth_mib": round(_status("VmHWM") - before, 1)}))
"""

PROBES = {
    # A 30 MB document against an 8,192-token window, real BPE tokenizer (the server,
    # bulk rows and the CLI all encode through PairEncoder).
    "30mb-document": _PRELUDE
    + """
import rerank_plugins
assert rerank_plugins.__file__.startswith(sys.argv[3]), rerank_plugins.__file__
from rerank_plugins.local.checkpoint import load_tokenizer
from rerank_plugins.local.tokenization import PairEncoder
encoder = PairEncoder(load_tokenizer(Path(sys.argv[1])), max_length=8192)
doc = (Path(sys.argv[2]) / "document.txt").read_text()
encoder.encode("warm up", ["short"])
before, started = rss_mib(), time.perf_counter()
(pair,) = encoder.encode("what is reranking", [doc])
report(f"{pair.tokens} tokens, truncated={pair.truncated}", started, before)
""",
    # A JSONL input with a 100 MB line and hostile rows, scored by a function scorer.
    "bulk-hostile-rows": _PRELUDE
    + """
from rerank_plugins.bulk import score_file
from rerank_plugins.testing import FunctionScorer
tmp = Path(sys.argv[2])
source = tmp / "in.jsonl"
before, started = rss_mib(), time.perf_counter()
try:
    s = score_file(source, tmp / "out", model=FunctionScorer(lambda q, d: 1.0), progress=False)
    outcome = f"rows={s.rows} errors={s.errors}"
except BaseException as exc:
    outcome = f"crashed: {type(exc).__name__}"
report(outcome, started, before)
""",
    # A 1 KB config.json claiming a million layers over a tiny checkpoint's weights.
    "million-layer-config": _PRELUDE
    + """
from rerank_plugins import load_scorer
from rerank_plugins.testing import make_modernbert_checkpoint
tmp = Path(sys.argv[2])
d = make_modernbert_checkpoint(tmp / "ckpt")
config = json.loads((d / "config.json").read_text())
config["num_hidden_layers"] = 1_000_000
config.pop("layer_types")  # else the layer list's length gives it away
config["global_attn_every_n_layers"] = 2
(d / "config.json").write_text(json.dumps(config))
before, started = rss_mib(), time.perf_counter()
try:
    load_scorer(d, device="cpu")
    outcome = "loaded"
except BaseException as exc:
    outcome = f"{type(exc).__name__}"
report(outcome, started, before)
""",
    # max_position_embeddings: 10**12 on a RoPE checkpoint.
    "window-1e12": _PRELUDE
    + """
from rerank_plugins import load_scorer
from rerank_plugins.testing import make_modernbert_checkpoint
tmp = Path(sys.argv[2])
d = make_modernbert_checkpoint(tmp / "ckpt", config={"max_position_embeddings": 10**12})
before, started = rss_mib(), time.perf_counter()
try:
    s = load_scorer(d, device="cpu")
    outcome = f"window {s.max_length}"
except BaseException as exc:
    outcome = f"{type(exc).__name__}"
report(outcome, started, before)
""",
}


def _inputs(name: str, tmp: Path) -> None:
    """Write the probe's input here, so that the child's peak RSS is the probe's alone."""
    if name == "30mb-document":
        rng = random.Random(0)
        words = ["relevance", "of", "the", "document", "to", "a", "query", "ranking", "model"]
        text = " ".join(rng.choice(words) for _ in range(4_300_000))[:30_000_000]
        (tmp / "document.txt").write_text(text)
    elif name == "bulk-hostile-rows":
        good = json.dumps({"query": "q", "text": "fine"})
        with (tmp / "in.jsonl").open("w") as f:
            f.write(good + "\n")
            f.write('{"query": "q", "text": "' + "x" * 100_000_000 + '"}\n')
            f.write('{"query": "q", "text": "t", "n": ' + "9" * 5000 + "}\n")
            f.write('{"query": "q", "text": "t", "n": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
            f.write('{"query": "q", "text": "a \\ud800 b"}\n')
            f.write('{"query": "q", "text": "t", "n": NaN}\n')
            f.write(good + "\n")


def run_probe(name: str, tree: Path, timeout: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        _inputs(name, Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
        try:
            proc = subprocess.run(
                [sys.executable, "-c", PROBES[name], str(TOKENIZER), tmp, str(tree)],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp,  # python -c puts the cwd first on sys.path: not this checkout
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"outcome": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"outcome": f"child died (exit {proc.returncode}): {tail[0][:120]}"}
    result: dict[str, object] = json.loads(lines[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True, help="source tree to measure")
    parser.add_argument("--probe", action="append", choices=sorted(PROBES))
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    for name in args.probe or list(PROBES):
        print(
            json.dumps(
                {"probe": name, "tree": str(args.tree), **run_probe(name, args.tree, args.timeout)}
            )
        )


if __name__ == "__main__":
    main()
