"""``model.generate(custom_generate=v_reason(...))``: the Decoder's tokens and traces, generate's
processors, stopping criteria and generation config, trained-rule positions, the Hub-layout folder."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from conftest import lm_batch, mp4_batch
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from vreason.config import build_method
from vreason.engine import Decoder, cache_argument
from vreason.families import prefill_position_ids
from vreason.hf import VReasonGenerateOutput, v_reason
from vreason.models import load_gguf, smollm2_gguf_path
from vreason.sampling import SamplingConfig

REPO = Path(__file__).resolve().parents[1]  # holds custom_generate/, the Hub layout
N_TOKENS = 16
TRACE_FIELDS = (
    "token_ids",
    "entropy",
    "ema",
    "alpha",
    "optimized",
    "controller_norm",
    "faults",
    "finish_reason",
    "prompt_tokens",
    "cached_prompt_tokens",
)
GREEDY = dict(do_sample=False)
# The paper's sampling (Sec. 4); top_k=0 turns off generate's default top-k 50, which the CLI does not add.
PAPER_SAMPLING = dict(do_sample=True, temperature=0.1, top_p=0.001, top_k=0)


class ForwardCounter:
    """Counts the model's forwards (the vision tower's are inside them)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __enter__(self):
        self.handle = self.model.register_forward_hook(self._hook)
        return self

    def _hook(self, module, args, output):
        self.calls += 1

    def __exit__(self, *exc):
        self.handle.remove()


def hf_generate(model, inputs, decoding, n: int = N_TOKENS, **kwargs) -> VReasonGenerateOutput:
    out = model.generate(
        **inputs, custom_generate=decoding, max_new_tokens=n, return_dict_in_generate=True, **kwargs
    )
    assert isinstance(out, VReasonGenerateOutput)
    return out


def decoder_traces(model, inputs, block, n: int = N_TOKENS, keys=None, seed: int = 0, **sampling):
    """Our Decoder, as the CLI runs it, for the same ``method`` block."""
    config = SamplingConfig(**{"temperature": 1.0, "top_p": None, **sampling, "max_new_tokens": n})
    return Decoder(model, build_method(block), config).generate(inputs, keys=keys, seed=seed)


def assert_same_traces(ours, theirs):
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        for name in TRACE_FIELDS:
            assert getattr(mine, name) == getattr(reference, name), name


def assert_sequences_hold_the_tokens(out, inputs, pad_token_id):
    prompt = inputs["input_ids"]
    assert torch.equal(out.sequences[:, : prompt.shape[1]], prompt)
    for row, trace in enumerate(out.traces):
        new = out.sequences[row, prompt.shape[1] :].tolist()
        assert new[: trace.num_tokens] == trace.token_ids
        assert set(new[trace.num_tokens :]) <= {pad_token_id}


@pytest.fixture(scope="module")
def clip_2s(tiny_vl, mp4_videos):
    """2 s: transformers' positions agree with the trained rule (test_families.py)."""
    return mp4_batch(tiny_vl[1], [("Which way does the square move?", mp4_videos["right_red"])])


@pytest.fixture(scope="module")
def clip_3s(tiny_vl, mp4_videos):
    """3 s: transformers starts the text after the video too early (test_families.py)."""
    return mp4_batch(tiny_vl[1], [("Which way does the square move?", mp4_videos["up_blue"])])


VIDEO_METHODS = {
    "full": (
        dict(controller="value_cache", step_size=2, lr=0.05),
        {
            "controller": "value_cache",
            "schedule": {"name": "fixed", "step_size": 2},
            "optimizer": {"lr": 0.05},
        },
    ),
    "lite": (
        dict(controller="value_cache", lr=0.05, pruner={"name": "l2_norm", "keep_ratio": 0.5}),
        {
            "controller": "value_cache",
            "pruner": {"name": "l2_norm", "keep_ratio": 0.5},
            "optimizer": {"lr": 0.05},
        },
    ),
    "key_cache_max_entropy": (
        dict(controller="key_cache", objective="max_entropy", step_size=3, lr=0.05),
        {
            "controller": "key_cache",
            "objective": "max_entropy",
            "schedule": {"name": "fixed", "step_size": 3},
            "optimizer": {"lr": 0.05},
        },
    ),
}


