"""Shared fixtures: tiny real-architecture models built once per session, and their inputs."""

from __future__ import annotations

import os

import pytest
import torch

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


def frames(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """[n, 3, h, w] uint8 frames of a smooth random pattern (a stand-in where no file is needed)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    up = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear", align_corners=False)
    shift = torch.linspace(0, 1, n).view(n, 1, 1, 1)
    return ((up + shift) % 1.0 * 255).to(torch.uint8)


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
