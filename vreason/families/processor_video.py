"""Inputs for families whose processor sizes video frames itself (LLaVA-OneVision, LLaVA-NeXT-Video,
InternVL), and their loading.

Frames are sampled by qwen-vl-utils' rule (``fps``, ``min_frames``, ``max_frames`` or ``nframes`` of the
``video`` config block; decoded with PyAV, ``video_reader.fetch_frames``) and handed to the processor at
the file's size with ``do_sample_frames=False``: the processor resizes and normalises them to its
checkpoint's resolution, so the ``video`` block's pixel keys (``min_pixels``, ``max_pixels``,
``total_pixels``) do not apply; ``max_video_tokens`` still refuses a video that needs more tokens. These
families use ordinary 1D positions (the base family's).
"""

from __future__ import annotations

from typing import Any

from vreason.families.base import VideoFamily


class ProcessorVideoInputs(VideoFamily):
    """A family whose processor samples nothing and sizes everything (see the module docstring)."""

    multimodal = True

    def load_videos(self, messages: list[dict], defaults: dict[str, Any] | None = None) -> list[Any]:
        from vreason.data.video import load_frames

        return load_frames(messages, defaults)

    def collate(self, processor: Any, messages_batch: list[list[dict]], videos: list[list[Any]]) -> Any:
        from vreason.data.video import collate_frames

        return collate_frames(processor, messages_batch, videos)

    def video_tokens(self, processor: Any, video: Any) -> int:
        return self.frame_tokens(processor) * video.frames.shape[0] + self.extra_video_tokens

    def frame_tokens(self, processor: Any) -> int:
        """LLM tokens of one frame after the processor's resizing (and the model's pooling)."""
        raise NotImplementedError

    extra_video_tokens = 0  # tokens a video takes besides its frames (LLaVA-OneVision: one newline)


def tiny_llava_parts() -> tuple[Any, Any, int, int, list[list[int]]]:
    """What the tiny LLaVA models share: dims, a byte tokenizer with ``<image>``/``<video>`` and a
    Qwen-style template, a 32-px vision input in 8-px patches, and its any-resolution pinpoints."""
    from vreason.models import TinyDims, byte_level_tokenizer, chat_template

    image_size, patch = 32, 8
    tok = byte_level_tokenizer(
        {"image_token": "<image>", "video_token": "<video>"}, chat_template("<image>", "<video>")
    )
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    return TinyDims(), tok, image_size, patch, pinpoints