@pytest.mark.parametrize("sampling", [GREEDY, PAPER_SAMPLING], ids=["greedy", "paper_sampling"])
@pytest.mark.parametrize("method", VIDEO_METHODS.values(), ids=VIDEO_METHODS.keys())
def test_generate_decodes_the_decoders_tokens_and_traces_on_a_video(tiny_vl, clip_3s, method, sampling):
    model, _ = tiny_vl
    args, block = method
    out = hf_generate(model, clip_3s, v_reason(**args), **sampling)
    expected = decoder_traces(model, clip_3s, block, **sampling)
    assert_same_traces(out.traces, expected)
    assert_sequences_hold_the_tokens(out, clip_3s, model.generation_config.pad_token_id)
    assert any(out.traces[0].optimized) and out.traces[0].controller_norm[-1] > 0
    if "pruner" in args:
        assert out.traces[0].cached_prompt_tokens < out.traces[0].prompt_tokens


def test_positions_are_the_trained_rule_not_generates(tiny_vl, clip_3s):
    """The first token's logits are those of a prefill with ``prefill_position_ids``, and differ from
    plain generate's, whose positions are wrong after a 3 s clip."""
    model, _ = tiny_vl
    ours = hf_generate(model, clip_3s, v_reason(None), n=2, output_logits=True, **GREEDY)
    with torch.no_grad():
        trained = model(
            **clip_3s,
            position_ids=prefill_position_ids(model, clip_3s),
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(model): DynamicCache(config=model.config)},
        ).logits[:, -1]
    plain = model.generate(
        **clip_3s, max_new_tokens=2, output_logits=True, return_dict_in_generate=True, **GREEDY
    )
    assert torch.equal(ours.logits[0], trained.float())
    assert not torch.allclose(ours.logits[0], plain.logits[0])


@pytest.mark.parametrize(
    "controller", [None, {"name": "value_cache"}, "hidden_state"], ids=["off", "value_lr0", "hidden_lr0"]
)
def test_controller_off_equals_plain_generate_on_a_2s_clip(tiny_vl, clip_2s, controller):
    model, _ = tiny_vl
    ours = hf_generate(model, clip_2s, v_reason(controller, lr=0.0), output_logits=True, **GREEDY)
    plain = model.generate(
        **clip_2s, max_new_tokens=N_TOKENS, output_logits=True, return_dict_in_generate=True, **GREEDY
    )
    assert torch.equal(ours.sequences, plain.sequences)
    assert len(ours.logits) == len(plain.logits)
    for mine, theirs in zip(ours.logits, plain.logits, strict=True):
        assert torch.equal(mine, theirs)


def test_controller_off_equals_plain_generate_on_a_left_padded_text_batch(tiny_lm):
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["What is two plus two?", "Name a colour."])
    assert not inputs["attention_mask"].all()  # left padding
    ours = hf_generate(model, inputs, v_reason(None), output_logits=True, output_scores=True, **GREEDY)
    plain = model.generate(
        **inputs,
        max_new_tokens=N_TOKENS,
        output_logits=True,
        output_scores=True,
        return_dict_in_generate=True,
        **GREEDY,
    )
    assert torch.equal(ours.sequences, plain.sequences)
    for mine, theirs in zip(ours.logits + ours.scores, plain.logits + plain.scores, strict=True):
        assert torch.equal(mine, theirs)


def test_generate_decodes_the_decoders_tokens_and_traces_on_a_text_lm_batch(tiny_lm):
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["What is two plus two?", "Name a colour, please."])
    block = {
        "controller": "value_cache",
        "positions": "prompt",
        "schedule": {"name": "fixed", "step_size": 2},
        "optimizer": {"lr": 0.05},
    }
    decoding = v_reason("value_cache", positions="prompt", step_size=2, lr=0.05)
    out = hf_generate(model, inputs, decoding, **GREEDY)
    assert_same_traces(out.traces, decoder_traces(model, inputs, block, **GREEDY))
    assert_sequences_hold_the_tokens(out, inputs, tok.pad_token_id)
    assert all(trace.controller_norm[-1] > 0 for trace in out.traces)


@pytest.fixture(scope="module")
def smollm2():
    return load_gguf(smollm2_gguf_path())


def test_generate_decodes_the_decoders_tokens_and_traces_on_smollm2(smollm2):
    """The real SmolLM2-135M-Instruct: V-Reason over the prompt, and with the controller off, plain generate."""
    model, tok = smollm2
    inputs = lm_batch(tok, ["What is 12 plus 30?", "A farmer has 3 cows and buys 4 more. How many cows?"])
    block = {"controller": "value_cache", "positions": "prompt", "optimizer": {"lr": 0.01}}
    out = hf_generate(model, inputs, v_reason(positions="prompt", lr=0.01), n=12, **GREEDY)
    assert_same_traces(out.traces, decoder_traces(model, inputs, block, n=12, **GREEDY))
    assert any(out.traces[0].optimized) and out.traces[0].controller_norm[-1] > 0
    off = model.generate(**inputs, custom_generate=v_reason(None), max_new_tokens=12, **GREEDY)
    assert torch.equal(off, model.generate(**inputs, max_new_tokens=12, **GREEDY))


