"""Numerical faults are contained: the step is skipped, the controller stays finite, decoding goes on."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import frames, vl_batch

from vreason.controllers.value_cache import ValueCacheController
from vreason.engine import Decoder, Method, OptimizerConfig
from vreason.sampling import SamplingConfig
from vreason.schedule import FixedStepSchedule

GREEDY = SamplingConfig(do_sample=False, max_new_tokens=16)


def method() -> Method:
    return Method(
        controller=ValueCacheController(),
        optimizer=OptimizerConfig(lr=0.02),
        schedule=FixedStepSchedule(step_size=2),
    )


@pytest.fixture(scope="module")
def two_samples(tiny_vl):
    _, processor = tiny_vl
    return vl_batch(
        processor, [("Which way?", frames(4, 56, 84, seed=11)), ("Colour?", frames(4, 56, 56, seed=12))]
    )


def poison_logits_at(model, call: int, row: int):
    """Forward hook making row ``row`` of the logits NaN at the ``call``-th model forward."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] == call:
            output.logits[row] = float("nan")
        return output

    return model.register_forward_hook(hook)


def test_nan_logits_are_recorded_and_generation_continues(tiny_vl, two_samples):
    model, _ = tiny_vl
    clean = Decoder(model, method(), GREEDY).generate(two_samples)
    handle = poison_logits_at(model, call=6, row=0)  # logits of token 6 (an optimisation step at k=2)
    try:
        hurt = Decoder(model, method(), GREEDY).generate(two_samples)
    finally:
        handle.remove()
    assert hurt[0].faults == [{"token": 6, "reason": "non-finite logits"}]
    assert math.isnan(hurt[0].entropy[5]) and not hurt[0].optimized[5]
    assert len(hurt[0].token_ids) == len(clean[0].token_ids)  # decoding went on
    assert all(math.isfinite(x) for x in hurt[0].ema) and all(
        math.isfinite(x) for x in hurt[0].controller_norm
    )
    # the controller went back to its value before its last step (token 4's step), i.e. after token 2's
    assert hurt[0].controller_norm[5] == pytest.approx(clean[0].controller_norm[2])
    assert clean[0].controller_norm[2] != clean[0].controller_norm[3]
    # the other sample of the batch is untouched
    assert hurt[1].token_ids == clean[1].token_ids and hurt[1].faults == []
    torch.testing.assert_close(torch.tensor(hurt[1].entropy), torch.tensor(clean[1].entropy))


def test_nan_gradient_skips_the_step_and_keeps_the_controller(tiny_vl, two_samples):
    model, _ = tiny_vl
    controller = ValueCacheController()
    m = Method(
        controller=controller, optimizer=OptimizerConfig(lr=0.02), schedule=FixedStepSchedule(step_size=2)
    )
    steps = {"n": 0}
    original_attach = controller.attach

    def attach_with_poisoned_grad(*args, **kwargs):
        original_attach(*args, **kwargs)

        def poison(grad):
            steps["n"] += 1
            return grad * float("nan") if steps["n"] == 2 else grad

        controller.params[1].register_hook(poison)

    controller.attach = attach_with_poisoned_grad
    trace = Decoder(model, m, GREEDY).generate(two_samples)[1]
    # k = 2: steps at tokens 2, 4, 6, ...; the second one (token 4) gets the NaN gradient
    assert trace.faults == [{"token": 4, "reason": "non-finite gradient"}]
    assert not trace.optimized[3] and trace.optimized[1] and trace.optimized[5]
    assert trace.controller_norm[3] == trace.controller_norm[2]  # unchanged by the skipped step
    assert all(math.isfinite(x) for x in trace.controller_norm)
