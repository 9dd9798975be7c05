"""Objectives and the schedule's EMA: alpha sequences computed by hand (Eqs. 2-4)."""

from __future__ import annotations

import pytest
import torch

from vreason.objectives import OBJECTIVES
from vreason.objectives.max_entropy import MaxEntropyObjective
from vreason.objectives.min_entropy import MinEntropyObjective
from vreason.objectives.switching import SwitchingObjective
from vreason.objectives.thresholded import ThresholdedObjective
from vreason.schedule import FixedStepSchedule

ENTROPIES = [0.5, 1.0, 2.0, 1.5, 3.0, 0.2, 0.1, 4.0]


def run_schedule(schedule, objective, entropies, optimizing=None):
    state = schedule.initial_state(1)
    emas, alphas = [], []
    for i, h in enumerate(entropies):
        opt = True if optimizing is None else optimizing[i]
        peak = schedule.update(state, torch.tensor([h]), opt)
        loss, alpha = objective(torch.tensor([h], requires_grad=True), state.ema, peak)
        emas.append(float(state.ema))
        alphas.append(int(alpha))
    return emas, alphas


def test_switching_alpha_matches_hand_computation():
    # beta = 0.5: EMA = 0.5, 0.75, 1.375, 1.4375, 2.21875, 1.209375, 0.6546875, 2.32734375
    emas, alphas = run_schedule(FixedStepSchedule(ema_beta=0.5), SwitchingObjective(), ENTROPIES)
    assert emas == pytest.approx([0.5, 0.75, 1.375, 1.4375, 2.21875, 1.209375, 0.6546875, 2.32734375])
    assert alphas == [1, 1, 1, 1, 1, -1, -1, 1]


def test_ema_zero_init_and_optimisation_step_only_updates():
    emas, _ = run_schedule(
        FixedStepSchedule(ema_beta=0.5, ema_init="zero"), SwitchingObjective(), ENTROPIES[:3]
    )
    assert emas == pytest.approx([0.25, 0.625, 1.3125])
    only_opt = FixedStepSchedule(ema_beta=0.5, ema_every_token=False)
    emas, _ = run_schedule(
        only_opt, SwitchingObjective(), ENTROPIES[:4], optimizing=[True, False, True, False]
    )
    assert emas == pytest.approx([0.5, 0.5, 1.25, 1.25])


def test_paper_beta_keeps_alpha_positive_while_entropy_climbs():
    climbing = [0.1 * i for i in range(1, 30)]
    _, alphas = run_schedule(FixedStepSchedule(), SwitchingObjective(), climbing + [0.0] * 5)
    assert alphas[:29] == [1] * 29
    assert alphas[29:] == [-1] * 5


def test_loss_is_minus_alpha_times_entropy_with_gradient():
    h = torch.tensor([1.5, 2.0], requires_grad=True)
    loss, alpha = SwitchingObjective()(h, ema=torch.tensor([1.0, 0.5]), peak=torch.tensor([0.9, 0.7]))
    assert alpha.tolist() == [1, -1]
    loss.sum().backward()
    assert h.grad.tolist() == [-1.0, 1.0]


def test_fixed_alpha_objectives_and_threshold():
    h = torch.tensor([0.5, 3.0])
    ema = peak = torch.zeros(2)
    assert MinEntropyObjective().alpha(h, ema, peak).tolist() == [-1, -1]
    assert MaxEntropyObjective().alpha(h, ema, peak).tolist() == [1, 1]
    assert ThresholdedObjective(threshold=1.0).alpha(h, ema, peak).tolist() == [0, -1]
    assert ThresholdedObjective(threshold=1.0, use_ema=True).alpha(
        h, torch.tensor([2.0, 0.1]), peak
    ).tolist() == [-1, 0]


def test_schedule_steps_and_validation():
    # tokens k, 2k, 3k (Algorithm 1); token n comes from decode forward n - 1
    assert [n for n in range(1, 14) if FixedStepSchedule().optimizes_token(n)] == [4, 8, 12]
    assert [s for s in range(1, 13) if FixedStepSchedule().is_optimization_step(s)] == [3, 7, 11]
    assert [n for n in range(1, 6) if FixedStepSchedule(step_size=1).optimizes_token(n)] == [2, 3, 4, 5]
    # the other reading: tokens k + 1, 2k + 1, ... (decode forwards k, 2k, ...)
    assert [s for s in range(1, 13) if FixedStepSchedule(start=5).is_optimization_step(s)] == [4, 8, 12]
    with pytest.raises(ValueError, match="start must be >= 2"):
        FixedStepSchedule(step_size=2, start=1)
    with pytest.raises(ValueError, match="step_size"):
        FixedStepSchedule(step_size=0)
    with pytest.raises(ValueError, match="ema_beta"):
        FixedStepSchedule(ema_beta=1.0)


def test_objective_registry():
    assert {"switching", "min_entropy", "max_entropy", "thresholded"} <= set(OBJECTIVES.names())
    with pytest.raises(KeyError, match="switching"):
        OBJECTIVES.get("switch")