def test_batch_with_left_padding_equals_single_runs(tiny_vl, mp4_videos):
    model, processor = tiny_vl
    specs = [
        ("Which way does it move?", mp4_videos["right_red"]),
        ("What colour is the square that moves across the frame?", mp4_videos["up_blue"]),
        ("Describe it.", mp4_videos["left_green"]),
    ]
    decoding = v_reason("value_cache", step_size=2, lr=0.02)
    batch_inputs = mp4_batch(processor, specs)
    assert not batch_inputs["attention_mask"].all()
    batch = hf_generate(model, batch_inputs, decoding, **GREEDY)
    for row, spec in enumerate(specs):
        alone = hf_generate(model, mp4_batch(processor, [spec]), decoding, **GREEDY).traces[0]
        in_batch = batch.traces[row]
        assert in_batch.token_ids == alone.token_ids
        assert in_batch.optimized == alone.optimized
        torch.testing.assert_close(
            torch.tensor(in_batch.entropy), torch.tensor(alone.entropy), rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(
            torch.tensor(in_batch.controller_norm), torch.tensor(alone.controller_norm), rtol=1e-3, atol=1e-5
        )
        assert in_batch.controller_norm[-1] > 0
    assert_sequences_hold_the_tokens(batch, batch_inputs, model.generation_config.pad_token_id)


def test_sampling_in_a_batch_equals_single_runs_by_sample_key(tiny_lm):
    model, tok = tiny_lm
    questions = ["Pick a number.", "Say something long and random please."]
    sampling = dict(do_sample=True, temperature=1.0, top_k=0)
    decoding = v_reason("value_cache", positions="prompt", lr=0.05, seed=7)
    batch = hf_generate(model, lm_batch(tok, questions), decoding, sample_keys=["x", "y"], **sampling)
    alone = hf_generate(model, lm_batch(tok, questions[1:]), decoding, sample_keys=["y"], **sampling)
    other = hf_generate(model, lm_batch(tok, questions[1:]), decoding, sample_keys=["z"], **sampling)
    assert batch.traces[1].token_ids == alone.traces[0].token_ids
    assert other.traces[0].token_ids != alone.traces[0].token_ids


def test_max_new_tokens_and_max_length_set_the_budget(tiny_lm):
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["Hello there"])
    prompt = inputs["input_ids"].shape[1]
    for kwargs, n in [({"max_new_tokens": 5}, 5), ({"max_length": prompt + 3}, 3)]:
        out = model.generate(
            **inputs, custom_generate=v_reason(None), return_dict_in_generate=True, **kwargs, **GREEDY
        )
        assert out.traces[0].finish_reason == "length"
        assert out.traces[0].num_tokens == n and out.sequences.shape == (1, prompt + n)


def test_eos_ends_each_row_and_the_rest_is_padded(tiny_lm):
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["Hello there", "Tell me a story about a cat."])
    free = hf_generate(model, inputs, v_reason(None), **GREEDY)
    eos = free.traces[0].token_ids[3]
    assert eos != model.generation_config.eos_token_id
    out = hf_generate(model, inputs, v_reason(None), eos_token_id=eos, **GREEDY)
    for row, trace in enumerate(out.traces):
        tokens = free.traces[row].token_ids
        stop = tokens.index(eos) + 1 if eos in tokens else len(tokens)
        assert trace.token_ids == tokens[:stop]
        assert trace.finish_reason == ("eos" if eos in tokens else "length")
    assert out.traces[0].num_tokens <= 4
    assert_sequences_hold_the_tokens(out, inputs, tok.pad_token_id)


def test_stop_strings_end_a_sample(tiny_lm):
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["Hello"])
    free = hf_generate(model, inputs, v_reason(None), n=30, **GREEDY).traces[0]
    stop = tok.decode(free.token_ids[:6])[-2:]
    trace = hf_generate(
        model, inputs, v_reason(None, tokenizer=tok), n=30, stop_strings=[stop], **GREEDY
    ).traces[0]
    assert trace.finish_reason == "stop_string"
    assert tok.decode(trace.token_ids).endswith(stop)
    assert trace.num_tokens <= 6 and trace.token_ids == free.token_ids[: trace.num_tokens]


