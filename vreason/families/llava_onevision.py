"""LLaVA-OneVision (0.5B-72B; SigLIP vision tower, Qwen2 language model): 1D positions.

A video is ``n_frames * ceil(p / 2)**2 + 1`` ``<video>`` tokens: each frame's ``p x p`` SigLIP patch grid
(``p = image_size / patch_size``, 27 for the 384-px checkpoints) is pooled 2 x 2 (bilinear), and one
learned newline embedding closes the video. Every token of the prompt, video tokens included, takes
the next 1D position (the Qwen2 language model's ordinary RoPE), so the base family's positions are
the trained ones and ``generate`` is a valid oracle. Frames: ``processor_video.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedModel

from vreason.families import FAMILIES
from vreason.families.processor_video import ProcessorVideoInputs, tiny_llava_parts


@FAMILIES.register("llava_onevision")
class LlavaOnevisionFamily(ProcessorVideoInputs):
    model_types = ("llava_onevision",)
    processor_classes = ("LlavaOnevisionProcessor",)
    extra_video_tokens = 1  # the newline embedding after the last frame

    def frame_tokens(self, processor: Any) -> int:
        side = math.isqrt(processor.num_image_tokens)
        return math.ceil(side / 2) ** 2

    def model_class(self) -> type:
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        """SigLIP at 32 px with 8-px patches (4 x 4 patches, 4 tokens per frame after pooling), a Qwen2 LM."""
        from transformers import (
            LlavaOnevisionConfig,
            LlavaOnevisionForConditionalGeneration,
            LlavaOnevisionProcessor,
        )
        from transformers.models.llava_onevision.image_processing_llava_onevision import (
            LlavaOnevisionImageProcessor,
        )
        from transformers.models.llava_onevision.video_processing_llava_onevision import (
            LlavaOnevisionVideoProcessor,
        )

        from vreason.models import finish_tiny_model, tiny_text_config

        dims, tok, image_size, patch, pinpoints = tiny_llava_parts()
        config = LlavaOnevisionConfig(
            text_config={"model_type": "qwen2", **tiny_text_config(dims, tok)},
            vision_config=dict(
                model_type="siglip_vision_model",
                hidden_size=dims.vision_hidden_size,
                intermediate_size=2 * dims.vision_hidden_size,
                num_hidden_layers=dims.vision_depth,
                num_attention_heads=dims.vision_heads,
                image_size=image_size,
                patch_size=patch,
                vision_use_head=False,
            ),
            image_token_index=tok.image_token_id,
            video_token_index=tok.video_token_id,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            image_grid_pinpoints=pinpoints,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = finish_tiny_model(LlavaOnevisionForConditionalGeneration(config), dims, seed, dtype)
        size = {"height": image_size, "width": image_size}
        processor = LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
            tokenizer=tok,
            video_processor=LlavaOnevisionVideoProcessor(size=size),
            num_image_tokens=(image_size // patch) ** 2,
            vision_feature_select_strategy="full",
            chat_template=tok.chat_template,
        )
        return model, processor
