"""Key-cache controller: Eq. 1 applied to the keys (post-RoPE) instead of the values.

An ablation the paper does not run: steering where attention looks rather than what it reads.
Same parameters and norm choices as the value-cache controller.
"""

from __future__ import annotations

from vreason.controllers.value_cache import ValueCacheController
from vreason.registry import CONTROLLERS


@CONTROLLERS.register("key_cache")
class KeyCacheController(ValueCacheController):
    """ΔK on one layer's key cache with norm preservation (Eq. 1 with K in place of V)."""

    target = "keys"
