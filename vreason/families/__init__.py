"""Model families: what is specific to one family of checkpoints (today: its rotary position rule).

``prefill_position_ids`` gives the prompt positions a model was trained with; the engine calls it and
never tests model types itself. A family is one module here; Qwen2-VL and Qwen2.5-VL share one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import PreTrainedModel

from vreason.families import qwen2_vl

# model_type -> module with ``prefill_position_ids(model, inputs) -> [4, batch, len]``
MROPE_FAMILIES = {"qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_vl}


def text_position_ids(attention_mask: Tensor) -> Tensor:
    """[batch, len] 1D positions counting real tokens; left padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def prefill_position_ids(model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """Position ids of the prompt by the model's trained rule.

    Text LMs: [batch, len]. Qwen2-VL / Qwen2.5-VL: [4, batch, len], the 1D text positions (row 0, which
    transformers uses for the attention mask) stacked on the three M-RoPE rows (temporal, height, width).
    """
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    family = MROPE_FAMILIES.get(getattr(model.config, "model_type", ""))
    if family is not None:
        return family.prefill_position_ids(model, {**inputs, "attention_mask": mask})
    if hasattr(getattr(model, "model", None), "get_rope_index"):
        raise NotImplementedError(
            f"model_type {model.config.model_type!r} uses multimodal rotary positions and vreason has no "
            f"family module for it yet (known: {', '.join(sorted(MROPE_FAMILIES))})"
        )
    return text_position_ids(mask)
