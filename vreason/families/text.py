"""Text-only causal LMs (Qwen2, Llama, SmolLM2, ...): 1D positions, every layer caches keys and values.

The fallback family for any ``model_type`` no other family claims.
"""

from __future__ import annotations

from vreason.families import FAMILIES
from vreason.families.base import Family


@FAMILIES.register("text")
class TextFamily(Family):
    model_types = ()
