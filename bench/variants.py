"""The variants a benchmark times against each other: ``generate`` (the reference), ``loop_off`` (our loop,
no controller), ``full_k<k>`` and ``lite_k<k>`` (V-Reason Full and Lite at step size k, "k" in the paper)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    step_size: int | None = None  # None: no controller
    keep_ratio: float | None = None  # Lite
    uses_generate: bool = False

    @property
    def label(self) -> str:
        if self.uses_generate:
            return "model.generate (greedy)"
        if self.step_size is None:
            return "our loop, controller off"
        if self.keep_ratio is None:
            return f"V-Reason Full, k={self.step_size}"
        return f"V-Reason Lite, k={self.step_size}, keep {self.keep_ratio:g}"

    def method(self, positions: str, controller_class: type | None = None):
        """A fresh ``Method`` per run (a controller holds the tensors of the batch it decodes)."""
        from vreason.controllers.value_cache import ValueCacheController
        from vreason.engine import Method
        from vreason.pruning import L2NormPruner
        from vreason.schedule import FixedStepSchedule

        if self.step_size is None:
            return Method()
        return Method(
            controller=(controller_class or ValueCacheController)(),
            schedule=FixedStepSchedule(step_size=self.step_size),
            pruner=L2NormPruner(self.keep_ratio) if self.keep_ratio is not None else None,
            positions=positions,
        )


_VARIANT = re.compile(r"^(generate|loop_off|full_k(\d+)|lite_k(\d+))$")


def parse_variant(name: str, lite_keep_ratio: float) -> Variant:
    match = _VARIANT.match(name)
    if match is None:
        raise SystemExit(f"bench: unknown variant {name!r}; known: generate, loop_off, full_k<k>, lite_k<k>")
    if name == "generate":
        return Variant(name, uses_generate=True)
    if name == "loop_off":
        return Variant(name)
    if match.group(2):
        return Variant(name, step_size=int(match.group(2)))
    return Variant(name, step_size=int(match.group(3)), keep_ratio=lite_keep_ratio)
