"""When to optimise (step size k) and the entropy EMA and its running peak (Eqs. 3-4).

Generated tokens are numbered n = 1, 2, ...; token 1 comes from the prefill logits, token n >= 2 from
decode forward ``step = n - 1``. "Optimising token n" means that the forward producing token n's
distribution runs with autograd, the token is sampled from it, and ``-alpha * H_n`` is backpropagated
and stepped (Algorithm 1: OPTIMIZE at loop step t uses the logits of token t). The paper updates ΔV
"at every k-th generated output token": tokens ``start, start + k, start + 2k, ...`` with
``start = k`` by default, i.e. tokens k, 2k, 3k (for k = 1: tokens 2, 3, ..., since the prefill token
never optimises). ``start = k + 1`` gives the other reading, tokens k + 1, 2k + 1, ... (the decode
forwards k, 2k, ...).

EMA (Appendix A's recursion; Eq. 3 in Sec. 3.1 has a typo with the raw H_{t-1}):
    H^ema_n = beta * H^ema_{n-1} + (1 - beta) * H_n
The paper leaves two choices open; both are parameters:
- ``ema_init``: "first" (default) starts the EMA at the first token's entropy, following footnote 1
  ("H_0 is the entropy of the first token"); "zero" starts from 0, which makes the early EMA climb
  slowly and keeps alpha at +1 longer.
- ``ema_every_token``: True (default) updates the EMA with the entropy of every generated token, as
  Sec. 3.1 says ("at each generation step t (different from k ...)"); False updates it only at
  optimisation steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from vreason.registry import SCHEDULES


@dataclass
class EntropyState:
    """Per-sample running statistics. All tensors are [batch] float32."""

    ema: Tensor
    peak: Tensor  # running EMA maximum observed so far; -inf before the first update
    started: Tensor  # bool: has the EMA seen its first value


@SCHEDULES.register("fixed")
@dataclass
class FixedStepSchedule:
    """Optimise every ``step_size`` decode steps ("k" in the paper; 4 by default).

    Args:
        step_size: k in the paper.
        start: the first generated token that is optimised (>= 2; token 1 comes from the prefill);
            default k (tokens k, 2k, 3k, ...), or 2 when k = 1.
        ema_beta: beta of Eq. 3 (0.98 in the paper).
        ema_init: "first" or "zero" (see module docstring).
        ema_every_token: update the EMA at every token (True) or only at optimisation steps.
    """

    step_size: int = 4
    start: int | None = None
    ema_beta: float = 0.98
    ema_init: Literal["first", "zero"] = "first"
    ema_every_token: bool = True

    def __post_init__(self) -> None:
        if self.step_size < 1:
            raise ValueError(f"schedule.step_size must be >= 1, got {self.step_size}")
        if self.start is None:
            self.start = max(2, self.step_size)
        if self.start < 2:
            raise ValueError(
                f"schedule.start must be >= 2 (token 1 comes from the prefill and never optimises), "
                f"got {self.start}"
            )
        if not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"schedule.ema_beta must be in [0, 1), got {self.ema_beta}")
        if self.ema_init not in ("first", "zero"):
            raise ValueError(f"schedule.ema_init must be 'first' or 'zero', got {self.ema_init!r}")

    def optimizes_token(self, n: int) -> bool:
        """Whether generated token ``n`` (1 = the prefill's token) is an optimisation step."""
        return n >= self.start and (n - self.start) % self.step_size == 0

    def is_optimization_step(self, step: int) -> bool:
        """Whether decode forward ``step`` (1 = first forward after prefill; it makes token step + 1)
        runs with autograd."""
        return self.optimizes_token(step + 1)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> EntropyState:
        zeros = torch.zeros(batch_size, dtype=torch.float32, device=device)
        return EntropyState(
            ema=zeros.clone(),
            peak=torch.full_like(zeros, float("-inf")),
            started=torch.zeros(batch_size, dtype=torch.bool, device=device),
        )

    def update(
        self, state: EntropyState, entropy: Tensor, optimizing: bool, valid: Tensor | None = None
    ) -> Tensor:
        """Fold this token's entropy [batch] into the EMA; return the peak *before* this token.

        The caller compares the new EMA with the returned peak (Eq. 4) and the state then holds the
        updated peak. Rows where ``valid`` is False (a non-finite entropy) leave their state as it was.
        """
        entropy = entropy.detach().float()
        peak_before = state.peak.clone()
        if self.ema_every_token or optimizing:
            keep = torch.isfinite(entropy) if valid is None else valid & torch.isfinite(entropy)
            blended = self.ema_beta * state.ema + (1 - self.ema_beta) * entropy
            first = entropy if self.ema_init == "first" else blended
            state.ema = torch.where(keep, torch.where(state.started, blended, first), state.ema)
            state.started = state.started | keep
            state.peak = torch.where(keep, torch.maximum(state.peak, state.ema), state.peak)
        return peak_before
