"""Video sampling and model inputs follow PROTOCOL.md ("Video sampling")."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import qwen_vl_utils.vision_process as qvu
import torch

from vreason.data import video_reader
from vreason.data.prompts import build_messages
from vreason.data.records import Record
from vreason.data.synthetic import ClipSpec, render_frames, write_clips, write_mp4
from vreason.data.video import (
    VideoConfig,
    expected_num_frames,
    expected_video_tokens,
    prepare_inputs,
    prepare_text_inputs,
    video_element_options,
)
from vreason.data.video_reader import fetch_video, read_video_pyav
from vreason.families import prefill_position_ids
from vreason.models import byte_level_tokenizer, tiny_processor, tiny_qwen2_5_vl

# Pixel limits unlike the tiny processor's own (4..16 * 28 * 28), so a second resize would show.
SMALL = VideoConfig(min_pixels=32 * 28 * 28, max_pixels=64 * 28 * 28)
# Limits under which 96x64 and 64x48 clips keep different sizes (56x84 and 56x56).
NATIVE = VideoConfig(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """1 s and 2 s clips at 8 fps, of two frame sizes, plus broken files."""
    root = tmp_path_factory.mktemp("clips")
    out = write_clips(
        root,
        {
            "wide_1s": ClipSpec("right", "red", 96, 64, 1),
            "small_2s": ClipSpec("up", "blue", 64, 48, 2),
            "wide_3s": ClipSpec("left", "green", 96, 64, 3),
        },
    )
    out["one_frame"] = root / "one_frame.mp4"
    write_mp4(out["one_frame"], render_frames(ClipSpec("up", "red", 64, 48, 1))[:1])
    out["garbage"] = root / "garbage.mp4"
    out["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["truncated"] = root / "truncated.mp4"
    out["truncated"].write_bytes(out["wide_3s"].read_bytes()[:600])
    out["cut_mid_stream"] = root / "cut_mid_stream.mp4"  # index up front, frame data cut off
    with av.open(str(out["cut_mid_stream"]), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in render_frames(ClipSpec("left", "green", 96, 64, 3)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = out["cut_mid_stream"].read_bytes()
    out["cut_mid_stream"].write_bytes(data[: int(len(data) * 0.6)])
    out["no_frames"] = root / "no_frames.avi"
    with av.open(str(out["no_frames"]), mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    return out


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="video.fps"):
        VideoConfig(fps=0)
    with pytest.raises(ValueError, match="video.min_frames"):
        VideoConfig(min_frames=20, max_frames=16)
    with pytest.raises(ValueError, match="video.min_pixels"):
        VideoConfig(min_pixels=300 * 28 * 28)
    with pytest.raises(ValueError, match="video.total_pixels and video.max_video_tokens"):
        VideoConfig(total_pixels=10**6, max_video_tokens=1000)


def test_element_options_are_qwen_vl_utils_keys() -> None:
    assert video_element_options(VideoConfig()) == {
        "fps": 2.0,
        "min_frames": 4,
        "max_frames": 16,
        "min_pixels": 100352,
        "max_pixels": 200704,
    }
    fixed = video_element_options(VideoConfig(nframes=8, max_video_tokens=1000))
    assert "fps" not in fixed and "min_frames" not in fixed and fixed["nframes"] == 8
    assert fixed["total_pixels"] == 1000 * 28 * 28


@pytest.mark.parametrize(
    ("duration", "total", "max_frames", "expected"),
    [
        (1.0, 8, 16, 4),  # 2 frames at 2 fps, raised to min_frames
        (3.0, 24, 16, 6),
        (2.5, 20, 16, 4),  # 5 frames, rounded down to even
        (60.0, 1800, 16, 16),  # capped at max_frames
        (60.0, 1800, 32, 32),
        (1.5, 3, 16, 2),  # never more than the video has
    ],
)
def test_expected_num_frames(duration: float, total: int, max_frames: int, expected: int) -> None:
    assert expected_num_frames(duration, total, VideoConfig(max_frames=max_frames)) == expected


def test_expected_num_frames_matches_qwen_vl_utils() -> None:
    cfg = VideoConfig(fps=2.0, min_frames=3, max_frames=17)
    options = video_element_options(cfg)
    for total in [2, 3, 5, 8, 24, 31, 64, 300, 2000]:
        for video_fps in [1.0, 8.0, 23.976, 30.0]:
            expected = qvu.smart_nframes(options, total_frames=total, video_fps=video_fps)
            assert expected_num_frames(total / video_fps, total, cfg) == expected


def test_expected_video_tokens_match_the_protocol_examples() -> None:
    # 640x480 at 16 frames / 256*28*28 -> 364x504 frames: 8 * 13 * 18 tokens (PROTOCOL.md)
    assert expected_video_tokens(16, 480, 640, VideoConfig()) == 1872
    assert expected_video_tokens(16, 1080, 1920, VideoConfig()) <= 2048
    # 32-frame setting: per frame at most 105,369 px -> 280x364 for 640x480
    assert expected_video_tokens(32, 480, 640, VideoConfig(max_frames=32, max_pixels=105369)) == 16 * 10 * 13


def test_reader_samples_and_resizes_like_the_formula(clips: dict[str, Path]) -> None:
    # 3 s at 8 fps: 6 frames at indices linspace(0, 23, 6).round(); 64x96 -> 140x196 (min 32*28*28 px)
    video = fetch_video({"video": str(clips["wide_3s"]), **video_element_options(SMALL)})
    assert video.frames.shape == (6, 3, 140, 196) and video.frames.dtype == torch.float32
    assert video.metadata["frames_indices"] == [0, 5, 9, 14, 18, 23]
    assert video.metadata["total_num_frames"] == 24 and video.metadata["fps"] == 8.0
    assert video.sample_fps == pytest.approx(2.0)
    assert 0.0 <= video.frames.min() and video.frames.max() <= 255.0


def _read_video_with_pyav(path, start_pts=0.0, end_pts=None, pts_unit="sec", output_format="TCHW"):
    """A stand-in for the ``torchvision.io.read_video`` that torchvision 0.29 removed."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        fps = float(stream.average_rate)
    return torch.from_numpy(frames).permute(0, 3, 1, 2), torch.empty(0), {"video_fps": fps}


