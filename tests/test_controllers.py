"""Controllers: Eq. 1 keeps the chosen norm; one step of an entropy objective moves entropy its way."""

from __future__ import annotations

import pytest
import torch
from conftest import decode_logits, frames, lm_batch, prefill, vl_batch
from transformers import DynamicCache

from vreason.controllers import CONTROLLERS
from vreason.controllers.hidden_state import HiddenStateController
from vreason.controllers.key_cache import KeyCacheController
from vreason.controllers.value_cache import ValueCacheController, masked_norm
from vreason.engine import entropy_of
from vreason.positions import select_positions


def attached_controller(norm_dims: str, stored: torch.Tensor, mask: torch.Tensor) -> ValueCacheController:
    """A value controller attached to a one-layer cache holding ``stored`` as values."""
    cache = DynamicCache()
    cache.update(torch.zeros_like(stored), stored, 0)
    controller = ValueCacheController(layer=0, norm_dims=norm_dims)
    controller._layer_index = 0
    controller._reference = masked_norm(stored.float(), mask, norm_dims) if norm_dims != "token" else None
    controller._cache, controller._mask = cache, mask
    controller.params = [
        torch.nn.Parameter(torch.zeros(1, *stored.shape[1:])) for _ in range(stored.shape[0])
    ]
    if controller._reference is None:
        controller._reference = masked_norm(stored.float(), mask, norm_dims)
    return controller


@pytest.mark.parametrize("norm_dims", ["block", "head", "token"])
def test_eq1_keeps_the_chosen_norm(norm_dims):
    torch.manual_seed(0)
    stored = torch.randn(2, 3, 7, 5)  # [batch, kv_heads, positions, head_dim]
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 2:5] = True
    mask[1, [0, 6]] = True
    controller = attached_controller(norm_dims, stored, mask)
    with torch.no_grad():
        for p in controller.params:
            p.copy_(torch.randn_like(p) * 3)
    steered = controller.steer(stored)
    torch.testing.assert_close(masked_norm(steered, mask, norm_dims), masked_norm(stored, mask, norm_dims))
    untouched = ~mask[:, None, :, None].expand_as(stored)
    assert torch.equal(steered[untouched], stored[untouched])
    assert not torch.allclose(steered, stored)


def test_eq1_with_zero_offset_is_exactly_the_identity():
    torch.manual_seed(1)
    stored = torch.randn(2, 2, 9, 4).to(torch.bfloat16)
    mask = torch.rand(2, 9) > 0.4
    for norm_dims in ("block", "head", "token"):
        assert torch.equal(attached_controller(norm_dims, stored, mask).steer(stored), stored)


def test_lite_reference_is_the_unpruned_norm(tiny_vl):
    """After eviction the kept video values are rescaled to the norm of the full video block."""
    model, processor = tiny_vl
    inputs = vl_batch(processor, [("q", frames(4, 56, 84, seed=5))])
    cache = DynamicCache(config=model.config)
    prefill(model, inputs, cache)
    positions = select_positions("video", model, inputs)
    controller = ValueCacheController()
    controller.measure(model, cache, positions)
    full_norm = masked_norm(cache.layers[-1].values, positions, "block")
    kept = positions.clone()
    kept[0, kept[0].nonzero().flatten()[::2]] = False  # drop every other video token (by masking)
    controller.attach(model, cache, kept)
    steered = controller.steer(cache.layers[-1].values)
    torch.testing.assert_close(masked_norm(steered, kept, "block"), full_norm)
    assert masked_norm(cache.layers[-1].values, kept, "block") < full_norm


def entropy_after_one_step(model, inputs, controller, positions_name: str, alpha: int, lr: float = 1e-2):
    """Entropy of the first decode step before and after one AdamW step on -alpha * H."""
    model.requires_grad_(False)  # as the engine does: gradients reach only the controller
    cache = DynamicCache(config=model.config)
    position_ids, token = prefill(model, inputs, cache)
    positions = select_positions(positions_name, model, inputs)
    controller.measure(model, cache, positions)
    controller.attach(model, cache, positions)

    def entropy():
        with controller.applied():
            logits = decode_logits(model, token, inputs["attention_mask"], position_ids, cache)
        cache.crop(-1)  # drop the decoded token: every call sees the same cache
        return entropy_of(logits)

    optimizer = torch.optim.AdamW(controller.params, lr=lr, weight_decay=0.0)
    before = entropy()
    (-alpha * before).sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = entropy()
    return float(before.detach()), float(after)


@pytest.mark.parametrize("controller_cls", [ValueCacheController, KeyCacheController, HiddenStateController])
@pytest.mark.parametrize("alpha", [-1, 1])
def test_one_entropy_step_moves_entropy_its_way_video(tiny_vl, controller_cls, alpha):
    model, processor = tiny_vl
    inputs = vl_batch(processor, [("Which way?", frames(4, 56, 84, seed=6))])
    before, after = entropy_after_one_step(model, inputs, controller_cls(), "video", alpha)
    assert (after - before) * alpha > 0, (before, after)


