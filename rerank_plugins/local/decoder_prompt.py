"""Prompt templates of decoder rerankers, tokenised exactly as their model cards do.

Two templates (pure Python over the Rust ``tokenizers``; no torch):

- ``"qwen3-reranker"`` (Qwen/Qwen3-Reranker-0.6B/4B/8B): the card tokenises a fixed
  prefix (system line, user turn opening), the content
  ``<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}`` and a fixed
  suffix (assistant turn with the empty think block) apart, cuts the content to
  ``max_length - len(prefix) - len(suffix)`` tokens and concatenates. Answer tokens
  ``yes``/``no``; the default instruction is the card's.
- ``"mxbai-rerank-v2"`` (mixedbread-ai/mxbai-rerank-base-v2/large-v2, as its package's
  ``MxbaiRerankV2.prepare_inputs``): chat prefix, ``[instruction: {i}\\n]query: {q}``,
  ``\\n``, ``document: {d}``, ``\\n``, the task prompt ending ``Relevance:``, chat suffix,
  each piece tokenised apart. Answer tokens ``1``/``0``; no default instruction.

Only the document is ever cut (never the suffix, never the query: a query that leaves no
room for a document token raises :class:`InputTooLongError`). With ``overflow="chunk"`` a
longer document is split into windows of its own tokens
(:func:`~rerank_plugins.local.chunking.chunk_spans`), each its own prompt: the template and
query before it, the window, the suffix after it (:class:`DecoderChunks`).

Everything before the document is the same for all of a query's documents; the encoder
reports it as the *shared prefix* so that the model runs it once. For Qwen3 the content is
tokenised in one piece, so a document's first characters could merge with the prefix's
last token: each pair says whether its ids really start with the shared prefix
(``shared``), and those that do not are run whole. The ids are always the card's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rerank_plugins.errors import InputTooLongError, InvalidInputError, UnsupportedModelError
from rerank_plugins.local.chunking import Aggregate, ChunkOptions, check_overflow, chunk_spans
from rerank_plugins.local.tokenization import check_max_document_tokens
from rerank_plugins.scoring import OverflowPolicy

if TYPE_CHECKING:
    from tokenizers import Tokenizer

__all__ = [
    "HUB_TEMPLATES",
    "TEMPLATES",
    "DecoderChunks",
    "DecoderPair",
    "DecoderPrompt",
    "PromptTemplate",
    "template_for",
]

logger = logging.getLogger(__name__)


QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
    'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
    "<|im_end|>\n<|im_start|>user\n"
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\n<|im_start|>user\n"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search "
    "queries. For each query-document pair, carefully analyze the semantic relationship "
    "between them, then provide your binary relevance judgment (0 for not relevant, 1 for "
    "relevant).\nRelevance:"
)


@dataclass(frozen=True)
class PromptTemplate:
    """A decoder reranker's prompt: its name, answer tokens and default instruction."""

    name: str
    positive: str
    negative: str
    default_instruction: str | None


TEMPLATES: dict[str, PromptTemplate] = {
    "qwen3-reranker": PromptTemplate("qwen3-reranker", "yes", "no", QWEN3_INSTRUCTION),
    "mxbai-rerank-v2": PromptTemplate("mxbai-rerank-v2", "1", "0", None),
}

HUB_TEMPLATES: dict[str, str] = {
    "Qwen/Qwen3-Reranker-0.6B": "qwen3-reranker",
    "Qwen/Qwen3-Reranker-4B": "qwen3-reranker",
    "Qwen/Qwen3-Reranker-8B": "qwen3-reranker",
    "mixedbread-ai/mxbai-rerank-base-v2": "mxbai-rerank-v2",
    "mixedbread-ai/mxbai-rerank-large-v2": "mxbai-rerank-v2",
}
"""Hub ids whose checkpoints do not name their template in their own files."""


def template_for(name: str | None, *, hub_id: str | None) -> PromptTemplate:
    """The template ``name`` asks for, else the one :data:`HUB_TEMPLATES` gives ``hub_id``,
    else Qwen3-Reranker's (any causal LM is read as a yes/no reranker, as
    sentence-transformers does)."""
    if name is not None:
        try:
            return TEMPLATES[name]
        except KeyError:
            raise InvalidInputError(
                f"unknown template {name!r}; use one of {sorted(TEMPLATES)}"
            ) from None
    if hub_id is not None:
        for repo, template in HUB_TEMPLATES.items():
            if repo.lower() == hub_id.lower():
                return TEMPLATES[template]
    return TEMPLATES["qwen3-reranker"]


