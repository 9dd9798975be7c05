"""Max-entropy ablation (Table 4): alpha = +1 at every optimisation step."""

from __future__ import annotations

import torch
from torch import Tensor

from vreason.objectives.base import Objective
from vreason.registry import OBJECTIVES


@OBJECTIVES.register("max_entropy")
class MaxEntropyObjective(Objective):
    """Always raise the entropy."""

    def alpha(self, entropy: Tensor, ema: Tensor, peak: Tensor) -> Tensor:
        return torch.full_like(entropy, 1, dtype=torch.long)
