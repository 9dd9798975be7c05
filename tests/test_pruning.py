"""Lite: keep ratio 1.0 is a no-op; physical eviction equals masking; the lowest-norm tokens go."""

from __future__ import annotations

import pytest
import torch
from conftest import decode_logits, frames, prefill, vl_batch
from transformers import DynamicCache

from vreason.controllers.value_cache import ValueCacheController
from vreason.engine import Decoder, Method, OptimizerConfig
from vreason.positions import select_positions
from vreason.pruning import L2NormPruner, evict, keep_index, kv_cache_layers
from vreason.sampling import SamplingConfig
from vreason.schedule import FixedStepSchedule

GREEDY = SamplingConfig(do_sample=False, max_new_tokens=20)


@pytest.fixture(scope="module")
def batch_inputs(tiny_vl):
    _, processor = tiny_vl
    specs = [("Which way does it move?", frames(4, 56, 84, seed=8)), ("Colour?", frames(6, 56, 56, seed=9))]
    return vl_batch(processor, specs)


def lite(keep_ratio: float, evict: bool = True, lr: float = 0.02) -> Method:
    return Method(
        controller=ValueCacheController(),
        pruner=L2NormPruner(keep_ratio=keep_ratio, evict=evict),
        optimizer=OptimizerConfig(lr=lr),
        schedule=FixedStepSchedule(step_size=2),
    )


def test_keep_ratio_one_equals_no_pruning(tiny_vl, batch_inputs):
    model, _ = tiny_vl
    full = Method(
        controller=ValueCacheController(), optimizer=OptimizerConfig(lr=0.02), schedule=FixedStepSchedule(2)
    )
    a = Decoder(model, full, GREEDY).generate(batch_inputs)
    b = Decoder(model, lite(1.0), GREEDY).generate(batch_inputs)
    for x, y in zip(a, b, strict=True):
        assert (
            x.token_ids == y.token_ids and x.entropy == y.entropy and x.controller_norm == y.controller_norm
        )


def test_physical_eviction_equals_attention_masking_logits(tiny_vl, batch_inputs):
    """One decode step after evicting positions vs keeping them and masking them out."""
    model, _ = tiny_vl
    inputs = batch_inputs
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    for cache in caches:
        position_ids, token = prefill(model, inputs, cache)
    positions = select_positions("video", model, inputs)
    keep = L2NormPruner(keep_ratio=0.5).select(caches[0], positions)
    assert 0 < int((~keep).sum()) < int(positions.sum())

    eviction = keep_index(keep)
    evict(caches[0], eviction)
    evicted_mask = eviction.gather(inputs["attention_mask"], dim=1) * eviction.valid
    masked_mask = inputs["attention_mask"] * keep
    logits = []
    for cache, mask in ((caches[0], evicted_mask), (caches[1], masked_mask)):
        with torch.no_grad():
            logits.append(decode_logits(model, token, mask, position_ids, cache))
    assert caches[0].get_seq_length() < caches[1].get_seq_length()
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def test_physical_eviction_equals_masking_through_the_whole_loop(tiny_vl, batch_inputs):
    model, _ = tiny_vl
    evicted = Decoder(model, lite(0.5, evict=True), GREEDY).generate(batch_inputs)
    masked = Decoder(model, lite(0.5, evict=False), GREEDY).generate(batch_inputs)
    for x, y in zip(evicted, masked, strict=True):
        assert x.token_ids == y.token_ids
        assert x.cached_prompt_tokens < x.prompt_tokens
        assert x.cached_prompt_tokens == y.cached_prompt_tokens
        torch.testing.assert_close(torch.tensor(x.entropy), torch.tensor(y.entropy), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            torch.tensor(x.controller_norm), torch.tensor(y.controller_norm), rtol=1e-3, atol=1e-5
        )


