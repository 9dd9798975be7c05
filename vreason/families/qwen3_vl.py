"""Qwen3-VL and Qwen3-VL-MoE: M-RoPE (interleaved) with one block per frame and timestamps as text.

The processor writes a video as one line per temporal patch (two frames), ``<t seconds>`` text followed by
``<|vision_start|>`` + ``h' * w'`` video tokens + ``<|vision_end|>``: time is told by the timestamp
tokens, not by the rotary temporal row. The trained rule (Qwen3-VL's original ``get_rope_index``) splits
each video grid ``[t, h, w]`` into ``t`` blocks of ``[1, h, w]`` and positions every block like an
image: temporal index 0 (the row stays at the block's start), height and width over the merged grid,
and the text after a block starts at the block's largest position plus one (over the t, h and w rows),
which for a one-step block is ``start + max(h', w')``. transformers 5.x's ``get_rope_index`` advances by
``max(h', w')`` and so agrees here (it is wrong only for multi-step blocks, which Qwen3-VL never has):
``generate`` is a valid oracle for this family.

Frames: qwen-vl-utils with Qwen3-VL's settings (``image_patch_size=16``: 16-px patches merged 2 x 2, frame
sides multiples of 32), as Qwen3-VL's model card reads videos.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from vreason.families import FAMILIES
from vreason.families.base import text_position_ids
from vreason.families.qwen2_vl import _MRopeFamily, mrope_positions


def frame_grids(video_grid_thw: Tensor | None) -> Tensor | None:
    """[sum of t, 3]: each video grid ``[t, h, w]`` split into ``t`` one-step grids ``[1, h, w]``."""
    if video_grid_thw is None:
        return None
    frames = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0).clone()
    frames[:, 0] = 1
    return frames


VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"


def tiny_qwen3_vl_processor(
    tokenizer: Any, min_pixels: int = 4 * 32 * 32, max_pixels: int = 16 * 32 * 32
) -> Any:
    """A real Qwen3VLProcessor around ``tokenizer``, by default sized for tiny models (frames of 4-16
    32-px tiles; the benchmark's proxies pass larger frames)."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from vreason.models import CHAT_TEMPLATE

    pixels = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(patch_size=16, size=pixels),
        tokenizer=tokenizer,
        # frames arrive already sampled and sized by qwen-vl-utils; the processor must not cap them again
        video_processor=Qwen3VLVideoProcessor(size=pixels, cap_pixels_per_frame=False),
        chat_template=CHAT_TEMPLATE,
    )


class _Qwen3VLFamily(_MRopeFamily):
    processor_classes = ("Qwen3VLProcessor",)
    patch_factor = 32

    def collate(self, processor: Any, messages_batch: list[list[dict]], videos: list[list[Any]]) -> Any:
        """The Qwen way (``collate_inputs``), with the prompt layout Qwen3-VL was trained on.

        The chat template writes a video as ``<|vision_start|><|video_pad|><|vision_end|>``. Qwen3-VL's own
        processor (Qwen's, and transformers 4.57) replaces that whole triple by the per-frame lines
        ``<t seconds><|vision_start|>...<|vision_end|>``; transformers 5.x replaces only ``<|video_pad|>``
        and leaves one extra ``<|vision_start|>`` before the first timestamp and one extra
        ``<|vision_end|>`` after the last frame. We hand it the bare ``<|video_pad|>`` instead, so the
        prompt is the trained one whichever transformers expands it.
        """
        from vreason.data.video import collate_inputs, render_prompts

        texts = [
            text.replace(VIDEO_PLACEHOLDER, "<|video_pad|>")
            for text in render_prompts(processor, messages_batch)
        ]
        return collate_inputs(processor, messages_batch, videos, texts)

    def prefill_position_ids(self, model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
        """[4, batch, len]: 1D text positions (row 0) on the M-RoPE rows, one block per frame."""
        config, mask = model.config, inputs["attention_mask"]
        rope = mrope_positions(
            inputs["input_ids"],
            mask,
            image_token_id=config.image_token_id,
            video_token_id=config.video_token_id,
            spatial_merge_size=config.vision_config.spatial_merge_size,
            tokens_per_second=None,  # one-step blocks: temporal index 0
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=frame_grids(inputs.get("video_grid_thw")),
        )
        return torch.cat([text_position_ids(mask)[None], rope], dim=0)

    def _tiny(self, config_class: type, model_class: type, text_extra: dict, seed: int, dtype: torch.dtype):
        from vreason.models import (
            TinyDims,
            byte_level_tokenizer,
            finish_tiny_model,
            qwen_vision_token_ids,
            tiny_text_config,
        )

        dims, tok = TinyDims(), byte_level_tokenizer()
        head_dim = dims.hidden_size // dims.num_attention_heads
        half = head_dim // 2
        rope = {
            "rope_type": "default",
            "rope_theta": 5e6,
            "mrope_section": [half - 2 * (half // 3), half // 3, half // 3],
            "mrope_interleaved": True,
        }
        config = config_class(
            text_config=tiny_text_config(dims, tok, head_dim=head_dim, rope_parameters=rope, **text_extra),
            vision_config=dict(
                depth=dims.vision_depth,
                hidden_size=dims.vision_hidden_size,
                intermediate_size=2 * dims.vision_hidden_size,
                num_heads=dims.vision_heads,
                out_hidden_size=dims.hidden_size,
                patch_size=16,
                num_position_embeddings=64,  # an 8 x 8 grid of learned positions, interpolated
                deepstack_visual_indexes=[0],
            ),
            tie_word_embeddings=False,
            **qwen_vision_token_ids(tok),
        )
        torch.manual_seed(seed)
        model = finish_tiny_model(model_class(config), dims, seed, dtype)
        return model, tiny_qwen3_vl_processor(tok)


@FAMILIES.register("qwen3_vl")
class Qwen3VLFamily(_Qwen3VLFamily):
    """Qwen3-VL (2B-32B dense)."""

    model_types = ("qwen3_vl",)

    def model_class(self) -> type:
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

        return self._tiny(Qwen3VLConfig, Qwen3VLForConditionalGeneration, {}, seed, dtype)


@FAMILIES.register("qwen3_vl_moe")
class Qwen3VLMoeFamily(_Qwen3VLFamily):
    """Qwen3-VL-MoE (30B-A3B, 235B-A22B): Qwen3-VL's vision tower and positions, a mixture-of-experts LM."""

    model_types = ("qwen3_vl_moe",)

    def model_class(self) -> type:
        from transformers import Qwen3VLMoeForConditionalGeneration

        return Qwen3VLMoeForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

        experts = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
        return self._tiny(Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration, experts, seed, dtype)
