"""sentence-transformers' ``CrossEncoder`` as a second reference for Qwen3-Reranker.

Its causal-LM path maps a pair to a ``query`` and a ``document`` message, renders them
with the checkpoint's chat template (the tiny checkpoint's renders the card's prompt) and
tokenises the rendered string at once; the score is logit("yes") - logit("no") at the last
position, through a sigmoid by default. The card tokenises prefix, content and suffix
apart: the ids are compared first, then the scores.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rerank_plugins import load_scorer
from rerank_plugins.local.decoder import DecoderScorer
from rerank_plugins.testing import QWEN3_RERANKER_CHAT_TEMPLATE, make_qwen3_reranker_checkpoint
from tests.local.test_decoder import qwen3_card_inputs

sentence_transformers = pytest.importorskip("sentence_transformers")

# A dozen pairs whose documents start with what could merge across a tokenisation
# boundary: punctuation, digits, newlines, spaces, non-Latin scripts, combining marks.
PAIRS = [
    ("what is w7?", "w7 w8 w9 is the answer"),
    ("what is w7?", ".,;: punctuation first"),
    ("what is w7?", "12345 digits first"),
    ("what is w7?", "\n\nnewlines first\nand inside"),
    ("w1 w5", " a leading space"),
    ("w1 w5", "\ttab, then words"),
    ("w1 w5", "日本語の文書です"),
    ("w1 w5", "Привет мир"),
    ("日本語の質問", "e\u0301 combining mark first"),
    ("日本語の質問", "'s contraction first"),
    ("w3", "<think>\n\n</think> inside"),
    ("w3", "9"),
]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_qwen3_reranker_checkpoint(tmp_path_factory.mktemp("ckpt") / "qwen3-reranker")


@pytest.fixture(scope="module")
def cross_encoder(qwen3_dir: Path) -> object:
    return sentence_transformers.CrossEncoder(str(qwen3_dir), device="cpu")


def st_ids(model: object, query: str, document: str) -> list[int]:
    """The token ids sentence-transformers feeds the model for one pair."""
    features = model.preprocess([(query, document)])  # type: ignore[attr-defined]
    ids = features["input_ids"].reshape(-1)
    mask = features.get("attention_mask")
    if mask is not None:
        ids = ids[mask.reshape(-1).bool()]
    return [int(i) for i in ids]


def test_the_chat_template_renders_the_cards_prompt(qwen3_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(qwen3_dir))
    assert tok.chat_template == QWEN3_RERANKER_CHAT_TEMPLATE  # loaded from chat_template.jinja
    messages = [{"role": "query", "content": "q?"}, {"role": "document", "content": "d."}]
    card = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n<Instruct>: {}\n<Query>: q?\n<Document>: d.<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    default = "Given a web search query, retrieve relevant passages that answer the query"
    assert tok.apply_chat_template(messages, tokenize=False) == card.format(default)
    told = tok.apply_chat_template(messages, tokenize=False, instruction="Find it")
    assert told == card.format("Find it")
    with pytest.raises(Exception, match="one query and one document"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_sentence_transformers_ids_equal_the_cards_procedure(
    qwen3_dir: Path, cross_encoder: object
) -> None:
    """Rendering at once and tokenising apart give the same ids for every pair here: the
    pieces the card tokenises apart meet at special tokens (``<|im_end|>``) or at the
    template's own "user\\n" / "<Instruct>" boundary, never inside a document."""
    scorer = DecoderScorer(qwen3_dir, device="cpu")
    for query, document in PAIRS:
        card = qwen3_card_inputs(qwen3_dir, query, [document], max_length=8192, instruction=None)[0]
        _, (ours,) = scorer.prompt.encode(query, [document])
        assert st_ids(cross_encoder, query, document) == card == ours.ids, (query, document)


def test_sentence_transformers_logits_equal_ours(qwen3_dir: Path, cross_encoder: object) -> None:
    ours = load_scorer(qwen3_dir, device="cpu", output="logit")
    want = [ours.score(q, [d])[0].value for q, d in PAIRS]
    # Identity: the raw logit("yes") - logit("no"); a batch of 5 mixes padded lengths.
    raw = cross_encoder.predict(  # type: ignore[attr-defined]
        PAIRS, batch_size=5, activation_fn=torch.nn.Identity(), show_progress_bar=False
    )
    assert [float(x) for x in raw] == pytest.approx(want, abs=1e-4)
    assert max(want) - min(want) > 1e-3  # the pairs really score differently
    # Its default for a causal LM is a sigmoid: our probability output, P(yes) over {no, yes}.
    probabilities = cross_encoder.predict(  # type: ignore[attr-defined]
        PAIRS, batch_size=5, show_progress_bar=False
    )
    default = load_scorer(qwen3_dir, device="cpu")
    ours_p = [default.score(q, [d])[0].value for q, d in PAIRS]
    assert [float(x) for x in probabilities] == pytest.approx(ours_p, abs=1e-5)
    assert ours_p == pytest.approx([1 / (1 + math.exp(-x)) for x in want], abs=1e-6)


def test_a_template_instruction_equals_our_instruction(
    qwen3_dir: Path, cross_encoder: object
) -> None:
    instruction = "Find the passage that shares a word with the query"
    pairs = PAIRS[:4]
    raw = cross_encoder.predict(  # type: ignore[attr-defined]
        pairs,
        activation_fn=torch.nn.Identity(),
        show_progress_bar=False,
        processing_kwargs={"chat_template": {"instruction": instruction}},
    )
    ours = load_scorer(qwen3_dir, device="cpu", output="logit", instruction=instruction)
    want = [ours.score(q, [d])[0].value for q, d in pairs]
    assert [float(x) for x in raw] == pytest.approx(want, abs=1e-4)
    plain = load_scorer(qwen3_dir, device="cpu", output="logit")
    default = [plain.score(q, [d])[0].value for q, d in pairs]
    assert want != pytest.approx(default, abs=1e-6)  # the instruction reached the prompt
