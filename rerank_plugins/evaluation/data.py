"""Reading and checking evaluation inputs: BEIR and TREC files.

BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``), ``qrels/<split>.tsv`` (a header, then ``query-id corpus-id score``). TREC:
qrels ``qid iter docid rel`` and runs ``qid Q0 docid rank score tag``. Every file is
checked line by line: a malformed line, a duplicate id or row, an id the collection does
not hold or an empty file is an :class:`~rerank_plugins.errors.EvaluationDataError`
naming the file and line. Nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rerank_plugins.errors import EvaluationDataError

__all__ = [
    "Collection",
    "Qrels",
    "Run",
    "check_run",
    "load_collection",
    "ordered",
    "read_corpus",
    "read_qrels",
    "read_queries",
    "read_run",
]

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]
"""``{query id: {document id: relevance grade}}``."""

Run = dict[str, list[tuple[str, float]]]
"""``{query id: [(document id, score), ...]}``, best first (see :func:`ordered`)."""

_BEIR_HEADER = ("query-id", "corpus-id", "score")


@dataclass(frozen=True)
class Collection:
    """Documents (``title`` and ``text`` joined by a newline), queries and judgments."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: Qrels

    @property
    def judged_queries(self) -> list[str]:
        """The queries evaluated: those with judgments, in the order of the queries file."""
        return [q for q in self.queries if q in self.qrels]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the non-blank lines of a UTF-8 file."""
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line.rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise EvaluationDataError(f"{path} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise EvaluationDataError(f"cannot read {path}: {exc}") from exc


def _read_jsonl(
    path: Path, fields: tuple[str, ...], optional: tuple[str, ...] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    for number, line in _lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationDataError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise EvaluationDataError(f"{path}:{number}: expected a JSON object")
        for name in fields + optional:
            value = row.get(name)
            if name in optional and value is None:
                continue
            if not isinstance(value, str) or (name == "_id" and not value.strip()):
                raise EvaluationDataError(f"{path}:{number}: {name!r} must be a non-empty string")
        yield number, row


def _read_texts(path: Path, what: str, *, titles: bool) -> dict[str, str]:
    texts: dict[str, str] = {}
    optional = ("title",) if titles else ()
    for number, row in _read_jsonl(path, ("_id", "text"), optional):
        key = row["_id"]
        if key in texts:
            raise EvaluationDataError(f"{path}:{number}: duplicate {what} id {key!r}")
        title = row.get("title") or ""
        texts[key] = f"{title}\n{row['text']}" if title else row["text"]
    if not texts:
        raise EvaluationDataError(f"{path} holds no {what}s")
    return texts


def read_corpus(path: str | Path) -> dict[str, str]:
    """``{document id: text}`` from a BEIR ``corpus.jsonl`` (title and text joined)."""
    return _read_texts(Path(path), "document", titles=True)


def read_queries(path: str | Path) -> dict[str, str]:
    """``{query id: text}`` from a BEIR ``queries.jsonl``."""
    return _read_texts(Path(path), "query", titles=False)


def _grade(path: Path, number: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise EvaluationDataError(
            f"{path}:{number}: relevance {text!r} is not an integer"
        ) from None


def read_qrels(path: str | Path) -> Qrels:
    """Judgments from a BEIR qrels TSV (header ``query-id corpus-id score``) or a TREC
    qrels file (``qid iter docid rel``); the format is told by the first line."""
    path = Path(path)
    qrels: Qrels = {}
    beir: bool | None = None
    for number, line in _lines(path):
        fields = line.split("\t") if beir else line.split()
        if beir is None:
            beir = tuple(f.strip().lower() for f in line.split("\t")) == _BEIR_HEADER
            if beir:
                continue
        if beir and len(fields) != 3:
            raise EvaluationDataError(
                f"{path}:{number}: expected 3 tab-separated fields (query-id corpus-id score), "
                f"got {len(fields)}"
            )
        if not beir and len(fields) != 4:
            raise EvaluationDataError(
                f"{path}:{number}: expected 4 fields (qid iter docid rel), got {len(fields)}"
            )
        qid, docid, rel = (
            (fields[0], fields[1], fields[2]) if beir else (fields[0], fields[2], fields[3])
        )
        qid, docid = qid.strip(), docid.strip()
        judged = qrels.setdefault(qid, {})
        if docid in judged:
            raise EvaluationDataError(f"{path}:{number}: duplicate judgment ({qid}, {docid})")
        judged[docid] = _grade(path, number, rel.strip())
    if not qrels:
        raise EvaluationDataError(f"{path} holds no judgments")
    return qrels


def read_run(path: str | Path) -> Run:
    """A TREC run (``qid Q0 docid rank score tag``), each query's documents best first."""
    path = Path(path)
    scores: dict[str, dict[str, float]] = {}
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 6:
            raise EvaluationDataError(
                f"{path}:{number}: expected 6 fields (qid Q0 docid rank score tag), "
                f"got {len(fields)}"
            )
        qid, _, docid, rank, score, _ = fields
        try:
            int(rank)
            value = float(score)
        except ValueError:
            raise EvaluationDataError(
                f"{path}:{number}: rank {rank!r} / score {score!r} are not numbers"
            ) from None
        if not math.isfinite(value):
            raise EvaluationDataError(f"{path}:{number}: score {score!r} is not finite")
        per_query = scores.setdefault(qid, {})
        if docid in per_query:
            raise EvaluationDataError(f"{path}:{number}: duplicate row ({qid}, {docid})")
        per_query[docid] = value
    if not scores:
        raise EvaluationDataError(f"{path} holds no rows")
    return {qid: ordered(docs) for qid, docs in scores.items()}


