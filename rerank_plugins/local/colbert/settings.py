"""How a PyLate checkpoint encodes text: prefixes, lengths, skiplist, lower-casing.

Read from ``config_sentence_transformers.json`` (prefixes, ``query_length``,
``document_length``, ``skiplist_words``, ``do_query_expansion``,
``attend_to_expansion_tokens``) and ``sentence_bert_config.json`` (``do_lower_case``).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerank_plugins.errors import UnsupportedModelError
from rerank_plugins.local.checkpoint import read_json

__all__ = ["ColBERTSettings"]


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
