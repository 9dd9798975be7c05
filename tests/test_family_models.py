"""Every video family's tiny model (its real transformers classes and processor) under the engine's
invariants: controller off equals a plain decode with the trained positions (and ``generate`` where
transformers' positions are the trained ones), a batch equals single runs, Lite's eviction equals
masking, V-Reason steps and moves ΔV on the video positions, and ``vreason run`` with the family's tiny
model finishes and scores. A family registered in ``vreason.families`` is picked up here by itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import plain_decode

from vreason.cli import main
from vreason.controllers.value_cache import ValueCacheController
from vreason.data.video import VideoConfig, prepare_inputs, video_element_options
from vreason.engine import Decoder, Method, OptimizerConfig
from vreason.families import FAMILIES, family_named, family_of
from vreason.predictions import read_jsonl
from vreason.pruning import L2NormPruner
from vreason.sampling import SamplingConfig
from vreason.schedule import FixedStepSchedule

VIDEO_FAMILIES = [name for name in FAMILIES.names() if FAMILIES.get(name).multimodal]
# Families whose video positions transformers' ``generate`` computes by the trained rule (1D positions, or
# Qwen3-VL's one-step blocks); Qwen2/2.5-VL's are wrong past short clips (test_families.py).
GENERATE_AGREES = {
    "qwen3_vl",
    "qwen3_vl_moe",
    "qwen3_5",
    "qwen3_5_moe",
    "llava_onevision",
    "llava_next_video",
    "internvl",
}
# Hybrid linear/full-attention families: Gated DeltaNet layers hold a recurrent state, not keys and values.
HYBRID_FAMILIES = ["qwen3_5", "qwen3_5_moe"]
SMALL = VideoConfig(max_frames=8, min_pixels=3136, max_pixels=12544)
N_TOKENS = 16
SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


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
    family = family_of(model)
    assert family.registry_name == name and type(processor).__name__ in family.processor_classes
    inputs = inputs_for(processor, [("Which way?", mp4_videos["up_blue"])])
    mask = family.token_mask(model, inputs, "video")
    # the family's count of a loaded video's tokens (video.max_video_tokens) is what the prompt holds
    video = family.load_videos(
        [{"role": "user", "content": [{"type": "video", "video": str(mp4_videos["up_blue"])}]}],
        family.video_options(SMALL),
    )[0]
    assert int(mask.sum()) == family.video_tokens(processor, video) > 0


def test_controller_off_matches_generate_exactly_where_its_positions_are_trained(family_model, mp4_videos):
    """Families in GENERATE_AGREES: tokens and logits equal ``generate``'s. The others (Qwen2/2.5-VL, whose
    text after a 3 s clip transformers places too early): ``generate`` differs, which is why their oracle
    is the plain decode above; this fails the day transformers computes their trained positions."""
    name, model, processor = family_model
    inputs = inputs_for(processor, [("Which way does the square move?", mp4_videos["up_blue"])])
    out = model.generate(
        **inputs, do_sample=False, max_new_tokens=N_TOKENS, output_logits=True, return_dict_in_generate=True
    )
    expected = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    method = Method(controller=ValueCacheController(), optimizer=OptimizerConfig(lr=0.0))
    logits = []
    handle = model.register_forward_hook(lambda m, a, o: logits.append(o.logits[:, -1].float().clone()))
    try:
        trace = Decoder(model, method, greedy()).generate(inputs)[0]
    finally:
        handle.remove()
    same = [torch.equal(ours, theirs.float()) for ours, theirs in zip(logits, out.logits, strict=False)]
    if name in GENERATE_AGREES:
        assert trace.token_ids == expected and len(logits) == len(out.logits) and all(same)
    else:
        assert not same[0]  # the prefill's last position already sits at the wrong rotary position


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


def test_vreason_run_with_the_familys_tiny_model_finishes_and_scores(family_model, tmp_path, monkeypatch):
    """``vreason run experiments/smoke.yaml model.kind=tiny model.family=<name>``: every record answered
    (none failed), scored, and steered (V-Reason took optimisation steps)."""
    name = family_model[0]
    monkeypatch.chdir(tmp_path)
    overrides = [
        f"output_dir={tmp_path}/out",
        f"data.root={tmp_path}/data",
        "tracking.enabled=false",
        "model.kind=tiny",
        f"model.family={name}",
        "data.synthetic_size=2",
        "sampling.max_new_tokens=9",
    ]
    assert main(["run", str(SMOKE), *overrides]) == 0
    predictions = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert len(predictions) == 2
    for p in predictions:
        assert not p["failed"] and p["error"] is None and p["warnings"] == []
        assert 0.0 <= p["score"] <= 1.0 and 0 < p["num_tokens"] <= 9
        assert sum(p["trace"]["optimized"]) == (p["num_tokens"] - 1) // 4
    config = (tmp_path / "out" / "config.yaml").read_text()
    assert f"family: {name}" in config


@pytest.mark.parametrize("name", VIDEO_FAMILIES)
def test_every_family_has_a_validated_config_for_its_real_checkpoint(name):
    """experiments/models/<family>.yaml runs V-Reason on a local checkpoint of that family: one line
    (model.path, or VREASON_MODELS) to change."""
    from vreason.config import build_method, load_config

    path = SMOKE.parent / "models" / f"{name}.yaml"
    cfg = load_config(path)
    assert cfg.model.kind == "pretrained" and "${oc.env:VREASON_MODELS,/models}/" in path.read_text()
    assert cfg.method.positions == "video" and build_method(cfg.method).controller is not None


# --- hybrid models (Qwen3.5): the linear-attention layers' state is the model's alone -------------------


@pytest.fixture(scope="module", params=HYBRID_FAMILIES)
def hybrid_model(request):
    model, processor = family_named(request.param).tiny(seed=0)
    return request.param, model, processor


def linear_states(cache) -> dict[tuple[int, str], torch.Tensor]:
    """Copies of every linear-attention layer's convolution and recurrent state, by (layer, kind)."""
    return {
        (i, kind): getattr(layer, kind)[0].detach().clone()
        for i, layer in enumerate(cache.layers)
        for kind in ("conv_states", "recurrent_states")
        if hasattr(layer, kind)
    }


