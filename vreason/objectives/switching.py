"""The paper's Entropy Switching Loss (Eqs. 2-4)."""

from __future__ import annotations

import torch
from torch import Tensor

from vreason.objectives.base import Objective
from vreason.registry import OBJECTIVES


@OBJECTIVES.register("switching")
class SwitchingObjective(Objective):
    """alpha = +1 while the entropy EMA is at or above its running peak, else -1 (Eq. 4).

    Pushes entropy up while its moving average climbs (micro-exploration) and down once it has
    passed its peak (micro-exploitation); after the global EMA maximum alpha stays -1.
    """

    def alpha(self, entropy: Tensor, ema: Tensor, peak: Tensor) -> Tensor:
        return torch.where(ema >= peak, 1, -1)
