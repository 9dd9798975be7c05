"""The decode loop's invariants: equivalence with generate, batch = single, one forward per token."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import lm_batch, mp4_batch, plain_decode

from vreason.controllers.hidden_state import HiddenStateController
from vreason.controllers.key_cache import KeyCacheController
from vreason.controllers.value_cache import ValueCacheController
from vreason.engine import Decoder, Method, OptimizerConfig
from vreason.objectives.max_entropy import MaxEntropyObjective
from vreason.objectives.switching import SwitchingObjective
from vreason.pruning import L2NormPruner
from vreason.sampling import SamplingConfig
from vreason.schedule import FixedStepSchedule

N_TOKENS = 24


class ForwardRecorder:
    """Counts model forwards and keeps each forward's last-position logits."""

    def __init__(self, model):
        self.model, self.logits = model, []

    def __enter__(self):
        self.handle = self.model.register_forward_hook(self._hook)
        return self

    def _hook(self, module, args, output):
        self.logits.append(output.logits[:, -1].detach().float().clone())

    def __exit__(self, *exc):
        self.handle.remove()


def greedy(n: int = N_TOKENS) -> SamplingConfig:
    return SamplingConfig(do_sample=False, max_new_tokens=n)


def frozen(controller) -> Method:
    """A controller that is attached and applied but never moves (lr 0)."""
    return Method(controller=controller, optimizer=OptimizerConfig(lr=0.0))


def generate_reference(model, inputs, n: int = N_TOKENS):
    out = model.generate(
        **inputs, do_sample=False, max_new_tokens=n, output_logits=True, return_dict_in_generate=True
    )
    new = out.sequences[:, inputs["input_ids"].shape[1] :]
    return new, list(out.logits)


@pytest.fixture(scope="module")
def video_inputs(tiny_vl, mp4_videos):
    """One real MP4, decoded and sampled by qwen-vl-utils' rules, through the real processor."""
    _, processor = tiny_vl
    return mp4_batch(processor, [("Which way does the square move?", mp4_videos["right_red"])])


