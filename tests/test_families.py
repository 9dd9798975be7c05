"""Rotary positions by each family's trained rule, checked against hand-computed cases.

The oracle here is never transformers: its ``get_rope_index`` (5.x) starts the text after a video too
early, and ``generate`` agrees with it. The expected positions below are written out from the rule in
Qwen2.5-VL's original ``get_rope_index`` docstring: text after a vision block starts at the largest
vision position (over the t, h and w rows) plus one; a video's temporal row advances by
``second_per_grid_t * tokens_per_second`` per grid step, truncated after multiplying by the step.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import mp4_batch

from vreason.engine import Decoder
from vreason.families import family_named, prefill_position_ids
from vreason.families.qwen2_vl import mrope_positions
from vreason.sampling import SamplingConfig

V, IMG, T, PAD = 9, 8, 1, 0  # video, image, text and padding token ids of the hand-made cases


def positions(ids, grids_v=None, seconds=None, grids_i=None, mask=None, merge=2, tps=2.0):
    ids = torch.tensor(ids)
    return mrope_positions(
        ids,
        torch.ones_like(ids) if mask is None else torch.tensor(mask),
        image_token_id=IMG,
        video_token_id=V,
        spatial_merge_size=merge,
        tokens_per_second=tps,
        image_grid_thw=torch.tensor(grids_i) if grids_i else None,
        video_grid_thw=torch.tensor(grids_v) if grids_v else None,
        second_per_grid_ts=torch.tensor(seconds) if seconds else None,
    )


def test_qwen2_5_vl_docstring_example():
    """The worked example of Qwen2.5-VL's original docstring: 3 temporal patches of 2 x 2, fps 1 with
    temporal patch 2 (2 s per grid step), 25 tokens per second: interval 50; text starts at 101."""
    pos = positions([[V] * 12 + [T] * 5], grids_v=[[3, 4, 4]], seconds=[2.0], tps=25)
    assert pos[0, 0].tolist() == [0, 0, 0, 0, 50, 50, 50, 50, 100, 100, 100, 100, 101, 102, 103, 104, 105]
    assert pos[1, 0].tolist() == [0, 0, 1, 1] * 3 + [101, 102, 103, 104, 105]
    assert pos[2, 0].tolist() == [0, 1, 0, 1] * 3 + [101, 102, 103, 104, 105]


def test_an_eight_second_clip_starts_its_text_after_the_last_frame():
    """Grid [8, 4, 6] (16 frames at 2 fps), 1 s per grid step, 2 tokens/s: the temporal row reaches
    3 + 7 * 2 = 17, so the question starts at 18 (transformers 5.x gives 3 + max(2, 3) = 6)."""
    pos = positions([[T] * 3 + [V] * 48 + [T] * 4], grids_v=[[8, 4, 6]], seconds=[1.0])
    video = pos[:, 0, 3:51]
    assert video[0].tolist() == [3 + 2 * i for i in range(8) for _ in range(6)]
    assert video[1].tolist() == [3 + h for _ in range(8) for h in range(2) for _ in range(3)]
    assert video[2].tolist() == [3 + w for _ in range(8) for _ in range(2) for w in range(3)]
    for row in range(3):
        assert pos[row, 0, :3].tolist() == [0, 1, 2]
        assert pos[row, 0, 51:].tolist() == [18, 19, 20, 21]


def test_the_papers_16_frame_setting_on_a_40_second_clip():
    """16 frames of 280 x 392 px over 40 s: grid [8, 20, 28], 5 s per grid step, Qwen2.5-VL-7B's 2
    tokens per second. Video positions reach 10 + 70; text must start at 81, 57 above 10 + 14."""
    n_video = 8 * 10 * 14
    pos = positions([[T] * 10 + [V] * n_video + [T] * 3], grids_v=[[8, 20, 28]], seconds=[5.0])
    assert int(pos[:, 0, 10 : 10 + n_video].max()) == 80
    assert pos[0, 0, 10 : 10 + n_video].unique().tolist() == [10 + 10 * i for i in range(8)]
    assert pos[:, 0, -3:].tolist() == [[81, 82, 83]] * 3


def test_fractional_seconds_per_step_are_truncated_after_scaling():
    # 0.5 s per step at 25 tokens/s = 12.5 per step: 0, 12.5, 25, 37.5 -> 0, 12, 25, 37
    pos = positions([[V] * 4 + [T]], grids_v=[[4, 2, 2]], seconds=[0.5], tps=25)
    assert pos[0, 0].tolist() == [0, 12, 25, 37, 38]
    # 0.7 s at 2 tokens/s: 0, 1.4, 2.8, 4.2, 5.6, 7.0 -> 0, 1, 2, 4, 5, 7 (not 0, 1, 2, 4, 5, 6 or 7s)
    pos = positions([[V] * 6 + [T]], grids_v=[[6, 2, 2]], seconds=[0.7])
    assert pos[0, 0].tolist() == [0, 1, 2, 4, 5, 7, 8]


def test_images_videos_and_left_padding_in_one_batch():
    """Row 0: text, a 2 x 2 image, text, a 2-step video, text. Row 1 (left-padded): text, video, text.
    Every text run starts one past the largest position before it."""
    ids = [
        [T, T, IMG, IMG, IMG, IMG, T, V, V, T, T],
        [PAD, PAD, PAD, PAD, T, V, V, T, T, T, T],
    ]
    mask = [[1] * 11, [0] * 4 + [1] * 7]
    pos = positions(ids, grids_v=[[2, 2, 2], [2, 2, 2]], seconds=[1.0, 0.5], grids_i=[[1, 4, 4]], mask=mask)
    # image at 2: t 2, h 2 2 3 3, w 2 3 2 3 -> max 3; text 4; video at 5: t 5, 7 (1 s x 2/s) -> text 8, 9
    assert pos[:, 0].tolist() == [
        [0, 1, 2, 2, 2, 2, 4, 5, 7, 8, 9],
        [0, 1, 2, 2, 3, 3, 4, 5, 5, 8, 9],
        [0, 1, 2, 3, 2, 3, 4, 5, 5, 8, 9],
    ]
    # padding gets 0; video at 1: t 1, 2 (0.5 s x 2/s) -> text 3..6
    assert pos[:, 1].tolist() == [
        [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6],
        [0, 0, 0, 0, 0, 1, 1, 3, 4, 5, 6],
        [0, 0, 0, 0, 0, 1, 1, 3, 4, 5, 6],
    ]


def test_qwen2_vl_counts_temporal_steps_without_time_scaling():
    pos = positions([[T, V, V, V, T]], grids_v=[[3, 2, 2]], tps=None)
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 4]


def test_grids_that_do_not_match_the_tokens_are_refused():
    with pytest.raises(ValueError, match="shorter than its grid"):
        positions([[T, V, V, T]], grids_v=[[2, 4, 4]], seconds=[1.0])
    with pytest.raises(ValueError, match="more video blocks"):
        positions([[T, V, T]], grids_v=None)
    with pytest.raises(ValueError, match="lists more videos"):
        positions([[T, V, T]], grids_v=[[1, 2, 2], [1, 2, 2]], seconds=[1.0, 1.0])


def _rope_index_of_transformers(model, ids, grid, seconds):
    ids = torch.tensor([ids])
    types = (ids == model.config.video_token_id).int() * 2
    rope, _ = model.model.get_rope_index(
        ids,
        types,
        video_grid_thw=torch.tensor([grid]),
        second_per_grid_ts=torch.tensor([seconds]),
        attention_mask=torch.ones_like(ids),
    )
    return rope


def test_transformers_get_rope_index_still_disagrees_for_long_videos(tiny_vl):
    """Known upstream bug (transformers 5.23, 5.24): text after a video starts at start + max(h', w').

    When this test fails, transformers has fixed it: then ``generate`` becomes a valid oracle for
    videos again and the equivalence tests can say so.
    """
    model, _ = tiny_vl
    video = model.config.video_token_id
    ids = [T] * 45 + [video] * 48 + [T] * 2
    theirs = _rope_index_of_transformers(model, ids, [8, 4, 6], 1.0)
    inputs = {
        "input_ids": torch.tensor([ids]),
        "video_grid_thw": torch.tensor([[8, 4, 6]]),
        "second_per_grid_ts": torch.tensor([1.0]),
    }
    ours = prefill_position_ids(model, inputs)[1:]
    assert int(ours[:, 0, :93].max()) == 59 and ours[:, 0, 93].tolist() == [60, 60, 60]
    assert theirs[:, 0, 93].tolist() == [48, 48, 48]


def test_short_clips_are_where_transformers_is_right(tiny_vl, mp4_videos):
    """A 2 s clip (grid [2, 4, 6]): the temporal row stays below max(h', w'), both rules agree; so the
    equivalence tests with ``generate`` in test_engine.py use such clips."""
    model, processor = tiny_vl
    inputs = mp4_batch(processor, [("Which way?", mp4_videos["right_red"])])
    theirs, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        second_per_grid_ts=inputs["second_per_grid_ts"],
        attention_mask=inputs["attention_mask"],
    )
    assert torch.equal(prefill_position_ids(model, inputs)[1:], theirs)


class PositionRecorder:
    def __init__(self, model):
        self.model, self.seen = model, []

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def _hook(self, module, args, kwargs):
        self.seen.append(kwargs["position_ids"].clone())

    def __exit__(self, *exc):
        self.handle.remove()


def test_the_engine_feeds_the_trained_rule_for_a_multi_second_video(tiny_vl, mp4_videos):
    """A real 3 s MP4 (6 frames at 2 fps: grid [3, 4, 4]), through qwen-vl-utils and the processor:
    the first text token after the video gets the video's largest position plus one, and decoding
    counts on from the prompt's last position."""
    model, processor = tiny_vl
    inputs = mp4_batch(processor, [("Which way does it move?", mp4_videos["up_blue"])])
    assert inputs["video_grid_thw"].tolist() == [[3, 4, 4]]
    with PositionRecorder(model) as rec:
        Decoder(model, None, SamplingConfig(do_sample=False, max_new_tokens=4)).generate(inputs)
    prefill = rec.seen[0][1:, 0]  # [3, len]: the M-RoPE rows
    is_video = inputs["input_ids"][0] == model.config.video_token_id
    first_after = int(is_video.nonzero().max()) + 1
    start = int(prefill[0, is_video].min())
    assert int(prefill[:, is_video].max()) == start + 2 * 2  # grid step 2 at 1 s x 2 tokens/s
    assert prefill[:, first_after].tolist() == [start + 5] * 3
    last = int(prefill[0, -1])
    for step, pos in enumerate(rec.seen[1:], start=1):
        assert pos.shape == (4, 1, 1) and pos[1:, 0, 0].tolist() == [last + step] * 3


