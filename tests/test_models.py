"""Model loading: tiny models built in code, the real SmolLM2 GGUF, and clear errors for bad paths."""

from __future__ import annotations

import pytest
import torch
from conftest import lm_batch

from vreason.controllers.value_cache import ValueCacheController
from vreason.engine import Decoder, Method, OptimizerConfig
from vreason.models import byte_level_tokenizer, load_gguf, load_pretrained, smollm2_gguf_path
from vreason.sampling import SamplingConfig


def test_byte_tokenizer_round_trips_any_text_and_keeps_special_tokens():
    tok = byte_level_tokenizer()
    text = "Ünïcödé 42 <|video_pad|> done"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<|video_pad|>") in ids


def test_missing_model_path_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")


def test_a_file_that_is_not_gguf_is_rejected(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(ValueError, match="not a GGUF"):
        load_gguf(fake)


@pytest.fixture(scope="module")
def smollm2():
    return load_gguf(smollm2_gguf_path())


def test_smollm2_gguf_controller_off_matches_generate(smollm2):
    model, tok = smollm2
    inputs = lm_batch(tok, ["What is 12 plus 30?", "Name a prime number."])
    expected = model.generate(**inputs, do_sample=False, max_new_tokens=12)[:, inputs["input_ids"].shape[1] :]
    lr0 = Method(controller=ValueCacheController(), positions="prompt", optimizer=OptimizerConfig(lr=0.0))
    traces = Decoder(model, lr0, SamplingConfig(do_sample=False, max_new_tokens=12)).generate(inputs)
    for row, trace in enumerate(traces):
        assert trace.token_ids == expected[row, : len(trace.token_ids)].tolist()


def test_smollm2_gguf_with_prompt_controller_optimises(smollm2):
    model, tok = smollm2
    inputs = lm_batch(tok, ["A farmer has 3 cows and buys 4 more. How many cows?"])
    method = Method(controller=ValueCacheController(), positions="prompt", optimizer=OptimizerConfig(lr=1e-2))
    trace = Decoder(model, method, SamplingConfig(do_sample=False, max_new_tokens=16)).generate(inputs)[0]
    assert any(trace.optimized)
    assert trace.controller_norm[-1] > 0
    assert all(torch.isfinite(torch.tensor(trace.entropy)))


SPLIT = {  # every decoder layer its own entry: accelerate hooks move activations at each boundary
    "model.visual": "cpu",
    "model.language_model.embed_tokens": "cpu",
    "model.language_model.layers.0": "cpu",
    "model.language_model.layers.1": "cpu",
    "model.language_model.norm": "cpu",
    "model.language_model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


def test_a_device_map_shards_the_tiny_model_and_vreason_steers_the_last_layer_where_it_lives(mp4_videos):
    """``model.device_map`` with an explicit map that splits the layers (one device here, CPU): the model
    is dispatched by accelerate (hooks on every listed module), ΔV and its AdamW moments live on the
    device of the layer they steer, and V-Reason (with Lite) gives what it gives the undispatched model."""
    from conftest import mp4_batch

    from vreason.models import build_model
    from vreason.pruning import L2NormPruner

    sharded, processor = build_model(kind="tiny", family="qwen2_5_vl", device_map=SPLIT)
    plain, _ = build_model(kind="tiny", family="qwen2_5_vl")
    assert sharded.hf_device_map == SPLIT
    assert hasattr(sharded.model.language_model.layers[1], "_hf_hook")
    assert not hasattr(plain.model.language_model.layers[1], "_hf_hook")
    inputs = mp4_batch(
        processor, [("Which way?", mp4_videos["up_blue"]), ("Colour?", mp4_videos["right_red"])]
    )

    def run(model):
        controller = ValueCacheController()
        method = Method(
            controller=controller, pruner=L2NormPruner(keep_ratio=0.5), optimizer=OptimizerConfig(lr=0.05)
        )
        decoder = Decoder(model, method, SamplingConfig(do_sample=False, max_new_tokens=9), eos_token_id=[])
        seen = {}
        original = decoder._optimizer

        def spy():
            optimizer = original()
            seen["optimizer"], seen["params"] = optimizer, list(controller.params)
            return optimizer

        decoder._optimizer = spy
        return decoder.generate(inputs), seen

    ours, seen = run(sharded)
    theirs, _ = run(plain)
    layer_device = torch.device(SPLIT["model.language_model.layers.1"])
    assert all(p.device == layer_device for p in seen["params"])
    states = [seen["optimizer"].state[p] for p in seen["params"]]
    assert all(s["exp_avg"].device == layer_device for s in states if s)
    for x, y in zip(ours, theirs, strict=True):
        assert sum(x.optimized) == 2 and x.controller_norm[-1] > 0
        assert x.token_ids == y.token_ids and x.cached_prompt_tokens == y.cached_prompt_tokens
        torch.testing.assert_close(torch.tensor(x.entropy), torch.tensor(y.entropy), rtol=1e-5, atol=1e-5)


def test_lightning_leaves_a_sharded_model_where_accelerate_put_it():
    """Lightning's strategy moves the LightningModule (and its children) onto one device before predict:
    a device-mapped model is kept out of the children, so that move cannot undo the map."""
    from vreason.lightning import VReasonModule
    from vreason.models import build_model

    sharded, processor = build_model(kind="tiny", family="qwen2_5_vl", device_map=SPLIT)
    plain, _ = build_model(kind="tiny", family="qwen2_5_vl")
    for model, kept_out in ((sharded, True), (plain, False)):
        module = VReasonModule(model, lambda: None, processor.tokenizer, 0, collate=lambda m, v: {})
        assert module.lm is model
        module.to(torch.float64)  # what a strategy's move does to every child
        moved = next(model.parameters()).dtype == torch.float64
        assert moved is not kept_out
        assert (model in list(module.children())) is not kept_out


def test_a_device_map_is_checked_before_anything_loads():
    from vreason.models import build_model

    with pytest.raises(ValueError, match="model.device_map must be"):
        build_model(kind="tiny", family="qwen2_5_vl", device_map="everywhere")
    with pytest.raises(ValueError, match="applies to model.kind tiny or pretrained"):
        build_model(kind="tiny_text_lm", device_map="auto")


def test_experiment_configs_accept_a_device_map():
    from vreason.config import load_config

    cfg = load_config(None, ["model.kind=tiny", "model.family=qwen2_5_vl", "model.device_map=auto"])
    assert cfg.model.device_map == "auto"
