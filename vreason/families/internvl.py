"""InternVL (2.5 / 3 / 3.5 in transformers' format; InternViT vision tower, Qwen2 language model): 1D
positions, video frames written as image blocks.

InternVLProcessor has no video token in the prompt it returns: it expands a ``<video>`` placeholder into
one line per frame, ``FrameK: <img><IMG_CONTEXT> x image_seq_length</img>``, and an image into the same
``<img>...</img>`` block (``image_seq_length`` tokens per tile). The model scatters vision features into
every ``<IMG_CONTEXT>`` token (``config.image_token_id``), frames and images alike. So the token ids alone
cannot say which ``<IMG_CONTEXT>`` tokens are a video's: this family's ``collate`` refuses a conversation
holding both an image and a video, and then ``token_mask`` "video" (and "image") are exactly the
``<IMG_CONTEXT>`` tokens of the prompt. vreason's benchmark prompts hold one video and no image.

Every prompt token takes the next 1D position (the Qwen2 language model's ordinary RoPE), so the base
family's positions are the trained ones and ``generate`` is a valid oracle. Frames:
``processor_video.py`` (InternVL's own evaluation samples a fixed number of frames uniformly, too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from vreason.families import FAMILIES
from vreason.families.processor_video import ProcessorVideoInputs

NAMED_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


@FAMILIES.register("internvl")
class InternVLFamily(ProcessorVideoInputs):
    model_types = ("internvl",)
    processor_classes = ("InternVLProcessor",)

    def token_mask(self, model: PreTrainedModel, inputs: Mapping[str, Tensor], kind: str) -> Tensor:
        """[batch, len] bool: the ``<IMG_CONTEXT>`` tokens, which carry video frames and images alike
        (``collate`` never lets both into one conversation; see the module docstring)."""
        if kind not in ("video", "image"):
            raise ValueError(f"positions: InternVL has no {kind} tokens")
        return inputs["input_ids"] == model.config.image_token_id

    def collate(self, processor: Any, messages_batch: list[list[dict]], videos: list[list[Any]]) -> Any:
        for i, messages in enumerate(messages_batch):
            kinds = {
                "image" if element.get("type") == "image" or "image" in element else "video"
                for message in messages
                if isinstance(message["content"], list)
                for element in message["content"]
                if element.get("type") in ("image", "video") or "image" in element or "video" in element
            }
            if len(kinds) > 1:
                raise ValueError(
                    f"conversation {i} holds an image and a video: InternVL writes both as <IMG_CONTEXT> "
                    "blocks, so their positions could not be told apart"
                )
        return super().collate(processor, messages_batch, videos)

    def frame_tokens(self, processor: Any) -> int:
        return processor.image_seq_length

    def model_class(self) -> type:
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        """InternViT at 32 px with 8-px patches, pixel-shuffled 2 x 2 (4 tokens per frame), a Qwen2 LM."""
        from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
        from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor
        from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

        from vreason.models import (
            TinyDims,
            byte_level_tokenizer,
            chat_template,
            finish_tiny_model,
            tiny_text_config,
        )

        dims, image_size, patch, downsample = TinyDims(), 32, 8, 0.5
        tok = byte_level_tokenizer(NAMED_TOKENS, chat_template("<IMG_CONTEXT>", "<video>"))
        seq_length = int((image_size // patch) ** 2 * downsample**2)
        config = InternVLConfig(
            text_config={"model_type": "qwen2", **tiny_text_config(dims, tok)},
            vision_config=dict(
                hidden_size=dims.vision_hidden_size,
                intermediate_size=2 * dims.vision_hidden_size,
                num_hidden_layers=dims.vision_depth,
                num_attention_heads=dims.vision_heads,
                image_size=[image_size, image_size],
                patch_size=[patch, patch],
            ),
            image_token_id=tok.context_image_token_id,
            image_seq_length=seq_length,
            downsample_ratio=downsample,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = finish_tiny_model(InternVLForConditionalGeneration(config), dims, seed, dtype)
        size = {"height": image_size, "width": image_size}
        processor = InternVLProcessor(
            image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
            tokenizer=tok,
            video_processor=InternVLVideoProcessor(size=size),
            image_seq_length=seq_length,
            chat_template=tok.chat_template,
        )
        return model, processor
