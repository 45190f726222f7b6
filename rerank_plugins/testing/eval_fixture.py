"""A small evaluation collection made by this project: BEIR layout, graded judgments.

:func:`write_eval_fixture` writes, deterministically (the same bytes on every machine):

- ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``),
  ``qrels/test.tsv`` (``query-id``, ``corpus-id``, ``score`` with a header): BEIR;
- ``qrels.trec`` (``qid 0 docid rel``) and ``bm25-like.run`` (``qid Q0 docid rank score
  tag``, a lexical-overlap first stage): TREC.

The text is synthetic: words of :data:`~rerank_plugins.testing.WORDS` (so that the tiny
test checkpoints see no unknown token). Each query has a topic of its own words; per
query, documents are judged 2 (most query words), 1 (a few query words, mostly topic
words) or 0 (a hard negative: one query word among another topic's words), and every
document also holds shared filler words. The collection measures tools, not models.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rerank_plugins.testing.words import WORDS

__all__ = ["EVAL_FIXTURE_SIZE", "write_eval_fixture"]

_QUERIES = 36
_TOPIC_WORDS = 7  # per query, disjoint: 36 * 7 = 252 words; the last 48 are shared filler
_PER_QUERY = {2: 2, 1: 3, 0: 3}  # judged documents per grade, per query
_UNJUDGED_PER_QUERY = 2
EVAL_FIXTURE_SIZE = {"queries": _QUERIES, "documents": _QUERIES * 10}
"""How many queries and documents :func:`write_eval_fixture` writes."""


def _document(rng: random.Random, grade: int, own: list[str], other: list[str]) -> str:
    query_words = own[:4]
    filler = WORDS[_QUERIES * _TOPIC_WORDS :]
    if grade == 2:
        words = rng.sample(query_words, rng.randint(3, 4)) + rng.sample(own[4:], 2)
    elif grade == 1:
        words = rng.sample(query_words, rng.randint(1, 2)) + rng.sample(own[4:], 3)
    else:  # a hard negative: one query word, the rest from another topic
        words = [rng.choice(query_words), *rng.sample(other, 4)]
    words += [rng.choice(filler) for _ in range(rng.randint(12, 40))]
    rng.shuffle(words)
    return " ".join(words)


def write_eval_fixture(directory: str | Path, *, seed: int = 24) -> Path:
    """Write the collection into ``directory`` (created) and return it.

    36 queries, 360 documents (per query: 2 judged 2, 3 judged 1, 3 judged 0, 2
    unjudged, all from its own topic or a neighbour's).

    >>> import tempfile
    >>> root = write_eval_fixture(tempfile.mkdtemp())
    >>> sorted(p.name for p in root.iterdir())
    ['bm25-like.run', 'corpus.jsonl', 'qrels', 'qrels.trec', 'queries.jsonl']
    """
    root = Path(directory)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    topics = [WORDS[i * _TOPIC_WORDS : (i + 1) * _TOPIC_WORDS] for i in range(_QUERIES)]
    queries = {f"q{i:02d}": " ".join(topics[i][:4]) for i in range(_QUERIES)}
    corpus: list[dict[str, str]] = []
    qrels: list[tuple[str, str, int]] = []
    for i, qid in enumerate(queries):
        other = topics[(i + 1) % _QUERIES]
        grades = [g for g, n in _PER_QUERY.items() for _ in range(n)]
        grades += [-1] * _UNJUDGED_PER_QUERY  # -1: unjudged, written like a grade-1 text
        for j, grade in enumerate(grades):
            docid = f"d{i:02d}{j}"
            text = _document(rng, 1 if grade < 0 else grade, topics[i], other)
            corpus.append({"_id": docid, "title": f"{topics[i][rng.randint(4, 6)]}", "text": text})
            if grade >= 0:
                qrels.append((qid, docid, grade))
    order = list(range(len(corpus)))
    rng.shuffle(order)  # the corpus file is not grouped by query
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as out:
        for n in order:
            out.write(json.dumps(corpus[n]) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as out:
        for qid, text in queries.items():
            out.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(root / "qrels" / "test.tsv", "w", encoding="utf-8") as out:
        out.write("query-id\tcorpus-id\tscore\n")
        out.writelines(f"{q}\t{d}\t{r}\n" for q, d, r in qrels)
    with open(root / "qrels.trec", "w", encoding="utf-8") as out:
        out.writelines(f"{q} 0 {d} {r}\n" for q, d, r in qrels)
    _write_overlap_run(root / "bm25-like.run", queries, corpus)
    return root


def _write_overlap_run(path: Path, queries: dict[str, str], corpus: list[dict[str, str]]) -> None:
    """A lexical first stage (query-word counts, ties by document id), top 100 per query."""
    with open(path, "w", encoding="utf-8") as out:
        for qid, text in queries.items():
            words = set(text.split())
            scored = sorted(
                (
                    (-sum(w in words for w in (d["title"] + " " + d["text"]).split()), d["_id"])
                    for d in corpus
                ),
            )[:100]
            for rank, (neg, docid) in enumerate(scored, start=1):
                out.write(f"{qid} Q0 {docid} {rank} {-neg - rank / 1000:.3f} overlap\n")
