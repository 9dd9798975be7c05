"""V-Reason from plain transformers: one argument to ``model.generate``.

transformers' ``generate`` prepares the inputs, the generation config, the logits processors and the
stopping criteria, then hands the decoding loop to ``custom_generate``. Here that loop is our
``Decoder`` (prefill, then per token: controller applies, forward, sample, objective, step, trace)::

    from vreason.hf import v_reason

    out = model.generate(**inputs, custom_generate=v_reason(controller="value_cache", step_size=4, lr=3e-4),
                         max_new_tokens=512, do_sample=True, temperature=0.1, top_p=0.001)

Components are named as in the YAML ``method`` block and built by the same builder
(``vreason.config.build_method``), so a name that a config accepts is accepted here and an unknown one
fails here, when ``v_reason`` is called, with the known names listed.

What is taken from ``generate`` and what is ours:

- **Logits processors** (temperature, top-k, top-p, min-p, top-h, repetition penalty, a
  ``logits_processor=`` of the caller's, ...): generate's list, as generate built it, replaces the
  Decoder's own. The entropy the objective sees is still that of the raw logits (README, "Choices").
- **Stopping**: generate's ``MaxLengthCriteria`` becomes the Decoder's token budget
  (``max_new_tokens``), its ``EosTokenCriteria`` the Decoder's eos ids; every other criterion (a
  ``stopping_criteria=`` of the caller's, ``max_time``) is checked after each token, as generate does
  (with ``scores=None``). Stop strings: see ``VReasonGenerate``.
- **Sampling**: ``do_sample`` from the generation config; draws come from one generator per sample
  seeded from (``seed``, sample key), as on the CLI, not from torch's global generator, so a sample
  decodes the same alone or in a batch (give ``sample_keys=`` to ``generate`` for the keys).
- **Positions are ours, not generate's.** The position ids generate prepared are dropped; the Decoder
  computes the family's trained rule (``vreason.families.prefill_position_ids``). For Qwen2.5-VL
  transformers 5.24 starts the text after a video too early (README, "Rotary positions"); with
  ``controller=None`` the tokens therefore equal plain ``generate`` only where transformers' positions
  are right (text LMs, images, clips shorter than ``max(h', w')`` grid steps).
- **Cache**: the Decoder prefills into a ``DynamicCache`` of its own (Lite evicts from it); the one
  generate prepared is not used, and none is returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import (
    GenerationConfig,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteriaList,
    StopStringCriteria,
)
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

from vreason.config import build_method
from vreason.engine import Decoder, Method, SampleTrace
from vreason.positions import select_positions
from vreason.sampling import SamplingConfig

# model_kwargs that generate adds for its own loop; the Decoder brings its own (positions, cache).
GENERATE_ONLY_KWARGS = {
    "position_ids",
    "cache",
    "past_key_values",
    "use_cache",
    "logits_to_keep",
    "cache_position",
}
# The shortcuts of ``v_reason`` and the method-block key and parameter each one sets.
SHORTCUTS = {"step_size": ("schedule", "step_size"), "lr": ("optimizer", "lr")}


@dataclass
class VReasonGenerateOutput(GenerateDecoderOnlyOutput):
    """generate's output (``sequences``; ``scores`` / ``logits`` when asked for) plus our per-token
    traces, one ``SampleTrace`` per row: entropy, EMA, alpha, optimised steps, |ΔV|, finish reason."""

    traces: list[SampleTrace] | None = None


class _Recorded(LogitsProcessor):
    """generate's processors, keeping each step's raw logits and processed scores when asked to."""

    def __init__(self, processors: LogitsProcessorList, logits: bool, scores: bool) -> None:
        self.processors, self.keep_logits, self.keep_scores = processors, logits, scores
        self.logits: list[Tensor] = []
        self.scores: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.keep_logits:
            self.logits.append(scores.clone())
        processed = self.processors(input_ids, scores)
        if self.keep_scores:
            self.scores.append(processed.clone())
        return processed


class VReasonGenerate:
    """The decoding loop handed to ``model.generate(custom_generate=...)``: our ``Decoder`` with
    generate's logits processors, stopping criteria and generation config.

    Args:
        method: controller, objective, schedule, pruner, positions and optimiser (``v_reason`` builds
            it from names); ``None`` is plain decoding through the same loop.
        tokenizer: needed only for stop strings. transformers 5.24 does not hand ``generate``'s
            ``tokenizer=`` to a ``custom_generate`` callable, so it is given here; ``stop_strings=``
            given to ``generate`` then reaches this loop (it declares the argument, so generate leaves
            it alone and does not fail for want of a tokenizer).
        seed: seeds the per-sample generators when sampling (with each sample's key).

    Keyword arguments it takes from ``generate`` besides generate's own: ``stop_strings``,
    ``sample_keys`` (one string per row; default the row index), and the raw vision inputs
    (``pixel_values_videos``, ``video_grid_thw``, ``pixel_values``, ``image_grid_thw``): declaring them
    keeps generate from encoding the video ahead and dropping the grids the positions are computed
    from, so the prefill is exactly the Decoder's.

    Returns what generate returns: ``sequences`` [batch, prompt + new] (rows that finished early are
    padded with the pad id), or with ``return_dict_in_generate=True`` a ``VReasonGenerateOutput``.
    """

    def __init__(self, method: Method | None = None, tokenizer: Any = None, seed: int = 0) -> None:
        self.method, self.tokenizer, self.seed = method, tokenizer, seed

    def __call__(
        self,
        model: PreTrainedModel,
        input_ids: Tensor,
        logits_processor: LogitsProcessorList,
        stopping_criteria: StoppingCriteriaList,
        generation_config: GenerationConfig,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        stop_strings: str | list[str] | None = None,
        sample_keys: list[str] | None = None,
        **model_kwargs: Any,
    ) -> Tensor | VReasonGenerateOutput:
        vision = {
            "pixel_values_videos": pixel_values_videos,
            "video_grid_thw": video_grid_thw,
            "pixel_values": pixel_values,
            "image_grid_thw": image_grid_thw,
        }
        inputs = self._inputs(input_ids, vision, model_kwargs)
        self._check(model, inputs, generation_config, vision, stop_strings, sample_keys)
        max_length = min(
            (c.max_length for c in stopping_criteria if isinstance(c, MaxLengthCriteria)),
            default=generation_config.max_length,
        )
        eos = [int(t) for c in stopping_criteria if isinstance(c, EosTokenCriteria) for t in c.eos_token_id]
        pad = generation_config._pad_token_tensor  # as generate pads: the pad id, else the first eos id
        sampling = SamplingConfig(
            do_sample=bool(generation_config.do_sample),
            temperature=1.0,
            top_p=None,
            max_new_tokens=max_length - input_ids.shape[1],
        )
        flags = [p.requires_grad for p in model.parameters()]  # the Decoder freezes the weights
        try:
            decoder = Decoder(
                model, self.method, sampling, eos_token_id=eos, pad_token_id=None if pad is None else int(pad)
            )
            recorded = _Recorded(
                logits_processor,
                logits=bool(generation_config.output_logits),
                scores=bool(generation_config.output_scores),
            )
            decoder.processor = LogitsProcessorList([recorded])
            decoder.stop = StoppingCriteriaList(
                c for c in stopping_criteria if not isinstance(c, MaxLengthCriteria | EosTokenCriteria)
            )
            if stop_strings:
                decoder.stop.append(StopStringCriteria(self.tokenizer, stop_strings))
            traces = decoder.generate(inputs, keys=sample_keys, seed=self.seed)
        finally:
            for param, flag in zip(model.parameters(), flags, strict=True):
                param.requires_grad_(flag)
        sequences = _sequences(input_ids.to(decoder.device), traces, decoder.pad_token_id)
        if not generation_config.return_dict_in_generate:
            return sequences
        return VReasonGenerateOutput(
            sequences=sequences,
            scores=tuple(recorded.scores) if recorded.keep_scores else None,
            logits=tuple(recorded.logits) if recorded.keep_logits else None,
            traces=traces,
        )

    @staticmethod
    def _inputs(
        input_ids: Tensor, vision: Mapping[str, Tensor | None], model_kwargs: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The processor's inputs again, as the Decoder takes them: generate's own additions dropped, and
        the attention mask it drops when there is no padding put back."""
        if model_kwargs.get("inputs_embeds") is not None:
            raise ValueError("v_reason: needs input_ids; generate was given inputs_embeds")
        # generate's fresh cache goes unused (the Decoder prefills its own); a filled one is refused
        for name in ("cache", "past_key_values"):
            cache = model_kwargs.get(name)
            if cache is not None and cache.get_seq_length() > 0:
                raise ValueError(f"v_reason: prefills the prompt itself; {name} must be empty")
        inputs = {k: v for k, v in model_kwargs.items() if k not in GENERATE_ONLY_KWARGS}
        if not inputs.get("mm_encoder_outputs"):  # empty when the raw vision inputs came to us
            inputs.pop("mm_encoder_outputs", None)
        if inputs.get("attention_mask") is None:
            inputs["attention_mask"] = torch.ones_like(input_ids)
        inputs.update({k: v for k, v in vision.items() if v is not None})
        return {"input_ids": input_ids, **inputs}

    def _check(
        self,
        model: PreTrainedModel,
        inputs: Mapping[str, Any],
        config: GenerationConfig,
        vision: Mapping[str, Tensor | None],
        stop_strings: str | list[str] | None,
        sample_keys: list[str] | None,
    ) -> None:
        """Everything that can be wrong with the arguments, raised before the prefill."""
        if model.config.is_encoder_decoder:
            raise ValueError("v_reason: decoder-only models only")
        if (config.num_beams or 1) > 1:
            raise ValueError(
                f"v_reason: decodes one sequence per row; num_beams must be 1, got {config.num_beams}"
            )
        if config.num_return_sequences > 1 and any(v is not None for v in vision.values()):
            raise ValueError(
                "v_reason: num_return_sequences > 1 with images or videos is not supported; repeat the "
                "rows of the batch instead"
            )
        for flag in ("output_attentions", "output_hidden_states"):
            if getattr(config, flag, False):
                raise ValueError(f"v_reason: {flag} is not recorded; the traces hold the per-token values")
        if config.cache_implementation not in (None, "dynamic"):
            raise ValueError(
                f"v_reason: decodes with a DynamicCache of its own; cache_implementation "
                f"{config.cache_implementation!r} is not supported"
            )
        if stop_strings and self.tokenizer is None:
            raise ValueError(
                "v_reason: stop_strings need the tokenizer: v_reason(..., tokenizer=tokenizer) (transformers "
                "does not pass generate's tokenizer= to a custom_generate callable)"
            )
        batch = inputs["input_ids"].shape[0]
        if sample_keys is not None and len(sample_keys) != batch:
            raise ValueError(f"v_reason: sample_keys has {len(sample_keys)} keys for a batch of {batch}")
        method = self.method
        if method is not None and (method.controller is not None or method.pruner is not None):
            try:
                select_positions(method.positions, model, inputs)
            except ValueError as err:
                raise ValueError(f"v_reason: {err}") from err


def _sequences(input_ids: Tensor, traces: list[SampleTrace], pad_token_id: int) -> Tensor:
    """[batch, prompt + longest] prompt then generated ids, padded after a row's last token."""
    longest = max(trace.num_tokens for trace in traces)
    new = torch.full((len(traces), longest), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
    for row, trace in enumerate(traces):
        new[row, : trace.num_tokens] = torch.tensor(trace.token_ids, dtype=input_ids.dtype)
    return torch.cat([input_ids, new], dim=1)


def v_reason(
    controller: str | Mapping[str, Any] | None = "value_cache",
    *,
    step_size: int | None = None,
    lr: float | None = None,
    objective: str | Mapping[str, Any] = "switching",
    schedule: str | Mapping[str, Any] = "fixed",
    pruner: str | Mapping[str, Any] | None = None,
    positions: str = "video",
    optimizer: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
    seed: int = 0,
) -> VReasonGenerate:
    """V-Reason for ``model.generate(..., custom_generate=v_reason(...))``.

    Each component is a registry name or dotted path, or a block as in YAML (``{"name": "l2_norm",
    "keep_ratio": 0.5}``); they are checked and built by ``vreason.config.build_method``, exactly as
    the ``method`` block of a config.

    Args:
        controller: ``value_cache`` (paper, Eq. 1) | ``key_cache`` | ``hidden_state``; ``None`` decodes
            with no controller (the baseline, through the same loop).
        step_size: k in the paper (default 4): optimise at tokens k, 2k, 3k, ...; sets
            ``schedule.step_size``.
        lr: AdamW's learning rate (default 3e-4, Appendix B); sets ``optimizer.lr``.
        objective: ``switching`` (paper, Eqs. 2-4) | ``min_entropy`` | ``max_entropy`` | ``thresholded``.
        schedule: ``fixed`` (with ``step_size``, ``ema_beta``, ``start``, ...).
        pruner: ``l2_norm`` for Lite (keep ratio 0.5 by default); ``None`` for Full.
        positions: what ΔV covers: ``video`` (paper) | ``image`` | ``prompt`` (text-only LMs).
        optimizer: ``{"lr", "betas", "eps", "weight_decay", "grad_clip"}``.
        tokenizer: only for ``stop_strings=`` given to ``generate``.
        seed: seeds the per-sample sampling generators.

    Raises:
        ValueError: an unknown name or parameter, a value out of range, or a shortcut given twice.
    """
    block: dict[str, Any] = {
        "controller": _block(controller),
        "objective": _block(objective),
        "schedule": _block(schedule),
        "pruner": _block(pruner),
        "positions": positions,
        "optimizer": dict(optimizer or {}),
    }
    for name, value in (("step_size", step_size), ("lr", lr)):
        if value is None:
            continue
        key, param = SHORTCUTS[name]
        if param in block[key]:
            raise ValueError(f"v_reason: {name} given twice (as {name}= and in {key}=)")
        block[key][param] = value
    try:
        method = build_method(block)
    except (KeyError, TypeError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ValueError(f"v_reason: {message}") from err
    return VReasonGenerate(method, tokenizer=tokenizer, seed=seed)


def _block(component: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if component is None:
        return None
    return {"name": component} if isinstance(component, str) else dict(component)


METHOD_ARGUMENTS = (
    "controller",
    "step_size",
    "lr",
    "objective",
    "schedule",
    "pruner",
    "positions",
    "optimizer",
    "seed",
)


def generate(model: PreTrainedModel, *args: Any, **kwargs: Any) -> Tensor | VReasonGenerateOutput:
    """The Hub entry point (``custom_generate/generate.py``): ``model.generate(..., custom_generate=
    "<you>/v-reason", trust_remote_code=True, controller=..., step_size=..., ...)``.

    transformers calls it with every argument of ``generate`` (``model`` instead of ``self``); the
    method arguments of ``v_reason`` and ``tokenizer`` are taken out, the rest goes to ``generate``
    with ``custom_generate=v_reason(...)``.
    """
    method_args = {name: kwargs.pop(name) for name in METHOD_ARGUMENTS if name in kwargs}
    decoding = v_reason(**method_args, tokenizer=kwargs.pop("tokenizer", None))
    return GenerationMixin.generate(model, *args, custom_generate=decoding, **kwargs)
