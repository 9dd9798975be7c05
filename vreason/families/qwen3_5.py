"""Qwen3.5 and Qwen3.5-MoE: Qwen3-VL's inputs and positions on a hybrid linear/full-attention LM.

Inputs and positions are Qwen3-VL's (``qwen3_vl.py``): the checkpoints ship Qwen3-VL's processor (one
``<t seconds>`` line per temporal patch, each frame its own ``<|vision_start|>...<|vision_end|>``
block) and transformers' ``Qwen3_5Model.get_rope_index`` is Qwen2-VL's with each video grid ``[t, h, w]``
split into ``t`` one-step grids, the rule those timestamps imply: every frame is positioned like an
image (temporal index 0), and text after a frame starts at ``start + max(h', w')``, which for a one-step
block is its largest position plus one. So the trained rule and transformers agree, and ``generate`` is
a valid oracle here too (tested).

The language model is not a plain transformer. ``text_config.layer_types`` lists each decoder layer as
``linear_attention`` (Gated DeltaNet: a causal convolution and a recurrent state, no keys or values) or
``full_attention`` (a KV cache), three of the first kind to one of the second, the last layer full
attention. transformers' ``DynamicCache(config=...)`` holds a ``LinearAttentionLayer`` (``conv_states``,
``recurrent_states``) for the first kind and a ``DynamicLayer`` (``keys``, ``values``) for the second;
``kv_layers`` lists the second, which is all the value-cache controller and Lite can touch: the linear
layers have already folded the video into their state during prefill.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from vreason.families import FAMILIES
from vreason.families.qwen3_vl import _Qwen3VLFamily, tiny_qwen3_vl_processor

FULL_ATTENTION = "full_attention"


def full_attention_layers(model: PreTrainedModel) -> list[int]:
    """Decoder layers of a hybrid model whose ``layer_types`` entry is full attention (a KV cache)."""
    return [i for i, kind in enumerate(model.config.get_text_config().layer_types) if kind == FULL_ATTENTION]


def remember_the_prompt(model: PreTrainedModel, slowest: float = 0.995, fastest: float = 0.8) -> None:
    """Give a tiny model's Gated DeltaNet heads a memory: per-token decays from ``fastest`` to ``slowest``.

    A head's state decays per token by ``exp(-A * softplus(a + dt_bias))``. With the spread random
    ``in_proj_a`` (std 0.3) ``a`` is large, the decay is about 0 and the layer forgets every earlier token,
    so the recurrent state would hold nothing of the video. Here ``a`` is made small, ``dt_bias`` 0 and ``A``
    set so that the heads keep a memory of about 5 to 200 tokens, as trained heads do over a prompt.
    """
    for layer in model.model.language_model.layers:
        attn = getattr(layer, "linear_attn", None)
        if attn is None:
            continue
        decay = torch.linspace(fastest, slowest, attn.num_v_heads)
        with torch.no_grad():
            attn.in_proj_a.weight.mul_(0.01)
            attn.dt_bias.zero_()
            # A = -log(decay) / softplus(0), stored as its log
            attn.A_log.copy_((-decay.log() / torch.nn.functional.softplus(torch.zeros(()))).log())


class _Qwen3_5Family(_Qwen3VLFamily):
    """Qwen3-VL's inputs and positions; the KV cache only on the full-attention layers."""

    def kv_layers(self, model: PreTrainedModel) -> list[int]:
        return full_attention_layers(model)

    def _tiny_hybrid(
        self, config_class: type, model_class: type, text_extra: dict, seed: int, dtype: torch.dtype
    ) -> tuple[PreTrainedModel, Any]:
        """Eight decoder layers (linear x 3, full, linear x 3, full: the checkpoints' every-fourth pattern,
        with two full-attention layers so that Lite's norm spans several), partial rotary 0.25 and M-RoPE
        sections in the checkpoints' proportions ([11, 11, 10] of 32 -> [3, 3, 2] of 8)."""
        from vreason.models import (
            TinyDims,
            byte_level_tokenizer,
            finish_tiny_model,
            qwen_vision_token_ids,
            tiny_text_config,
        )

        dims, tok = TinyDims(num_hidden_layers=8), byte_level_tokenizer()
        rope = {
            "rope_type": "default",
            "rope_theta": 1e7,
            "partial_rotary_factor": 0.25,  # 16 of head_dim 64 rotate: 8 frequencies
            "mrope_section": [3, 3, 2],
            "mrope_interleaved": True,
        }
        linear = dict(
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_conv_kernel_dim=4,
        )
        text = tiny_text_config(dims, tok, head_dim=64, rope_parameters=rope, **linear, **text_extra)
        config = config_class(
            text_config=text,
            vision_config=dict(
                depth=dims.vision_depth,
                hidden_size=dims.vision_hidden_size,
                intermediate_size=2 * dims.vision_hidden_size,
                num_heads=dims.vision_heads,
                out_hidden_size=dims.hidden_size,
                patch_size=16,
                num_position_embeddings=64,  # an 8 x 8 grid of learned positions, interpolated
            ),
            tie_word_embeddings=False,
            **qwen_vision_token_ids(tok),
        )
        torch.manual_seed(seed)
        model = finish_tiny_model(model_class(config), dims, seed, dtype)
        remember_the_prompt(model)
        return model, tiny_qwen3_vl_processor(tok)


@FAMILIES.register("qwen3_5")
class Qwen3_5Family(_Qwen3_5Family):
    """Qwen3.5 with a dense MLP (e.g. Qwen3.5-27B, transformers' reference checkpoint)."""

    model_types = ("qwen3_5",)

    def model_class(self) -> type:
        from transformers import Qwen3_5ForConditionalGeneration

        return Qwen3_5ForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

        return self._tiny_hybrid(Qwen3_5Config, Qwen3_5ForConditionalGeneration, {}, seed, dtype)


@FAMILIES.register("qwen3_5_moe")
class Qwen3_5MoeFamily(_Qwen3_5Family):
    """Qwen3.5-MoE (e.g. Qwen3.5-35B-A3B): the same hybrid layers, a mixture-of-experts MLP."""

    model_types = ("qwen3_5_moe",)

    def model_class(self) -> type:
        from transformers import Qwen3_5MoeForConditionalGeneration

        return Qwen3_5MoeForConditionalGeneration

    def tiny(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
        from transformers import Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration

        experts = dict(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32
        )
        return self._tiny_hybrid(Qwen3_5MoeConfig, Qwen3_5MoeForConditionalGeneration, experts, seed, dtype)
