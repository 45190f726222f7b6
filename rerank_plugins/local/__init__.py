"""In-process scorers: PyTorch models loaded from Hugging Face checkpoints.

Importing this package imports no torch; each scorer module does, when it is first used.
``load_local_scorer`` resolves a spec to a checkpoint directory and lets the checkpoint's
own files (:mod:`rerank_plugins.local.detect`) pick the scorer family.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins.local.engine.threads import passive_openmp_wait

if TYPE_CHECKING:
    from rerank_plugins.scoring import Scorer

__all__ = ["load_local_scorer"]

# Before torch (and its OpenMP runtime) is loaded: OpenMP threads that sleep rather than
# spin at barriers (benchmarks/RESULTS.md, "Threads under contention").
passive_openmp_wait()


def load_local_scorer(spec: str | Path, **options: Any) -> Scorer:
    """The local scorer for a hub id or checkpoint directory; ``options`` go to it.

    The hub options (``revision``, ``cache_dir``, ``local_files_only``, ``token``) are
    used for the download only; the scorer gets the resolved directory. ``threads`` (a
    positive integer or ``"auto"``) sets the process's intra-op threads
    (:func:`~rerank_plugins.local.engine.threads.configure_threads`).
    """
    threads = options.pop("threads", None)
    if threads is not None:
        from rerank_plugins.local.engine.threads import configure_threads

        configure_threads(threads)
    from rerank_plugins.local.checkpoint import HUB_OPTIONS, resolve_checkpoint
    from rerank_plugins.local.detect import detect_kind

    hub = {k: options.pop(k) for k in HUB_OPTIONS if k in options}
    directory = resolve_checkpoint(spec, **hub)
    kind = detect_kind(directory)
    if kind == "colbert":
        from rerank_plugins.local.colbert import ColBERTScorer

        return ColBERTScorer(directory, **options)
    if kind == "matryoshka":
        from rerank_plugins.local.matryoshka import MatryoshkaScorer

        return MatryoshkaScorer(directory, **options)
    if kind == "cross-encoder":
        from rerank_plugins.local.cross_encoder import CrossEncoderScorer

        return CrossEncoderScorer(directory, **options)
    if kind == "decoder":
        from rerank_plugins.local.decoder import DecoderScorer

        return DecoderScorer(directory, **options)
    raise AssertionError(f"unhandled scorer kind {kind!r}")  # detect_kind returns known kinds