# --- Qwen3-VL: one block per frame, temporal index 0, text after a block at its max + 1 -------------------


def qwen3_positions(ids, grids_v=None, grids_i=None, mask=None):
    """Positions by the qwen3_vl family for hand-made ids (V video, IMG image tokens, merge 2)."""
    config = SimpleNamespace(
        image_token_id=IMG, video_token_id=V, vision_config=SimpleNamespace(spatial_merge_size=2)
    )
    ids = torch.tensor(ids)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids) if mask is None else torch.tensor(mask),
        "video_grid_thw": torch.tensor(grids_v) if grids_v else None,
        "image_grid_thw": torch.tensor(grids_i) if grids_i else None,
    }
    return family_named("qwen3_vl").prefill_position_ids(SimpleNamespace(config=config), inputs)


def test_qwen3_vl_gives_each_frame_its_own_block_at_temporal_index_0():
    """Grid [2, 4, 4]: two frames of 2 x 2 merged tokens, a timestamp (two text tokens) between them.
    Frame 1 starts at 2 (t 2; h 2 2 3 3; w 2 3 2 3; max 3), the timestamp takes 4, 5, frame 2 starts
    at 6 (max 7), the question at 8. Qwen2-VL's rule would give frame 2 the temporal index 1."""
    ids = [T, T] + [V] * 4 + [T, T] + [V] * 4 + [T]
    pos = qwen3_positions([ids], grids_v=[[2, 4, 4]])
    assert pos[1:, 0].tolist() == [
        [0, 1, 2, 2, 2, 2, 4, 5, 6, 6, 6, 6, 8],
        [0, 1, 2, 2, 3, 3, 4, 5, 6, 6, 7, 7, 8],
        [0, 1, 2, 3, 2, 3, 4, 5, 6, 7, 6, 7, 8],
    ]
    assert pos[0, 0].tolist() == list(range(13))  # row 0: the 1D text positions (attention mask)


