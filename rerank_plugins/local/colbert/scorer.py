"""The late-interaction scorer (:class:`ColBERTScorer`); the package docstring says how
it follows PyLate and where it differs."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rerank_plugins._options import checked_options
from rerank_plugins.errors import InputTooLongError, InvalidInputError, UnsupportedModelError
from rerank_plugins.local.base import LocalScorer
from rerank_plugins.local.checkpoint import (
    guard_checkpoint_init,
    load_tokenizer,
    read_json,
)
from rerank_plugins.local.chunking import chunk_spans
from rerank_plugins.local.colbert.encoder import ColBERTEncoder, filled
from rerank_plugins.local.colbert.projection import DenseProjection, load_projection
from rerank_plugins.local.colbert.settings import ColBERTSettings
from rerank_plugins.local.colbert.vectors import (
    DEFAULT_CACHE_BYTES,
    DocumentVectorCache,
    TokenVectors,
)
from rerank_plugins.local.detect import is_colbert_checkpoint
from rerank_plugins.local.engine.batching import token_budget_batches
from rerank_plugins.local.engine.modernbert import ModernBertTrunk, load_modernbert
from rerank_plugins.local.maxsim import Reduce, maxsim_many
from rerank_plugins.local.options import LocalOptions
from rerank_plugins.local.progress import BatchProgress
from rerank_plugins.local.tokenization import encode_texts
from rerank_plugins.scoring import OverflowPolicy, Score, check_documents, check_inputs

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = ["ColBERTScorer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    real: int  # tokens that are not query-expansion padding
    truncated: bool
    over: bool = False  # longer than document_length (truncated or chunked)
    windows: tuple[list[int], ...] = ()  # overflow="chunk": each window's ids


def _deprecated_vector_cache(
    cache: DocumentVectorCache | int | None, vector_cache: DocumentVectorCache | int | None
) -> DocumentVectorCache | int | None:
    """``cache=<cache, size or None>``, the old spelling of ``vector_cache=``."""
    if vector_cache is not DEFAULT_CACHE_BYTES:
        raise InvalidInputError(
            "pass vector_cache= only (cache= is the weight-sharing switch, True or False)"
        )
    warnings.warn(
        "ColBERTScorer(cache=<DocumentVectorCache, size or None>) is deprecated; pass "
        "vector_cache= (cache= is now the weight-sharing switch, True or False)",
        DeprecationWarning,
        stacklevel=5,
    )
    return cache


class _ColBERTWeights:
    """Trunk and projection of one checkpoint: the unit shared through the weight cache."""

    def __init__(self, trunk: ModernBertTrunk, projection: nn.Sequential) -> None:
        self.trunk = trunk
        self.projection = projection


class ColBERTScorer(LocalScorer):
    """Scores documents with a PyLate ColBERT checkpoint: MaxSim over token vectors.

    ``model`` is a hub id or a local directory in PyLate's layout with a ModernBERT trunk
    (``lightonai/GTE-ModernColBERT-v1``). Scores have ``kind="maxsim"``: the sum over query
    tokens of the best cosine with a document token (``reduce="sum"``, ColBERT's score) or
    its mean per query token (``reduce="mean"``, in -1..1). ``Score.tokens`` counts the query
    and document tokens the encoder saw.

    Options: ``device``, ``dtype`` ("auto" = bf16 on CUDA, fp32 on CPU; projection, vectors
    and MaxSim are fp32), ``document_length`` (default: the checkpoint's; up to the trunk's
    window, for long documents; ``max_length`` is an alias), ``query_length``, ``overflow``
    ("truncate": cut and flag, "error", or "chunk": a longer document is split into token
    windows of ``chunk_tokens`` (default: all of ``document_length``) overlapping by
    ``chunk_overlap``, each encoded as ``[CLS] [D] window [SEP]``, and MaxSim runs over
    the union of all its windows' token vectors — each query token takes its best match
    anywhere in the document; ``Score.chunks`` says how many windows),
    ``max_tokens_per_doc`` (cut every document to its first N tokens, flagged
    ``truncated``; with "chunk" the cap comes first), ``batch_tokens`` (token budget per forward;
    default :func:`~rerank_plugins.local.engine.device.default_batch_tokens` of the device),
    ``vector_cache`` (a :class:`DocumentVectorCache` to use or share, its size in bytes,
    or ``None``/0 for none; default 256 MiB), ``cache`` (share loaded weights with other
    scorers on the same checkpoint, device and dtype; default True; passing a cache, a
    size or ``None`` here is the deprecated spelling of ``vector_cache``),
    ``show_progress`` (a tqdm bar over document batches: False, True, or None for "when
    stderr is a terminal and the call is more than a few batches").
    Hub options, used for the download only: ``revision``, ``cache_dir``,
    ``local_files_only``, ``token`` (default ``$HF_TOKEN``). Pickling or deep-copying
    re-creates the scorer from its checkpoint directory (with an empty vector cache).
    """

    worker_name = "rerank-colbert"

    @checked_options
    @guard_checkpoint_init
    def __init__(
        self,
        model: str | Path,
        *,
        device: str | None = "auto",
        dtype: str | None = "auto",
        document_length: int | None = None,
        max_length: int | None = None,
        query_length: int | None = None,
        overflow: OverflowPolicy = "truncate",
        chunk_tokens: int | None = None,
        chunk_overlap: int = 0,
        max_tokens_per_doc: int | None = None,
        reduce: Reduce = "sum",
        batch_tokens: int | None = None,
        vector_cache: DocumentVectorCache | int | None = DEFAULT_CACHE_BYTES,
        cache: bool | DocumentVectorCache | int | None = True,
        backend: str = "auto",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | SecretStr | None = None,
        show_progress: bool | None = False,
    ) -> None:
        if reduce not in ("sum", "mean"):
            raise InvalidInputError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        if document_length is not None and max_length is not None:
            raise InvalidInputError("pass document_length or its alias max_length, not both")
        if not isinstance(cache, bool):
            vector_cache = _deprecated_vector_cache(cache, vector_cache)
            cache = True
        options = LocalOptions(
            device=device,
            dtype=dtype,
            max_length=document_length if document_length is not None else max_length,
            overflow=overflow,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            max_tokens_per_doc=max_tokens_per_doc,
            batch_tokens=batch_tokens,
            backend=backend,
            show_progress=show_progress,
            cache=cache,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        self.overflow: OverflowPolicy = overflow
        self.chunking = options.chunking()
        self.max_tokens_per_doc = options.max_tokens_per_doc
        self.reduce: Reduce = reduce
        self._open(model, options)
        if self.config.get("model_type") != "modernbert":
            raise UnsupportedModelError(
                f"{self.name} has a {self.config.get('model_type')!r} trunk; the late-interaction "
                "scorer runs ModernBERT trunks (GTE-ModernColBERT) natively"
            )
        self.window = int(self.config.get("max_position_embeddings") or 8192)
        settings = ColBERTSettings.from_directory(self.directory)
        self.trained_document_length = settings.document_length
        self.settings = dataclasses.replace(
            settings,
            document_length=self._clamp(
                "document_length",
                options.max_length,
                settings.document_length,
            ),
            query_length=self._clamp("query_length", query_length, settings.query_length),
        )

        self.tokenizer = load_tokenizer(self.directory)
        self._specials = self.tokenizer.num_special_tokens_to_add(is_pair=False)
        self.query_prefix_id = self._prefix_id(self.settings.query_prefix)
        self.document_prefix_id = self._prefix_id(self.settings.document_prefix)
        self.skiplist_ids = frozenset(
            i for i in (self._token_id(w) for w in self.settings.skiplist_words) if i is not None
        )
        self.expansion_id = self._expansion_id() if self.settings.do_query_expansion else None

        self._weights = self._shared_weights(
            (ColBERTScorer, backend),
            lambda: _ColBERTWeights(
                load_modernbert(
                    self.directory,
                    device=self.device,
                    dtype=self.dtype,
                    backend=backend,
                    config=self.config,
                ).trunk,
                load_projection(self.directory, device=self.device),
            ),
        )
        self.trunk: ModernBertTrunk = self._weights.trunk
        self.projection = self._weights.projection
        first = self.projection[0]
        assert isinstance(first, DenseProjection)
        if first.in_features != self.trunk.spec.hidden_size:
            raise UnsupportedModelError(
                f"the projection reads {first.in_features} features but the trunk gives "
                f"{self.trunk.spec.hidden_size}"
            )
        self.encoder = ColBERTEncoder(
            self.trunk, self.projection, skiplist_ids=self.skiplist_ids, device=self.device
        )

        if isinstance(vector_cache, DocumentVectorCache):
            self.vector_cache: DocumentVectorCache | None = vector_cache
        elif vector_cache:
            self.vector_cache = DocumentVectorCache(int(vector_cache))
        else:
            self.vector_cache = None
        self._model_key = self._fingerprint()
        self._warned_documents = False
        self._warned_query = False

    def _rebuild_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # From the resolved directory (no download, no token); a fresh vector cache of the
        # same size, since a shared cache object is not meant to travel.
        args, kwargs = super()._rebuild_arguments()
        if "cache" in kwargs and not isinstance(kwargs["cache"], bool):  # the old spelling
            kwargs["vector_cache"] = kwargs.pop("cache")
        if isinstance(kwargs.get("vector_cache"), DocumentVectorCache):
            kwargs["vector_cache"] = kwargs["vector_cache"].max_bytes
        return args, kwargs

    @property
    def cache(self) -> DocumentVectorCache | None:
        """Deprecated name of :attr:`vector_cache` (``cache=`` now means weight sharing)."""
        warnings.warn(
            "ColBERTScorer.cache is deprecated; use ColBERTScorer.vector_cache",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.vector_cache

    # --- set-up helpers -----------------------------------------------------------------

    def _check_directory(self) -> None:
        if not is_colbert_checkpoint(self.directory):
            raise UnsupportedModelError(f"{self.name} is not a PyLate ColBERT checkpoint")

    def _clamp(self, what: str, value: int | None, default: int) -> int:
        if value is None:
            return default
        if value < 4:  # [CLS] prefix [SEP] and room for one token
            raise InvalidInputError(f"{what} must be at least 4, got {value}")
        if value > self.window:
            logger.warning("%s=%d is beyond the model's window; using %d", what, value, self.window)
            return self.window
        return int(value)

    def _token_id(self, token: str) -> int | None:
        # transformers' convert_tokens_to_ids: an unknown token maps to the unknown id.
        found = self.tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
        unk = self._special_token("unk_token")
        return None if unk is None else self.tokenizer.token_to_id(unk)

    def _prefix_id(self, prefix: str) -> int | None:
        if prefix == "":
            return None
        found = self.tokenizer.token_to_id(prefix)
        if found is None:
            # PyLate would add the token and grow the embeddings with untrained rows.
            raise UnsupportedModelError(f"the prefix {prefix!r} is not in {self.name}'s vocabulary")
        return int(found)

    def _special_token(self, name: str) -> str | None:
        for file in ("tokenizer_config.json", "special_tokens_map.json"):
            path = self.directory / file
            if not path.is_file():
                continue
            value = read_json(path).get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return value
        return None

    def _expansion_id(self) -> int:
        # PyLate pads expanded queries with the mask token (else EOS, else the pad token).
        for name in ("mask_token", "eos_token", "pad_token"):
            token = self._special_token(name)
            found = None if token is None else self.tokenizer.token_to_id(token)
            if found is not None:
                return int(found)
        raise UnsupportedModelError(
            f"{self.name} asks for query expansion but its tokenizer has no mask, EOS or pad token"
        )

    def identity(self) -> dict[str, Any]:
        """What changes this scorer's scores: the checkpoint's fingerprint and the resolved
        options (see ``rerank_plugins.identity``)."""
        from rerank_plugins.local.fingerprint import local_identity

        options = {"dtype": self.dtype, "overflow": self.overflow, "reduce": self.reduce}
        options.update(dataclasses.asdict(self.settings))
        return local_identity("ColBERTScorer", self.directory, options)

    def _fingerprint(self) -> tuple[Hashable, ...]:
        stamps = []
        for path in sorted(self.directory.rglob("*.safetensors")):
            stat = path.stat()
            stamps.append((str(path.relative_to(self.directory)), stat.st_size, stat.st_mtime_ns))
        return (
            str(self.directory.resolve()),
            tuple(stamps),
            str(self.device),
            str(self.dtype),
            self.settings.document_prefix,
            tuple(sorted(self.skiplist_ids)),
            self.settings.do_lower_case,
        )

    @property
    def document_length(self) -> int:
        return self.settings.document_length

    @property
    def query_length(self) -> int:
        return self.settings.query_length

    # --- tokenisation -------------------------------------------------------------------

    def _prepare(self, text: str) -> str:
        text = text.strip()  # sentence-transformers strips every input
        return text.lower() if self.settings.do_lower_case else text

    def _assemble(self, content: Any, room: int, prefix: int | None) -> tuple[list[int], bool]:
        cut = len(content.ids) > room
        if cut:
            content.truncate(room)
        ids = list(self.tokenizer.post_process(content, None, add_special_tokens=True).ids)
        if prefix is not None:
            ids.insert(1, prefix)
        return ids, cut

    def _encode_query_ids(self, query: str) -> _Encoded:
        prefix = self.query_prefix_id
        length = self.settings.query_length
        room = length - (prefix is not None) - self._specials
        (content,) = encode_texts(self.tokenizer, [self._prepare(query)], need=room + 1)
        if len(content.ids) > room:
            if self.overflow == "error":
                raise InputTooLongError(
                    f"the query is over {room} tokens long; the model reads at most "
                    f"{room} query tokens (query_length={length})"
                )
            if not self._warned_query:
                self._warned_query = True
                logger.warning("a query was cut to query_length=%d tokens", length)
        ids, cut = self._assemble(content, room, prefix)
        real = len(ids)
        if self.expansion_id is not None:
            ids += [self.expansion_id] * (length - real)
        return _Encoded(ids, real, cut)

    @property
    def _document_room(self) -> int:
        """Document tokens that fit in ``document_length`` beside the prefix and specials."""
        prefix = self.document_prefix_id
        return self.settings.document_length - (prefix is not None) - self._specials

    def _document_frame(self) -> list[int]:
        """``[CLS] [D] [SEP]``: what surrounds a document's tokens."""
        empty = self.tokenizer.encode("", add_special_tokens=False)
        ids = list(self.tokenizer.post_process(empty, None, add_special_tokens=True).ids)
        if self.document_prefix_id is not None:
            ids.insert(1, self.document_prefix_id)
        return ids

    def _encode_document_ids(self, documents: Sequence[str]) -> list[_Encoded]:
        prefix = self.document_prefix_id
        room = self._document_room
        cap = self.max_tokens_per_doc
        # Tokenise only what can be used (one token past it tells a longer text): the cap,
        # or the room; a chunked document is read whole (up to the cap).
        if self.overflow == "chunk":
            need = None if cap is None else cap + 1
        else:
            need = min(room, room if cap is None else cap) + 1
        contents = encode_texts(self.tokenizer, [self._prepare(d) for d in documents], need=need)
        size = self.chunking.size(room) if self.overflow == "chunk" else room
        out = []
        for content in contents:
            capped = cap is not None and len(content.ids) > cap
            if capped and cap is not None:
                content.truncate(cap)
            over = len(content.ids) > room
            if over and self.overflow == "chunk":
                ids = list(content.ids)
                frame = self._document_frame()
                windows = tuple(
                    frame[:-1] + ids[a:b] + frame[-1:]
                    for a, b in chunk_spans(len(ids), size, self.chunking.chunk_overlap)
                )
                n = sum(len(w) for w in windows)
                out.append(_Encoded(windows[0], n, capped, over=True, windows=windows))
                continue
            ids, cut = self._assemble(content, room, prefix)
            out.append(_Encoded(ids, len(ids), cut or capped, over=over))
        return out

    # --- vectors ------------------------------------------------------------------------

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.encoder.project(hidden)

    def _document_vectors(self, encoded: Sequence[_Encoded]) -> list[torch.Tensor]:
        progress = BatchProgress(
            batches=len(
                token_budget_batches(
                    [len(e.ids) for e in encoded], max_tokens=self.batch_tokens, padded=False
                )
            ),
            tokens=sum(len(e.ids) for e in encoded),
            show=self.show_progress,
            desc="encode documents",
        )
        with progress:
            return self.encoder.documents(
                [e.ids for e in encoded], batch_tokens=self.batch_tokens, progress=progress.update
            )

    def _query_vectors(self, encoded: _Encoded) -> torch.Tensor:
        limit = None if self.settings.attend_to_expansion_tokens else encoded.real
        return self.encoder.query(encoded.ids, keys=limit)

    def encode_query(self, query: str) -> TokenVectors:
        """The query's token vectors, fp32 ``[n, dim]`` on the scorer's device (``n`` is
        ``query_length`` with query expansion, else the query's own token count)."""
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-blank str")
        encoded = self._encode_query_ids(query)
        return TokenVectors(self._query_vectors(encoded), len(encoded.ids), encoded.truncated)

    def encode_documents(self, documents: Sequence[str]) -> list[TokenVectors]:
        """Each document's token vectors, in input order (from the cache when there is one).

        Vectors are fp32 ``[n_i, dim]`` on the scorer's device, skiplist tokens removed.
        Score stored vectors with :func:`rerank_plugins.local.maxsim.maxsim_many`. With
        ``overflow="error"`` a document over ``document_length`` raises
        :class:`InputTooLongError` (naming it) before anything is encoded.
        """
        docs = check_documents(documents)
        out: list[TokenVectors | None] = [None] * len(docs)
        todo: dict[str, list[int]] = {}  # duplicates are encoded once
        length = self.settings.document_length
        for i, text in enumerate(docs):
            hit = (
                None
                if self.vector_cache is None
                else self.vector_cache.get(self._cache_key(length, text))
            )
            if hit is not None:
                out[i] = hit
            else:
                todo.setdefault(text, []).append(i)
        texts = list(todo)
        encoded = self._encode_document_ids(texts)
        # A cached entry that was cut overflowed the window unless a cap below it cut it.
        cap = self.max_tokens_per_doc
        capped_only = cap is not None and cap <= self._document_room
        over = sorted(
            [i for i, v in enumerate(out) if v is not None and v.truncated and not capped_only]
            + [i for text, e in zip(texts, encoded, strict=True) if e.over for i in todo[text]]
        )
        if over and self.overflow != "chunk":
            self._overflowed(over)
        if texts:
            for text, e, vectors in zip(texts, encoded, self._vectors_of(encoded), strict=True):
                entry = TokenVectors(
                    vectors, e.real, e.truncated, len(e.windows) if e.windows else None
                )
                if self.vector_cache is not None:
                    self.vector_cache.put(self._cache_key(length, text), entry)
                for i in todo[text]:
                    out[i] = entry
        return filled(out)

    def _vectors_of(self, encoded: Sequence[_Encoded]) -> list[torch.Tensor]:
        """Each document's vectors; a chunked one's windows are encoded in the same
        batches as the other documents and their vectors concatenated (MaxSim over the
        union)."""
        if not any(e.windows for e in encoded):
            return self._document_vectors(encoded)
        flat = [_Encoded(w, len(w), False) for e in encoded for w in (e.windows or (e.ids,))]
        parts = self._document_vectors(flat)
        out = []
        at = 0
        for e in encoded:
            n = len(e.windows) or 1
            out.append(parts[at] if n == 1 else torch.cat(parts[at : at + n]))
            at += n
        return out

    def _cache_key(self, length: int, text: str) -> Hashable:
        # A fixed-size digest, not the text: the cache bounds vector bytes, and keys holding
        # whole documents would grow past that bound (6 MiB of text under a 1 MiB cap).
        # surrogatepass: check_documents lets lone surrogates through (they are valid str).
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=32).digest()
        if self.overflow == "chunk" or self.max_tokens_per_doc is not None:
            chunking = self.chunking
            shape = (self.overflow, chunking.chunk_tokens, chunking.chunk_overlap)
            return (self._model_key, length, shape, self.max_tokens_per_doc, digest)
        return (self._model_key, length, digest)

    def _overflowed(self, indices: list[int]) -> None:
        length = self.settings.document_length
        if self.overflow == "error":
            raise InputTooLongError(
                f"documents {indices} exceed document_length={length} tokens",
                indices=indices,
            )
        if not self._warned_documents:
            self._warned_documents = True
            hint = ""
            if length == self.trained_document_length and length < self.window:
                hint = f"; document_length can go up to the model's window ({self.window})"
            logger.warning(
                "%d document(s) exceed document_length=%d tokens and were truncated "
                "(Score.truncated is set%s; pass overflow='error' to raise instead)",
                len(indices),
                length,
                hint,
            )

    # --- the Scorer protocol ------------------------------------------------------------

    def score(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        if not docs:
            return []
        q = self.encode_query(query)
        encoded = self.encode_documents(docs)
        with torch.inference_mode():
            values = maxsim_many(q.vectors, [e.vectors for e in encoded], reduce=self.reduce)
        return [
            # A cut query is as much a silent loss as a cut document: flag both.
            Score(
                value=v,
                kind="maxsim",
                tokens=q.tokens + e.tokens,
                truncated=e.truncated or q.truncated,
                chunks=e.chunks,
            )
            for v, e in zip(values.tolist(), encoded, strict=True)
        ]

    def _repr_fields(self) -> dict[str, Any]:
        return {
            **super()._repr_fields(),
            "query_length": self.query_length,
            "document_length": self.document_length,
            "reduce": self.reduce,
        }
