"""Reading one video element into sampled, resized frames, exactly as qwen-vl-utils 0.0.14 does.

Why this file exists: qwen-vl-utils reads files with decord, torchcodec or ``torchvision.io.read_video``.
torchvision 0.29 removed ``read_video`` and our environment has neither decord nor torchcodec, so stock
qwen-vl-utils cannot open a video file at all (its torchvision backend raises AttributeError). We decode
with PyAV and keep everything else qwen-vl-utils' own: ``calculate_video_frame_range`` and
``smart_nframes`` choose the frame count, frames are taken at ``linspace(start, end, n).round()`` (its
decord/torchcodec rule), and the per-frame pixel budget, ``smart_resize`` and the bicubic antialiased
resize are those of its ``fetch_video``. The result (frames, metadata, sample fps) is what
``qwen_vl_utils.fetch_video(..., return_video_metadata=True)`` would return with decord.

Where decord or torchcodec is importable, or ``FORCE_QWENVL_VIDEO_READER`` names a backend, qwen-vl-utils'
``fetch_video`` itself is used instead.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import qwen_vl_utils.vision_process as qvu
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as tvF

log = logging.getLogger(__name__)

PATCH_FACTOR = 28  # 14-px patches merged 2x2 (Qwen2/2.5-VL): frame sides are multiples of 28
# Qwen3-VL: 16-px patches merged 2x2, sides multiples of 32 (qwen-vl-utils' ``image_patch_size=16``).


@dataclass
class LoadedVideo:
    """One video ready for the processor.

    ``frames``: [n_frames, 3, height, width] float32 in [0, 255], already resized (sides multiples of 28, or
    of the family's patch factor), or uint8 at the file's size from ``fetch_frames`` (processor resizes).
    ``metadata``: qwen-vl-utils' dict (``fps`` of the file, ``frames_indices``, ``total_num_frames``,
    ``video_backend``); transformers derives the sampled fps, hence temporal M-RoPE positions, from it.
    ``warnings``: what the prediction should carry about this file (frames listed but not decodable).
    """

    path: str
    frames: torch.Tensor
    metadata: dict[str, Any]
    sample_fps: float
    warnings: list[str] = field(default_factory=list)


def video_reader_backend() -> str:
    """``"qwen-vl-utils"`` where its own readers work (see module docstring), else ``"pyav"``."""
    if os.environ.get("FORCE_QWENVL_VIDEO_READER"):
        return "qwen-vl-utils"
    if any(importlib.util.find_spec(name) is not None for name in ("decord", "torchcodec")):
        return "qwen-vl-utils"
    return "pyav"


def frame_pixel_budget(
    element: dict[str, Any], n_frames: int, patch_factor: int = PATCH_FACTOR
) -> tuple[int, float]:
    """(min_pixels, max_pixels) per frame, as ``qwen_vl_utils.fetch_video`` computes them.

    The cap is the smallest of ``max_pixels``, 768 tokens' worth, and an even share of ``total_pixels``
    over the frame pairs, but never below ``int(1.05 * min_pixels)``. ``patch_factor``: the side of one
    LLM token in pixels (28 for Qwen2/2.5-VL, 32 for Qwen3-VL).
    """
    min_pixels = element.get("min_pixels", qvu.VIDEO_MIN_TOKEN_NUM * patch_factor**2)
    total_pixels = element.get("total_pixels", qvu.MODEL_SEQ_LEN * patch_factor**2 * 0.9)
    cap = max(
        min(qvu.VIDEO_MAX_TOKEN_NUM * patch_factor**2, total_pixels / n_frames * qvu.FRAME_FACTOR),
        int(min_pixels * 1.05),
    )
    return min_pixels, min(element.get("max_pixels", cap), cap)


def smart_resize(height: int, width: int, patch_factor: int = PATCH_FACTOR, **limits: Any) -> tuple[int, int]:
    """qwen-vl-utils' ``smart_resize``, keeping both sides at least one patch (28 px, or ``patch_factor``).

    When it shrinks a frame to ``max_pixels``, qwen-vl-utils 0.0.14 floors a thin side to 0 (a 90 px wide,
    1600 px tall video becomes 448 x 0); transformers' own ``smart_resize`` keeps ``max(28, ...)``, which
    is what we do. Every other size is qwen-vl-utils' unchanged; aspect ratios over 200 still raise.
    """
    h_bar, w_bar = qvu.smart_resize(height, width, factor=patch_factor, **limits)
    return max(patch_factor, h_bar), max(patch_factor, w_bar)


def resized_frame_size(
    height: int, width: int, n_frames: int, element: dict[str, Any], patch_factor: int = PATCH_FACTOR
) -> tuple[int, int]:
    """(height, width) that frames of this size are resized to (sides multiples of ``patch_factor``)."""
    if "resized_height" in element and "resized_width" in element:
        return smart_resize(element["resized_height"], element["resized_width"], patch_factor)
    min_pixels, max_pixels = frame_pixel_budget(element, n_frames, patch_factor)
    return smart_resize(height, width, patch_factor, min_pixels=min_pixels, max_pixels=max_pixels)


def _local_path(element: dict[str, Any]) -> str:
    video = element.get("video")
    if not isinstance(video, str):
        raise ValueError(f"video element must name a file path, got {type(video).__name__}")
    return video[len("file://") :] if video.startswith("file://") else video


def _count_and_rate(path: str) -> tuple[int, float]:
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    if not rate:
        raise ValueError("the video stream has no frame rate")
    return total, float(rate)


def _decode(path: str, indices: list[int]) -> tuple[dict[int, np.ndarray], int]:
    """RGB frames at ``indices`` (decoding sequentially, keeping only those) and the decoded count.

    Decoding stops at the first packet that does not decode (a truncated file): PyAV 15 raises
    ``InvalidDataError`` there, PyAV 18 ends the stream; both leave the frames decoded before it.
    """
    wanted, frames, count = set(indices), {}, 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for count, frame in enumerate(container.decode(stream), start=1):
                if count - 1 in wanted:
                    frames[count - 1] = frame.to_ndarray(format="rgb24")  # [h, w, 3] uint8
                if count > max(wanted):
                    break
        except av.InvalidDataError:
            if count == 0:
                raise
    return frames, count


def _sample_indices(element: dict[str, Any], total: int, fps: float) -> tuple[list[int], int]:
    start, end, span = qvu.calculate_video_frame_range(element, total, fps)
    n = qvu.smart_nframes(element, total_frames=span, video_fps=fps)
    return torch.linspace(start, end, n).round().long().tolist(), span


def read_video_pyav(element: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any], float]:
    """[n, 3, h, w] uint8 frames at qwen-vl-utils' sample indices, its metadata dict and sample fps."""
    video, metadata, sample_fps, _ = _read_video_pyav(element)
    return video, metadata, sample_fps


