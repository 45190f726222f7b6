"""Fill-mask with a ModernBERT masked-LM checkpoint (e.g. answerdotai/ModernBERT-base).

Runs the native engine and computes the vocabulary logits only at the ``[MASK]``
positions (the decoder is the largest matrix of the model; the other tokens never reach it).
Needs the ``torch`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
from rerank_plugins._options import checked_options
from rerank_plugins.errors import InputTooLongError, InvalidInputError, UnsupportedModelError
from rerank_plugins.local.base import LocalModel
from rerank_plugins.local.checkpoint import guard_checkpoint_init, load_tokenizer, read_json
from rerank_plugins.local.options import LocalOptions

if TYPE_CHECKING:
    import torch
    from pydantic import SecretStr

    from rerank_plugins.local.engine.modernbert import ModernBert

__all__ = ["FillMask", "MaskPrediction", "top_predictions"]


@dataclass(frozen=True, slots=True)
class MaskPrediction:
    """One candidate for a masked position: the decoded token, its id and its probability."""

    token: str
    token_id: int
    score: float


def _mask_token(directory: Path) -> str:
    path = directory / "tokenizer_config.json"
    declared: Any = read_json(path).get("mask_token") if path.is_file() else None
    if isinstance(declared, dict):
        declared = declared.get("content")
    return declared if isinstance(declared, str) else "[MASK]"


class FillMask(LocalModel):
    """Predicts the tokens behind ``[MASK]`` with a ModernBERT masked-LM checkpoint.

    ``model`` is a hub id or a local directory holding a ``ModernBertForMaskedLM``
    checkpoint. ``device``/``dtype`` as for the cross-encoder (bf16 on CUDA, fp32 on CPU);
    ``cache`` shares the loaded weights with other users of the checkpoint (default True);
    hub options ``revision``, ``cache_dir``, ``local_files_only``, ``token``.
    """

    @checked_options
    @guard_checkpoint_init
    def __init__(
        self,
        model: str | Path,
        *,
        device: str | None = "auto",
        dtype: str | None = "auto",
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | SecretStr | None = None,
        cache: bool = True,
    ) -> None:
        from rerank_plugins.local.engine.modernbert import load_modernbert

        options = LocalOptions(
            device=device,
            dtype=dtype,
            cache=bool(cache),
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
        self._open(model, options)
        self.model = self._shared_weights(
            (FillMask,),
            lambda: load_modernbert(
                self.directory, device=self.device, dtype=self.dtype, config=self.config
            ),
        )
        if self.model.decoder is None:
            raise UnsupportedModelError(
                f"{model} is a ModernBERT {self.model.layout} checkpoint without a masked-LM head"
            )
        self.tokenizer = load_tokenizer(self.directory)
        self.mask_token = _mask_token(self.directory)
        mask_id = self.tokenizer.token_to_id(self.mask_token)
        if mask_id is None:
            raise UnsupportedModelError(f"the tokenizer has no mask token {self.mask_token!r}")
        self.mask_id: int = mask_id
        self.window = self.model.spec.max_position_embeddings

    def predict(self, text: str, *, top_k: int = 5) -> list[list[MaskPrediction]]:
        """For each mask token in ``text``, in order: the ``top_k`` most likely tokens."""
        return self.predict_batch([text], top_k=top_k)[0]

    def predict_batch(
        self, texts: Sequence[str], *, top_k: int = 5
    ) -> list[list[list[MaskPrediction]]]:
        """:meth:`predict` for many texts, in one packed forward; results in input order."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InvalidInputError("texts must be a sequence of strings")
        if top_k < 1:
            raise InvalidInputError(f"top_k must be at least 1, got {top_k}")
        if not texts:
            return []
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encodings]
        no_mask = [i for i, seq in enumerate(ids) if self.mask_id not in seq]
        if no_mask:
            raise InvalidInputError(f"texts {no_mask} hold no {self.mask_token}", indices=no_mask)
        too_long = [i for i, seq in enumerate(ids) if len(seq) > self.window]
        if too_long:
            raise InputTooLongError(
                f"texts {too_long} exceed the {self.window}-token window", indices=too_long
            )
        values, indices, owners = top_predictions(
            self.model, ids, mask_id=self.mask_id, top_k=top_k, device=self.device
        )
        out: list[list[list[MaskPrediction]]] = [[] for _ in texts]
        for owner, vals, idx in zip(owners, values.tolist(), indices.tolist(), strict=True):
            out[owner].append(
                [
                    MaskPrediction(self.tokenizer.decode([t]), t, v)
                    for t, v in zip(idx, vals, strict=True)
                ]
            )
        return out


def top_predictions(
    model: ModernBert,
    ids: Sequence[Sequence[int]],
    *,
    mask_id: int,
    top_k: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The ``top_k`` probabilities (fp32 CPU ``[M, k]``) and token ids (long CPU
    ``[M, k]``) at the ``M`` ``mask_id`` tokens of ``ids`` (one packed forward), with the
    index of the sequence each mask belongs to.

    Mask positions are found on the host from the ids, so the only device-to-host
    copies are the two results at the end.
    """
    torch = require("torch")
    from rerank_plugins.local.engine.packing import pack_sequences

    batch = pack_sequences(ids, device)
    flat = (t for seq in ids for t in seq)
    positions = [j for j, t in enumerate(flat) if t == mask_id]
    owners = [i for i, seq in enumerate(ids) for t in seq if t == mask_id]
    index = torch.tensor(positions, dtype=torch.long).to(device, non_blocking=True)
    with torch.inference_mode():
        probs = model.masked_lm_logits(batch, index).float().softmax(-1)
        top = probs.topk(min(top_k, int(probs.shape[-1])), dim=-1)
    return top.values.cpu(), top.indices.cpu(), owners