def test_qwen3_vl_text_after_a_wide_frame_starts_at_start_plus_its_width():
    """Frame grid [1, 4, 8] (2 x 4 merged): h reaches start + 1, w start + 3, so text starts at start + 4;
    a left-padded second row starts its frame at 1."""
    ids = [[T] + [V] * 8 + [T, T], [PAD, PAD, T] + [V] * 8]
    mask = [[1] * 11, [0, 0] + [1] * 9]
    pos = qwen3_positions(ids, grids_v=[[1, 4, 8], [1, 4, 8]], mask=mask)
    assert pos[1:, 0].tolist() == [
        [0] + [1] * 8 + [5, 6],
        [0] + [1, 1, 1, 1, 2, 2, 2, 2] + [5, 6],
        [0] + [1, 2, 3, 4] * 2 + [5, 6],
    ]
    assert pos[1:, 1, :3].tolist() == [[0, 0, 0]] * 3
    assert pos[1:, 1, 3:].tolist() == [[1] * 8, [1, 1, 1, 1, 2, 2, 2, 2], [1, 2, 3, 4] * 2]


def test_qwen3_vl_images_are_one_step_blocks_too():
    pos = qwen3_positions([[T, IMG, IMG, IMG, IMG, T]], grids_i=[[1, 4, 4]])
    assert pos[1:, 0].tolist() == [[0, 1, 1, 1, 1, 3], [0, 1, 1, 2, 2, 3], [0, 1, 2, 1, 2, 3]]