@pytest.mark.parametrize("name", ["wide_1s", "small_2s", "wide_3s"])
def test_reader_equals_qwen_vl_utils_own_fetch_video(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(qvu.io, "read_video", _read_video_with_pyav, raising=False)
    monkeypatch.setattr(qvu, "get_video_reader_backend", lambda: "torchvision")
    element = {"video": str(clips[name]), **video_element_options(SMALL)}
    (reference, metadata), sample_fps = qvu.fetch_video(
        element, return_video_sample_fps=True, return_video_metadata=True
    )
    ours = fetch_video(element)
    assert torch.equal(ours.frames, reference)
    assert ours.metadata["frames_indices"] == list(metadata["frames_indices"].tolist())
    assert ours.sample_fps == pytest.approx(sample_fps)
    monkeypatch.setenv("FORCE_QWENVL_VIDEO_READER", "torchvision")  # our qwen-vl-utils branch
    assert torch.equal(fetch_video(element).frames, reference)


def test_missing_video_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.mp4"):
        fetch_video({"video": str(tmp_path / "absent.mp4"), "fps": 2.0})


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("garbage", "Invalid data"),
        ("truncated", "cannot read video"),
        ("cut_mid_stream", "Invalid data"),
        ("no_frames", "no frames"),
        ("one_frame", "nframes should in interval"),
    ],
)
def test_unreadable_video_is_a_value_error_naming_the_file(
    clips: dict[str, Path], name: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        fetch_video({"video": str(clips[name]), "fps": 2.0})
    assert str(clips[name]) in str(info.value)


def _messages(path: Path, question: str = "Which way?", cfg: VideoConfig = SMALL) -> list[dict]:
    record = Record(
        1, question, "free-form", None, "video", "./x.mp4", "<answer>up</answer>", None, "synthetic"
    )
    return build_messages(record, path, video_element_options(cfg))


def test_video_grid_follows_the_formula_without_a_second_resize(clips: dict[str, Path]) -> None:
    processor = tiny_processor()  # its own limits would shrink frames to at most 16 * 28 * 28 px
    inputs = prepare_inputs(processor, [_messages(clips["wide_3s"])])
    n = expected_num_frames(3.0, 24, SMALL)  # 6
    grid = [math.ceil(n / 2), 140 // 14, 196 // 14]
    assert inputs["video_grid_thw"].tolist() == [grid]
    assert inputs["pixel_values_videos"].shape == (grid[0] * grid[1] * grid[2], 3 * 2 * 14 * 14)
    n_video_tokens = int((inputs["input_ids"] == processor.video_token_id).sum())
    assert n_video_tokens == expected_video_tokens(n, 64, 96, SMALL) == 3 * 5 * 7


def test_batch_of_two_sizes_is_left_padded_and_matches_single_runs(clips: dict[str, Path]) -> None:
    processor = tiny_processor()
    messages = [
        _messages(clips["wide_1s"], cfg=NATIVE),
        _messages(clips["small_2s"], question="Which way does it go?", cfg=NATIVE),
    ]
    batch = prepare_inputs(processor, messages)
    singles = [prepare_inputs(processor, [m]) for m in messages]
    # 4 frames each: 64x96 -> 56x84 and 48x64 -> 56x56
    assert batch["video_grid_thw"].tolist() == [[2, 4, 6], [2, 4, 4]]
    mask = batch["attention_mask"]
    assert mask.shape[1] == max(s["input_ids"].shape[1] for s in singles)
    for row, single in enumerate(singles):
        length = single["input_ids"].shape[1]
        assert mask[row, -length:].all() and not mask[row, :-length].any()  # padding on the left only
        assert torch.equal(batch["input_ids"][row, -length:], single["input_ids"][0])
    assert (mask[:, 0] == 0).any()  # one row is padded
    assert torch.equal(batch["pixel_values_videos"], torch.cat([s["pixel_values_videos"] for s in singles]))


def test_temporal_positions_use_the_sampled_fps(clips: dict[str, Path]) -> None:
    model, processor = tiny_qwen2_5_vl(seed=0)  # our own: a forward caches rope deltas on the model
    # 1 s clip: 4 of 8 frames -> 4 fps -> 0.5 s per temporal patch; 2 s clip: 4 of 16 -> 2 fps -> 1 s
    batch = prepare_inputs(processor, [_messages(clips["wide_1s"]), _messages(clips["small_2s"])])
    assert batch["second_per_grid_ts"].tolist() == pytest.approx([0.5, 1.0])
    positions = prefill_position_ids(model, batch)[1:]  # the M-RoPE rows
    tokens_per_second = model.config.vision_config.tokens_per_second
    for row, seconds in enumerate([0.5, 1.0]):
        temporal = positions[0, row][batch["input_ids"][row] == processor.video_token_id].unique()
        assert (temporal.diff() == int(tokens_per_second * seconds)).all()
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


def test_text_inputs_are_left_padded_chat_prompts() -> None:
    tokenizer = byte_level_tokenizer()
    batch = prepare_text_inputs(
        tokenizer, [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a longer one"}]]
    )
    mask = batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    text = tokenizer.decode(batch["input_ids"][0][mask[0].bool()])
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_reader_returns_uint8_frames_at_the_file_resolution(clips: dict[str, Path]) -> None:
    frames, metadata, sample_fps = read_video_pyav({"video": str(clips["small_2s"]), "fps": 2.0})
    assert frames.shape == (4, 3, 48, 64) and frames.dtype == torch.uint8
    assert metadata["video_backend"] == "pyav" and sample_fps == pytest.approx(2.0)


def test_config_fills_in_bare_video_elements(clips: dict[str, Path]) -> None:
    bare = [
        {
            "role": "user",
            "content": [{"type": "video", "video": str(clips["wide_3s"])}, {"type": "text", "text": "?"}],
        }
    ]
    inputs = prepare_inputs(tiny_processor(), [bare], SMALL)
    assert inputs["video_grid_thw"].tolist() == [[3, 10, 14]]
    # an element's own keys win over the config
    inputs = prepare_inputs(tiny_processor(), [_messages(clips["wide_3s"], cfg=NATIVE)], SMALL)
    assert inputs["video_grid_thw"].tolist() == [[3, 4, 6]]


def test_frames_the_container_lists_but_cannot_decode_are_resampled(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    count_and_rate = video_reader._count_and_rate
    monkeypatch.setattr(video_reader, "_count_and_rate", lambda path: (count_and_rate(path)[0] + 6, 8.0))
    frames, metadata, _ = read_video_pyav({"video": str(clips["wide_3s"]), "fps": 2.0})
    # 24 frames decode, not the 30 listed: 6 frames from linspace(0, 23, 6), as for an honest file
    assert metadata["frames_indices"] == [0, 5, 9, 14, 18, 23] and metadata["total_num_frames"] == 24
    assert frames.shape[0] == 6
    assert "lists 30 frames but 24 decode" in caplog.text


@pytest.mark.parametrize(("width", "height"), [(90, 1600), (1600, 90)])
def test_thin_videos_keep_at_least_one_patch_per_side_and_decode(
    tmp_path: Path, tiny_vl, width, height
) -> None:
    path = tmp_path / "thin.mp4"
    write_mp4(path, render_frames(ClipSpec("up", "red", width, height, 1)))
    cfg = VideoConfig(min_pixels=3136, max_pixels=12544, max_frames=4)  # the smoke config's frames
    video = fetch_video({"video": str(path), **video_element_options(cfg)})
    n, _, h, w = video.frames.shape
    assert min(h, w) == 28 and h % 28 == 0 and w % 28 == 0 and h * w <= 12544
    assert (h > w) == (height > width)  # the orientation is kept
    assert expected_video_tokens(n, height, width, cfg) == n // 2 * (h // 28) * (w // 28)
    model, processor = tiny_vl
    inputs = prepare_inputs(processor, [_messages(path, cfg=cfg)])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


def test_a_partly_decodable_file_is_sampled_from_what_decodes_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "cut.mp4"
    frames = render_frames(ClipSpec("right", "red", 96, 64, 13))[:100]
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:  # index first
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.7)])
    video = fetch_video({"video": str(path), **video_element_options(SMALL)})
    decoded = video.metadata["total_num_frames"]
    assert 2 <= decoded < 100 and max(video.metadata["frames_indices"]) < decoded
    assert video.warnings == [
        f"{path}: the container lists 100 frames but {decoded} decode; sampled from those"
    ]
