"""The Family contract: everything model-specific the engine, the controllers and the loaders ask for.

A family is one small class registered under its name with the ``model_type`` values it serves; the
defaults here are those of a plain causal LM (1D positions, every decoder layer has a KV cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel


def text_position_ids(attention_mask: Tensor) -> Tensor:
    """[batch, len] 1D positions counting real tokens; left padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


class Family:
    """One family of checkpoints (subclass per family; register it in ``vreason.families.FAMILIES``).

    Class attributes: ``model_types`` (the checkpoints' ``config.model_type`` values it serves) and
    ``multimodal`` (takes images/videos; such a family also has a tiny random model for tests).
    """

    registry_name: str = "?"
    model_types: tuple[str, ...] = ()
    multimodal: bool = False
    processor_classes: tuple[str, ...] = ()  # class names of the processors its checkpoints ship

    # --- inputs --------------------------------------------------------------------------------------
    # Records -> chat messages -> videos read -> one left-padded processor batch. A text family takes no
    # videos; the Qwen families read them with qwen-vl-utils (``qwen2_vl.py``), the others sample frames
    # and let their processor size them (``processor_video.py``).
    def video_options(self, video: Any) -> dict[str, Any]:
        """The sampling keys a video element carries for this family (from the ``video`` config block)."""
        from vreason.data.video import video_element_options

        return video_element_options(video)

    def load_videos(self, messages: list[dict], defaults: dict[str, Any] | None = None) -> list[Any]:
        """Every video of one conversation, read and sampled (``LoadedVideo`` each); ``defaults`` are
        sampling keys for elements that carry none. Raises ValueError if the family takes no videos."""
        from vreason.data.video import video_elements

        if video_elements(messages):
            raise ValueError(
                f"a video record needs a multimodal model (family {self.registry_name!r} is text-only)"
            )
        return []

    def video_tokens(self, processor: Any, video: Any) -> int:
        """LLM tokens the loaded ``video`` will take in the prompt (checked against video.max_video_tokens)."""
        raise NotImplementedError(f"family {self.registry_name!r} takes no videos")

    def collate(self, processor: Any, messages_batch: list[list[dict]], videos: list[list[Any]]) -> Any:
        """One left-padded batch (a ``BatchFeature``) for conversations whose videos ``load_videos`` read."""
        from vreason.data.video import prepare_text_inputs

        return prepare_text_inputs(processor, messages_batch)

    # --- loading -------------------------------------------------------------------------------------
    def load(self, path: Path, dtype: torch.dtype, **kwargs: Any) -> tuple[PreTrainedModel, Any]:
        """(model, tokenizer) from a local checkpoint directory; the tokenizer pads on the left."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "left"
        return model, tokenizer

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        """A random-weight model of this family's real classes, built in code, and its processor."""
        raise NotImplementedError(f"family {self.registry_name!r} has no tiny model")

    # --- prompt positions ----------------------------------------------------------------------------
    def token_mask(self, model: PreTrainedModel, inputs: Mapping[str, Tensor], kind: str) -> Tensor:
        """[batch, len] bool: the prompt's ``kind`` ("video" or "image") placeholder tokens."""
        token_id = getattr(model.config, f"{kind}_token_id", None)
        if token_id is None:
            raise ValueError(
                f"positions: the model ({model.config.model_type}) has no {kind} tokens; use positions "
                "'prompt' for a text-only model"
            )
        return inputs["input_ids"] == token_id

    def prefill_position_ids(self, model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
        """Position ids of the prompt by the family's trained rule; ``inputs`` has an attention_mask.

        Shape [batch, len] for 1D positions, or [rows, batch, len] for multi-row (M-RoPE) positions.
        Decoding continues from the last prompt token: every row advances by one per generated token.
        """
        return text_position_ids(inputs["attention_mask"])

    # --- cache ---------------------------------------------------------------------------------------
    def kv_layers(self, model: PreTrainedModel) -> list[int]:
        """Indices of the decoder layers that keep keys and values (all of them in a transformer)."""
        return list(range(model.config.get_text_config().num_hidden_layers))


class VideoFamily(Family):
    """A video LMM loaded with its model class and its checkpoint's processor (``AutoProcessor``)."""

    multimodal = True

    def load(self, path: Path, dtype: torch.dtype, **kwargs: Any) -> tuple[PreTrainedModel, Any]:
        from transformers import AutoProcessor

        model = self.model_class().from_pretrained(path, dtype=dtype, **kwargs)
        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "left"
        return model, processor

    def model_class(self) -> type:
        """The transformers class of this family's checkpoints."""
        raise NotImplementedError
