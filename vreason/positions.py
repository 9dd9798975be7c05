"""Which prompt positions a controller covers: video tokens (paper), image tokens, or the whole prompt.

Each selector maps the prefill inputs to a [batch, prompt_len] bool mask. ``prompt`` covers every
real (non-padding) prompt token: the paper's future-work extension to text-only LLMs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import PreTrainedModel

from vreason.registry import POSITIONS


def _special_token_positions(model: PreTrainedModel, inputs: Mapping[str, Tensor], attribute: str) -> Tensor:
    token_id = getattr(model.config, attribute, None)
    if token_id is None:
        raise ValueError(
            f"positions: the model's config has no {attribute}; use positions 'prompt' for a text-only model"
        )
    return inputs["input_ids"] == token_id


@POSITIONS.register("video")
def video_positions(model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """Video placeholder tokens (Qwen2.5-VL ``video_token_id``), as in the paper."""
    return _special_token_positions(model, inputs, "video_token_id")


@POSITIONS.register("image")
def image_positions(model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """Image placeholder tokens (``image_token_id``)."""
    return _special_token_positions(model, inputs, "image_token_id")


@POSITIONS.register("prompt")
def prompt_positions(model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """Every non-padding prompt token."""
    mask = inputs.get("attention_mask")
    if mask is None:
        return torch.ones_like(inputs["input_ids"], dtype=torch.bool)
    return mask.bool()


def select_positions(name: str, model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    mask = POSITIONS.get(name)(model, inputs)
    empty = ~mask.any(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"positions {name!r}: samples {rows} of the batch have no such tokens")
    return mask
