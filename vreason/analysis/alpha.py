"""α before the EMA peak (Eq. 4, Fig. 5, Appendix E): α recomputed from an EMA curve, and the +1/-1
counts over the steps before each sample's EMA peak."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vreason.analysis.per_sample import ema_peak

AlphaSource = Literal["recorded", "ema"]


def alpha_from_ema(ema: Sequence[float]) -> np.ndarray:
    """α_t of Eq. 4 recomputed from an EMA curve: +1 where the EMA is at its running peak
    (H_t^ema ≥ max of the EMA so far), -1 below it. The engine already records, at every token, the α
    the run's objective gives (a baseline records what the switching rule would have used), so this
    is for traces from elsewhere, or to check a recorded α against Eq. 4."""
    values = np.asarray(ema, dtype=float)
    if values.size == 0:
        return np.zeros(0, dtype=int)
    return np.where(values >= np.maximum.accumulate(values), 1, -1)


@dataclass(frozen=True)
class AlphaCounts:
    """α values counted over steps before the EMA peak (Fig. 5), summed over ``samples`` traces."""

    explore: int  # α = +1, micro-exploration
    exploit: int  # α = -1, micro-exploitation
    samples: int

    @property
    def steps(self) -> int:
        return self.explore + self.exploit


def alpha_before_peak(
    traces: Iterable[Mapping[str, Sequence]],
    only_optimized: bool = True,
    source: AlphaSource = "recorded",
) -> AlphaCounts:
    """How often α was +1 and -1 before each sample's EMA peak, summed over samples (Fig. 5, App. E:
    "V-Reason sacrifices a few micro-exploration steps (α = 1) for a substantially larger number of
    micro-exploitation steps (α = -1)").

    "Before the peak" is the steps strictly before ``ema_peak``'s index (the peak step itself has
    α = +1 by Eq. 4 and is not counted). With ``only_optimized`` only steps that ran an optimisation
    step count (the α that acted on the controller); otherwise every step. ``source="recorded"`` reads
    the trace's α (recorded at every token, optimised or not; α = 0 from the thresholded objective is
    not counted), so a baseline is read with ``only_optimized=False``; ``"ema"`` recomputes α from the
    EMA (``alpha_from_ema``).
    """
    if source not in ("recorded", "ema"):
        raise ValueError(f"source must be 'recorded' or 'ema', got {source!r}")
    explore = exploit = samples = 0
    for trace in traces:
        ema = np.asarray(trace["ema"], dtype=float)
        alpha = np.asarray(trace["alpha"]) if source == "recorded" else alpha_from_ema(ema)
        optimized = np.asarray(trace["optimized"], dtype=bool)
        if not (ema.size == alpha.size == optimized.size):
            raise ValueError(
                f"trace lengths differ: ema {ema.size}, alpha {alpha.size}, optimized {optimized.size}"
            )
        if ema.size == 0:
            continue
        peak, _ = ema_peak(ema)
        before = alpha[:peak][optimized[:peak]] if only_optimized else alpha[:peak]
        explore += int(np.sum(before == 1))
        exploit += int(np.sum(before == -1))
        samples += 1
    return AlphaCounts(explore=explore, exploit=exploit, samples=samples)
