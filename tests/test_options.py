"""Unknown options are refused with a typed error that names the valid ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from rerank_plugins import RerankError, UnknownOptionError, load_scorer
from rerank_plugins.testing import FunctionScorer


def overlap(query: str, doc: str) -> float:
    return float(len(set(query.split()) & set(doc.split())))


def test_a_local_scorer_refuses_an_unknown_option_and_lists_the_valid_ones(
    modernbert_dir: Path,
) -> None:
    with pytest.raises(UnknownOptionError) as info:
        load_scorer(modernbert_dir, device="cpu", max_seq_length=128)
    message = str(info.value)
    assert (
        "CrossEncoderScorer has no option 'max_seq_length' (did you mean 'max_length'?)" in message
    )
    assert "valid options:" in message and "batch_tokens" in message and "overflow" in message
    assert isinstance(info.value, RerankError) and isinstance(info.value, TypeError)


def test_direct_construction_refuses_unknown_options_too(modernbert_dir: Path) -> None:
    from rerank_plugins import ColBERTScorer, CrossEncoderScorer, MatryoshkaScorer

    for cls in (CrossEncoderScorer, ColBERTScorer, MatryoshkaScorer):
        with pytest.raises(UnknownOptionError, match=f"{cls.__name__} has no option 'batch_size'"):
            cls(modernbert_dir, batch_size=8)  # refused before any file is read


def test_the_remote_scorer_refuses_unknown_options() -> None:
    from rerank_plugins import RemoteScorer

    with pytest.raises(UnknownOptionError, match="RemoteScorer has no option 'api_token'"):
        RemoteScorer("http://127.0.0.1:8000", api_token="x")


@pytest.mark.parametrize(
    ("field", "hint"),
    [("top_k", "top_n"), ("model_name", "model"), ("threshold", "score_threshold")],
)
def test_adapters_refuse_unknown_fields_and_suggest_the_right_name(field: str, hint: str) -> None:
    from rerank_plugins.langchain import RerankCompressor
    from rerank_plugins.llama_index import RerankPostprocessor

    for cls in (RerankCompressor, RerankPostprocessor):
        with pytest.raises(UnknownOptionError) as info:
            cls(scorer=FunctionScorer(overlap), **{field: 3})
        assert f"{cls.__name__} has no option {field!r} (did you mean {hint!r}?)" in str(info.value)


def test_model_validate_also_forbids_extra_fields() -> None:
    from pydantic import ValidationError

    from rerank_plugins.langchain import RerankCompressor

    with pytest.raises(ValidationError, match="top_k"):
        RerankCompressor.model_validate({"scorer": FunctionScorer(overlap), "top_k": 3})
