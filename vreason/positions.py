"""Which prompt positions a controller covers: video tokens (paper), image tokens, or the whole prompt.

Each selector maps the prefill inputs to a [batch, prompt_len] bool mask. ``prompt`` covers every
real (non-padding) prompt token: the paper's future-work extension to text-only LLMs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import PreTrainedModel

from vreason.families import family_of
from vreason.registry import POSITIONS


@POSITIONS.register("video")
def video_positions(model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """Video placeholder tokens (as the model's family defines them), as in the paper."""
    return family_of(model).token_mask(model, inputs, "video")


@POSITIONS.register("image")
def image_positions(model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """Image placeholder tokens."""
    return family_of(model).token_mask(model, inputs, "image")


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
