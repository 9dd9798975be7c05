"""Video sampling settings and model inputs (PROTOCOL.md, "Video sampling").

"16 frames at 256*28*28" means: frames at 2 fps, at least 4, at most 16, never more than the file has,
rounded down to even; each frame resized so its pixel count lies in [min_pixels, max_pixels] with sides
multiples of 28. qwen-vl-utils does the sampling and resizing (``video_reader.py``); the transformers
processor is then told not to sample or resize again, and is given the sampling metadata so that temporal
M-RoPE positions use the sampled fps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from transformers import BatchFeature

from vreason.data.video_reader import (
    PATCH_FACTOR,
    LoadedVideo,
    fetch_frames,
    fetch_video,
    resized_frame_size,
)

TEMPORAL_PATCH = 2  # frames per temporal patch: tokens = ceil(n / 2) * (H / 28) * (W / 28)
SAMPLING_KEYS = {"fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels"}


@dataclass
class VideoConfig:
    """The ``video`` config block. Defaults are the 16-frame setting. The 32-frame setting is
    ``max_frames=32, max_pixels=105369``: Video-R1 asked for 128*28*28, and its qwen-vl-utils raised that
    cap to ``int(1.05 * min_pixels)``; stock 0.0.14 honours the smaller number, so we pass 105,369 (PROTOCOL).

    ``nframes`` (a fixed even frame count) replaces fps/min_frames/max_frames; qwen-vl-utils refuses both.
    ``total_pixels`` bounds the whole video's pixels (per frame: an even share over frame pairs);
    ``max_video_tokens`` says the same in tokens (``total_pixels = max_video_tokens * 28 * 28``). Either bound
    stops at ``int(1.05 * min_pixels)`` per frame, so very long videos can still exceed it.
    """

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 16
    nframes: int | None = None
    min_pixels: int = 128 * 28 * 28
    max_pixels: int = 256 * 28 * 28
    total_pixels: int | None = None
    max_video_tokens: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"video.fps must be positive, got {self.fps}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(
                f"video.min_frames ({self.min_frames}) must be in [1, video.max_frames={self.max_frames}]"
            )
        if self.nframes is not None and self.nframes < TEMPORAL_PATCH:
            raise ValueError(f"video.nframes must be at least {TEMPORAL_PATCH}, got {self.nframes}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"video.min_pixels ({self.min_pixels}) must be in (0, video.max_pixels={self.max_pixels}]"
            )
        for name in ("total_pixels", "max_video_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"video.{name} must be null or >= 1, got {getattr(self, name)}")
        if self.total_pixels is not None and self.max_video_tokens is not None:
            raise ValueError("set at most one of video.total_pixels and video.max_video_tokens")


def video_element_options(cfg: VideoConfig, patch_factor: int = PATCH_FACTOR) -> dict[str, Any]:
    """The per-video keys qwen-vl-utils 0.0.14 reads from a ``{"type": "video", ...}`` element.

    ``patch_factor`` (pixels per LLM token side: 28, or 32 for Qwen3-VL) converts ``max_video_tokens``.
    """
    if cfg.nframes is not None:
        options: dict[str, Any] = {"nframes": cfg.nframes}
    else:
        options = {"fps": cfg.fps, "min_frames": cfg.min_frames, "max_frames": cfg.max_frames}
    options |= {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    if cfg.max_video_tokens is not None:
        options["total_pixels"] = cfg.max_video_tokens * patch_factor**2
    elif cfg.total_pixels is not None:
        options["total_pixels"] = cfg.total_pixels
    return options


def _floor_even(x: float) -> int:
    return math.floor(x / TEMPORAL_PATCH) * TEMPORAL_PATCH


def expected_num_frames(duration_s: float, total_frames: int, cfg: VideoConfig) -> int:
    """``n = floor_even(min(max(duration * fps, min_frames), max_frames, total_frames))`` (PROTOCOL).

    As in qwen-vl-utils, ``min_frames`` is first rounded up and ``max_frames`` down to even; a fixed
    ``nframes`` is rounded to the nearest even number.
    """
    if cfg.nframes is not None:
        n = round(cfg.nframes / TEMPORAL_PATCH) * TEMPORAL_PATCH
    else:
        min_frames = math.ceil(cfg.min_frames / TEMPORAL_PATCH) * TEMPORAL_PATCH
        n = _floor_even(min(max(duration_s * cfg.fps, min_frames), _floor_even(cfg.max_frames), total_frames))
    if not TEMPORAL_PATCH <= n <= total_frames:
        raise ValueError(f"a video of {total_frames} frames cannot give {n} frames (need 2 <= n <= total)")
    return n


def video_tokens(n_frames: int, height: int, width: int, patch_factor: int = PATCH_FACTOR) -> int:
    """LLM tokens of ``n_frames`` frames already resized to ``height`` x ``width``: ceil(n/2) * (H/28) * (W/28)
    (``patch_factor`` in place of 28 for Qwen3-VL's 32)."""
    return math.ceil(n_frames / TEMPORAL_PATCH) * (height // patch_factor) * (width // patch_factor)


def expected_video_tokens(
    n_frames: int, height: int, width: int, cfg: VideoConfig, patch_factor: int = PATCH_FACTOR
) -> int:
    """LLM tokens for ``n_frames`` frames of a ``height`` x ``width`` video, after ``cfg``'s resizing."""
    options = video_element_options(cfg, patch_factor)
    size = resized_frame_size(height, width, n_frames, options, patch_factor)
    return video_tokens(n_frames, *size, patch_factor)


def video_elements(messages: list[dict]) -> list[dict[str, Any]]:
    """The video elements of one conversation, in order."""
    return [
        element
        for message in messages
        if isinstance(message["content"], list)
        for element in message["content"]
        if element.get("type") == "video" or "video" in element
    ]


def load_videos(
    messages: list[dict], defaults: dict[str, Any] | None = None, patch_factor: int = PATCH_FACTOR
) -> list[LoadedVideo]:
    """Read every video of one sample with qwen-vl-utils' sampling and resizing (raises FileNotFoundError /
    ValueError naming the file); frame sides are multiples of ``patch_factor``.

    ``defaults`` (from ``video_element_options``) apply to elements with no sampling keys of their own.
    """
    return [
        fetch_video(_with_defaults(element, defaults or {}), patch_factor)
        for element in video_elements(messages)
    ]


def load_frames(messages: list[dict], defaults: dict[str, Any] | None = None) -> list[LoadedVideo]:
    """Read every video of one sample with qwen-vl-utils' frame sampling but no resizing (``fetch_frames``):
    for families whose processor sizes the frames itself."""
    return [fetch_frames(_with_defaults(element, defaults or {})) for element in video_elements(messages)]


def _with_defaults(element: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return element if SAMPLING_KEYS & set(element) else {**defaults, **element}


def render_prompts(processor: Any, messages_batch: list[list[dict]]) -> list[str]:
    """Each conversation through the processor's chat template, ending in the generation prompt."""
    return [
        processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_batch
    ]


def collate_inputs(
    processor: Any,
    messages_batch: list[list[dict]],
    videos: list[list[LoadedVideo]],
    texts: list[str] | None = None,
) -> BatchFeature:
    """Processor inputs for a batch whose videos are already loaded, left-padded.

    ``do_sample_frames=False`` and ``do_resize=False``: the frames are exactly qwen-vl-utils' (so
    ``video_grid_thw`` follows the formula); ``video_metadata`` gives the processor the sampled fps, from
    which it derives ``second_per_grid_ts`` (temporal M-RoPE positions; Qwen3-VL's timestamps).
    ``texts``: the rendered prompts, where the family renders them itself.
    """
    texts = texts if texts is not None else render_prompts(processor, messages_batch)
    flat = [video for sample in videos for video in sample]
    kwargs: dict[str, Any] = {}
    if flat:
        kwargs = {
            "videos": [video.frames for video in flat],
            "video_metadata": [video.metadata for video in flat],
            "do_sample_frames": False,
            "do_resize": False,
        }
        if hasattr(processor.video_processor, "cap_pixels_per_frame"):
            kwargs["cap_pixels_per_frame"] = False  # a cap on resizing, and we do not resize here
    return processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)


def collate_frames(
    processor: Any, messages_batch: list[list[dict]], videos: list[list[LoadedVideo]]
) -> BatchFeature:
    """Processor inputs for a batch whose frames are sampled but not resized (``load_frames``), left-padded:
    the processor's own video handling sizes and normalises them (``do_sample_frames=False``: the frames
    are exactly the ones sampled)."""
    texts = render_prompts(processor, messages_batch)
    flat = [video.frames for sample in videos for video in sample]
    kwargs: dict[str, Any] = {"videos": flat, "do_sample_frames": False} if flat else {}
    return processor(text=texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)


def prepare_inputs(
    processor: Any, messages_batch: list[list[dict]], video: VideoConfig | None = None, family: Any = None
) -> BatchFeature:
    """Read each sample's videos and build one left-padded batch, as the model's family does it.

    ``family`` (a ``vreason.families.Family`` or its name) defaults to the family whose checkpoints ship
    ``processor``'s class. Qwen families: qwen-vl-utils' sampling and resizing (``load_videos`` +
    ``collate_inputs``); LLaVA-OneVision, LLaVA-NeXT-Video, InternVL: qwen-vl-utils' frame sampling, the
    processor's own sizing (``load_frames`` + ``collate_frames``). ``video``, if given, supplies the
    sampling keys for video elements that carry none of their own (elements from ``build_messages``
    already carry them; their own keys always win).

    Returns ``input_ids``, ``attention_mask`` [batch, seq] and the family's vision tensors (Qwen2.5-VL:
    ``pixel_values_videos`` [sum of patches, 1176], ``video_grid_thw`` [n_videos, 3] and
    ``second_per_grid_ts`` [n_videos]).
    """
    from vreason.families import family_for_processor, family_named

    if family is None:
        family = family_for_processor(processor)
    elif isinstance(family, str):
        family = family_named(family)
    defaults = family.video_options(video) if video is not None else {}
    loaded = [family.load_videos(messages, defaults) for messages in messages_batch]
    return family.collate(processor, messages_batch, loaded)


def prepare_text_inputs(tokenizer: Any, messages_batch: list[list[dict]]) -> BatchFeature:
    """Text-only inputs for causal LMs: chat template, then left-padded tokens (no extra special tokens)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a multimodal processor's tokenizer
    texts = [
        tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages_batch
    ]
    return tokenizer(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
