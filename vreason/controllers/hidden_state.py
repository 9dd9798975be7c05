"""Hidden-state controller: an additive offset on the final hidden state before the LM head (SLOT-style).

Applied at every generated position (the prompt is untouched: the controller attaches after prefill).
It bypasses attention entirely, so it is the cheapest controller and a baseline for asking whether
steering through the video tokens matters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers import Cache, PreTrainedModel

from vreason.controllers.base import Controller
from vreason.registry import CONTROLLERS


@CONTROLLERS.register("hidden_state")
class HiddenStateController(Controller):
    """δ [1, 1, hidden] per sample, added to the LM head's input at generated positions."""

    def __init__(self) -> None:
        super().__init__()
        self._head: torch.nn.Module | None = None

    def attach(self, model: PreTrainedModel, cache: Cache, positions: Tensor) -> None:
        self._head = model.get_output_embeddings()
        hidden = self._head.in_features
        device = self._head.weight.device
        self.params = [
            torch.nn.Parameter(torch.zeros(1, 1, hidden, dtype=torch.float32, device=device))
            for _ in range(positions.shape[0])
        ]

    def detach(self) -> None:
        super().detach()
        self._head = None

    def _offset(self, module: torch.nn.Module, args: tuple) -> tuple:
        hidden = args[0]  # [batch, new_positions, hidden]
        return ((hidden.float() + self.batched()).to(hidden.dtype), *args[1:])

    @contextmanager
    def applied(self) -> Iterator[None]:
        if self._head is None:
            raise RuntimeError("controller is not attached: call attach() after prefill")
        handle = self._head.register_forward_pre_hook(self._offset)
        try:
            yield
        finally:
            handle.remove()
