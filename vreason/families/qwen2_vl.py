"""Qwen2-VL and Qwen2.5-VL: the 3D M-RoPE positions these models were trained with.

Each vision block (an image or a video, ``t x h x w`` patches merged ``m x m``) gets positions
``(T, H, W)`` over its grid ``t x h' x w'`` (``h' = h / m``, ``w' = w / m``), offset by the position
where the block starts; text tokens get one position on all three rows, counting on from the
**largest position used so far plus one** (the maximum over the T, H and W rows). This is the rule
of Qwen2.5-VL's original ``get_rope_index`` (and vLLM's, and Video-R1's evaluation):

- Qwen2.5-VL, video: temporal index ``T_i = trunc(i * second_per_grid_t * tokens_per_second)`` for
  grid step ``i`` (kept fractional, truncated after multiplying by the step index, float32 as the
  reference implementations compute it). Images: ``T = 0``.
- Qwen2-VL: ``T_i = i`` (no time scaling).

transformers 5.x instead starts the text after a block at ``start + max(h', w')``, ignoring the
temporal extent: for an 8-second clip at 2 fps (grid [8, 4, 6], 1 s per grid step, 2 tokens per
second) the video reaches ``start + 14`` and the next text token must be ``start + 15``; transformers
gives ``start + 3``. We compute the positions here and never call ``get_rope_index``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from transformers import PreTrainedModel

from vreason.families import FAMILIES
from vreason.families.base import VideoFamily, text_position_ids


def vision_block_positions(
    grid_thw: tuple[int, int, int],
    start: int,
    spatial_merge_size: int,
    second_per_grid_t: float | None,
    tokens_per_second: float | None,
) -> Tensor:
    """[3, t * h' * w'] positions of one vision block whose first position is ``start``.

    Qwen2.5-VL: temporal index ``trunc((i * second_per_grid_t) * tokens_per_second)`` in float32, in
    that order, as the reference implementations compute it (``second_per_grid_t`` is 0 for an image).
    Qwen2-VL (``tokens_per_second=None``): temporal index = grid step ``i``.
    """
    t, h, w = (int(v) for v in grid_thw)
    h, w = h // spatial_merge_size, w // spatial_merge_size
    steps = torch.arange(t)
    if tokens_per_second is None:
        temporal = steps
    else:
        temporal = ((steps * float(second_per_grid_t)) * tokens_per_second).long()  # float32 ops
    t_index = temporal.view(-1, 1).expand(-1, h * w).flatten()
    h_index = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()
    w_index = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()
    return torch.stack([t_index, h_index, w_index]) + start


def mrope_positions(
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
    tokens_per_second: float | None,
    image_grid_thw: Tensor | None = None,
    video_grid_thw: Tensor | None = None,
    second_per_grid_ts: Tensor | None = None,
) -> Tensor:
    """[3, batch, len] M-RoPE positions of a left-padded batch (padding gets 0).

    ``image_grid_thw`` [n_images, 3] and ``video_grid_thw`` [n_videos, 3] list the blocks of the whole
    batch in order of appearance, as the processor returns them; ``second_per_grid_ts`` [n_videos].
    ``tokens_per_second=None`` selects Qwen2-VL's rule (temporal index = grid step).
    """
    images = _grids(image_grid_thw)
    videos = _grids(video_grid_thw)
    seconds: Iterator[float] = iter(
        [float(s) for s in second_per_grid_ts.tolist()] if second_per_grid_ts is not None else []
    )
    out = torch.zeros(3, *input_ids.shape, dtype=torch.long)
    merged = spatial_merge_size**2
    for row in range(input_ids.shape[0]):
        real = attention_mask[row].bool().cpu()
        ids = input_ids[row].cpu()[real].tolist()
        pieces, next_pos, i = [], 0, 0
        while i < len(ids):
            if ids[i] in (image_token_id, video_token_id):
                is_video = ids[i] == video_token_id
                kind = "video" if is_video else "image"
                grid = next(videos if is_video else images, None)
                if grid is None:
                    raise ValueError(f"row {row}: more {kind} blocks in input_ids than {kind}_grid_thw lists")
                n = grid[0] * grid[1] * grid[2] // merged
                if ids[i : i + n] != [ids[i]] * n:
                    raise ValueError(f"row {row}: {kind} block at token {i} is shorter than its grid {grid}")
                timed = is_video and tokens_per_second is not None
                per_step = _second_per_grid_t(seconds, row) if timed else 0.0
                block = vision_block_positions(
                    grid, next_pos, spatial_merge_size, per_step, tokens_per_second
                )
                pieces.append(block)
                next_pos, i = int(block.max()) + 1, i + n
            else:
                j = i
                while j < len(ids) and ids[j] not in (image_token_id, video_token_id):
                    j += 1
                pieces.append(torch.arange(next_pos, next_pos + j - i).expand(3, -1))
                next_pos, i = next_pos + j - i, j
        if pieces:
            out[:, row, real] = torch.cat(pieces, dim=1)
    for kind, left in (("image", images), ("video", videos)):
        if next(left, None) is not None:
            raise ValueError(f"{kind}_grid_thw lists more {kind}s than input_ids holds")
    return out.to(input_ids.device)


def _grids(grid_thw: Tensor | None) -> Iterator[tuple[int, int, int]]:
    return iter([tuple(g) for g in grid_thw.tolist()] if grid_thw is not None else [])


def _second_per_grid_t(seconds: Iterator[float], row: int) -> float:
    value = next(seconds, None)
    if value is None:
        raise ValueError(f"row {row}: a video block has no second_per_grid_ts entry")
    return value


class QwenVisionInputs(VideoFamily):
    """Inputs the Qwen way: qwen-vl-utils samples and resizes the frames (sides multiples of
    ``patch_factor``: 14-px patches merged 2 x 2 = 28, Qwen3-VL's 16-px ones = 32), and the processor is
    told not to sample or resize again; the sampling metadata gives it the fps (temporal positions,
    Qwen3-VL's timestamps)."""

    multimodal = True
    patch_factor = 28

    def video_options(self, video: Any) -> dict[str, Any]:
        from vreason.data.video import video_element_options

        return video_element_options(video, self.patch_factor)

    def load_videos(self, messages: list[dict], defaults: dict[str, Any] | None = None) -> list[Any]:
        from vreason.data.video import load_videos

        return load_videos(messages, defaults, self.patch_factor)

    def video_tokens(self, processor: Any, video: Any) -> int:
        from vreason.data.video import video_tokens

        n_frames, _, height, width = video.frames.shape  # already sampled and resized
        return video_tokens(n_frames, height, width, self.patch_factor)

    def collate(self, processor: Any, messages_batch: list[list[dict]], videos: list[list[Any]]) -> Any:
        from vreason.data.video import collate_inputs

        return collate_inputs(processor, messages_batch, videos)


class _MRopeFamily(QwenVisionInputs):
    """Qwen2-VL's M-RoPE positions on top of the base family; subclasses say how time is scaled."""

    timed = False  # Qwen2.5-VL: the temporal row follows seconds (tokens_per_second)

    def prefill_position_ids(self, model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
        """[4, batch, len]: 1D text positions (row 0, which transformers uses for the attention mask)
        on the trained M-RoPE rows of ``mrope_positions``."""
        config, mask = model.config, inputs["attention_mask"]
        vision = config.vision_config
        rope = mrope_positions(
            inputs["input_ids"],
            mask,
            image_token_id=config.image_token_id,
            video_token_id=config.video_token_id,
            spatial_merge_size=vision.spatial_merge_size,
            tokens_per_second=vision.tokens_per_second if self.timed else None,
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
        )
        return torch.cat([text_position_ids(mask)[None], rope], dim=0)


@FAMILIES.register("qwen2_5_vl")
class Qwen2_5_VLFamily(_MRopeFamily):
    """Qwen2.5-VL (3B-72B; the paper's models): temporal positions in seconds."""

    model_types = ("qwen2_5_vl",)
    processor_classes = ("Qwen2_5_VLProcessor",)
    timed = True

    def model_class(self) -> type:
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        from vreason.models import tiny_qwen2_5_vl

        return tiny_qwen2_5_vl(seed=seed, dtype=dtype)


@FAMILIES.register("qwen2_vl")
class Qwen2VLFamily(_MRopeFamily):
    """Qwen2-VL: the same layout as Qwen2.5-VL, its own vision tower, temporal index = grid step."""

    model_types = ("qwen2_vl",)
    processor_classes = ("Qwen2VLProcessor",)

    def model_class(self) -> type:
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        from vreason.models import (
            CHAT_TEMPLATE,
            TinyDims,
            byte_level_tokenizer,
            finish_tiny_model,
            qwen_vision_token_ids,
            tiny_mrope_section,
            tiny_processor,
            tiny_text_config,
        )

        dims, tok = TinyDims(), byte_level_tokenizer()
        rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": tiny_mrope_section(dims)}
        config = Qwen2VLConfig(
            text_config=tiny_text_config(dims, tok, rope_parameters=rope),
            vision_config=dict(
                depth=dims.vision_depth,
                embed_dim=dims.vision_hidden_size,
                hidden_size=dims.hidden_size,
                num_heads=dims.vision_heads,
                mlp_ratio=2,
            ),
            tie_word_embeddings=False,
            **qwen_vision_token_ids(tok),
        )
        torch.manual_seed(seed)
        model = finish_tiny_model(Qwen2VLForConditionalGeneration(config), dims, seed, dtype)
        like = tiny_processor(tok)
        processor = Qwen2VLProcessor(
            image_processor=like.image_processor,
            tokenizer=tok,
            video_processor=like.video_processor,
            chat_template=CHAT_TEMPLATE,
        )
        return model, processor