@dataclass(frozen=True, slots=True)
class DecoderPair:
    """The prompt of one (query, document) pair: ``ids`` as the card builds them;
    ``shared`` is True when they start with the query's shared prefix."""

    ids: list[int]
    truncated: bool
    shared: bool

    @property
    def tokens(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class DecoderChunks:
    """A document longer than the window as the prompts of its token windows.

    ``chunks`` are scored like any pair (in the same batches, continuing the shared prefix
    where they start with it) and the document's score is ``aggregate`` over theirs.
    ``truncated`` is true only when ``max_document_tokens`` cut the document first.
    """

    chunks: tuple[DecoderPair, ...]
    truncated: bool
    aggregate: Aggregate

    @property
    def tokens(self) -> int:
        """Tokens of all the windows' prompts: what the document costs in batches."""
        return sum(len(c.ids) for c in self.chunks)


class DecoderPrompt:
    """Builds the token ids of a template's prompts within ``max_length`` tokens.

    ``encode(query, documents, instruction=...)`` returns ``(shared_prefix, pairs)``.
    ``max_document_tokens`` first cuts every document to its first N tokens (flagged).
    ``overflow="truncate"`` cuts documents (flagged, one warning per encoder);
    ``"error"`` raises :class:`InputTooLongError` naming them; ``"chunk"`` gives a
    :class:`DecoderChunks` for each (``chunking``: window size, overlap, aggregate).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: PromptTemplate,
        *,
        max_length: int,
        overflow: OverflowPolicy = "truncate",
        chunking: ChunkOptions | None = None,
        max_document_tokens: int | None = None,
    ) -> None:
        check_overflow(overflow)
        self.chunking = ChunkOptions() if chunking is None else chunking
        self.max_document_tokens = check_max_document_tokens(max_document_tokens)
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.overflow: OverflowPolicy = overflow
        self._warned = False
        self.answer_ids = (self._token(template.negative), self._token(template.positive))
        if template.name == "qwen3-reranker":
            self._fixed = (self._ids(QWEN3_PREFIX), self._ids(QWEN3_SUFFIX))
        else:
            self._fixed = (
                self._ids(MXBAI_PREFIX),
                self._ids("\n") + self._ids(MXBAI_TASK) + self._ids(MXBAI_SUFFIX),
            )
        if len(self._fixed[0]) + len(self._fixed[1]) + 2 > max_length:
            raise InvalidInputError(
                f"max_length={max_length} leaves no room inside the {template.name} template"
            )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def _token(self, text: str) -> int:
        ids = self._ids(text)
        if len(ids) != 1:
            raise UnsupportedModelError(
                f"the tokenizer has no single token for the answer {text!r} "
                f"(it gives {len(ids)} tokens); is this a {self.template.name} checkpoint?"
            )
        return ids[0]

    def encode(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None
    ) -> tuple[list[int], list[DecoderPair | DecoderChunks]]:
        """The shared prefix ids and one :class:`DecoderPair` (or, chunked,
        :class:`DecoderChunks`) per document, in order."""
        if instruction is None:
            instruction = self.template.default_instruction
        if self.template.name == "qwen3-reranker":
            head, bodies, room = self._qwen3(query, documents, instruction)
        else:
            head, bodies, room = self._mxbai(query, documents, instruction)
        # A body is the content up to the document's end: ``len(head)`` tokens of query
        # part, then the document's tokens.
        cap = self.max_document_tokens
        capped = [cap is not None and len(body) > len(head) + cap for body in bodies]
        if cap is not None:
            bodies = [body[: len(head) + cap] for body in bodies]
        over = [i for i, body in enumerate(bodies) if len(body) > room]
        if over and self.overflow == "error":
            raise InputTooLongError(
                f"documents {over} exceed the {self.max_length}-token window "
                f"(template and query {self.max_length - room} tokens)",
                indices=over,
            )
        if over and self.overflow != "chunk" and not self._warned:
            self._warned = True
            logger.warning(
                "%d document(s) exceed the %d-token window and were truncated "
                "(Score.truncated is set; pass overflow='error' to raise, or 'chunk' to "
                "score them in windows)",
                len(over),
                self.max_length,
            )
        shared = self._fixed[0] + head
        size = self.chunking.size(room - len(head)) if over and self.overflow == "chunk" else 0
        pairs: list[DecoderPair | DecoderChunks] = []
        for body, cut in zip(bodies, capped, strict=True):
            if len(body) > room and self.overflow == "chunk":
                lead, doc = body[: len(head)], body[len(head) :]
                spans = chunk_spans(len(doc), size, self.chunking.chunk_overlap)
                windows = tuple(self._pair(lead + doc[a:b], shared, False) for a, b in spans)
                pairs.append(DecoderChunks(windows, cut, self.chunking.aggregate))
            else:
                pairs.append(self._pair(body[:room], shared, cut or len(body) > room))
        return shared, pairs

    def _pair(self, content: list[int], shared: list[int], truncated: bool) -> DecoderPair:
        prefix, suffix = self._fixed
        ids = prefix + content + suffix
        return DecoderPair(
            ids=ids,
            truncated=truncated,
            shared=len(ids) > len(shared) and ids[: len(shared)] == shared,
        )

    def _room(self, used: int) -> int:
        prefix, suffix = self._fixed
        room = self.max_length - len(prefix) - len(suffix)
        if used >= room:
            raise InputTooLongError(
                f"the query (with the {self.template.name} template and instruction) is "
                f"{used + len(prefix) + len(suffix)} tokens long and leaves no room for a "
                f"document in the {self.max_length}-token window; shorten the query"
            )
        return room

    def _qwen3(
        self, query: str, documents: Sequence[str], instruction: str | None
    ) -> tuple[list[int], list[list[int]], int]:
        """Qwen3: the content is tokenised whole; it is cut from its end (the document's)."""
        lead = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: "
        # The lead's last token (the space before the document) merges with the document's
        # first word: the shared prefix stops one token before it.
        head = self._ids(lead)[:-1]
        room = self._room(len(head) + 1)
        bodies = [
            list(e.ids)
            for e in self.tokenizer.encode_batch(
                [lead + d for d in documents], add_special_tokens=False
            )
        ]
        return head, bodies, room

    def _mxbai(
        self, query: str, documents: Sequence[str], instruction: str | None
    ) -> tuple[list[int], list[list[int]], int]:
        """mxbai-rerank-v2: query part, separator and document part tokenised apart."""
        text = f"query: {query}"
        if instruction:
            text = f"instruction: {instruction}\n{text}"
        head = self._ids(text) + self._ids("\n")
        room = self._room(len(head))
        docs = self.tokenizer.encode_batch(
            [f"document: {d}" for d in documents], add_special_tokens=False
        )
        return head, [head + list(e.ids) for e in docs], room