class StopAfter(StoppingCriteria):
    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)


class ForceToken(LogitsProcessor):
    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -float("inf"))
        forced[:, self.token] = 0.0
        return forced


def test_callers_stopping_criteria_and_logits_processors_are_used(tiny_lm):
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["Hello there"])
    prompt = inputs["input_ids"].shape[1]
    stopped = hf_generate(model, inputs, v_reason(None), stopping_criteria=[StopAfter(prompt + 3)], **GREEDY)
    assert stopped.traces[0].num_tokens == 3 and stopped.traces[0].finish_reason == "stop_string"
    token = tok.convert_tokens_to_ids("a")
    forced = hf_generate(
        model,
        inputs,
        v_reason("value_cache", positions="prompt", lr=0.05),
        logits_processor=LogitsProcessorList([ForceToken(token)]),
        do_sample=True,
        temperature=1.0,
    )
    assert forced.traces[0].token_ids == [token] * N_TOKENS
    assert len(set(forced.traces[0].entropy)) > 1  # the objective still sees the raw distribution


WARPERS = {
    "top_p": dict(top_p=0.6),
    "top_k": dict(top_k=3),
    "min_p": dict(min_p=0.3),
    "top_h": dict(top_h=0.3),
}


@pytest.mark.parametrize("warper", WARPERS.values(), ids=WARPERS.keys())
def test_sampling_warpers_passed_to_generate_are_honoured(tiny_lm, warper):
    """generate's warpers, with the Decoder's per-sample generators: the Decoder's tokens for the same
    warper, and not those without it (which would be what ignoring it gives)."""
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["Pick a number.", "Say something long and random please."])
    block = {"controller": "value_cache", "positions": "prompt", "optimizer": {"lr": 0.05}}
    decoding = v_reason("value_cache", positions="prompt", lr=0.05)
    sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, **warper}
    out = hf_generate(model, inputs, decoding, n=24, **sampling)
    expected = decoder_traces(model, inputs, block, n=24, do_sample=True, temperature=1.0, **warper)
    unwarped = decoder_traces(model, inputs, block, n=24, do_sample=True, temperature=1.0)
    assert_same_traces(out.traces, expected)
    assert [t.token_ids for t in out.traces] != [t.token_ids for t in unwarped]


def test_weights_and_their_grad_flags_are_left_as_they_were(tiny_lm):
    model = copy.deepcopy(tiny_lm[0]).requires_grad_(True)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    out = hf_generate(model, lm_batch(tiny_lm[1], ["Hi"]), v_reason(positions="prompt", lr=0.05), **GREEDY)
    assert out.traces[0].controller_norm[-1] > 0
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_hub_layout_folder_loads_from_a_local_path_and_decodes_the_same(tiny_vl, tiny_lm, clip_3s):
    """``custom_generate=<folder>`` with ``trust_remote_code=True``, as from the Hub: method arguments and
    ``tokenizer`` go to generate itself."""
    model, _ = tiny_vl
    args = dict(controller="value_cache", step_size=2, lr=0.05, pruner="l2_norm")
    hub = model.generate(
        **clip_3s,
        custom_generate=str(REPO),
        trust_remote_code=True,
        max_new_tokens=N_TOKENS,
        return_dict_in_generate=True,
        **args,
        **GREEDY,
    )
    assert_same_traces(hub.traces, hf_generate(model, clip_3s, v_reason(**args), **GREEDY).traces)
    assert any(hub.traces[0].optimized)
    lm, tok = tiny_lm
    inputs = lm_batch(tok, ["Hello"])
    free = hf_generate(lm, inputs, v_reason(None), n=30, **GREEDY).traces[0]
    stop = tok.decode(free.token_ids[:6])[-2:]
    stopped = lm.generate(
        **inputs,
        custom_generate=str(REPO),
        trust_remote_code=True,
        controller=None,
        tokenizer=tok,
        stop_strings=[stop],
        max_new_tokens=30,
        return_dict_in_generate=True,
        **GREEDY,
    )
    assert stopped.traces[0].finish_reason == "stop_string"
    assert tok.decode(stopped.traces[0].token_ids).endswith(stop)


