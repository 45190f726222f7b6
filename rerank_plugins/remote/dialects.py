"""The rerank HTTP APIs people run, as pure request builders and response parsers.

A dialect knows three things: where to POST (``path`` under the base URL), what body to
send for one batch, and how to turn the answer back into one score per document of that
batch. Parsers map results by their ``index`` field only: the server's order and any
echoed text are ignored, every index must appear exactly once and be in range.

===============  =================  ======================  ========  ===========  ===============
dialect          path               documents field         max docs  score        instruction
===============  =================  ======================  ========  ===========  ===============
``cohere``       ``/rerank``        ``documents``           1000      probability  ``instruction``
``tei``          ``/rerank``        ``texts``               32        probability  ``instruction``
``voyage``       ``/v1/rerank``     ``documents``           1000      probability  -
``mixedbread``   ``/v1/reranking``  ``input``               1000      probability  -
``nim``          ``/v1/ranking``    ``passages: [{text}]``  512       logit        -
``vllm-score``   ``/score``         ``text_2``              1000      probability  -
``sglang``       ``/v1/rerank``     ``documents``           1000      probability  ``instruct``
===============  =================  ======================  ========  ===========  ===============

``cohere`` is also the shape of vLLM's and Infinity's ``/rerank``, Jina, LiteLLM, Together
and llama.cpp. "max docs" is the documented per-request limit of the reference server
(Cohere, TEI's ``--max-client-batch-size``, Voyage, Mixedbread, NIM); vLLM and SGLang set
none. ``sglang`` is SGLang's ``/v1/rerank`` (a bare array ``[{index, score, document?}]``).

"instruction": the request field that carries a decoder reranker's task instruction
(``RemoteScorer(instruction=...)``). ``instruction`` in the Cohere and TEI shapes is what
``rerank-plugins serve`` reads (and hosted Cohere-shaped APIs such as Contextual AI's);
SGLang's is ``instruct``. The other APIs have no such field (nor has vLLM's ``/score``,
and vLLM ignores fields it does not know), so an instruction for them is refused rather
than sent to be dropped. Servers that speak the Cohere or TEI shape without the field
(vLLM's and Infinity's ``/rerank``, TEI itself) may ignore it: only servers that read it
apply it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import httpx

from rerank_plugins.errors import InvalidInputError, MalformedResponseError
from rerank_plugins.scoring import ScoreKind

__all__ = [
    "DIALECTS",
    "Dialect",
    "DialectName",
    "RequestOptions",
    "endpoint_url",
    "get_dialect",
]

DialectName = Literal["cohere", "tei", "voyage", "mixedbread", "nim", "vllm-score", "sglang"]

# Sigmoid outputs are in [0, 1]; allow float noise, nothing more.
_PROBABILITY_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What a request says beyond query and documents.

    ``truncate``: ask the server to cut over-length documents (``True``) or to refuse
    them (``False``). ``score_kind``: the kind of score asked for.
    """

    model: str | None
    truncate: bool
    score_kind: ScoreKind


class Dialect:
    """One rerank API. Subclasses set the class attributes and implement ``body``.

    ``results_key``: where the list of results sits in the answer (``None``: the answer is
    the list); ``score_key``: the score field of a result (its ``"index"`` places it).
    ``versioned``: the API lives under ``/v1``; an unversioned base URL gets it added.
    ``refuses_overflow``: the API has a switch that makes the server reject over-length
    documents (``overflow="error"`` needs it). ``score_kinds``: the kinds this API can
    return, the first one by default. ``instruction_field``: the request field of a
    decoder reranker's instruction (``None``: the API has none).
    """

    name: ClassVar[str]
    path: ClassVar[str]
    results_key: ClassVar[str | None]
    score_key: ClassVar[str]
    versioned: ClassVar[bool] = False
    max_documents: ClassVar[int]
    score_kinds: ClassVar[tuple[ScoreKind, ...]] = ("probability",)
    refuses_overflow: ClassVar[bool] = False
    instruction_field: ClassVar[str | None] = None

    def request(
        self,
        query: str,
        documents: Sequence[str],
        options: RequestOptions,
        *,
        instruction: str | None = None,
    ) -> dict[str, Any]:
        """The JSON body for one batch, ``instruction`` in the API's own field (refused
        with :class:`InvalidInputError` by an API that has none)."""
        body = self.body(query, documents, options)
        if instruction is not None:
            body[self.check_instruction()] = instruction
        return body

    def check_instruction(self) -> str:
        """The instruction field, or :class:`InvalidInputError` saying the API has none."""
        if self.instruction_field is None:
            takers = sorted(n for n, d in DIALECTS.items() if d.instruction_field is not None)
            raise InvalidInputError(
                f"the {self.name!r} API has no instruction field, so an instruction cannot be "
                f"sent (it would be dropped); dialects that carry one: {', '.join(takers)}"
            )
        return self.instruction_field

    def body(self, query: str, documents: Sequence[str], options: RequestOptions) -> dict[str, Any]:
        """The JSON body for one batch."""
        raise NotImplementedError

    def parse(self, payload: object, positions: Sequence[int]) -> list[float]:
        """Scores of one batch in batch order; ``positions`` are the caller's indices
        of the batch's documents (for error messages)."""
        items = _results(payload, self.results_key, self.name, positions)
        return collect_scores(
            items, positions, index_key="index", score_key=self.score_key, dialect=self.name
        )

    def __repr__(self) -> str:
        return f"<dialect {self.name}>"