def test_lowest_mean_norm_tokens_are_evicted():
    cache = DynamicCache()
    values = torch.ones(1, 2, 6, 4)
    scale = torch.tensor([5.0, 1.0, 3.0, 0.5, 4.0, 2.0])  # per-position norms (relative)
    for layer in range(2):
        cache.update(torch.zeros_like(values), values * scale.view(1, 1, 6, 1) * (layer + 1), layer)
    positions = torch.tensor([[False, True, True, True, True, True]])  # position 0 is text: never evicted
    keep = L2NormPruner(keep_ratio=0.5).select(cache, positions)
    # 5 selected tokens, keep ceil(2.5) = 3 with the highest norms (positions 2, 4, 5)
    assert keep.tolist() == [[True, False, True, False, True, True]]
    assert L2NormPruner(keep_ratio=1.0).select(cache, positions).all()


def test_uneven_eviction_in_a_batch_left_pads_rows():
    keep = torch.tensor([[True, False, True, True], [False, False, True, True]])
    eviction = keep_index(keep)
    assert eviction.index.tolist() == [[0, 2, 3], [0, 2, 3]]
    assert eviction.valid.tolist() == [[True, True, True], [False, True, True]]


def test_keep_ratio_is_validated():
    with pytest.raises(ValueError, match="keep_ratio"):
        L2NormPruner(keep_ratio=0.0)


# --- a hybrid cache (Qwen3.5): linear-attention layers hold a recurrent state, not keys and values --------


@pytest.fixture(scope="module")
def tiny_qwen3_5_inputs(mp4_videos):
    from conftest import mp4_batch

    from vreason.families import family_named

    model, processor = family_named("qwen3_5").tiny(seed=0)
    specs = [("Which way does it move?", mp4_videos["right_red"]), ("Colour?", mp4_videos["up_blue"])]
    return model, mp4_batch(processor, specs)


def test_scores_are_the_mean_over_the_full_attention_layers_only(tiny_qwen3_5_inputs):
    model, inputs = tiny_qwen3_5_inputs
    cache = DynamicCache(config=model.config)
    prefill(model, inputs, cache)
    assert kv_cache_layers(cache) == [3, 7] and not hasattr(cache.layers[0], "values")
    by_hand = (
        cache.layers[3].values.norm(dim=-1).mean(dim=1) + cache.layers[7].values.norm(dim=-1).mean(dim=1)
    ) / 2
    torch.testing.assert_close(L2NormPruner().scores(cache), by_hand)


def test_eviction_equals_masking_on_the_full_attention_layers(tiny_qwen3_5_inputs):
    """One decode step of a left-padded batch after evicting half the video tokens from layers 3 and 7
    vs keeping them and masking them out: same logits; the linear layers' states are untouched."""
    model, inputs = tiny_qwen3_5_inputs
    caches = [DynamicCache(config=model.config) for _ in range(2)]
    for cache in caches:
        position_ids, token = prefill(model, inputs, cache)
    positions = select_positions("video", model, inputs)
    keep = L2NormPruner(keep_ratio=0.5).select(caches[0], positions)
    assert 0 < int((~keep).sum()) < int(positions.sum())
    recurrent = caches[0].layers[0].recurrent_states[0].clone()
    eviction = keep_index(keep)
    evict(caches[0], eviction)
    assert torch.equal(caches[0].layers[0].recurrent_states[0], recurrent)
    evicted_mask = eviction.gather(inputs["attention_mask"], dim=1) * eviction.valid
    masked_mask = inputs["attention_mask"] * keep
    logits = []
    for cache, mask in ((caches[0], evicted_mask), (caches[1], masked_mask)):
        with torch.no_grad():
            logits.append(decode_logits(model, token, mask, position_ids, cache))
    lengths = [cache.layers[7].values.shape[2] for cache in caches]  # the prompt and the decoded token
    assert lengths[0] == evicted_mask.shape[1] + 1 < lengths[1] == inputs["input_ids"].shape[1] + 1
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
    plain = DynamicCache(config=model.config)
    prefill(model, inputs, plain)
    with torch.no_grad():
        unpruned = decode_logits(model, token, inputs["attention_mask"], position_ids, plain)
    assert not torch.allclose(logits[0], unpruned, rtol=1e-5, atol=1e-5)  # eviction did change something
