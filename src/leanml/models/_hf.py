"""Hugging Face encoders as plain modules of named tensor inputs (``pip install leanml[transformers]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError


class HFEncoder(nn.Module):
    """A Hugging Face encoder as a module of named tensor inputs (``input_ids``, ``attention_mask``,
    ``token_type_ids``) that returns the token embeddings (``last_hidden_state``): what the ONNX
    export (with a dynamic sequence axis) and the fidelity metric see."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        named = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        out = self.model(**{k: v for k, v in named.items() if v is not None})
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def load_hf_model(path: Path) -> Any:
    """A local Hugging Face model folder (nothing is downloaded)."""
    if not (path / "config.json").is_file():
        raise InvalidInputError(
            f"model directory {str(path)!r} has no config.json; give a Hugging Face model folder"
        )
    try:
        import transformers
    except ImportError:
        raise InvalidInputError(
            f"model directory {str(path)!r} is a Hugging Face model; install the extra: pip install leanml[transformers]"
        ) from None
    return transformers.AutoModel.from_pretrained(str(path), local_files_only=True).eval()
