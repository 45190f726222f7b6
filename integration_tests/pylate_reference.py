"""PyLate's own encoding and scoring of a checkpoint: the reference for the parity tests.

Runs in PyLate's virtualenv (``integration_tests/setup_pylate.sh``), never imported by the
project's tests: ``python pylate_reference.py JOBS.json OUT_DIR``. ``JOBS.json`` is a list
of jobs, each with ``checkpoint``, ``options`` (keyword arguments of
``pylate.models.ColBERT``, e.g. ``document_length``), ``queries`` and ``documents``. Job
``i`` writes into ``OUT_DIR/i/``:

- ``vectors.safetensors``: ``query.{i}`` and ``document.{j}`` token vectors as PyLate's
  ``encode`` returns them (fp32, normalised, skiplist and padding removed);
- ``scores.json``: per query, ``exact`` (``pylate.scores.colbert_scores`` of the query
  against each document alone: nothing padded) and ``rerank`` (``pylate.rank.rerank`` over
  all documents at once, mapped back to input order: zero-padded without a mask), plus
  the library versions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def main(jobs_path: str, out_dir: str) -> None:
    jobs = json.loads(Path(jobs_path).read_text())
    for i, job in enumerate(jobs):
        run(job, Path(out_dir) / str(i))


def run(job: dict, out: Path) -> None:
    import pylate
    import sentence_transformers
    import transformers
    from pylate import models, rank, scores

    torch.manual_seed(0)
    options = dict(job.get("options", {}))
    # The real config.json says "torch_dtype": "float16", which sentence-transformers 5
    # honours: without this the reference would run in fp16 on the CPU.
    options.setdefault("model_kwargs", {"dtype": torch.float32})
    model = models.ColBERT(job["checkpoint"], device="cpu", **options)
    queries, documents = job["queries"], job["documents"]
    q_vectors = model.encode(queries, is_query=True, convert_to_numpy=False, batch_size=8)
    d_vectors = model.encode(documents, is_query=False, convert_to_numpy=False, batch_size=8)
    tensors = {f"query.{i}": v.float().contiguous() for i, v in enumerate(q_vectors)}
    tensors.update({f"document.{j}": v.float().contiguous() for j, v in enumerate(d_vectors)})

    results = []
    ids = list(range(len(documents)))
    for q in q_vectors:
        exact = [
            float(scores.colbert_scores(q[None], d[None], backend="torch")[0, 0]) for d in d_vectors
        ]
        ranked = rank.rerank(
            documents_ids=[ids], queries_embeddings=[q], documents_embeddings=[d_vectors]
        )[0]
        by_id = {int(r["id"]): float(r["score"]) for r in ranked}
        results.append({"exact": exact, "rerank": [by_id[i] for i in ids]})

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "vectors.safetensors"))
    (out / "scores.json").write_text(
        json.dumps(
            {
                "results": results,
                "settings": {
                    "query_length": model.query_length,
                    "document_length": model.document_length,
                    "do_query_expansion": model.do_query_expansion,
                    "attend_to_expansion_tokens": model.attend_to_expansion_tokens,
                },
                "versions": {
                    "pylate": pylate.__version__,
                    "sentence_transformers": sentence_transformers.__version__,
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                },
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
