"""Lockstep timing (bench/measure.py: ``Turns``, ``OwnClock``, ``interleaved(lockstep=True)``): the runs of a
round take turns one forward at a time, each is timed over its own turns only, what each run decodes is what
it decodes alone, and a failing run neither hangs the round nor hides its error."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from bench import measure
from bench.builders import build_model, make_inputs
from bench.measure import OwnClock, Run, Turns, interleaved, run_variant
from bench.scaling import load_scaling_config, variant_row, video_of
from bench.variants import Variant

VARIANTS = [Variant("generate", uses_generate=True), Variant("loop_off"), Variant("full_k2", step_size=2)]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_scaling_config(Path(__file__).resolve().parents[1] / "bench/configs/scaling/tiny.yaml")
    model, tokenizer = build_model(cfg.model)
    return model, make_inputs(cfg, tokenizer, video_of(cfg, 8), 1)


def test_a_run_is_timed_over_its_own_turns_only():
    """Two runs take five turns each; the slow one sleeps 0.1 s per turn, the fast one 0.005 s. The fast
    run's own clock must not count the slow run's turns it waited through."""
    turns = Turns(["fast", "slow"])
    own: dict[str, float] = {}
    order: list[str] = []

    def run(name: str, nap: float) -> None:
        clock = OwnClock(turns, name)
        clock.start()
        try:
            for _ in range(5):
                clock.yield_turn()
                order.append(name)
                time.sleep(nap)
            own[name] = clock.now()
        finally:
            turns.leave(name)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=a) for a in (("fast", 0.005), ("slow", 0.1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    wall = time.perf_counter() - start
    assert order == ["fast", "slow"] * 5  # strictly alternating turns
    assert wall >= 0.5  # the slow run's five naps happened
    assert own["slow"] >= 0.5
    assert own["fast"] < 0.25  # its own 5 x 0.005 s and overhead, none of the slow run's 0.5 s


def test_lockstep_forwards_alternate_and_decode_what_each_run_decodes_alone(tiny):
    model, inputs = tiny
    alone = {v.name: run_variant(model, v, inputs, 5, "video").token_ids for v in VARIANTS}
    forwards: list[str] = []
    handle = model.register_forward_pre_hook(lambda m, a: forwards.append(threading.current_thread().name))
    try:
        runs = interleaved(
            VARIANTS,
            2,
            lambda v, clock: run_variant(model, v, inputs, 5, "video", clock=clock),
            lockstep=True,
        )
    finally:
        handle.remove()
    # 2 rounds x 3 variants x 5 forwards (prefill + 4 decode steps), round 2 rotated by one
    names = [f"lockstep-{v.name}" for v in VARIANTS]
    assert forwards == names * 5 + (names[1:] + names[:1]) * 5
    for variant in VARIANTS:
        assert [r.token_ids for r in runs[variant.name]] == [alone[variant.name]] * 2
    assert [r.optimisation_steps for r in runs["full_k2"]] == [2, 2]
    for run in (r for rs in runs.values() for r in rs):
        assert run.call_s > 0 and run.decode_s > 0 and 0 < run.call_cpu_s
        assert run.prefill_s + run.setup_s + run.decode_s == pytest.approx(run.call_s)


def test_a_failing_run_is_reraised_and_the_round_does_not_hang(tiny):
    model, inputs = tiny

    def one(variant, clock):
        if variant.name == "loop_off":
            clock.start()
            clock.yield_turn()
            raise RuntimeError("boom in loop_off")
        return run_variant(model, variant, inputs, 3, "video", clock=clock)

    result: list[BaseException] = []

    def round_() -> None:
        try:
            interleaved(VARIANTS, 1, one, lockstep=True)
        except RuntimeError as error:
            result.append(error)

    worker = threading.Thread(target=round_)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the lockstep round hung after a run failed"
    assert [str(e) for e in result] == ["boom in loop_off"]


def test_worker_threads_keep_the_callers_intra_op_threads(tiny):
    seen: list[int] = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:

        def one(variant, clock):
            seen.append(torch.get_num_threads())
            clock.start()
            return None

        measure.lockstep_round(VARIANTS[:2], one)
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]


def _run(call_s: float, decode_s: float) -> Run:
    return Run(
        variant="v",
        batch=1,
        new_tokens=5,
        prefill_s=call_s - decode_s,
        setup_s=0.0,
        decode_s=decode_s,
        decode_cpu_s=decode_s,
        call_cpu_s=call_s,
        plain_step_s=None,
        plain_gap_s=None,
        opt_step_s=None,
        optimisation_steps=0,
        faults=0,
        kv_cache_bytes=1,
    )


def test_lockstep_ratios_are_medians_of_the_paired_ones():
    """Rounds at 1x, 2x and 4x the machine's speed; the variant is 10% slower than the reference in rounds 1
    and 3 and 30% in round 2. The median of the paired ratios is 1.10; the ratio of medians divides round
    2's time by round 2's reference, 2.6 / 2.0 = 1.30."""
    reference = [_run(1.0, 0.8), _run(2.0, 1.6), _run(4.0, 3.2)]
    own = [_run(1.1, 0.88), _run(2.6, 2.08), _run(4.4, 3.52)]  # round 2: 1.3x
    paired = variant_row(Variant("v"), own, reference, paired=True)
    assert paired["call_ratio_vs_generate"] == pytest.approx(1.1)
    assert paired["step_ratio_vs_generate"] == pytest.approx(1.1)
    assert paired["call_paired_ratios"] == pytest.approx([1.1, 1.3, 1.1])
    unpaired = variant_row(Variant("v"), own, reference, paired=False)
    assert unpaired["call_ratio_vs_generate"] == pytest.approx(2.6 / 2.0)
