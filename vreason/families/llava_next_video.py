"""LLaVA-NeXT-Video (7B, 34B; CLIP vision tower, Llama/Vicuna language model): 1D positions.

A video is ``n_frames * (p / 2)**2`` ``<video>`` tokens: each frame's ``p x p`` CLIP patch grid
(``p = crop_size / patch_size``, 24 for the 336-px checkpoints; the CLS token dropped) is average-pooled
2 x 2. Every prompt token takes the next 1D position, so the base family's positions are the trained
ones and ``generate`` is a valid oracle. Frames: ``processor_video.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from vreason.families import FAMILIES
from vreason.families.processor_video import ProcessorVideoInputs, tiny_llava_parts


@FAMILIES.register("llava_next_video")
class LlavaNextVideoFamily(ProcessorVideoInputs):
    model_types = ("llava_next_video",)
    processor_classes = ("LlavaNextVideoProcessor",)

    def frame_tokens(self, processor: Any) -> int:
        crop = processor.video_processor.crop_size
        return (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size) // 4

    def model_class(self) -> type:
        from transformers import LlavaNextVideoForConditionalGeneration

        return LlavaNextVideoForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        """CLIP at 32 px with 8-px patches (4 x 4 patches, 4 tokens per frame after pooling), a Llama LM."""
        from transformers import (
            LlavaNextVideoConfig,
            LlavaNextVideoForConditionalGeneration,
            LlavaNextVideoProcessor,
        )
        from transformers.models.llava_next.image_processing_llava_next import LlavaNextImageProcessor
        from transformers.models.llava_next_video.video_processing_llava_next_video import (
            LlavaNextVideoVideoProcessor,
        )

        from vreason.models import finish_tiny_model, tiny_text_config

        dims, tok, image_size, patch, pinpoints = tiny_llava_parts()
        config = LlavaNextVideoConfig(
            text_config={"model_type": "llama", **tiny_text_config(dims, tok)},
            vision_config=dict(
                model_type="clip_vision_model",
                hidden_size=dims.vision_hidden_size,
                intermediate_size=2 * dims.vision_hidden_size,
                num_hidden_layers=dims.vision_depth,
                num_attention_heads=dims.vision_heads,
                image_size=image_size,
                patch_size=patch,
                projection_dim=dims.vision_hidden_size,
            ),
            image_token_index=tok.image_token_id,
            video_token_index=tok.video_token_id,
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-1,
            tie_word_embeddings=False,
        )
        torch.manual_seed(seed)
        model = finish_tiny_model(LlavaNextVideoForConditionalGeneration(config), dims, seed, dtype)
        size, crop = {"shortest_edge": image_size}, {"height": image_size, "width": image_size}
        processor = LlavaNextVideoProcessor(
            video_processor=LlavaNextVideoVideoProcessor(size=size, crop_size=crop),
            image_processor=LlavaNextImageProcessor(
                size=size, crop_size=crop, image_grid_pinpoints=pinpoints
            ),
            tokenizer=tok,
            patch_size=patch,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS
            chat_template=tok.chat_template,
        )
        return model, processor