def test_the_hybrid_tiny_model_has_linear_layers_and_two_full_attention_layers(hybrid_model):
    _, model, _ = hybrid_model
    from transformers import DynamicCache

    from vreason.pruning import kv_cache_layers

    types = model.config.get_text_config().layer_types
    assert types == ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + [
        "full_attention"
    ]
    assert family_of(model).kv_layers(model) == [3, 7]
    assert kv_cache_layers(DynamicCache(config=model.config)) == [3, 7]  # the cache agrees with the family


def test_the_controller_never_changes_the_linear_layers_state(hybrid_model, mp4_videos):
    """Prefill two caches; steer one with a nonzero ΔV on the last layer through an optimisation step
    (forward with autograd, backward): every linear layer's convolution and recurrent state, and the
    stored values, are bit for bit those of a plain forward of the same token, while the logits moved."""
    from conftest import decode_logits, prefill
    from transformers import DynamicCache

    from vreason.positions import select_positions

    _, model, processor = hybrid_model
    inputs = inputs_for(processor, [("Which way?", mp4_videos["up_blue"])])
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    for cache in caches:
        position_ids, token = prefill(model, inputs, cache)
    prefilled = linear_states(caches[0])
    assert len(prefilled) == 2 * 6 and all(t.abs().sum() > 0 for t in prefilled.values())
    positions = select_positions("video", model, inputs)
    controller = ValueCacheController()
    controller.measure(model, caches[0], positions)
    controller.attach(model, caches[0], positions)
    assert linear_states(caches[0]).keys() == prefilled.keys()
    assert all(torch.equal(linear_states(caches[0])[k], prefilled[k]) for k in prefilled)  # attach
    with torch.no_grad():
        controller.params[0].normal_(std=1.0)
    model.requires_grad_(False)
    with torch.enable_grad(), controller.applied():
        steered = decode_logits(model, token, inputs["attention_mask"], position_ids, caches[0])
    steered.float().logsumexp(-1).sum().backward()
    assert controller.params[0].grad is not None and controller.params[0].grad.abs().sum() > 0
    with torch.no_grad():
        plain = decode_logits(model, token, inputs["attention_mask"], position_ids, caches[1])
    assert not torch.allclose(steered, plain)
    after, reference = linear_states(caches[0]), linear_states(caches[1])
    for key, state in reference.items():
        assert torch.equal(after[key], state) and not after[key].requires_grad, key
        assert not torch.equal(state, prefilled[key])  # the decoded token did enter the state
    for i in (3, 7):
        assert torch.equal(caches[0].layers[i].values, caches[1].layers[i].values)


