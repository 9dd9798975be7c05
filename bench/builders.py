"""The model and the prompt a benchmark runs: random or tiny Qwen2.5-VL or SmolLM2 (from
``vreason.models``), and a batch of the question with a synthetic video (``vreason.data``) or none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from bench.config import BenchConfig, ModelSpec, VideoSetting
from vreason.data.prompts import build_text_messages
from vreason.data.synthetic import pattern_frames
from vreason.data.video import prepare_text_inputs


def build_model(spec: ModelSpec):
    """(model, tokenizer) on ``spec.device``; random weights are drawn from ``spec.seed``."""
    dtype = getattr(torch, spec.dtype)
    if spec.kind == "random_qwen2_5_vl":
        model, tokenizer = random_qwen2_5_vl(spec.text, spec.vision, spec.seed, dtype, spec.device)
    elif spec.kind == "tiny_qwen2_5_vl":
        from vreason.models import tiny_qwen2_5_vl

        model, processor = tiny_qwen2_5_vl(seed=spec.seed, dtype=dtype)
        model, tokenizer = model.to(spec.device), processor.tokenizer
    elif spec.kind == "smollm2":
        from vreason.models import load_gguf, smollm2_gguf_path

        model, tokenizer = load_gguf(smollm2_gguf_path(), dtype=dtype)
        model = model.to(spec.device)
    else:
        raise SystemExit(
            f"bench: model.kind {spec.kind!r}; known: random_qwen2_5_vl, tiny_qwen2_5_vl, smollm2"
        )
    return model.eval(), tokenizer


def random_qwen2_5_vl(
    text: Mapping[str, Any], vision: Mapping[str, Any], seed: int, dtype: torch.dtype, device: str
):
    """The real ``Qwen2_5_VLForConditionalGeneration`` at any size, with random weights (the config's own
    init, std ``initializer_range``) and vreason's byte tokenizer; the special-token ids the tokenizer
    makes (256-262) lie inside any vocabulary, so the processor's ids feed the model as they are."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vreason.models import byte_level_tokenizer, qwen2_5_vl_config

    tokenizer = byte_level_tokenizer()
    config = qwen2_5_vl_config(text, vision, tokenizer)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model, tokenizer


class PromptConfig(Protocol):
    """What ``make_inputs`` reads of a config (``BenchConfig``, ``ScalingConfig``)."""

    question: str
    model: ModelSpec


def settings(cfg: BenchConfig) -> list[VideoSetting | None]:
    return list(cfg.videos) or [None]


def setting_name(setting: VideoSetting | None) -> str:
    return "text" if setting is None else setting.name


def make_inputs(cfg: PromptConfig, tokenizer, setting: VideoSetting | None, batch: int) -> dict[str, Tensor]:
    """A batch of the same question; for video, sample i gets the synthetic video of seed ``seed + i``
    (same length, so no padding)."""
    if setting is None:
        return dict(prepare_text_inputs(tokenizer, [build_text_messages(cfg.question)] * batch))
    from vreason.models import tiny_processor

    processor = tiny_processor(
        tokenizer, min_pixels=setting.min_pixels, max_pixels=setting.max_pixels, cap_pixels_per_frame=True
    )
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": cfg.question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    videos = [
        pattern_frames(setting.frames, setting.height, setting.width, cfg.model.seed + i)
        for i in range(batch)
    ]
    inputs = processor(
        text=[text] * batch, videos=videos, return_tensors="pt", padding=True, do_sample_frames=False
    )
    return dict(inputs)


def count_video_tokens(model, inputs: Mapping[str, Tensor]) -> int:
    """Video tokens in the first sample of ``inputs`` (every sample has the same video length)."""
    video_token_id = getattr(model.config, "video_token_id", None)
    return int((inputs["input_ids"][0] == video_token_id).sum())
