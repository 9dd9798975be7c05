"""The model and the prompt a benchmark runs: random or tiny Qwen2.5-VL, a random hybrid Qwen3.5 or SmolLM2
(from ``vreason.models``), and a batch of the question with a synthetic video (``vreason.data``) or none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from bench.config import BenchConfig, ModelSpec, VideoSetting
from vreason.data.prompts import build_text_messages
from vreason.data.synthetic import pattern_frames
from vreason.data.video import prepare_text_inputs

MODEL_KINDS = ("random_qwen2_5_vl", "random_qwen3_5", "tiny_qwen2_5_vl", "smollm2")


def build_model(spec: ModelSpec):
    """(model, tokenizer) on ``spec.device``; random weights are drawn from ``spec.seed``."""
    dtype = getattr(torch, spec.dtype)
    if spec.kind == "random_qwen2_5_vl":
        model, tokenizer = random_qwen2_5_vl(spec.text, spec.vision, spec.seed, dtype, spec.device)
    elif spec.kind == "random_qwen3_5":
        model, tokenizer = random_qwen3_5(spec.text, spec.vision, spec.seed, dtype, spec.device)
    elif spec.kind == "tiny_qwen2_5_vl":
        from vreason.models import tiny_qwen2_5_vl

        model, processor = tiny_qwen2_5_vl(seed=spec.seed, dtype=dtype)
        model, tokenizer = model.to(spec.device), processor.tokenizer
    elif spec.kind == "smollm2":
        from vreason.models import load_gguf, smollm2_gguf_path

        model, tokenizer = load_gguf(smollm2_gguf_path(), dtype=dtype)
        model = model.to(spec.device)
    else:
        raise SystemExit(f"bench: model.kind {spec.kind!r}; known: {', '.join(MODEL_KINDS)}")
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


def random_qwen3_5(
    text: Mapping[str, Any], vision: Mapping[str, Any], seed: int, dtype: torch.dtype, device: str
):
    """The real ``Qwen3_5ForConditionalGeneration`` (hybrid: Gated DeltaNet linear attention in three of
    every four decoder layers, full attention with a KV cache in every fourth and the last) at any size, with
    random weights and vreason's byte tokenizer. ``text`` holds Qwen3.5 text-config fields, with
    ``rope_theta``, ``partial_rotary_factor`` and ``mrope_section`` (summing to the rotary dimension / 2) in
    place of ``rope_parameters``; the decays of the linear heads are set as a tiny model's
    (``remember_the_prompt``), so the recurrent state carries the video."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    from vreason.families.qwen3_5 import remember_the_prompt
    from vreason.models import byte_level_tokenizer, qwen_vision_token_ids, special_token_ids

    tokenizer = byte_level_tokenizer()
    ids = special_token_ids(tokenizer)
    text = dict(text)
    rope = {
        "rope_type": "default",
        "rope_theta": text.pop("rope_theta", 1e7),
        "partial_rotary_factor": text.pop("partial_rotary_factor", 0.25),
        "mrope_section": list(text.pop("mrope_section")),
        "mrope_interleaved": True,
    }
    token_ids = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen3_5Config(
        text_config={**token_ids, **text, "rope_parameters": rope},
        vision_config=dict(vision),
        tie_word_embeddings=False,
        **qwen_vision_token_ids(tokenizer),
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3_5ForConditionalGeneration._from_config(config, dtype=dtype)
    remember_the_prompt(model)
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
    (same length, so no padding), through the processor of the model's kind (Qwen3.5: Qwen3-VL's, with a
    timestamp before each frame at 2 fps, in the layout the family sends it)."""
    if setting is None:
        return dict(prepare_text_inputs(tokenizer, [build_text_messages(cfg.question)] * batch))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": cfg.question}]}]
    videos = [
        pattern_frames(setting.frames, setting.height, setting.width, cfg.model.seed + i)
        for i in range(batch)
    ]
    if cfg.model.kind == "random_qwen3_5":
        from vreason.families.qwen3_vl import VIDEO_PLACEHOLDER, tiny_qwen3_vl_processor

        processor = tiny_qwen3_vl_processor(tokenizer, setting.min_pixels, setting.max_pixels)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        metadata = {
            "fps": 2.0,
            "total_num_frames": setting.frames,
            "frames_indices": list(range(setting.frames)),
        }
        inputs = processor(
            text=[text.replace(VIDEO_PLACEHOLDER, "<|video_pad|>")] * batch,
            videos=videos,
            video_metadata=[metadata] * batch,
            return_tensors="pt",
            padding=True,
            do_sample_frames=False,
            do_resize=False,  # the frames are the setting's size, as the family's loader sizes them
        )
        return dict(inputs)
    from vreason.models import tiny_processor

    processor = tiny_processor(
        tokenizer, min_pixels=setting.min_pixels, max_pixels=setting.max_pixels, cap_pixels_per_frame=True
    )
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=[text] * batch, videos=videos, return_tensors="pt", padding=True, do_sample_frames=False
    )
    return dict(inputs)


def count_video_tokens(model, inputs: Mapping[str, Tensor]) -> int:
    """Video tokens in the first sample of ``inputs`` (every sample has the same video length)."""
    video_token_id = getattr(model.config, "video_token_id", None)
    return int((inputs["input_ids"][0] == video_token_id).sum())
