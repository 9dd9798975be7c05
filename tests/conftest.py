"""Shared fixtures: tiny real-architecture models built once per session, and their inputs."""

from __future__ import annotations

import os

import pytest
import torch

from vreason.data.synthetic import pattern_frames
from vreason.models import tiny_qwen2_5_vl, tiny_text_lm

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_vl():
    """A random-weight Qwen2.5-VL (real classes) and its real processor."""
    return tiny_qwen2_5_vl(seed=0)


@pytest.fixture(scope="session")
def tiny_lm():
    """A random-weight Qwen2 causal LM and a byte tokenizer."""
    return tiny_text_lm(seed=0)


frames = pattern_frames  # [n, 3, h, w] uint8 stand-in video frames


def prefill(model, inputs, cache):
    """Prefill ``inputs`` into ``cache`` as the engine does (no autograd).

    Returns the prompt's position ids and the greedy first token [batch, 1].
    """
    from vreason.engine import cache_argument
    from vreason.families import prefill_position_ids

    position_ids = prefill_position_ids(model, inputs)
    with torch.no_grad():
        out = model(**inputs, position_ids=position_ids, use_cache=True, **{cache_argument(model): cache})
    return position_ids, out.logits[:, -1].argmax(-1, keepdim=True)


def decode_logits(model, token, prompt_mask, position_ids, cache):
    """Last-position logits of the forward that decodes ``token`` [batch, 1] right after the prompt
    (``prompt_mask`` and ``position_ids`` are the prompt's; grad mode is the caller's)."""
    from vreason.engine import cache_argument

    return model(
        input_ids=token,
        attention_mask=torch.cat([prompt_mask, torch.ones_like(token)], dim=1),
        position_ids=position_ids[..., -1:] + 1,
        use_cache=True,
        **{cache_argument(model): cache},
    ).logits[:, -1]


def vl_batch(processor, specs: list[tuple[str, torch.Tensor]]):
    """Processor inputs for (question, frames) pairs, left-padded."""
    texts = []
    for question, _ in specs:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return processor(
        text=texts,
        videos=[video for _, video in specs],
        return_tensors="pt",
        padding=True,
        do_sample_frames=False,
    )


def lm_batch(tokenizer, questions: list[str]):
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@pytest.fixture(scope="session")
def mp4_videos(tmp_path_factory):
    """Real MP4 files (PyAV) of synthetic clips of different sizes and lengths."""
    from vreason.data.synthetic import ClipSpec, write_clips

    return write_clips(
        tmp_path_factory.mktemp("videos"),
        {
            "right_red": ClipSpec("right", "red", 96, 64, 2),
            "up_blue": ClipSpec("up", "blue", 64, 48, 3),
            "left_green": ClipSpec("left", "green", 96, 64, 1),
        },
    )


def mp4_batch(processor, specs: list[tuple[str, object]], max_frames: int = 8):
    """Processor inputs for (question, mp4 path) pairs: frames sampled and resized by qwen-vl-utils'
    rules (fps 2, 4..max_frames frames) and fed to the real processor, left-padded."""
    from vreason.data.video import VideoConfig, prepare_inputs, video_element_options

    options = video_element_options(VideoConfig(max_frames=max_frames, min_pixels=3136, max_pixels=12544))
    messages = [
        [
            {
                "role": "user",
                "content": [{"type": "video", "video": str(path), **options}, {"type": "text", "text": q}],
            }
        ]
        for q, path in specs
    ]
    return dict(prepare_inputs(processor, messages))


def plain_decode(model, inputs, n: int):
    """The reference for videos, where ``generate``'s positions are wrong: a greedy loop over the bare
    model (batch of one) with the trained positions (``prefill_position_ids``), counting on by one per
    token. Returns the tokens and each forward's last-position logits."""
    from transformers import DynamicCache

    from vreason.engine import cache_argument
    from vreason.families import prefill_position_ids

    position_ids = prefill_position_ids(model, inputs)
    cache = DynamicCache(config=model.config)
    mask, tokens, logits = inputs["attention_mask"], [], []
    with torch.no_grad():
        out = model(
            **inputs,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(model): cache},
        )
        for step in range(n):
            logits.append(out.logits[:, -1].float())
            tokens.append(int(out.logits[0, -1].argmax()))
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            if step < n - 1:
                out = model(
                    input_ids=torch.tensor([[tokens[-1]]]),
                    attention_mask=mask,
                    position_ids=position_ids[..., -1:] + 1 + step,
                    use_cache=True,
                    **{cache_argument(model): cache},
                )
    return tokens, logits
