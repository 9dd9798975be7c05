"""Thresholded minimisation: optimise only while the entropy is above a threshold.

Not in the paper; a natural ablation in the spirit of entropy-bounded decoding: leave confident
steps alone and only pull down steps whose uncertainty exceeds ``threshold`` nats.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vreason.objectives.base import Objective
from vreason.registry import OBJECTIVES


@OBJECTIVES.register("thresholded")
class ThresholdedObjective(Objective):
    """alpha = -1 where ``signal > threshold``, else 0 (no step for that sample).

    Args:
        threshold: entropy threshold in nats.
        use_ema: compare the EMA rather than the raw entropy of this step.
    """

    def __init__(self, threshold: float = 2.0, use_ema: bool = False) -> None:
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 nats, got {threshold}")
        self.threshold = threshold
        self.use_ema = use_ema

    def alpha(self, entropy: Tensor, ema: Tensor, peak: Tensor) -> Tensor:
        signal = ema if self.use_ema else entropy
        return torch.where(signal > self.threshold, -1, 0)