def ordered(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Best first as trec_eval orders a run: score descending, ties by document id
    descending (the file's rank column is not used, as in trec_eval).

    >>> ordered({"a": 1.0, "b": 2.0, "c": 1.0})
    [('b', 2.0), ('c', 1.0), ('a', 1.0)]
    """
    by_id = sorted(scores.items(), key=lambda item: item[0], reverse=True)
    return sorted(by_id, key=lambda item: item[1], reverse=True)  # stable: keeps id order


def load_collection(
    directory: str | Path | None = None,
    *,
    corpus: str | Path | None = None,
    queries: str | Path | None = None,
    qrels: str | Path | None = None,
    split: str = "test",
) -> Collection:
    """A BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``), with
    any file given on its own instead; judgments are checked against the ids."""
    root = Path(directory) if directory is not None else None

    def where(given: str | Path | None, default: str) -> Path:
        if given is not None:
            return Path(given)
        if root is None:
            raise EvaluationDataError(f"give a BEIR directory or the {default} file")
        return root / default

    collection = Collection(
        corpus=read_corpus(where(corpus, "corpus.jsonl")),
        queries=read_queries(where(queries, "queries.jsonl")),
        qrels=read_qrels(where(qrels, f"qrels/{split}.tsv")),
    )
    _check_ids(
        "the qrels",
        {q: [d for d in docs] for q, docs in collection.qrels.items()},
        collection,
    )
    without = [q for q in collection.judged_queries if not any(collection.qrels[q].values())]
    if without:
        logger.warning(
            "%d judged queries have no relevant document (they score 0 on every metric): %s",
            len(without),
            without[:10],
        )
    return collection


def _check_ids(what: str, ids: Mapping[str, list[str]], collection: Collection) -> None:
    queries = [q for q in ids if q not in collection.queries]
    if queries:
        raise EvaluationDataError(
            f"{what} name {len(queries)} unknown query ids (not in the queries): {queries[:10]}"
        )
    docs = sorted({d for ds in ids.values() for d in ds if d not in collection.corpus})
    if docs:
        raise EvaluationDataError(
            f"{what} name {len(docs)} unknown document ids (not in the corpus): {docs[:10]}"
        )


def check_run(run: Run, collection: Collection) -> Run:
    """The run restricted to the judged queries, after checking every id it names.

    Queries of the run without judgments are not evaluated (logged at WARNING with their
    count); judged queries the run lacks are evaluated with an empty ranking (0).
    """
    _check_ids("the run", {q: [d for d, _ in docs] for q, docs in run.items()}, collection)
    unjudged = [q for q in run if q not in collection.qrels]
    if unjudged:
        logger.warning(
            "%d queries of the run have no judgments and are not evaluated: %s",
            len(unjudged),
            unjudged[:10],
        )
    missing = [q for q in collection.judged_queries if q not in run]
    if missing:
        logger.warning(
            "%d judged queries are not in the run: evaluated as empty rankings (0): %s",
            len(missing),
            missing[:10],
        )
    if len(missing) == len(collection.judged_queries):
        raise EvaluationDataError("the run holds none of the judged queries")
    return {q: list(run.get(q, [])) for q in collection.judged_queries}