@pytest.mark.parametrize(
    "method",
    [
        None,
        frozen(ValueCacheController()),
        frozen(KeyCacheController()),
        frozen(HiddenStateController()),
        Method(pruner=L2NormPruner(keep_ratio=1.0)),
    ],
    ids=["off", "value_lr0", "key_lr0", "hidden_lr0", "lite_keep_all"],
)
def test_controller_off_matches_generate_video(tiny_vl, video_inputs, method):
    """A 2 s clip, where transformers' positions agree with the trained rule (test_families.py)."""
    model, _ = tiny_vl
    expected_tokens, expected_logits = generate_reference(model, video_inputs)
    with ForwardRecorder(model) as rec:
        trace = Decoder(model, method, greedy()).generate(video_inputs)[0]
    assert trace.token_ids == expected_tokens[0].tolist()
    assert len(rec.logits) == len(expected_logits)
    for ours, theirs in zip(rec.logits, expected_logits, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "method",
    [None, frozen(ValueCacheController()), Method(pruner=L2NormPruner(keep_ratio=1.0))],
    ids=["off", "value_lr0", "lite_keep_all"],
)
def test_controller_off_matches_a_plain_decode_on_a_multi_second_video(tiny_vl, mp4_videos, method):
    """A 3 s clip, where transformers' positions are wrong (test_families.py): the reference is a plain
    decode with the trained positions, and the eos token is disabled so that all N_TOKENS are compared."""
    model, processor = tiny_vl
    inputs = mp4_batch(processor, [("Which way does the square move?", mp4_videos["up_blue"])])
    expected_tokens, expected_logits = plain_decode(model, inputs, N_TOKENS)
    with ForwardRecorder(model) as rec:
        trace = Decoder(model, method, greedy(), eos_token_id=[]).generate(inputs)[0]
    assert trace.token_ids == expected_tokens
    for ours, theirs in zip(rec.logits, expected_logits, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("method", [None, Method(controller=HiddenStateController(), positions="prompt")])
def test_controller_off_matches_generate_text_lm_batch(tiny_lm, method):
    model, tok = tiny_lm
    if method is not None:
        method.optimizer = OptimizerConfig(lr=0.0)
    inputs = lm_batch(tok, ["What is two plus two?", "Name a colour."])  # different lengths: left padding
    expected_tokens, expected_logits = generate_reference(model, inputs)
    with ForwardRecorder(model) as rec:
        traces = Decoder(model, method, greedy()).generate(inputs)
    for row, trace in enumerate(traces):
        n = len(trace.token_ids)
        assert trace.token_ids == expected_tokens[row, :n].tolist()
    for ours, theirs in zip(rec.logits, expected_logits, strict=False):
        assert torch.equal(ours, theirs)


@pytest.fixture(scope="module")
def bf16_vl(tiny_vl):
    """The tiny Qwen2.5-VL in bfloat16, the dtype users run the real model in."""
    model, _ = tiny_vl
    return copy.deepcopy(model).to(torch.bfloat16)


@pytest.mark.parametrize(
    "controller", [None, ValueCacheController(), KeyCacheController()], ids=["off", "value", "key"]
)
def test_bfloat16_controller_off_matches_generate_and_on_steers(bf16_vl, video_inputs, controller):
    expected_tokens, expected_logits = generate_reference(bf16_vl, video_inputs)
    method = frozen(controller) if controller is not None else None
    with ForwardRecorder(bf16_vl) as rec:
        trace = Decoder(bf16_vl, method, greedy()).generate(video_inputs)[0]
    assert trace.token_ids == expected_tokens[0].tolist()
    for ours, theirs in zip(rec.logits, expected_logits, strict=True):
        assert torch.equal(ours, theirs)
    if controller is not None:
        moving = Method(controller=type(controller)(), optimizer=OptimizerConfig(lr=0.05))
        on = Decoder(bf16_vl, moving, greedy()).generate(video_inputs)[0]
        assert on.controller_norm[-1] > 0 and on.faults == []
        assert on.entropy[5:] != trace.entropy[5:]


def test_controller_on_changes_decoding(tiny_vl, video_inputs):
    """Guards the equivalence tests: a moving controller does change the distribution."""
    model, _ = tiny_vl
    off = Decoder(model, None, greedy()).generate(video_inputs)[0]
    on = Decoder(
        model, Method(controller=ValueCacheController(), optimizer=OptimizerConfig(lr=0.05)), greedy()
    ).generate(video_inputs)[0]
    assert on.controller_norm[-1] > 0
    # token 4 is the first optimisation step (k = 4): its distribution is still unsteered, the update
    # after it steers token 5 on
    assert on.optimized.index(True) == 3
    assert on.entropy[:4] == off.entropy[:4]
    assert on.entropy[4:] != off.entropy[4:]


def test_optimisation_steps_follow_step_size(tiny_vl, video_inputs):
    model, _ = tiny_vl
    method = Method(
        controller=ValueCacheController(),
        objective=MaxEntropyObjective(),
        schedule=FixedStepSchedule(step_size=3),
    )
    trace = Decoder(model, method, greedy(20)).generate(video_inputs)[0]
    steps = [n for n, flag in enumerate(trace.optimized, start=1) if flag]
    assert steps == list(range(3, len(trace.token_ids) + 1, 3))  # tokens k, 2k, 3k (Algorithm 1)


def test_batch_matches_single_runs(tiny_vl, mp4_videos):
    model, processor = tiny_vl
    specs = [
        ("Which way does it move?", mp4_videos["right_red"]),
        ("What colour is the square that moves across the frame?", mp4_videos["up_blue"]),
        ("Describe it.", mp4_videos["left_green"]),
    ]
    method_args = dict(optimizer=OptimizerConfig(lr=0.02), schedule=FixedStepSchedule(step_size=2))
    batch = Decoder(model, Method(controller=ValueCacheController(), **method_args), greedy()).generate(
        mp4_batch(processor, specs), keys=["a", "b", "c"]
    )
    for spec, key, in_batch in zip(specs, ["a", "b", "c"], batch, strict=True):
        alone = Decoder(model, Method(controller=ValueCacheController(), **method_args), greedy()).generate(
            mp4_batch(processor, [spec]), keys=[key]
        )[0]
        assert in_batch.token_ids == alone.token_ids
        assert in_batch.optimized == alone.optimized
        torch.testing.assert_close(
            torch.tensor(in_batch.entropy), torch.tensor(alone.entropy), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(
            torch.tensor(in_batch.controller_norm), torch.tensor(alone.controller_norm), rtol=1e-3, atol=1e-5
        )
        assert in_batch.controller_norm[-1] > 0


class SecondStepWithoutFirstSample(SwitchingObjective):
    """The paper's objective, except that sample 0 sits out the second optimisation step (alpha 0)."""

    def __init__(self) -> None:
        self.optimisation_steps = 0

    def __call__(self, entropy, ema, peak):
        loss, alpha = super().__call__(entropy, ema, peak)
        if entropy.requires_grad:
            self.optimisation_steps += 1
            if self.optimisation_steps == 2:
                alpha = alpha.clone()
                alpha[0] = 0
                loss = -alpha.to(entropy.dtype) * entropy
        return loss, alpha


def test_a_sample_sitting_out_a_step_keeps_its_controller_and_the_others_step(tiny_vl, mp4_videos):
    """The batch shares one AdamW: a sample without a step must not move (no momentum step on a zero
    gradient), and the others must step exactly as they would without it."""
    model, processor = tiny_vl
    inputs = mp4_batch(
        processor, [("Which way?", mp4_videos["right_red"]), ("Colour?", mp4_videos["up_blue"])]
    )
    schedule = FixedStepSchedule(step_size=2)  # optimisation steps at tokens 2, 4, 6, ...
    opt = OptimizerConfig(lr=0.02)

    def run(objective):
        method = Method(
            controller=ValueCacheController(), objective=objective, schedule=schedule, optimizer=opt
        )
        return Decoder(model, method, greedy(12)).generate(inputs, keys=["a", "b"])

    skipping, paper = run(SecondStepWithoutFirstSample()), run(SwitchingObjective())
    sat_out = skipping[0]  # list index = token - 1
    assert sat_out.alpha[3] == 0 and not sat_out.optimized[3]
    assert sat_out.optimized[1] and sat_out.optimized[5]
    assert sat_out.controller_norm[3] == sat_out.controller_norm[2] > 0
    assert sat_out.controller_norm[5] != sat_out.controller_norm[4]
    assert skipping[1].token_ids == paper[1].token_ids
    assert skipping[1].controller_norm == paper[1].controller_norm


def test_sampling_is_per_sample_and_seeded(tiny_lm):
    model, tok = tiny_lm
    sampling = SamplingConfig(do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=16)
    questions = ["Pick a number.", "Say something long and random please."]
    batch = Decoder(model, None, sampling).generate(lm_batch(tok, questions), keys=["x", "y"], seed=7)
    alone = Decoder(model, None, sampling).generate(lm_batch(tok, questions[1:]), keys=["y"], seed=7)[0]
    other_seed = Decoder(model, None, sampling).generate(lm_batch(tok, questions[1:]), keys=["y"], seed=8)[0]
    assert batch[1].token_ids == alone.token_ids
    assert other_seed.token_ids != alone.token_ids


def test_one_forward_per_generated_token(tiny_vl, video_inputs):
    model, _ = tiny_vl
    method = Method(controller=ValueCacheController(), schedule=FixedStepSchedule(step_size=1))
    with ForwardRecorder(model) as rec:
        trace = Decoder(model, method, greedy()).generate(video_inputs)[0]
    assert len(rec.logits) == trace.num_tokens
    assert sum(trace.optimized) == trace.num_tokens - 1


def test_weights_unchanged_and_gradients_reach_only_the_controller(tiny_vl, video_inputs):
    model, _ = tiny_vl
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    controller = ValueCacheController()
    seen_grads = []

    def capture(module, args, output):
        if torch.is_grad_enabled():
            seen_grads.append([p for p in controller.params])

    handle = model.register_forward_hook(capture)
    try:
        trace = Decoder(
            model, Method(controller=controller, optimizer=OptimizerConfig(lr=0.05)), greedy()
        ).generate(video_inputs)[0]
    finally:
        handle.remove()
    assert seen_grads, "no forward ran with autograd enabled"
    assert trace.controller_norm[-1] > 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_stop_strings_end_a_sample(tiny_lm):
    model, tok = tiny_lm
    free = Decoder(model, None, greedy(30)).generate(lm_batch(tok, ["Hello"]))[0]
    text = tok.decode(free.token_ids[:6])
    stop = text[-2:]
    stopped = Decoder(
        model, None, SamplingConfig(do_sample=False, max_new_tokens=30, stop_strings=[stop]), tok
    )
    trace = stopped.generate(lm_batch(tok, ["Hello"]))[0]
    assert trace.finish_reason == "stop_string"
    assert tok.decode(trace.token_ids).endswith(stop)
    assert len(trace.token_ids) <= 6


def test_engine_enables_grad_itself_under_no_grad(tiny_vl, video_inputs):
    """Lightning's predict runs under no_grad (inference_mode=False): the engine turns autograd on itself."""
    model, _ = tiny_vl
    method = Method(controller=ValueCacheController(), optimizer=OptimizerConfig(lr=0.05))
    with torch.no_grad():
        trace = Decoder(model, method, greedy()).generate(video_inputs)[0]
    assert any(trace.optimized) and trace.controller_norm[-1] > 0


def test_inference_mode_is_refused_with_a_clear_message(tiny_vl, video_inputs):
    model, _ = tiny_vl
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode=False"):
        Decoder(model, Method(controller=ValueCacheController()), greedy()).generate(video_inputs)
