"""The generic path: any transformers sequence-classification cross-encoder, padded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerank_plugins._imports import require
from rerank_plugins.errors import CheckpointError
from rerank_plugins.local.checkpoint import remote_code_file
from rerank_plugins.local.tokenization import EncodedPair

if TYPE_CHECKING:
    import torch

__all__ = ["TransformersPairClassifier"]


class TransformersPairClassifier:
    """Runs ``AutoModelForSequenceClassification`` on padded batches.

    ``logits(batch)`` returns a float32 CPU tensor ``[len(batch), num_labels]``.
    """

    padded = True

    def __init__(
        self, directory: Path, *, device: torch.device, dtype: torch.dtype, pad_token_id: int
    ) -> None:
        transformers = require("transformers")
        try:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(directory),
                dtype=dtype,
                attn_implementation="sdpa",
                use_safetensors=True,
                trust_remote_code=False,
            )
        except Exception as exc:  # transformers raises many types for a bad checkpoint
            code = remote_code_file(directory)
            if code is not None:
                raise CheckpointError(
                    f"transformers has no built-in class for {directory} and {code.name} asks "
                    "for the checkpoint's own code (auto_map), which is never run",
                    path=str(code),
                ) from exc
            raise CheckpointError(
                f"transformers cannot load {directory}: {exc}", path=str(directory)
            ) from exc
        self.model: Any = model.to(device).eval()
        self.device = device
        self.pad_token_id = pad_token_id
        self.num_labels = int(model.config.num_labels)
        self._uses_type_ids = int(getattr(model.config, "type_vocab_size", 0) or 0) > 1

    def logits(self, batch: Sequence[EncodedPair]) -> torch.Tensor:
        torch = require("torch")
        longest = max(len(p.ids) for p in batch)
        ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        types = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, pair in enumerate(batch):
            n = len(pair.ids)
            ids[row, :n] = torch.tensor(pair.ids)
            mask[row, :n] = 1
            types[row, :n] = torch.tensor(pair.type_ids)
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if self._uses_type_ids:
            inputs["token_type_ids"] = types.to(self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        return out.logits.float().cpu()
