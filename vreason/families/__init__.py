"""Model families: what is specific to one family of checkpoints, asked for by everything else.

``family_of(model)`` picks the family from ``config.model_type``; the engine, the controllers, the
position selectors and the loaders ask it for positions, placeholder tokens, cache layers and loading,
and never test model types themselves. Adding a family is one module here with a ``Family`` subclass
registered under ``@FAMILIES.register(name)`` (see ``base.py``), plus its tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from vreason.families.base import Family, text_position_ids
from vreason.registry import Registry, import_submodules

FAMILIES = Registry("model family")

import_submodules(__name__, __path__)

__all__ = [
    "FAMILIES",
    "Family",
    "family_for_processor",
    "family_named",
    "family_of",
    "prefill_position_ids",
    "text_position_ids",
]


def family_named(name: str) -> Family:
    """The family registered as ``name`` (e.g. "qwen2_5_vl", "text")."""
    return FAMILIES.get(name)()


def family_for_model_type(model_type: str) -> Family:
    """The family serving checkpoints of ``config.model_type == model_type``; plain causal LMs get the
    text family. A multimodal checkpoint of an unknown family is refused rather than run with
    positions vreason cannot vouch for."""
    for name in FAMILIES.names():
        family = FAMILIES.get(name)()
        if model_type in family.model_types:
            return family
    return FAMILIES.get("text")()


def family_for_processor(processor: Any) -> Family:
    """The family whose checkpoints ship ``processor``'s class (the input building of a processor built or
    loaded without its model); a plain tokenizer gets the text family."""
    name = type(processor).__name__
    for family_name in FAMILIES.names():
        family = FAMILIES.get(family_name)()
        if name in family.processor_classes:
            return family
    if hasattr(processor, "video_processor") or hasattr(processor, "image_processor"):
        known = sorted(c for n in FAMILIES.names() for c in FAMILIES.get(n).processor_classes)
        raise ValueError(f"no model family builds inputs with a {name} (known: {', '.join(known)})")
    return FAMILIES.get("text")()


def family_of(model: PreTrainedModel) -> Family:
    family = family_for_model_type(getattr(model.config, "model_type", ""))
    if not family.multimodal and hasattr(getattr(model, "model", None), "get_rope_index"):
        known = sorted(t for n in FAMILIES.names() for t in FAMILIES.get(n).model_types)
        raise NotImplementedError(
            f"model_type {model.config.model_type!r} uses multimodal rotary positions and vreason has no "
            f"family for it yet (known: {', '.join(known)})"
        )
    return family


def prefill_position_ids(model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """Position ids of the prompt by the model's trained rule (see each family's module).

    Text LMs: [batch, len]. Qwen2-VL / Qwen2.5-VL: [4, batch, len], the 1D text positions (row 0, which
    transformers uses for the attention mask) stacked on the three M-RoPE rows (temporal, height, width).
    """
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    return family_of(model).prefill_position_ids(model, {**inputs, "attention_mask": mask})
