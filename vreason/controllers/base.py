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
from transformers.cache_utils import LinearAttentionCacheLayerMixin

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


@contextmanager
def stored_off_the_graph(cache: Cache) -> Iterator[None]:
    """During a forward with autograd on (an optimisation step), keep what it stores in ``cache`` off the
    autograd graph; a no-op when autograd is off.

    The layers after the steered one compute this token's keys and values (and, in a hybrid model, its
    convolution and recurrent states) from hidden states that depend on ΔV. Left attached, they would
    carry this step's graph into the next optimisation step, whose backward would then run into freed
    buffers; and transformers updates a linear-attention layer's recurrent state in place (``copy_``)
    into the tensor the delta rule read and autograd saved, which backward refuses. Eq. 1's gradient
    flows through the current forward only (the engine's one forward per token), so within the context a
    linear-attention layer stores its new recurrent state as a fresh tensor instead, and on leaving,
    everything stored is detached. The stored values are exactly what a plain forward stores.
    """
    if not torch.is_grad_enabled():
        yield
        return
    swapped = {}
    for index, layer in enumerate(cache.layers):
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            proxy = object.__new__(_out_of_place_class(type(layer)))
            proxy.__dict__ = layer.__dict__
            cache.layers[index], swapped[index] = proxy, layer
    try:
        yield
    finally:
        for index, layer in swapped.items():
            cache.layers[index] = layer
        for layer in cache.layers:
            _detach_stored(layer)


def _detach_stored(layer: object) -> None:
    for name in ("keys", "values"):
        tensor = getattr(layer, name, None)
        if isinstance(tensor, Tensor) and tensor.requires_grad:
            setattr(layer, name, tensor.detach())
    for name in ("conv_states", "recurrent_states"):
        for key, tensor in getattr(layer, name, {}).items():
            if isinstance(tensor, Tensor) and tensor.requires_grad:
                getattr(layer, name)[key] = tensor.detach()


_OUT_OF_PLACE_CLASSES: dict[type, type] = {}


def _out_of_place_class(base: type) -> type:
    if base not in _OUT_OF_PLACE_CLASSES:

        def update_recurrent_state(self, recurrent_states: Tensor, state_idx: int = 0, **kwargs) -> Tensor:
            stored = self.recurrent_states[state_idx]
            if stored is None:  # before prefill: nothing read, nothing saved by autograd
                return base.update_recurrent_state(self, recurrent_states, state_idx, **kwargs)
            self.recurrent_states[state_idx] = recurrent_states.detach().to(stored.dtype, copy=True)
            return self.recurrent_states[state_idx]

        _OUT_OF_PLACE_CLASSES[base] = type(
            f"OutOfPlace{base.__name__}", (base,), {"update_recurrent_state": update_recurrent_state}
        )
    return _OUT_OF_PLACE_CLASSES[base]


def kv_layer_index(model: PreTrainedModel, layer: int) -> int:
    """The decoder layer a cache controller steers: ``layer`` counted as the model counts its decoder
    layers (negative from the end: -1, the paper's choice, is the last layer). It must keep keys and
    values, as the model's family lists them: in a hybrid model (Qwen3.5) only the full-attention
    layers do, and naming a linear-attention layer is refused with the list of those that do."""
    from vreason.families import family_of

    text = model.config.get_text_config()
    n_layers = text.num_hidden_layers
    layers = family_of(model).kv_layers(model)
    index = layer + n_layers if layer < 0 else layer
    if not 0 <= index < n_layers:
        raise ValueError(f"controller.layer {layer}: the model has {n_layers} decoder layers")
    if index not in layers:
        kinds = getattr(text, "layer_types", None)
        kind = f"a {kinds[index]} layer" if kinds else "a layer"
        raise ValueError(
            f"controller.layer {layer} (decoder layer {index}) is {kind}, which keeps no key/value cache to "
            f"steer; the model's layers with one ({'full_attention' if kinds else 'KV cache'}) are {layers}"
        )
    return index