@pytest.fixture(scope="module")
def tiny_qwen3_vl():
    return family_named("qwen3_vl").tiny(seed=0)


def test_qwen3_vl_real_mp4_has_a_timestamp_per_frame_and_transformers_agrees(tiny_qwen3_vl, mp4_videos):
    """A 3 s MP4 through qwen-vl-utils (Qwen3-VL settings: sides multiples of 32) and Qwen3VLProcessor:
    one ``<t seconds>`` line per temporal patch, no stray vision markers, and our positions equal
    transformers' ``get_rope_index`` (right for Qwen3-VL's one-step blocks)."""
    model, processor = tiny_qwen3_vl
    inputs = mp4_batch(processor, [("Which way?", mp4_videos["up_blue"])])
    grid = inputs["video_grid_thw"].tolist()
    # 6 frames at 2 fps; 64 x 48 px -> 64 x 64 (sides multiples of 32) -> 4 x 4 patches of 16 px
    assert grid == [[3, 4, 4]]
    assert int((inputs["input_ids"] == model.config.video_token_id).sum()) == 3 * 2 * 2  # merged 2 x 2
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count(" seconds>") == 3
    assert text.count("<|vision_start|>") == text.count("<|vision_end|>") == 3
    assert "<|vision_start|><0." not in text  # transformers 5.x would leave one before the first timestamp
    theirs, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    ours = prefill_position_ids(model, inputs)[1:]
    assert torch.equal(ours, theirs)
    is_video = inputs["input_ids"][0] == model.config.video_token_id
    assert ours[0, 0, is_video].unique().numel() == 3  # each frame's block sits at its own start


# --- Qwen3.5: Qwen3-VL's rule (its processor's timestamps) on a hybrid LM; transformers agrees -------------


@pytest.fixture(scope="module")
def tiny_qwen3_5():
    return family_named("qwen3_5").tiny(seed=0)


def test_qwen3_5_positions_are_qwen3_vl_rule_by_hand():
    """The qwen3_5 family by hand: a left-padded row with a 3-frame video (grid [3, 4, 4]: three blocks of
    2 x 2 merged tokens) with a one-token timestamp after the first two frames. Frames start at 2, 5, 8
    (each block reaches start + 1; the text after it takes start + 2), the last text token is 10."""
    config = SimpleNamespace(
        image_token_id=IMG, video_token_id=V, vision_config=SimpleNamespace(spatial_merge_size=2)
    )
    ids = torch.tensor([[PAD, T, T] + [V] * 4 + [T] + [V] * 4 + [T] + [V] * 4 + [T]])
    inputs = {
        "input_ids": ids,
        "attention_mask": (ids != PAD).long(),
        "video_grid_thw": torch.tensor([[3, 4, 4]]),
    }
    pos = family_named("qwen3_5").prefill_position_ids(SimpleNamespace(config=config), inputs)
    frame = [[0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 1]]  # t, h, w offsets within one 2 x 2 block
    expected = [
        [
            0,
            0,
            1,
            *(2 + f for f in frame[r]),
            4,
            *(5 + f for f in frame[r]),
            7,
            *(8 + f for f in frame[r]),
            10,
        ]
        for r in range(3)
    ]
    assert pos[1:, 0].tolist() == expected
    assert pos[0, 0].tolist() == [0, *range(17)]  # row 0: the 1D text positions, padding 0


