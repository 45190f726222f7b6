"""``python -m rerank_plugins`` runs the command line."""

from rerank_plugins.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
