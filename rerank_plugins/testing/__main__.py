"""``python -m rerank_plugins.testing DIR``: write a tiny random-weight checkpoint to DIR.

For a first run without the hub: ``rerank-plugins rerank --model DIR "query" "doc"`` then
works end to end (scores are random; the shapes, windows and loading path are real).
"""

from __future__ import annotations

import argparse
import sys

from rerank_plugins.errors import RerankError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rerank_plugins.testing",
        description="Write a tiny random-weight ModernBERT cross-encoder checkpoint "
        "(config, safetensors weights, tokenizer) to DIR, for trying the package offline.",
    )
    parser.add_argument("directory", metavar="DIR", help="where to write it (created)")
    args = parser.parse_args(argv)
    try:
        from rerank_plugins.testing.modernbert import make_modernbert_checkpoint

        written = make_modernbert_checkpoint(args.directory)
    except (RerankError, OSError) as exc:
        sys.stderr.write(f"python -m rerank_plugins.testing: error: {exc}\n")
        return 2
    sys.stdout.write(f"{written}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