def test_transformers_qwen3_5_get_rope_index_follows_the_rule_its_timestamps_imply(tiny_qwen3_5):
    """transformers' ``Qwen3_5Model.get_rope_index`` on hand-made ids: each frame its own block at temporal
    index 0, text after a 2 x 3 merged frame at start + 3 (its largest position + 1), and the second frame's
    block again at temporal index 0 of its own start; equal to the family's positions."""
    model, _ = tiny_qwen3_5
    v = model.config.video_token_id
    ids = torch.tensor([[T, T] + [v] * 6 + [T, T] + [v] * 6 + [T]])
    theirs, _ = model.model.get_rope_index(  # by keyword: Qwen3.5's signature starts with video_grid_thw
        input_ids=ids,
        mm_token_type_ids=(ids == v).int() * 2,
        video_grid_thw=torch.tensor([[2, 4, 6]]),
        attention_mask=torch.ones_like(ids),
    )
    block = [[0] * 6, [0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2]]
    expected = [[0, 1, *(2 + b for b in block[r]), 5, 6, *(7 + b for b in block[r]), 10] for r in range(3)]
    assert theirs[:, 0].tolist() == expected
    ours = prefill_position_ids(model, {"input_ids": ids, "video_grid_thw": torch.tensor([[2, 4, 6]])})
    assert torch.equal(ours[1:], theirs)


def test_qwen3_5_real_mp4_has_a_timestamp_per_frame_and_transformers_agrees(tiny_qwen3_5, mp4_videos):
    """A 3 s MP4 through qwen-vl-utils and Qwen3.5's processor (Qwen3VLProcessor), in a left-padded batch
    with a 2 s one: a ``<t seconds>`` line per temporal patch, and our positions equal transformers'."""
    model, processor = tiny_qwen3_5
    inputs = mp4_batch(
        processor, [("Which way?", mp4_videos["up_blue"]), ("Colour?", mp4_videos["right_red"])]
    )
    assert inputs["video_grid_thw"].tolist()[0] == [3, 4, 4]
    text = processor.tokenizer.decode(inputs["input_ids"][0], skip_special_tokens=False)
    assert text.count(" seconds>") == 3 and text.count("<|vision_start|>") == 3
    assert bool((inputs["attention_mask"] == 0).any())  # the rows have different lengths
    theirs, _ = model.model.get_rope_index(
        input_ids=inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    assert torch.equal(prefill_position_ids(model, inputs)[1:], theirs)


# --- 1D families ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llava_onevision", "llava_next_video", "internvl", "text"])
def test_one_dimensional_families_count_real_tokens(name):
    """Video tokens are ordinary tokens for these language models: positions count real tokens, left
    padding gets 0."""
    inputs = {"input_ids": torch.tensor([[PAD, PAD, T, V, V, T], [T, V, V, V, V, T]])}
    inputs["attention_mask"] = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    pos = family_named(name).prefill_position_ids(None, inputs)
    assert pos.tolist() == [[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]


def test_internvl_video_frames_are_its_image_context_tokens(mp4_videos):
    model, processor = family_named("internvl").tiny(seed=0)
    inputs = mp4_batch(processor, [("Which way?", mp4_videos["up_blue"])])
    text = processor.tokenizer.decode(inputs["input_ids"][0])
    assert text.count("Frame") == 8 and text.count("<img>") == 8  # 8 frames, sampled uniformly
    mask = family_named("internvl").token_mask(model, inputs, "video")
    assert int(mask.sum()) == 8 * processor.image_seq_length
    ids = inputs["input_ids"][0]
    assert set(ids[mask[0]].tolist()) == {processor.image_token_id}
    both = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "video", "video": str(mp4_videos["up_blue"])}],
        }
    ]
    with pytest.raises(ValueError, match="image and a video"):
        family_named("internvl").collate(processor, [both], [[]])
