"""The paper's Value-Cache Controller (Sec. 3.1, Eq. 1; Lite variant Sec. 3.2).

A trainable offset ΔV is added to the value cache of one decoder layer (the last by default) at the
selected prompt positions (video tokens by default) and the result is rescaled to a reference norm:

    V' = (V + ΔV) / ||V + ΔV|| * ||V||                                   (Eq. 1)

The paper leaves open which dimensions ``||.||`` spans; ``norm_dims`` chooses:

- ``block`` (default): one norm per sample over the whole selected block [heads, positions, head_dim].
  Sec. 3.2 (Lite) keeps "the magnitude of the unpruned video value cache" after evicting half of the
  video tokens; that sentence only has content for a norm taken over the whole block (with a
  per-token norm, pruned and unpruned magnitudes are the same thing), and Appendix C describes ΔV as
  one (1, kv_heads, n_video, head_dim) tensor. Hence the default.
- ``head``: one norm per KV head over [positions, head_dim].
- ``token``: one norm per (head, position) vector: each value vector keeps its own length.

The reference norm ``||V||`` is measured before Lite evicts anything (``measure``), so Lite rescales
the kept tokens to the magnitude of the full block, as the paper prescribes. With ΔV = 0 and no
eviction the transform is the identity bit for bit (x / x == 1 in IEEE arithmetic), so a controller
that never moves reproduces plain decoding exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import Tensor
from transformers import Cache, PreTrainedModel

from vreason.controllers.base import (
    Controller,
    kv_layer_index,
    stored_off_the_graph,
    transformed_cache_layer,
)
from vreason.registry import CONTROLLERS

NormDims = Literal["block", "head", "token"]
_REDUCE_DIMS = {"block": (1, 2, 3), "head": (2, 3), "token": (3,)}
_TINY = 1e-12


def masked_norm(x: Tensor, mask: Tensor, norm_dims: NormDims) -> Tensor:
    """L2 norm of ``x`` [batch, heads, positions, head_dim] over the selected positions.

    mask: [batch, positions] bool. Returns a tensor broadcastable to ``x`` (keepdim).
    """
    masked = x * mask[:, None, :, None].to(x.device, x.dtype)  # a sharded model: x on its layer's device
    squared = masked.pow(2).sum(dim=_REDUCE_DIMS[norm_dims], keepdim=True)
    # sqrt has an infinite derivative at 0, which the positions outside the mask (a per-token norm)
    # would turn into NaN gradients: take the root only where the sum is positive.
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)


@CONTROLLERS.register("value_cache")
class ValueCacheController(Controller):
    """ΔV on one layer's value cache with norm preservation (Eq. 1).

    Args:
        layer: decoder layer index; -1 (default) is the last layer, as in the paper.
        norm_dims: which dims Eq. 1's norm spans: "block" (default), "head" or "token".
        normalize: apply Eq. 1's rescaling; False adds ΔV plainly (an ablation).
    """

    target: Literal["keys", "values"] = "values"

    def __init__(self, layer: int = -1, norm_dims: NormDims = "block", normalize: bool = True) -> None:
        super().__init__()
        if norm_dims not in _REDUCE_DIMS:
            raise ValueError(f"norm_dims must be one of {sorted(_REDUCE_DIMS)}, got {norm_dims!r}")
        self.layer = layer
        self.norm_dims: NormDims = norm_dims
        self.normalize = normalize
        self._cache: Cache | None = None
        self._layer_index = -1
        self._mask: Tensor | None = None  # [batch, prompt_len] bool, over the physical (evicted) cache
        self._reference: Tensor | None = None  # ||V|| of Eq. 1, keepdim shape
        # Eq. 1 on the prompt block, reused by forwards without autograd until ΔV changes: the prompt
        # part of the cache is fixed while decoding, and every in-place update bumps ΔV's version.
        self._steered: Tensor | None = None
        self._steered_versions: tuple[int, ...] = ()

    def _resolve_layer(self, model: PreTrainedModel) -> int:
        return kv_layer_index(model, self.layer)

    def _stored(self, cache: Cache) -> Tensor:
        layer = cache.layers[self._layer_index]
        return layer.values if self.target == "values" else layer.keys

    def measure(self, model: PreTrainedModel, cache: Cache, positions: Tensor) -> None:
        self._layer_index = self._resolve_layer(model)
        if self.norm_dims != "token":  # a per-token reference is the kept token's own norm
            self._reference = masked_norm(self._stored(cache).float(), positions, self.norm_dims)

    def attach(self, model: PreTrainedModel, cache: Cache, positions: Tensor) -> None:
        self._layer_index = self._resolve_layer(model)
        stored = self._stored(cache)  # [batch, kv_heads, prompt_len, head_dim]
        if self._reference is None or self.norm_dims == "token":
            self._reference = masked_norm(stored.float(), positions, self.norm_dims)
        self._cache, self._mask, self._steered = cache, positions.to(stored.device), None
        shape = (1, *stored.shape[1:])
        self.params = [
            torch.nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=stored.device))
            for _ in range(stored.shape[0])
        ]

    def detach(self) -> None:
        super().detach()
        self._cache = self._mask = self._reference = self._steered = None

    def steer(self, stored: Tensor) -> Tensor:
        """Eq. 1 on the prompt part of the cache. stored: [batch, kv_heads, prompt_len, head_dim]."""
        mask = self._mask[:, None, :, None]
        shifted = stored.float() + self.batched()
        if self.normalize:
            current = masked_norm(shifted, self._mask, self.norm_dims).clamp_min(_TINY)
            shifted = shifted * (self._reference / current)
        return torch.where(mask, shifted.to(stored.dtype), stored)

    def _transform(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        n_prompt = self._mask.shape[1]
        tensor = values if self.target == "values" else keys
        steered = torch.cat([self._steered_prompt(tensor[:, :, :n_prompt]), tensor[:, :, n_prompt:]], dim=2)
        return (keys, steered) if self.target == "values" else (steered, values)

    def _steered_prompt(self, prompt: Tensor) -> Tensor:
        """``steer(prompt)``, computed afresh under autograd (optimisation steps) or after ΔV changed."""
        if torch.is_grad_enabled():
            self._steered = None
            return self.steer(prompt)
        versions = tuple(p._version for p in self.params)
        if self._steered is None or versions != self._steered_versions:
            self._steered, self._steered_versions = self.steer(prompt), versions
        return self._steered

    @contextmanager
    def applied(self) -> Iterator[None]:
        if self._cache is None:
            raise RuntimeError("controller is not attached: call attach() after prefill")
        with (
            transformed_cache_layer(self._cache, self._layer_index, self._transform),
            stored_off_the_graph(self._cache),
        ):
            yield
