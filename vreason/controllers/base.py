"""The Controller contract and the cache-layer hook that cache controllers use.

A controller owns one trainable tensor per sample (so that each sample of a batch has its own AdamW
state and gradient clipping), attaches after prefill to a set of prompt positions, and changes what
the next forward sees inside ``applied()``. It never writes into the model or the stored cache: the
cache keeps the original keys and values, and the controller transforms what attention reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from transformers import Cache, PreTrainedModel

KVTransform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class Controller(ABC):
    """Trainable tensors that steer decoding (paper Sec. 3.1, "reasoning inducing parameters")."""

    registry_name: str = "?"

    def __init__(self) -> None:
        self.params: list[torch.nn.Parameter] = []

    def measure(self, model: PreTrainedModel, cache: Cache, positions: Tensor) -> None:  # noqa: B027
        """Called right after prefill, before any cache eviction (Lite): record reference statistics.

        positions: [batch, prompt_len] bool, the positions the controller will cover.
        """

    @abstractmethod
    def attach(self, model: PreTrainedModel, cache: Cache, positions: Tensor) -> None:
        """Create zero-initialised per-sample tensors over ``positions`` of the (possibly evicted) cache."""

    @abstractmethod
    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within this context the model's forward sees the controller; outside it, the plain model."""

    def detach(self) -> None:
        """Forget the tensors of the last batch (controllers are per sample, never shared across batches)."""
        self.params = []

    def sample_parameters(self, index: int) -> list[torch.nn.Parameter]:
        """The trainable tensors of sample ``index`` (what its optimiser steps)."""
        return [self.params[index]]

    @torch.no_grad()
    def norms(self) -> Tensor:
        """[batch] L2 norm of each sample's controller tensor (0 before any update)."""
        return torch.stack([p.detach().float().norm() for p in self.params])

    def batched(self) -> Tensor:
        """The per-sample tensors stacked on the batch dimension (differentiable)."""
        return torch.cat(list(self.params), dim=0)


@contextmanager
def transformed_cache_layer(cache: Cache, layer_index: int, transform: KVTransform) -> Iterator[None]:
    """Make attention at ``layer_index`` read ``transform(keys, values)`` instead of the stored cache.

    transformers' attention calls ``cache.layers[i].update(new_k, new_v)`` and attends over what it
    returns. We swap in, for the duration of the context, a layer object of a subclass whose ``update``
    stores exactly as before and returns the transformed tensors. The two objects share one attribute
    dict, so what the forward appends is in the original layer afterwards. The swap is undone in
    ``finally`` whatever happens inside.
    """
    original = cache.layers[layer_index]
    proxy = object.__new__(_transforming_class(type(original)))
    proxy.__dict__ = original.__dict__
    proxy._vreason_transform = transform
    cache.layers[layer_index] = proxy
    try:
        yield
    finally:
        cache.layers[layer_index] = original
        original.__dict__.pop("_vreason_transform", None)


_TRANSFORMING_CLASSES: dict[type, type] = {}


def _transforming_class(base: type) -> type:
    if base not in _TRANSFORMING_CLASSES:

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            keys, values = base.update(self, key_states, value_states, *args, **kwargs)
            return self._vreason_transform(keys, values)

        _TRANSFORMING_CLASSES[base] = type(f"Transforming{base.__name__}", (base,), {"update": update})
    return _TRANSFORMING_CLASSES[base]


def kv_layer_index(model: PreTrainedModel, layer: int) -> int:
    """The decoder layer a cache controller steers: ``layer`` counted among the layers that keep keys
    and values (-1, the paper's choice, is the last of them), as the model's family lists them."""
    from vreason.families import family_of

    layers = family_of(model).kv_layers(model)
    if layer < 0:
        if -layer > len(layers):
            raise ValueError(f"controller layer {layer}: the model has {len(layers)} layers with a KV cache")
        return layers[layer]
    if layer not in layers:
        raise ValueError(f"controller layer {layer} is not one of the model's KV-cache layers {layers}")
    return layer
