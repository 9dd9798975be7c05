"""V-Reason (Lite), Sec. 3.2 and Algorithm 2: evict the lowest-norm video tokens from the KV cache.

Right after prefill, each selected (video) token is scored by the mean L2 norm of its value vectors
over all heads of all layers; the lowest ``1 - keep_ratio`` fraction is removed from the keys and
values of every layer. Eviction is physical (the cache gets shorter); the decode loop tracks
logical positions itself, so rotary positions of later tokens are unchanged.

"All layers" are the layers that keep keys and values (``kv_cache_layers``). In a hybrid model
(Qwen3.5: Gated DeltaNet linear-attention layers between full-attention ones) the linear layers hold a
convolution and a recurrent state that already folded every prompt token in during prefill: there is
no per-token entry to evict, so they are left as prefill made them, and both the score and the
eviction cover the full-attention layers only.

In a batch, samples may evict different numbers of tokens; rows are left-padded with masked slots
to a common length, so attention sees exactly the kept positions of each sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import Cache
from transformers.cache_utils import CacheLayerMixin

from vreason.registry import PRUNERS


@dataclass
class Eviction:
    """Per-sample kept positions after eviction, as a gather index over the old cache.

    index: [batch, new_len] long, old position of each new slot; valid: [batch, new_len] bool,
    False for left-padding slots introduced to align rows.
    """

    index: Tensor
    valid: Tensor

    def gather(self, x: Tensor, dim: int) -> Tensor:
        """Re-index ``x`` along ``dim`` (the sequence dim; batch is dim 0)."""
        shape = [1] * x.dim()
        shape[0], shape[dim] = self.index.shape
        index = self.index.view(shape).expand(*x.shape[:dim], self.index.shape[1], *x.shape[dim + 1 :])
        return x.gather(dim, index.to(x.device))  # a sharded model keeps each layer's cache on its device


def keep_index(keep: Tensor) -> Eviction:
    """Build the gather index that keeps the True positions of ``keep`` [batch, len] in order."""
    counts = keep.sum(dim=1)
    new_len = int(counts.max())
    index = torch.zeros(keep.shape[0], new_len, dtype=torch.long, device=keep.device)
    valid = torch.zeros(keep.shape[0], new_len, dtype=torch.bool, device=keep.device)
    for row in range(keep.shape[0]):
        kept = keep[row].nonzero().flatten()
        index[row, new_len - kept.numel() :] = kept
        valid[row, new_len - kept.numel() :] = True
    return Eviction(index=index, valid=valid)


def kv_cache_layers(cache: Cache) -> list[int]:
    """Indices of the cache layers that keep keys and values: all of a transformer's; a hybrid model's
    full-attention layers, not its linear-attention (recurrent-state) ones. transformers' own split:
    key/value layers are ``CacheLayerMixin``s, linear-attention ones are not (``Cache.is_linear``)."""
    return [i for i, layer in enumerate(cache.layers) if isinstance(layer, CacheLayerMixin)]


def evict(cache: Cache, eviction: Eviction) -> None:
    """Physically re-index the keys and values ([batch, heads, len, head_dim]) of every layer that keeps
    them; a linear-attention layer's recurrent state is not touched."""
    for index in kv_cache_layers(cache):
        layer = cache.layers[index]
        layer.keys = eviction.gather(layer.keys, dim=2)
        layer.values = eviction.gather(layer.values, dim=2)


@PRUNERS.register("l2_norm")
@dataclass
class L2NormPruner:
    """Keep the ``keep_ratio`` highest-scoring selected tokens (ceil); drop the rest from all layers that
    keep keys and values (a hybrid model's full-attention layers).

    Args:
        keep_ratio: fraction of selected (video) tokens kept; 0.5 in the paper, 1.0 keeps everything.
        evict: remove the tokens from the cache (default, saves memory); False keeps them stored and
            masks them out of attention instead, which gives the same logits (tested) and is useful
            for inspecting what was pruned.
    """

    keep_ratio: float = 0.5
    evict: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"pruner.keep_ratio must be in (0, 1], got {self.keep_ratio}")

    @torch.no_grad()
    def scores(self, cache: Cache) -> Tensor:
        """[batch, len] mean over the key/value layers and heads of each position's value-vector L2 norm."""
        values = [cache.layers[i].values for i in kv_cache_layers(cache)]
        first = values[0].device  # a sharded model: layers' caches on several devices
        return torch.stack([v.float().norm(dim=-1).mean(dim=1).to(first) for v in values]).mean(dim=0)

    @torch.no_grad()
    def select(self, cache: Cache, positions: Tensor) -> Tensor:
        """[batch, len] bool: positions that survive (everything outside ``positions`` survives)."""
        scores = self.scores(cache).to(positions.device).masked_fill(~positions, float("inf"))
        keep = torch.ones_like(positions)
        for row in range(positions.shape[0]):
            n_selected = int(positions[row].sum())
            n_drop = n_selected - math.ceil(self.keep_ratio * n_selected)
            if n_drop > 0:
                # stable sort: among equal scores the earlier position is evicted first
                order = torch.sort(scores[row], stable=True).indices
                keep[row, order[:n_drop]] = False
        return keep

    def prune(self, cache: Cache, positions: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor] | None:
        """Evict in place. Returns the new (positions, attention_mask) or None if nothing was evicted."""
        keep = self.select(cache, positions)
        if bool(keep.all()):
            return None
        if not self.evict:
            return positions & keep, attention_mask * keep.to(attention_mask.dtype)
        eviction = keep_index(keep)
        evict(cache, eviction)
        new_positions = eviction.gather(positions, dim=1) & eviction.valid
        new_mask = eviction.gather(attention_mask, dim=1) * eviction.valid.to(attention_mask.dtype)
        return new_positions, new_mask