def _read_video_pyav(element: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any], float, list[str]]:
    """``read_video_pyav`` plus the warnings a prediction should carry.

    A file whose container lists more frames than decode (a truncated file, or edit lists dropping a
    few) is sampled from the frames that do decode, and the warning gives both counts.
    """
    path = _local_path(element)
    warnings: list[str] = []
    total, fps = _count_and_rate(path)
    if total == 0:
        raise ValueError("the video has no frames")
    indices, span = _sample_indices(element, total, fps)
    frames, decoded = _decode(path, indices)
    if len(frames) < len(indices):
        # The container lists more frames than decode (edit lists can drop a few): sample from those that do.
        if decoded == 0:
            raise ValueError("no frame could be decoded")
        warnings.append(
            f"{path}: the container lists {total} frames but {decoded} decode; sampled from those"
        )
        log.warning("%s", warnings[-1])
        indices, span = _sample_indices(element, decoded, fps)
        frames, _ = _decode(path, indices)
        if len(frames) < len(indices):
            raise ValueError(f"frames {sorted(set(indices) - set(frames))} did not decode on a second pass")
    video = torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)
    metadata = {"fps": fps, "frames_indices": indices, "total_num_frames": span, "video_backend": "pyav"}
    return video, metadata, len(indices) / max(span, 1e-6) * fps, warnings