@pytest.mark.parametrize("alpha", [-1, 1])
def test_one_entropy_step_moves_entropy_its_way_text_prompt_positions(tiny_lm, alpha):
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["Add 3 and 4."])
    before, after = entropy_after_one_step(model, inputs, ValueCacheController(), "prompt", alpha)
    assert (after - before) * alpha > 0, (before, after)


def test_registry_knows_every_controller_and_names_them_on_error():
    assert {"value_cache", "key_cache", "hidden_state"} <= set(CONTROLLERS.names())
    with pytest.raises(KeyError, match="value_cache"):
        CONTROLLERS.get("valu_cache")
    assert CONTROLLERS.get("vreason.controllers.value_cache.ValueCacheController") is ValueCacheController


def test_invalid_norm_dims_is_rejected():
    with pytest.raises(ValueError, match="norm_dims"):
        ValueCacheController(norm_dims="channel")


def test_steered_block_is_reused_until_the_offset_changes():
    """Forwards without autograd reuse Eq. 1's result; an in-place update of ΔV invalidates it."""
    torch.manual_seed(2)
    stored = torch.randn(2, 3, 7, 5)
    mask = torch.rand(2, 7) > 0.3
    controller = attached_controller("block", stored, mask)
    with torch.no_grad():
        first = controller._steered_prompt(stored)
        assert controller._steered_prompt(stored) is first
        controller.params[1].add_(0.5)
        moved = controller._steered_prompt(stored)
    assert moved is not first
    torch.testing.assert_close(moved, controller.steer(stored).detach())
    assert torch.equal(moved[0], first[0]) and not torch.equal(moved[1], first[1])
    with torch.enable_grad():  # optimisation steps always recompute, with the graph to ΔV
        assert controller._steered_prompt(stored).requires_grad


@pytest.mark.parametrize("norm_dims", ["block", "head", "token"])
@pytest.mark.parametrize("controller_cls", [ValueCacheController, KeyCacheController], ids=["value", "key"])
def test_every_norm_choice_takes_its_steps_and_moves_the_offset(tiny_vl, controller_cls, norm_dims):
    """Not only the forward: every optimisation step of the decode is taken (finite gradient, no
    fault) and moves ΔV. A per-token norm once had an infinite sqrt derivative outside the video mask."""
    from conftest import mp4_batch

    from vreason.data.synthetic import ClipSpec, write_clips
    from vreason.engine import Decoder, Method, OptimizerConfig
    from vreason.sampling import SamplingConfig

    model, processor = tiny_vl
    video = write_clips(_clip_dir(), {"clip": ClipSpec("right", "red", 96, 64, 2)})["clip"]
    method = Method(controller=controller_cls(norm_dims=norm_dims), optimizer=OptimizerConfig(lr=0.1))
    sampling = SamplingConfig(do_sample=False, max_new_tokens=20)
    trace = Decoder(model, method, sampling, eos_token_id=[]).generate(mp4_batch(processor, [("?", video)]))[
        0
    ]
    assert trace.faults == []
    assert sum(trace.optimized) == 5  # tokens 4, 8, 12, 16, 20
    steps = [n for n, flag in enumerate(trace.optimized) if flag]
    norms = [0.0, *trace.controller_norm]
    assert all(norms[n + 1] != norms[n] for n in steps)  # each step moved ΔV
    assert trace.controller_norm[-1] > 0


def _clip_dir():
    import tempfile

    return tempfile.mkdtemp(prefix="vreason-clip-")


def test_controller_layer_counts_the_models_decoder_layers(tiny_lm):
    """A dense model: every layer keeps keys and values; negative counts from the end; out of range fails."""
    from vreason.controllers.base import kv_layer_index

    model, _ = tiny_lm
    n = model.config.num_hidden_layers
    assert [kv_layer_index(model, i) for i in (-1, 0, -n)] == [n - 1, 0, 0]
    for layer in (n, -n - 1):
        with pytest.raises(ValueError, match=f"controller.layer {layer}: the model has {n} decoder layers"):
            kv_layer_index(model, layer)


def test_steering_an_earlier_layer_at_every_token_keeps_the_cache_off_the_graph(tiny_lm):
    """ΔV on layer 0 with an optimisation step at every token: the later layer's cached keys and values of
    each step depend on ΔV; kept on the graph, the next step's backward would run into the freed one."""
    from vreason.engine import Decoder, Method, OptimizerConfig
    from vreason.sampling import SamplingConfig
    from vreason.schedule import FixedStepSchedule

    model, tokenizer = tiny_lm
    inputs = dict(lm_batch(tokenizer, ["Which way does the square move?"]))
    method = Method(
        controller=ValueCacheController(layer=0),
        positions="prompt",
        optimizer=OptimizerConfig(lr=0.1),
        schedule=FixedStepSchedule(step_size=1),
    )
    trace = Decoder(
        model, method, SamplingConfig(do_sample=False, max_new_tokens=8), eos_token_id=[]
    ).generate(inputs)[0]
    assert trace.faults == [] and sum(trace.optimized) == 7
    assert trace.controller_norm[-1] > trace.controller_norm[1] > 0
