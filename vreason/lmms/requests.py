"""lmms-eval's requests in vreason's terms: chat messages our families read, and sampling settings.

Generation kwargs (a task's ``generation_kwargs``, or ``--gen_kwargs``) override the config's
``sampling`` block key by key: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``min_p``,
``do_sample``. Decoding is greedy when ``do_sample`` is false or ``temperature`` is 0, as in
``generate``; a task that sets a temperature but not ``do_sample`` samples at that temperature
(lmms-eval's own Qwen models do the same). ``until`` stops decoding at the first of its strings and the
answer is cut before it; lmms-eval's default stop ``"\\n\\n"`` (the few-shot delimiter it adds when a task
names none) is dropped, as lmms-eval's Qwen2.5-VL drops it, because reasoning text has blank lines.
``num_beams`` above 1 is refused (V-Reason samples one sequence); other keys are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from vreason.data.video import video_elements
from vreason.sampling import SamplingConfig

DEFAULT_UNTIL = "\n\n"  # lmms-eval's few-shot delimiter, its ``until`` when a task sets none
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "do_sample")
USED_KEYS = {*SAMPLING_KEYS, "until", "num_beams"}
# File endings lmms-eval's chat tasks read as images and audio (``ConfigurableMessagesTask``); other paths
# are videos.
IMAGE_FILES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tiff", ".webp")
AUDIO_FILES = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".webm")


@dataclass
class LmmsSample:
    """One lmms-eval request as the collator and the prediction see it.

    ``sample_id`` is ``<task>/<doc_id>`` (``#<n>`` appended for the n-th repeat of a document), which also
    seeds the sample's sampling generator; ``messages`` are chat messages whose video elements carry
    the family's sampling keys; ``stop_strings`` cut the answer.
    """

    sample_id: str
    task: str
    doc_id: Any
    messages: list[dict]
    stop_strings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def data_type(self) -> str:
        return "video" if video_elements(self.messages) else "text"


def stop_strings(until: Any) -> list[str]:
    """``until`` as a list of stop strings, without lmms-eval's default ``"\\n\\n"`` and empty strings."""
    if until is None:
        return []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list | tuple) or not all(isinstance(s, str) for s in until):
        raise ValueError(f"generation kwarg until must be a string or a list of strings, got {until!r}")
    return [s for s in until if s and s != DEFAULT_UNTIL]


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to the first occurrence of any stop string (lmms-eval's convention)."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def sampling_for(defaults: SamplingConfig, gen_kwargs: Mapping[str, Any], task: str = "?") -> SamplingConfig:
    """The sampling settings of one request: ``defaults`` with the request's generation kwargs on top
    (see the module docstring). Raises ValueError naming the task for a value out of range."""
    given = {k: gen_kwargs[k] for k in SAMPLING_KEYS if k in gen_kwargs}
    beams = gen_kwargs.get("num_beams") or 1
    if beams != 1:
        raise ValueError(
            f"task {task}: num_beams={beams}; V-Reason decodes one sampled sequence (num_beams 1)"
        )
    for key, low, high in (("temperature", 0, None), ("top_p", 0, 1), ("min_p", 0, 1)):
        value = given.get(key)
        if value is not None and not (
            isinstance(value, int | float) and math.isfinite(value) and low <= value <= (high or math.inf)
        ):
            raise ValueError(f"task {task}: generation kwarg {key}={value!r} is out of range")
    tokens = given.get("max_new_tokens", defaults.max_new_tokens)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
        raise ValueError(
            f"task {task}: generation kwarg max_new_tokens={tokens!r} must be a positive integer"
        )
    sampling = replace(
        defaults,
        max_new_tokens=tokens,
        temperature=float(given.get("temperature", defaults.temperature) or 0.0),
        top_p=given.get("top_p", defaults.top_p),
        top_k=given.get("top_k", defaults.top_k) or None,
        min_p=given.get("min_p", defaults.min_p),
        do_sample=bool(given.get("do_sample", True if "temperature" in given else defaults.do_sample)),
        stop_strings=stop_strings(gen_kwargs.get("until")),
    )
    if sampling.temperature == 0.0:
        sampling = replace(sampling, do_sample=False)
    return sampling


def ignored_kwargs(gen_kwargs: Mapping[str, Any]) -> list[str]:
    """Generation kwargs this model does not use (warned about once)."""
    return sorted(set(gen_kwargs) - USED_KEYS)


def _video_path(video: Any) -> tuple[Any, dict[str, Any]]:
    """A task's video reference as (path, extra keys): a path, or lmms-eval's dict with a clip's times."""
    if isinstance(video, dict):
        path = video.get("path") or video.get("url") or video.get("video")
        times = {k: video[k] for k in ("video_start", "video_end") if video.get(k) is not None}
        return path, times
    return video, {}


def _checked(messages: list[dict], where: str) -> list[dict]:
    """Messages whose video elements name a file; images and audio are refused (not silently dropped)."""
    for message in messages:
        content = message.get("content")
        for element in content if isinstance(content, list) else []:
            kind = element.get("type")
            if kind in ("image", "audio"):
                raise NotImplementedError(
                    f"{where}: the request has an {kind}; vreason's lmms-eval model takes video and text "
                    "inputs (use a video task)"
                )
            if kind == "video":
                path, times = _video_path(element["video"])
                element.update({"video": path, **times})
    return messages


def chat_messages(doc_messages: list[dict], video_options: dict[str, Any], where: str) -> list[dict]:
    """HF-style chat messages from a task's ``doc_to_messages`` (lmms-eval's ``ChatMessages`` schema),
    each video element carrying ``video_options`` (the family's sampling keys)."""
    from lmms_eval.protocol import ChatMessages

    messages = ChatMessages(messages=doc_messages).to_hf_messages(video_kwargs=dict(video_options))
    return _checked(messages, where)


def simple_messages(
    context: str, visuals: list[Any] | None, video_options: dict[str, Any], where: str
) -> list[dict]:
    """One user turn from a simple request: the task's visuals (video files), then its prompt text."""
    content: list[dict] = []
    for visual in visuals or []:
        if visual is None:
            continue
        kind = "image"  # PIL images, arrays and image files
        if isinstance(visual, dict) or (isinstance(visual, str) and not visual.lower().endswith(IMAGE_FILES)):
            kind = "audio" if isinstance(visual, str) and visual.lower().endswith(AUDIO_FILES) else "video"
        content.append({"type": kind, kind: visual, **(video_options if kind == "video" else {})})
    content.append({"type": "text", "text": context})
    return _checked([{"role": "user", "content": content}], where)
