"""Late-interaction scorer for PyLate ColBERT checkpoints (first of all GTE-ModernColBERT-v1).

The checkpoint layout is PyLate's (a sentence-transformers layout): ``modules.json`` lists
a Transformer at the root (a bare ModernBERT: ``config.json`` + ``*.safetensors``) and one
or more ``pylate.models.Dense.Dense`` projections (``1_Dense/config.json`` +
``1_Dense/model.safetensors``: ``linear.weight``, optional ``linear.bias``, the
``activation_function`` by name); ``config_sentence_transformers.json`` holds the
prefixes, ``query_length``, ``document_length``, ``skiplist_words``,
``do_query_expansion`` and ``attend_to_expansion_tokens``; ``sentence_bert_config.json``
holds ``do_lower_case``.

Encoding follows ``pylate.models.ColBERT`` (1.6) token for token:

- text is stripped (and lower-cased when ``do_lower_case``), tokenised with the
  checkpoint's tokenizer into ``[CLS] … [SEP]`` of at most ``length - 1`` tokens, then the
  prefix token (``"[Q] "`` / ``"[D] "``, looked up in the vocabulary) is inserted after the
  first token: ``[CLS] [Q] … [SEP]`` holds at most ``query_length`` tokens and
  ``[CLS] [D] … [SEP]`` at most ``document_length``;
- with ``do_query_expansion`` the query is padded with ``[MASK]`` to ``query_length``; the
  expansion tokens get vectors of their own and count in MaxSim; unless
  ``attend_to_expansion_tokens`` no token attends to them (they attend to the real ones);
- token vectors: trunk → every Dense (``activation(linear(x))``) → L2 normalisation;
- documents drop the tokens whose id is a ``skiplist_words`` entry (punctuation by
  default; a word missing from the vocabulary maps to ``[UNK]`` as in transformers'
  ``convert_tokens_to_ids``); queries keep every token.

Where we differ from PyLate on purpose:

- MaxSim never lets padding win. PyLate's ``rank.rerank`` zero-pads the candidates'
  vectors to a common length without a mask, so a query token whose real similarities are
  all negative gets 0 from a padding slot (documents shorter than the longest candidate
  score higher than they should). We score each document over its own tokens only;
  :func:`rerank_plugins.local.maxsim.maxsim` without a mask reproduces PyLate's numbers.
- Documents are packed (no padding tokens) and batched by a token budget; PyLate pads
  batches of 32. The maths per document is the same.
- ``document_length`` may be raised up to the trunk's window to score long documents
  whole (PyLate accepts it too, but the model was trained at the configured length).
- An expansion token farther than a local layer's window from every real token has no
  key to attend to. We define its attention output as zero, which is what transformers'
  sdpa path (PyLate's default) computes; its eager path differs. (GTE-ModernColBERT does
  no query expansion, and ±64-token windows cover its 48-token queries anyway.)

Document vectors can be cached (:class:`DocumentVectorCache`, on by default): reranking the
same candidates for many queries then encodes each document once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import string
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from rerank_plugins._options import Rebuildable, checked_options
from rerank_plugins.errors import InputTooLongError, InvalidInputError, UnsupportedModelError
from rerank_plugins.local.checkpoint import (
    HUB_OPTIONS,
    guard_checkpoint_init,
    load_tokenizer,
    read_json,
    resolve_checkpoint,
)
from rerank_plugins.local.chunking import ChunkOptions, chunk_spans
from rerank_plugins.local.detect import is_colbert_checkpoint
from rerank_plugins.local.engine.attention import pack_sequences
from rerank_plugins.local.engine.device import pick_device, pick_dtype
from rerank_plugins.local.engine.modernbert import ModernBertTrunk, activation, load_modernbert
from rerank_plugins.local.engine.packing import token_budget_batches
from rerank_plugins.local.engine.rope import apply_rotary, default_inv_freq, rotary_cos_sin
from rerank_plugins.local.maxsim import Reduce, maxsim_many
from rerank_plugins.local.progress import BatchProgress, check_show_progress
from rerank_plugins.local.tokenization import check_max_document_tokens
from rerank_plugins.local.weights import checkpoint_key, shared_weights
from rerank_plugins.local.worker import LocalWorker
from rerank_plugins.scoring import OverflowPolicy, Score, check_documents, check_inputs

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "ColBERTEncoder",
    "ColBERTScorer",
    "ColBERTSettings",
    "DenseProjection",
    "DocumentVectorCache",
    "TokenVectors",
    "load_projection",
]

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 256 * 2**20
"""Default bound of a scorer's document-vector cache: 256 MiB (about 1,700 documents of
300 tokens at 128 fp32 values per token)."""

_POLICIES = ("truncate", "error", "chunk")
_DENSE_TYPES = frozenset(
    {
        "pylate.models.Dense.Dense",
        "pylate.models.Dense",
        "sentence_transformers.models.Dense",
        "sentence_transformers.models.Dense.Dense",
    }
)
# Activations by the names sentence-transformers writes (never imported by name).
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.activation.ReLU": F.relu,
    "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
    "torch.nn.modules.activation.SiLU": F.silu,
}


def _read_modules(directory: Path) -> list[dict[str, Any]]:
    path = directory / "modules.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise UnsupportedModelError(f"{path} is not a list of modules")
    return sorted(data, key=lambda e: int(e.get("idx", 0)))


@dataclass(frozen=True)
class ColBERTSettings:
    """How a checkpoint encodes text, from ``config_sentence_transformers.json`` and
    ``sentence_bert_config.json`` (PyLate's defaults for keys they lack)."""

    query_prefix: str = "[Q] "
    document_prefix: str = "[D] "
    query_length: int = 32
    document_length: int = 180
    do_query_expansion: bool = True
    attend_to_expansion_tokens: bool = False
    skiplist_words: tuple[str, ...] = tuple(string.punctuation)
    do_lower_case: bool = False

    @classmethod
    def from_directory(cls, directory: Path) -> ColBERTSettings:
        st_path = directory / "config_sentence_transformers.json"
        st = read_json(st_path) if st_path.is_file() else {}
        sbert_path = directory / "sentence_bert_config.json"
        sbert = read_json(sbert_path) if sbert_path.is_file() else {}
        d = cls()

        def pick(key: str, default: Any) -> Any:
            value = st.get(key)
            return default if value is None else value

        expansion = bool(pick("do_query_expansion", d.do_query_expansion))
        settings = cls(
            query_prefix=str(pick("query_prefix", d.query_prefix)),
            document_prefix=str(pick("document_prefix", d.document_prefix)),
            query_length=int(pick("query_length", d.query_length)),
            document_length=int(pick("document_length", d.document_length)),
            do_query_expansion=expansion,
            # PyLate: without expansion there is nothing to attend to.
            attend_to_expansion_tokens=expansion
            and bool(pick("attend_to_expansion_tokens", d.attend_to_expansion_tokens)),
            skiplist_words=tuple(str(w) for w in pick("skiplist_words", d.skiplist_words)),
            do_lower_case=bool(sbert.get("do_lower_case", False)),
        )
        if settings.query_length < 4 or settings.document_length < 4:
            raise UnsupportedModelError(
                f"{st_path}: query_length and document_length must be at least 4"
            )
        return settings


@dataclass(frozen=True, eq=False)
class TokenVectors:
    """The token vectors of one encoded text.

    ``vectors`` is fp32 ``[n, dim]``, L2-normalised rows, on the scorer's device (for a
    document: its tokens minus the skiplist; for a query: every token, expansion tokens
    included). ``tokens`` is the length of the sequence the encoder saw (prefix and
    special tokens included; summed over the windows of a chunked document, whose
    ``chunks`` says how many) and ``truncated`` whether the text was cut to fit it.
    """

    vectors: torch.Tensor
    tokens: int
    truncated: bool
    chunks: int | None = None  # windows of a document longer than document_length

    @property
    def nbytes(self) -> int:
        return int(self.vectors.numel() * self.vectors.element_size())


class DocumentVectorCache:
    """A bounded, thread-safe LRU cache of document :class:`TokenVectors`.

    Size is the bytes of the stored vectors, at most ``max_bytes``: storing an entry first
    evicts the least recently used ones (a hit refreshes an entry) until it fits; an entry
    larger than ``max_bytes`` is not stored. Keys are built by the scorer from the model
    (checkpoint, device, dtype, prefix, skiplist), the document length settings and a
    fixed-size digest of the document text (never the text itself), so one cache can be
    shared by several scorers. Vectors live on the scorer's device (GPU memory on CUDA).
    ``hits``, ``misses`` and ``evictions`` count what happened since creation or :meth:`clear`.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise InvalidInputError(f"max_bytes must be non-negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, TokenVectors] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: Hashable) -> TokenVectors | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: Hashable, value: TokenVectors) -> None:
        size = value.nbytes
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:
                return
            while self._entries and self._bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[key] = value
            self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = self.evictions = 0

    @property
    def nbytes(self) -> int:
        """Bytes of vectors held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return (
            f"DocumentVectorCache(entries={len(self)}, nbytes={self._bytes}, "
            f"max_bytes={self.max_bytes})"
        )


class DenseProjection(nn.Module):
    """PyLate's ``Dense``: ``activation(linear(x))`` (+ ``residual(x)`` or ``x`` when the
    config asks for a residual). ``x [T, in]`` → ``[T, out]``."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.in_features = int(config["in_features"])
        self.out_features = int(config["out_features"])
        name = str(config.get("activation_function", "torch.nn.modules.linear.Identity"))
        if name not in _ACTIVATIONS:
            raise UnsupportedModelError(
                f"Dense activation {name!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        self.activation_name = name
        self._act = _ACTIVATIONS[name]
        self.linear = nn.Linear(self.in_features, self.out_features, bias=bool(config.get("bias")))
        self.use_residual = bool(config.get("use_residual", False))
        self.residual: nn.Linear | None = None
        if self.use_residual and self.in_features != self.out_features:
            self.residual = nn.Linear(self.in_features, self.out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._act(self.linear(x))
        if self.use_residual:
            out = out + (x if self.residual is None else self.residual(x))
        return out


def load_projection(directory: Path, *, device: torch.device) -> nn.Sequential:
    """The chain of Dense modules that ``modules.json`` lists after the root Transformer,
    in fp32 on ``device``. Other module types are skipped, as PyLate skips them."""
    from rerank_plugins._imports import require

    st = require("safetensors.torch")
    entries = _read_modules(directory)
    if not entries or entries[0].get("path", "") not in ("", "."):
        raise UnsupportedModelError(
            f"{directory}/modules.json does not start with the Transformer at the root"
        )
    layers: list[nn.Module] = []
    for entry in entries[1:]:
        kind = str(entry.get("type", ""))
        if kind not in _DENSE_TYPES:
            logger.warning("skipping module %r (%s): PyLate keeps only Dense modules", entry, kind)
            continue
        folder = directory / str(entry.get("path", ""))
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise UnsupportedModelError(
                f"{folder} has no model.safetensors (pickled weights are not loaded)"
            )
        state = st.load_file(str(weights), device="cpu")
        try:
            dense = build_dense(read_json(folder / "config.json"), state, device=device)
        except RuntimeError as exc:
            raise UnsupportedModelError(f"{weights} does not match its config.json: {exc}") from exc
        layers.append(dense)
    if not layers:
        raise UnsupportedModelError(f"{directory}/modules.json lists no Dense projection")
    return nn.Sequential(*layers).eval()


def build_dense(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], *, device: torch.device
) -> DenseProjection:
    """A fp32 :class:`DenseProjection` on ``device`` from its config and state dict (the
    tensors move first, then the ``meta``-built module takes them over)."""
    with torch.device("meta"):
        dense = DenseProjection(config)
    placed = {k: v.to(device=device, dtype=torch.float32) for k, v in state.items()}
    dense.load_state_dict(placed, strict=True, assign=True)
    return dense


@dataclass(frozen=True)
class _Encoded:
    ids: list[int]
    real: int  # tokens that are not query-expansion padding
    truncated: bool
    over: bool = False  # longer than document_length (truncated or chunked)
    windows: tuple[list[int], ...] = ()  # overflow="chunk": each window's ids


class _ColBERTWeights:
    """Trunk and projection of one checkpoint: the unit shared through the weight cache."""

    def __init__(self, trunk: ModernBertTrunk, projection: nn.Sequential) -> None:
        self.trunk = trunk
        self.projection = projection


class ColBERTScorer(Rebuildable):
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
    default 4,096 on the CPU, 32,768 on a GPU),
    ``cache`` (a :class:`DocumentVectorCache` to use or share, its size in bytes, or
    ``None``/0 for none; default 256 MiB; ``False`` also turns off weight sharing),
    ``show_progress`` (a tqdm bar over document batches: False, True, or None for "when
    stderr is a terminal and the call is more than a few batches").
    Loaded weights are shared with other scorers on the same checkpoint, device and dtype.
    Hub options, used for the download only: ``revision``, ``cache_dir``,
    ``local_files_only``, ``token`` (default ``$HF_TOKEN``). Pickling or deep-copying
    re-creates the scorer from its checkpoint directory (with an empty vector cache).
    """

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
        cache: DocumentVectorCache | int | None = DEFAULT_CACHE_BYTES,
        backend: str = "auto",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | SecretStr | None = None,
        show_progress: bool | None = False,
    ) -> None:
        if overflow not in _POLICIES:
            raise InvalidInputError(f"overflow must be one of {_POLICIES}, got {overflow!r}")
        if reduce not in ("sum", "mean"):
            raise InvalidInputError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
        if batch_tokens is not None and batch_tokens <= 0:
            raise InvalidInputError(f"batch_tokens must be positive, got {batch_tokens}")
        if document_length is not None and max_length is not None:
            raise InvalidInputError("pass document_length or its alias max_length, not both")
        self.show_progress = check_show_progress(show_progress)
        self.directory = resolve_checkpoint(
            model,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        self.name = str(model)
        if not is_colbert_checkpoint(self.directory):
            raise UnsupportedModelError(f"{self.name} is not a PyLate ColBERT checkpoint")
        self.config = read_json(self.directory / "config.json")
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
                document_length if document_length is not None else max_length,
                settings.document_length,
            ),
            query_length=self._clamp("query_length", query_length, settings.query_length),
        )
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.overflow: OverflowPolicy = overflow
        self.chunking = ChunkOptions(chunk_tokens=chunk_tokens, chunk_overlap=chunk_overlap)
        self.max_tokens_per_doc = check_max_document_tokens(max_tokens_per_doc)
        self.reduce: Reduce = reduce
        if batch_tokens is None:
            # Measured on CPU: 4K-token batches stay in cache (15-20% faster than 16K).
            batch_tokens = 4096 if self.device.type == "cpu" else 32768
        self.batch_tokens = batch_tokens

        self.tokenizer = load_tokenizer(self.directory)
        self._specials = self.tokenizer.num_special_tokens_to_add(is_pair=False)
        self.query_prefix_id = self._prefix_id(self.settings.query_prefix)
        self.document_prefix_id = self._prefix_id(self.settings.document_prefix)
        self.skiplist_ids = frozenset(
            i for i in (self._token_id(w) for w in self.settings.skiplist_words) if i is not None
        )
        self.expansion_id = self._expansion_id() if self.settings.do_query_expansion else None

        self._weights = shared_weights(
            (ColBERTScorer, backend, checkpoint_key(self.directory), str(self.device), self.dtype),
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
            cache=cache is not False,
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

        if isinstance(cache, DocumentVectorCache):
            self.cache: DocumentVectorCache | None = cache
        elif cache:
            self.cache = DocumentVectorCache(int(cache))
        else:
            self.cache = None
        self._model_key = self._fingerprint()
        self._warned_documents = False
        self._warned_query = False
        self._worker = LocalWorker("rerank-colbert")

    def _rebuild_arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # From the resolved directory (no download, no token); a fresh vector cache of the
        # same size, since a shared cache object is not meant to travel.
        args, kwargs = super()._rebuild_arguments()
        for name in HUB_OPTIONS:
            kwargs.pop(name, None)
        kwargs.pop("model", None)
        if isinstance(kwargs.get("cache"), DocumentVectorCache):
            kwargs["cache"] = kwargs["cache"].max_bytes
        return (str(self.directory), *args[1:]), kwargs

    # --- set-up helpers -----------------------------------------------------------------

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
        content = self.tokenizer.encode(self._prepare(query), add_special_tokens=False)
        if len(content.ids) > room:
            if self.overflow == "error":
                raise InputTooLongError(
                    f"the query is {len(content.ids)} tokens long; the model reads at most "
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
        contents = self.tokenizer.encode_batch(
            [self._prepare(d) for d in documents], add_special_tokens=False
        )
        cap = self.max_tokens_per_doc
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
            hit = None if self.cache is None else self.cache.get(self._cache_key(length, text))
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
                if self.cache is not None:
                    self.cache.put(self._cache_key(length, text), entry)
                for i in todo[text]:
                    out[i] = entry
        return _filled(out)

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

    async def ascore(self, query: str, documents: Sequence[str]) -> list[Score]:
        docs = check_inputs(query, documents)
        if not docs:
            return []
        result: list[Score] = await self._worker.run(self.score, query, docs)
        return result

    def __repr__(self) -> str:
        return (
            f"ColBERTScorer(model={self.name!r}, device={str(self.device)!r}, "
            f"query_length={self.query_length}, document_length={self.document_length}, "
            f"reduce={self.reduce!r})"
        )


class ColBERTEncoder:
    """Token ids → L2-normalised token vectors: trunk → projection → normalisation.

    The device half of :class:`ColBERTScorer`, kept apart from tokenisation and caching so
    that it can be built from modules on any device (CI traces it on a fake CUDA device).
    Nothing is read back from the device: vectors stay there, and which tokens a document
    keeps is decided on the host from its ids.
    """

    def __init__(
        self,
        trunk: ModernBertTrunk,
        projection: nn.Module,
        *,
        skiplist_ids: frozenset[int],
        device: torch.device,
    ) -> None:
        self.trunk = trunk
        self.projection = projection
        self.skiplist_ids = skiplist_ids
        self.device = device

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[T, hidden]`` → fp32 ``[T, dim]`` unit vectors."""
        return F.normalize(self.projection(hidden.float()), p=2, dim=-1)

    @torch.inference_mode()
    def documents(
        self,
        ids: Sequence[Sequence[int]],
        *,
        batch_tokens: int,
        progress: Callable[[int], object] | None = None,
    ) -> list[torch.Tensor]:
        """Each document's vectors ``[n_i, dim]`` (skiplist tokens dropped), input order;
        ``progress(tokens)`` is called after each batch."""
        out: list[torch.Tensor | None] = [None] * len(ids)
        batches = token_budget_batches([len(i) for i in ids], max_tokens=batch_tokens, padded=False)
        skip = self.skiplist_ids
        for batch in batches:
            packed = pack_sequences([ids[i] for i in batch], self.device)
            vectors = self.project(self.trunk.encode(packed))
            # Kept tokens are chosen on the host (a device boolean mask would sync).
            kept = [j for j, t in enumerate(t for i in batch for t in ids[i]) if t not in skip]
            counts = [sum(t not in skip for t in ids[i]) for i in batch]
            index = torch.tensor(kept, dtype=torch.long).to(self.device, non_blocking=True)
            parts = vectors.index_select(0, index).split(counts)
            for i, part in zip(batch, parts, strict=True):
                out[i] = part.clone()  # its own storage: a cached entry holds only its rows
            if progress is not None:
                progress(sum(packed.lengths))  # tokens done (a progress bar)
        return _filled(out)

    @torch.inference_mode()
    def query(self, ids: Sequence[int], *, keys: int | None = None) -> torch.Tensor:
        """The query's vectors ``[len(ids), dim]``; with ``keys=n`` every token attends
        only to the first ``n`` tokens (query expansion without attending to it)."""
        if keys is None or keys >= len(ids):
            hidden = self.trunk.encode(pack_sequences([ids], self.device))
        else:
            tensor = torch.tensor(list(ids), dtype=torch.long).to(self.device)
            hidden = encode_keys_limited(self.trunk, tensor, keys)
        return self.project(hidden)


def _filled(items: list[Any]) -> list[Any]:
    missing = [i for i, v in enumerate(items) if v is None]
    if missing:
        raise AssertionError(f"no result at {missing}")  # every index is filled above
    return items


def encode_keys_limited(trunk: ModernBertTrunk, ids: torch.Tensor, n_keys: int) -> torch.Tensor:
    """The trunk's forward over one sequence ``ids [L]`` in which every token attends only to
    the first ``n_keys`` tokens (within its layer's window) → hidden states ``[L, hidden]``.

    This is ColBERT's query expansion without ``attend_to_expansion_tokens``: the real
    tokens never see the ``[MASK]`` padding, the padding sees the real tokens. The packed
    engine has no such asymmetric mask, and queries are a few dozen tokens, so this runs
    the same layer maths (as :meth:`ModernBertTrunk.encode_exits`) with a dense ``[L, L]``
    mask. A row with no visible key gets a zero attention output.
    """
    spec = trunk.spec
    length = int(ids.shape[0])
    heads, head_dim = spec.num_heads, spec.head_dim
    positions = torch.arange(length, device=ids.device)
    distance = (positions.unsqueeze(1) - positions.unsqueeze(0)).abs()
    keys = (positions < n_keys).unsqueeze(0)
    act = activation(spec.hidden_activation)
    x = trunk.embeddings.norm(trunk.embeddings.tok_embeddings(ids))
    tables: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, layer in enumerate(trunk.layers):
        layer_: Any = layer
        theta, window = spec.thetas[i], spec.windows[i]
        if theta not in tables:
            tables[theta] = rotary_cos_sin(default_inv_freq(head_dim, theta), positions)
        cos, sin = tables[theta]
        allowed = keys if window is None else keys & (distance <= window)
        allowed = allowed.expand(length, length)
        h = x if layer_.attn_norm is None else layer_.attn_norm(x)
        q, k, v = layer_.attn.Wqkv(h).view(length, 3, heads, head_dim).unbind(1)
        a = F.scaled_dot_product_attention(
            apply_rotary(q, cos, sin).transpose(0, 1),
            apply_rotary(k, cos, sin).transpose(0, 1),
            v.transpose(0, 1),
            attn_mask=allowed.unsqueeze(0),
            scale=head_dim**-0.5,
        )  # [H, L, D]
        a = torch.where(allowed.any(dim=-1).view(1, length, 1), a, 0.0)
        x = x + layer_.attn.Wo(a.transpose(0, 1).reshape(length, spec.hidden_size))
        gate_in, gate = layer_.mlp.Wi(layer_.mlp_norm(x)).chunk(2, dim=-1)
        x = x + layer_.mlp.Wo(act(gate_in) * gate)
    out: torch.Tensor = trunk.final_norm(x)
    return out