def test_lite_evicts_from_the_full_attention_layers_and_leaves_the_linear_state(hybrid_model, mp4_videos):
    from conftest import prefill
    from transformers import DynamicCache

    from vreason.positions import select_positions

    _, model, processor = hybrid_model
    inputs = inputs_for(processor, [("Which way?", mp4_videos["up_blue"])])
    cache = DynamicCache(config=model.config)
    prefill(model, inputs, cache)
    before = linear_states(cache)
    positions = select_positions("video", model, inputs)
    length = inputs["input_ids"].shape[1]
    pruned = L2NormPruner(keep_ratio=0.5).prune(cache, positions, inputs["attention_mask"])
    assert pruned is not None
    n_video = int(positions.sum())
    for i in (3, 7):
        assert cache.layers[i].keys.shape[2] == cache.layers[i].values.shape[2] == length - n_video // 2
    after = linear_states(cache)
    assert all(torch.equal(after[key], state) for key, state in before.items())


@pytest.mark.parametrize("layer", [2, -2, 4])
def test_naming_a_linear_attention_layer_is_an_error_listing_the_full_attention_layers(hybrid_model, layer):
    _, model, _ = hybrid_model
    from vreason.controllers.base import kv_layer_index

    with pytest.raises(ValueError, match=r"is a linear_attention layer.*\(full_attention\) are \[3, 7\]"):
        kv_layer_index(model, layer)
    with pytest.raises(ValueError, match="has 8 decoder layers"):
        kv_layer_index(model, 8)
    assert [kv_layer_index(model, i) for i in (-1, 3, 7, -5)] == [7, 3, 7, 3]  # the model's own numbering


def test_vreason_on_an_earlier_full_attention_layer_steps_through_the_linear_layers(hybrid_model, mp4_videos):
    """ΔV on layer 3 reaches the logits through linear layers 4-6, whose recurrent state transformers
    updates in place: an optimisation step at every token (each backward would otherwise meet the last
    step's graph in the cache) runs without faults and moves the entropy."""
    _, model, processor = hybrid_model
    inputs = inputs_for(processor, [("Which way?", mp4_videos["up_blue"])])
    off = Decoder(model, None, greedy(), eos_token_id=[]).generate(inputs)[0]
    method = Method(
        controller=ValueCacheController(layer=3),
        optimizer=OptimizerConfig(lr=0.1),
        schedule=FixedStepSchedule(step_size=1),
    )
    on = Decoder(model, method, greedy(), eos_token_id=[]).generate(inputs)[0]
    assert on.faults == [] and sum(on.optimized) == N_TOKENS - 1
    assert on.controller_norm[-1] > 0 and on.entropy[1:] != off.entropy[1:]


def test_a_linear_attention_layer_for_the_controller_stops_the_run_before_any_record(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    overrides = [
        "model.kind=tiny",
        "model.family=qwen3_5",
        "method.controller.layer=2",
        f"output_dir={tmp_path}/out",
        "tracking.enabled=false",
    ]
    assert main(["run", str(SMOKE), *overrides]) == 2
    message = capsys.readouterr().err
    assert "controller.layer 2" in message and "[3, 7]" in message
    assert not (tmp_path / "out" / "predictions.jsonl").exists()
