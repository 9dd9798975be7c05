"""Every video family's tiny model (its real transformers classes and processor) under the engine's
invariants: controller off equals a plain decode with the trained positions, a batch equals single
runs, Lite's eviction equals masking, and V-Reason steps and moves ΔV on the video positions."""

from __future__ import annotations

import pytest
import torch
from conftest import plain_decode

from vreason.controllers.value_cache import ValueCacheController
from vreason.data.video import VideoConfig, prepare_inputs, video_element_options
from vreason.engine import Decoder, Method, OptimizerConfig
from vreason.families import FAMILIES, family_named, family_of
from vreason.pruning import L2NormPruner
from vreason.sampling import SamplingConfig
from vreason.schedule import FixedStepSchedule

VIDEO_FAMILIES = [name for name in FAMILIES.names() if FAMILIES.get(name).multimodal]
SMALL = VideoConfig(max_frames=8, min_pixels=3136, max_pixels=12544)
N_TOKENS = 16


@pytest.fixture(scope="module", params=VIDEO_FAMILIES)
def family_model(request):
    model, processor = family_named(request.param).tiny(seed=0)
    return request.param, model, processor


def inputs_for(processor, specs):
    options = video_element_options(SMALL)
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


def greedy() -> SamplingConfig:
    return SamplingConfig(do_sample=False, max_new_tokens=N_TOKENS)


def test_the_tiny_model_is_its_familys_and_has_video_tokens(family_model, mp4_videos):
    name, model, processor = family_model
    assert family_of(model).registry_name == name
    inputs = inputs_for(processor, [("Which way?", mp4_videos["up_blue"])])
    assert int(family_of(model).token_mask(model, inputs, "video").sum()) > 0


@pytest.mark.parametrize(
    "method",
    [None, Method(controller=ValueCacheController(), optimizer=OptimizerConfig(lr=0.0))],
    ids=["off", "value_lr0"],
)
def test_controller_off_matches_a_plain_decode(family_model, mp4_videos, method):
    _, model, processor = family_model
    inputs = inputs_for(processor, [("Which way does the square move?", mp4_videos["up_blue"])])
    expected_tokens, expected_logits = plain_decode(model, inputs, N_TOKENS)
    logits = []
    handle = model.register_forward_hook(lambda m, a, out: logits.append(out.logits[:, -1].float().clone()))
    try:
        trace = Decoder(model, method, greedy(), eos_token_id=[]).generate(inputs)[0]
    finally:
        handle.remove()
    assert trace.token_ids == expected_tokens
    for ours, theirs in zip(logits, expected_logits, strict=True):
        assert torch.equal(ours, theirs)


def test_batch_of_three_matches_single_runs(family_model, mp4_videos):
    _, model, processor = family_model
    specs = [
        ("Which way does it move?", mp4_videos["right_red"]),
        ("What colour is the square that moves across the frame?", mp4_videos["up_blue"]),
        ("Describe it.", mp4_videos["left_green"]),
    ]

    def method():
        return Method(
            controller=ValueCacheController(),
            optimizer=OptimizerConfig(lr=0.02),
            schedule=FixedStepSchedule(step_size=2),
        )

    batch = Decoder(model, method(), greedy()).generate(inputs_for(processor, specs), keys=["a", "b", "c"])
    for spec, key, in_batch in zip(specs, "abc", batch, strict=True):
        alone = Decoder(model, method(), greedy()).generate(inputs_for(processor, [spec]), keys=[key])[0]
        assert in_batch.token_ids == alone.token_ids and in_batch.optimized == alone.optimized
        torch.testing.assert_close(
            torch.tensor(in_batch.entropy), torch.tensor(alone.entropy), rtol=1e-4, atol=1e-4
        )
        assert in_batch.controller_norm[-1] > 0


def test_lite_eviction_equals_masking(family_model, mp4_videos):
    _, model, processor = family_model
    inputs = inputs_for(
        processor, [("Which way?", mp4_videos["right_red"]), ("Colour?", mp4_videos["up_blue"])]
    )

    def lite(evict: bool) -> Method:
        return Method(
            controller=ValueCacheController(),
            pruner=L2NormPruner(keep_ratio=0.5, evict=evict),
            optimizer=OptimizerConfig(lr=0.02),
        )

    evicted = Decoder(model, lite(True), greedy()).generate(inputs)
    masked = Decoder(model, lite(False), greedy()).generate(inputs)
    for x, y in zip(evicted, masked, strict=True):
        assert x.cached_prompt_tokens == y.cached_prompt_tokens < x.prompt_tokens
        assert x.kv_cache_mb < y.kv_cache_mb  # physically shorter
        assert x.token_ids == y.token_ids
        torch.testing.assert_close(torch.tensor(x.entropy), torch.tensor(y.entropy), rtol=1e-4, atol=1e-4)


def test_vreason_steps_and_moves_the_offset_on_the_video_positions(family_model, mp4_videos):
    _, model, processor = family_model
    inputs = inputs_for(processor, [("Which way?", mp4_videos["up_blue"])])
    controller = ValueCacheController()
    off = Decoder(model, None, greedy(), eos_token_id=[]).generate(inputs)[0]
    method = Method(controller=controller, optimizer=OptimizerConfig(lr=0.1))
    on = Decoder(model, method, greedy(), eos_token_id=[]).generate(inputs)[0]
    assert sum(on.optimized) == N_TOKENS // 4 and on.faults == []
    assert on.controller_norm[-1] > 0
    assert on.entropy[:4] == off.entropy[:4] and on.entropy[4:] != off.entropy[4:]
