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
