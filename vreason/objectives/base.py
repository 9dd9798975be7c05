"""The Objective contract: this step's entropy and the EMA state in, per-sample loss and alpha out."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor


class Objective(ABC):
    """Eq. 2's family ``L = -alpha * H``; an objective decides alpha.

    alpha is +1 (raise entropy), -1 (lower it) or 0 (leave this sample alone at this step: its
    optimiser does not step, so its AdamW state does not move either).
    """

    registry_name: str = "?"

    @abstractmethod
    def alpha(self, entropy: Tensor, ema: Tensor, peak: Tensor) -> Tensor:
        """[batch] alpha in {-1, 0, +1}.

        entropy: [batch] this step's entropy (nats); ema: [batch] its EMA including this step;
        peak: [batch] the running EMA peak before this step (-inf before the first step).
        """

    def __call__(self, entropy: Tensor, ema: Tensor, peak: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample loss ``-alpha * H`` [batch] (differentiable through ``entropy``) and alpha [batch]."""
        alpha = self.alpha(entropy.detach(), ema, peak)
        return -alpha.to(entropy.dtype) * entropy, alpha