def test_hub_layout_folder_has_the_hub_files():
    folder = REPO / "custom_generate"
    readme = (folder / "README.md").read_text()
    front_matter = readme.split("---")[1]
    assert "library_name: transformers" in front_matter and "- custom_generate" in front_matter
    for section in (
        "## Description",
        "## Additional Arguments",
        "## Output Type changes",
        "## Example usage",
    ):
        assert section in readme
    assert "vreason" in (folder / "requirements.txt").read_text().split()
    assert "from vreason import hf" in (folder / "generate.py").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(controller="value_cash"), "unknown controller 'value_cash'; known: hidden_state, key_cache"),
        (dict(controller={"name": "value_cache", "nrom_dims": "block"}), "unknown parameter"),
        (dict(objective="entropy"), "unknown objective 'entropy'"),
        (dict(pruner={"name": "l2_norm", "keep_ratio": 0}), "keep_ratio"),
        (dict(step_size=0), "method.schedule.step_size: must be an integer >= 1"),
        (dict(lr=-1.0), "method.optimizer.lr"),
        (dict(positions="frames"), "unknown position selector 'frames'"),
        (dict(schedule={"name": "fixed", "step_size": 2}, step_size=3), "step_size given twice"),
    ],
)
def test_bad_method_arguments_fail_when_v_reason_is_called(args, message):
    with pytest.raises(ValueError, match=message):
        v_reason(**args)


def test_positions_video_on_a_text_lm_fails_before_decoding(tiny_lm):
    model, tok = tiny_lm
    with (
        ForwardCounter(model) as counter,
        pytest.raises(ValueError, match="has no video.*positions 'prompt'"),
    ):
        model.generate(**lm_batch(tok, ["Hi"]), custom_generate=v_reason(), max_new_tokens=4)
    assert counter.calls == 0


def test_a_prompt_without_video_tokens_fails_before_decoding(tiny_vl):
    model, processor = tiny_vl
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "No video here."}]}],
        add_generation_prompt=True,
        tokenize=False,
    )
    inputs = processor(text=[text], return_tensors="pt")
    with ForwardCounter(model) as counter, pytest.raises(ValueError, match="have no such tokens"):
        model.generate(**inputs, custom_generate=v_reason(), max_new_tokens=4)
    assert counter.calls == 0


@pytest.mark.parametrize(
    "decoding, kwargs, message",
    [
        (v_reason(None), dict(num_beams=2), "num_beams must be 1"),
        (v_reason(None), dict(stop_strings=["ab"]), "stop_strings need the tokenizer"),
        (
            v_reason(None),
            dict(output_hidden_states=True, return_dict_in_generate=True),
            "output_hidden_states",
        ),
        (v_reason(None), dict(sample_keys=["a", "b"]), "sample_keys has 2 keys for a batch of 1"),
    ],
    ids=["beams", "stop_strings_without_tokenizer", "hidden_states", "sample_keys"],
)
def test_unsupported_generate_arguments_fail_before_decoding(tiny_lm, decoding, kwargs, message):
    model, tok = tiny_lm
    with ForwardCounter(model) as counter, pytest.raises(ValueError, match=message):
        model.generate(**lm_batch(tok, ["Hi"]), custom_generate=decoding, max_new_tokens=4, **kwargs)
    assert counter.calls == 0


def test_readme_example_runs_on_the_tiny_qwen2_5_vl(tiny_vl, clip_3s, capsys):
    """README's "From your own transformers code" block, with the tiny model's ``model`` and ``inputs``
    and a shorter token budget."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From your own transformers code", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```py\n(.*?)```", section, flags=re.DOTALL).group(1)
    assert "custom_generate=v_reason(" in block and "max_new_tokens=512" in block
    block = block.replace("max_new_tokens=512", "max_new_tokens=16")
    exec(compile(block, "README.md", "exec"), {"model": tiny_vl[0], "inputs": clip_3s})
    steps = re.search(r"(\d+) optimisation steps, \|dV\| = ([0-9.e-]+)", capsys.readouterr().out)
    assert steps and int(steps.group(1)) > 0 and float(steps.group(2)) > 0


def test_a_filled_cache_is_refused_before_decoding(tiny_lm):
    """The Decoder prefills the whole prompt into a cache of its own; it cannot continue someone else's."""
    model, tok = tiny_lm
    inputs = lm_batch(tok, ["Hi"])
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(**inputs, use_cache=True, **{cache_argument(model): cache})
    with ForwardCounter(model) as counter, pytest.raises(ValueError, match="must be empty"):
        model.generate(
            **inputs, custom_generate=v_reason(None), max_new_tokens=4, **{cache_argument(model): cache}
        )
    assert counter.calls == 0