def resize_frames(
    video: torch.Tensor, element: dict[str, Any], patch_factor: int = PATCH_FACTOR
) -> torch.Tensor:
    """qwen-vl-utils' resize: smart_resize target, bicubic with antialias, then float."""
    n_frames, _, height, width = video.shape
    size = list(resized_frame_size(height, width, n_frames, element, patch_factor))
    return tvF.resize(video, size, interpolation=InterpolationMode.BICUBIC, antialias=True).float()


def fetch_video(element: dict[str, Any], patch_factor: int = PATCH_FACTOR) -> LoadedVideo:
    """Read, sample and resize one video element (``{"video": path, "fps": ..., "max_pixels": ...}``).

    ``patch_factor`` is qwen-vl-utils' ``image_patch_size * 2``: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL.
    Raises FileNotFoundError for a missing file and ValueError (naming the file) for one that does not
    decode or has too few frames.
    """
    path = _local_path(element)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {path} does not exist")
    warnings: list[str] = []
    if video_reader_backend() == "pyav":
        try:
            video, metadata, sample_fps, warnings = _read_video_pyav(element)
        except (av.FFmpegError, ValueError) as err:
            raise ValueError(f"{path}: cannot read video ({err})") from err
        frames = resize_frames(video, element, patch_factor)
    else:
        try:
            (frames, metadata), sample_fps = qvu.fetch_video(
                element,
                image_patch_size=patch_factor // qvu.SPATIAL_MERGE_SIZE,
                return_video_sample_fps=True,
                return_video_metadata=True,
            )
        except Exception as err:  # its readers raise backend-specific types; the sample fails, not the run
            raise ValueError(f"{path}: cannot read video ({type(err).__name__}: {err})") from err
    return LoadedVideo(
        path=path, frames=frames, metadata=dict(metadata), sample_fps=float(sample_fps), warnings=warnings
    )


def fetch_frames(element: dict[str, Any]) -> LoadedVideo:
    """``n`` frames taken uniformly over the whole clip, at the file's own size (PyAV): for families whose
    processor sizes frames itself (LLaVA-OneVision, LLaVA-NeXT-Video, InternVL).

    ``n`` is the element's ``nframes``, else its ``max_frames``: these models are run with a fixed number
    of uniformly sampled frames (lmms-eval's convention), which also lets a batch stack its videos (their
    processors need one frame count per batch). Frames sit at ``linspace(0, total - 1, n).round()``, the
    sampling rule of qwen-vl-utils' readers; a clip shorter than ``n`` frames repeats some. Pixel keys are
    ignored. ``frames``: [n, 3, height, width] uint8.
    """
    path = _local_path(element)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {path} does not exist")
    n = int(element.get("nframes") or element.get("max_frames") or 0)
    if n < 1:
        raise ValueError(f"{path}: a video element needs nframes or max_frames to sample frames uniformly")
    warnings: list[str] = []
    try:
        total, fps = _count_and_rate(path)
        indices = torch.linspace(0, max(total - 1, 0), n).round().long().tolist()
        frames, decoded = _decode(path, indices)
        if set(indices) - set(frames) and decoded > 0:
            warnings.append(
                f"{path}: the container lists {total} frames but {decoded} decode; sampled from those"
            )
            log.warning("%s", warnings[-1])
            total = decoded
            indices = torch.linspace(0, total - 1, n).round().long().tolist()
            frames, _ = _decode(path, indices)
        if set(indices) - set(frames):
            raise ValueError("no frame could be decoded")
    except (av.FFmpegError, ValueError) as err:
        raise ValueError(f"{path}: cannot read video ({err})") from err
    video = torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)
    metadata = {"fps": fps, "frames_indices": indices, "total_num_frames": total, "video_backend": "pyav"}
    return LoadedVideo(
        path=path, frames=video, metadata=metadata, sample_fps=n / total * fps, warnings=warnings
    )
