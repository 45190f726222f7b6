"""Draw ``past_the_window.png``: does the answer move a long document's score, wherever it is?

One document about three windows long, with a short passage (the answer) inserted at
every position; scored with ``overflow="truncate"`` and with ``overflow="chunk"`` (max and
mean over windows). Plotted: the score's change from the same document without the
answer, against the answer's position. A tiny random-weight checkpoint stands in for a
trained reranker (no download), so the "answer" is the passage this model scores highest
among 400 random ones and the rest of the document is made of the passages it scores
lowest (a trained reranker scores the passage that answers the query high and unrelated
text low); the sizes of the changes mean nothing. Where the change is exactly zero, the
model never read the answer. Run from the repository root (a few seconds)::

    python docs/figures/past_the_window.py
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rerank_plugins.local.cross_encoder import CrossEncoderScorer
from rerank_plugins.testing import make_modernbert_checkpoint, random_text

WINDOW = 256
QUERY = "w1 w2 w3 w4 w5 w6 w7 w8"
DOC_TOKENS = 700
OUT = Path(__file__).with_suffix(".png")


def main() -> None:
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        directory = make_modernbert_checkpoint(
            Path(tmp) / "ckpt", config={"max_position_embeddings": WINDOW}
        )

        def scorer(**options: Any) -> CrossEncoderScorer:
            return CrossEncoderScorer(directory, device="cpu", output="logit", **options)

        passages = [random_text(rng, 16) for _ in range(400)]
        scores = scorer().score(QUERY, passages)
        ranked = sorted(range(len(passages)), key=lambda i: scores[i].value)
        answer = passages[ranked[-1]].split()
        filler = " ".join(passages[i] for i in ranked[: DOC_TOKENS // 16]).split()
        scorers = {
            'overflow="truncate"': scorer(overflow="truncate"),
            'overflow="chunk" (max)': scorer(overflow="chunk"),
            'overflow="chunk", aggregate="mean"': scorer(overflow="chunk", aggregate="mean"),
        }
        positions = list(range(0, DOC_TOKENS - len(answer), 10))
        docs = [" ".join(filler[:p] + answer + filler[p + len(answer) :]) for p in positions]
        base = " ".join(filler)
        room = WINDOW - 3 - len(QUERY.split())
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for policy, scorer in scorers.items():
            without = scorer.score(QUERY, [base])[0].value
            values = [s.value - without for s in scorer.score(QUERY, docs)]
            ax.plot(positions, values, label=policy, marker=".", lw=1)
        ax.axvline(room, color="grey", ls="--", lw=1)
        ax.text(room + 5, ax.get_ylim()[1] * 0.9, "end of the window", color="grey", fontsize=8)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xlabel("position of the answer in the document (tokens)")
        ax.set_ylabel("score change (logit)")
        ax.set_title(f"a {DOC_TOKENS}-token document, a {WINDOW}-token window")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
