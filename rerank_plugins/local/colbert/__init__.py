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

from rerank_plugins.local.colbert.encoder import ColBERTEncoder, encode_keys_limited
from rerank_plugins.local.colbert.projection import DenseProjection, build_dense, load_projection
from rerank_plugins.local.colbert.scorer import ColBERTScorer
from rerank_plugins.local.colbert.settings import ColBERTSettings
from rerank_plugins.local.colbert.vectors import (
    DEFAULT_CACHE_BYTES,
    DocumentVectorCache,
    TokenVectors,
)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "ColBERTEncoder",
    "ColBERTScorer",
    "ColBERTSettings",
    "DenseProjection",
    "DocumentVectorCache",
    "TokenVectors",
    "build_dense",
    "encode_keys_limited",
    "load_projection",
]