def _results(payload: object, key: str | None, dialect: str, positions: Sequence[int]) -> list[Any]:
    """The list of result objects under ``key`` (``None``: the payload is the list)."""
    items = payload.get(key) if key is not None and isinstance(payload, dict) else payload
    if not isinstance(items, list):
        where = f"a JSON object with a {key!r} list" if key else "a JSON list"
        raise MalformedResponseError(
            f"{dialect}: expected {where}, got {_kind_of(payload)}", indices=positions
        )
    return items


def _kind_of(value: object) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:8]}"
    return type(value).__name__


def collect_scores(
    items: Sequence[Any],
    positions: Sequence[int],
    *,
    index_key: str,
    score_key: str,
    dialect: str,
) -> list[float]:
    """Put ``item[score_key]`` at ``item[index_key]``; check that every index of the batch
    appears exactly once, in range, with a finite number.

    Errors name the caller's positions of the affected documents; an out-of-range or
    unreadable index cannot be placed, so it names the whole batch.

    >>> collect_scores([{"i": 1, "s": 0.5}, {"i": 0, "s": 2}], [7, 8],
    ...                index_key="i", score_key="s", dialect="demo")
    [2.0, 0.5]
    """
    n = len(positions)
    scores: list[float | None] = [None] * n
    duplicated: set[int] = set()
    unplaceable: list[str] = []
    non_numeric: list[int] = []
    for item in items:
        index = item.get(index_key) if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int):
            unplaceable.append(f"index {index!r}")
            continue
        if not 0 <= index < n:
            unplaceable.append(f"index {index} (batch of {n})")
            continue
        value = item.get(score_key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            non_numeric.append(index)
            continue
        if scores[index] is not None:
            duplicated.add(index)
        scores[index] = float(value)
    if unplaceable:
        raise MalformedResponseError(
            f"{dialect}: results that cannot be placed: {', '.join(unplaceable[:5])}",
            indices=positions,
        )
    if duplicated:
        bad = sorted(positions[i] for i in duplicated)
        raise MalformedResponseError(
            f"{dialect}: the same index came back more than once for documents {bad}",
            indices=bad,
        )
    bad = sorted({positions[i] for i in non_numeric})
    if bad:
        raise MalformedResponseError(
            f"{dialect}: {score_key!r} is not a number for documents {bad}", indices=bad
        )
    missing = [positions[i] for i, s in enumerate(scores) if s is None]
    if missing:
        raise MalformedResponseError(
            f"{dialect}: no result for documents {missing}", indices=missing
        )
    values = [s for s in scores if s is not None]
    not_finite = [positions[i] for i, s in enumerate(values) if not math.isfinite(s)]
    if not_finite:
        raise MalformedResponseError(
            f"{dialect}: non-finite scores for documents {not_finite}", indices=not_finite
        )
    return values


def check_kind(
    values: Sequence[float], positions: Sequence[int], kind: ScoreKind, dialect: str
) -> None:
    """A probability outside [0, 1] means the declared kind is wrong: say so loudly."""
    if kind != "probability":
        return
    bad = [
        positions[i]
        for i, v in enumerate(values)
        if not -_PROBABILITY_SLACK <= v <= 1.0 + _PROBABILITY_SLACK
    ]
    if bad:
        raise MalformedResponseError(
            f"{dialect}: scores outside [0, 1] for documents {bad[:10]} although the "
            "dialect declares probabilities; this server returns raw scores: pass "
            "score_kind='logit'",
            indices=bad,
        )


class Cohere(Dialect):
    name = "cohere"
    path = "rerank"
    results_key = "results"
    score_key = "relevance_score"
    max_documents = 1000
    score_kinds = ("probability", "logit")  # "logit": e.g. llama.cpp, Infinity raw_scores
    instruction_field = "instruction"  # rerank-plugins serve; Cohere itself has none

    def body(self, query: str, documents: Sequence[str], options: RequestOptions) -> dict[str, Any]:
        # No top_n: the default is every document. No return_documents: texts are never
        # read back (and Cohere v2 has no such field).
        body: dict[str, Any] = {"query": query, "documents": list(documents)}
        if options.model is not None:
            body["model"] = options.model
        return body


class TEI(Dialect):
    name = "tei"
    path = "rerank"
    results_key = None
    score_key = "score"
    max_documents = 32
    score_kinds = ("probability", "logit")
    refuses_overflow = True
    instruction_field = "instruction"  # rerank-plugins serve; TEI itself has none

    def body(self, query: str, documents: Sequence[str], options: RequestOptions) -> dict[str, Any]:
        return {
            "query": query,
            "texts": list(documents),
            "truncate": options.truncate,
            "raw_scores": options.score_kind == "logit",
            "return_text": False,
        }


class Voyage(Dialect):
    name = "voyage"
    path = "rerank"
    results_key = "data"
    score_key = "relevance_score"
    versioned = True
    max_documents = 1000
    refuses_overflow = True

    def body(self, query: str, documents: Sequence[str], options: RequestOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query": query,
            "documents": list(documents),
            "truncation": options.truncate,
        }
        if options.model is not None:
            body["model"] = options.model
        return body


class Mixedbread(Dialect):
    name = "mixedbread"
    path = "reranking"
    results_key = "data"
    score_key = "score"
    versioned = True
    max_documents = 1000

    def body(self, query: str, documents: Sequence[str], options: RequestOptions) -> dict[str, Any]:
        # top_k = the batch size: every document back, whatever the server's default.
        body: dict[str, Any] = {
            "query": query,
            "input": list(documents),
            "top_k": len(documents),
            "return_input": False,
        }
        if options.model is not None:
            body["model"] = options.model
        return body


class NIM(Dialect):
    name = "nim"
    path = "ranking"
    results_key = "rankings"
    score_key = "logit"
    versioned = True
    max_documents = 512
    score_kinds = ("logit",)
    refuses_overflow = True

    def body(self, query: str, documents: Sequence[str], options: RequestOptions) -> dict[str, Any]:
        body: dict[str, Any] = {
            "query": {"text": query},
            "passages": [{"text": d} for d in documents],
            "truncate": "END" if options.truncate else "NONE",
        }
        if options.model is not None:
            body["model"] = options.model
        return body


class VLLMScore(Dialect):
    name = "vllm-score"
    path = "score"
    results_key = "data"
    score_key = "score"
    max_documents = 1000
    score_kinds = ("probability", "logit")
    refuses_overflow = True

    def body(self, query: str, documents: Sequence[str], options: RequestOptions) -> dict[str, Any]:
        body: dict[str, Any] = {"text_1": query, "text_2": list(documents)}
        if options.model is not None:
            body["model"] = options.model
        if options.truncate:
            body["truncate_prompt_tokens"] = -1  # -1: cut to the model's own length
        if options.score_kind == "logit":
            body["use_activation"] = False
        return body


class SGLang(Dialect):
    name = "sglang"
    path = "rerank"
    results_key = None
    score_key = "score"
    versioned = True
    max_documents = 1000
    score_kinds = ("probability", "logit")  # decoder rerankers: P(yes); others: the model's
    instruction_field = "instruct"

    def body(self, query: str, documents: Sequence[str], options: RequestOptions) -> dict[str, Any]:
        # No top_n: every document comes back (sorted by score; placed by index here).
        body: dict[str, Any] = {
            "query": query,
            "documents": list(documents),
            "return_documents": False,
        }
        if options.model is not None:
            body["model"] = options.model
        return body


DIALECTS: dict[str, Dialect] = {
    d.name: d for d in (Cohere(), TEI(), Voyage(), Mixedbread(), NIM(), VLLMScore(), SGLang())
}
"""Every dialect by name."""


def get_dialect(name: str) -> Dialect:
    """The dialect called ``name``; :class:`InvalidInputError` lists the known ones."""
    try:
        return DIALECTS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(
            f"unknown dialect {name!r}; expected one of {sorted(DIALECTS)}"
        ) from None


def endpoint_url(base_url: str, dialect: Dialect) -> httpx.URL:
    """The URL to POST to: ``base_url`` + the dialect's path.

    A base URL that already ends with the path is used as is; a versioned dialect gets
    ``/v1`` when the base URL names no version (``/v1``, ``/v2``, ...).

    >>> str(endpoint_url("http://h:8000/v1", DIALECTS["cohere"]))
    'http://h:8000/v1/rerank'
    >>> str(endpoint_url("http://h:8000", DIALECTS["nim"]))
    'http://h:8000/v1/ranking'
    >>> str(endpoint_url("https://api.cohere.com/v2/rerank", DIALECTS["cohere"]))
    'https://api.cohere.com/v2/rerank'
    """
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidInputError(f"endpoint URL must be http(s)://host/..., got {redact(url)!r}")
    segments = [s for s in url.path.split("/") if s]
    if segments and segments[-1] == dialect.path:
        return url
    has_version = bool(segments) and _is_version(segments[-1])
    if dialect.versioned and not has_version:
        segments.append("v1")
    segments.append(dialect.path)
    return url.copy_with(path="/" + "/".join(segments))


def _is_version(segment: str) -> bool:
    return len(segment) >= 2 and segment[0] == "v" and segment[1:].isdigit()


def redact(url: httpx.URL | str) -> str:
    """The URL without a password or query string (which may carry keys).

    >>> redact("https://user:pw@h/v1?key=abc")
    'https://user:***@h/v1'
    """
    url = httpx.URL(url)
    if url.password:
        url = url.copy_with(username=url.username, password="***")
    return str(url.copy_with(query=None, fragment=None))
