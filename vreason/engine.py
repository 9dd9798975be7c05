"""The decode-and-optimise loop (paper Algorithm 1 and 2). Read this file first.

Prefill once; then for each token: the controller applies, one forward (with autograd on at
optimisation steps), sample from those logits, fold the entropy into the EMA, and at optimisation
steps backpropagate ``-alpha * H`` into the controller and take one AdamW step. The next forward
sees the updated controller. There is never an extra forward for the gradient: the controller only
changes the last layer's attention, so the ordinary decode forward already holds the whole graph
from the controller to the logits (all model weights are frozen, so autograd records nothing
upstream of it).

Logical positions are tracked explicitly (as transformers' ``generate`` does), so decoding stays
correct after Lite shortens the cache.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, StoppingCriteriaList, StopStringCriteria

from vreason.controllers.base import Controller
from vreason.objectives.base import Objective
from vreason.objectives.switching import SwitchingObjective
from vreason.positions import select_positions
from vreason.pruning import L2NormPruner
from vreason.sampling import SamplingConfig, next_tokens, sample_generators
from vreason.schedule import FixedStepSchedule


@dataclass
class OptimizerConfig:
    """AdamW on the controller (Appendix B: no weight decay, gradient norm clipped to 1.0 per sample)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0


@dataclass
class Method:
    """What to do while decoding. ``controller=None`` is plain decoding (entropy is still traced).

    A pruner without a controller is the paper's "pruning only" ablation (Table 8).
    """

    controller: Controller | None = None
    objective: Objective = field(default_factory=SwitchingObjective)
    schedule: FixedStepSchedule = field(default_factory=FixedStepSchedule)
    pruner: L2NormPruner | None = None
    positions: str = "video"
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class SampleTrace:
    """Everything one sample's decoding produced; one entry per generated token in the lists."""

    token_ids: list[int] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)  # raw H_t of the model's distribution, nats
    ema: list[float] = field(default_factory=list)
    alpha: list[int] = field(default_factory=list)
    optimized: list[bool] = field(default_factory=list)
    controller_norm: list[float] = field(default_factory=list)
    faults: list[dict] = field(default_factory=list)  # skipped optimisation steps (non-finite values)
    finish_reason: str = "length"
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # after Lite eviction
    prefill_seconds: float = 0.0
    seconds: float = 0.0
    peak_memory_mb: float = 0.0

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict:
        return {**asdict(self), "num_tokens": self.num_tokens}


def entropy_of(logits: Tensor) -> Tensor:
    """[batch] entropy in nats of softmax(logits) [batch, vocab], computed in float32."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def prefill_position_ids(model: PreTrainedModel, inputs: Mapping[str, Tensor]) -> Tensor:
    """Position ids of the prompt, as ``generate`` builds them.

    Text LMs: [batch, len], counting real tokens (left padding gets 0). Qwen2.5-VL: [4, batch, len],
    the text positions stacked on the 3D M-RoPE positions from the model's ``get_rope_index``.
    """
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(input_ids)
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    rope_index = getattr(getattr(model, "model", None), "get_rope_index", None)
    if rope_index is None:
        return text
    has_vision = inputs.get("video_grid_thw") is not None or inputs.get("image_grid_thw") is not None
    if has_vision and inputs.get("mm_token_type_ids") is not None:
        vision, _ = rope_index(
            input_ids,
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=mask,
        )
    else:
        vision = text[None].expand(3, -1, -1)
    return torch.cat([text[None], vision.to(text.device)], dim=0)


class Decoder:
    """Runs V-Reason (or plain decoding) on batches for one model.

    Args:
        model: a causal LM or Qwen2.5-VL; its weights are frozen here (``requires_grad_(False)``).
        method: controller, objective, schedule, pruner, positions and optimiser settings.
        sampling: decoding settings (transformers' warpers do the sampling).
        tokenizer: needed only for ``sampling.stop_strings``.
        eos_token_id: defaults to the model's generation config.
        pad_token_id: written after a sample has finished; defaults to the generation config.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        method: Method | None = None,
        sampling: SamplingConfig | None = None,
        tokenizer=None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        self.model = model.requires_grad_(False)
        self.method = method or Method()
        self.sampling = sampling or SamplingConfig()
        self.processor = self.sampling.logits_processor()
        gen = model.generation_config
        eos = eos_token_id if eos_token_id is not None else gen.eos_token_id
        self.eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)
        pad = pad_token_id if pad_token_id is not None else gen.pad_token_id
        self.pad_token_id = pad if pad is not None else int(self.eos[0]) if len(self.eos) else 0
        self.stop = StoppingCriteriaList()
        if self.sampling.stop_strings:
            if tokenizer is None:
                raise ValueError("sampling.stop_strings needs a tokenizer")
            self.stop.append(StopStringCriteria(tokenizer, self.sampling.stop_strings))

    @property
    def device(self) -> torch.device:
        return self.model.get_output_embeddings().weight.device

    def generate(
        self, inputs: Mapping[str, Tensor], keys: list[str] | None = None, seed: int = 0
    ) -> list[SampleTrace]:
        """Decode a left-padded batch. ``keys`` name the samples (they seed per-sample sampling)."""
        if self.method.controller is not None and torch.is_inference_mode_enabled():
            raise RuntimeError(
                "V-Reason takes gradient steps while decoding and cannot run under torch.inference_mode; "
                "build the Lightning Trainer with inference_mode=False"
            )
        inputs = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        batch = inputs["input_ids"].shape[0]
        keys = keys or [str(i) for i in range(batch)]
        method, schedule, controller = self.method, self.method.schedule, self.method.controller
        traces = [SampleTrace() for _ in range(batch)]
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()

        # Prefill (Algorithm 1 line 14): logits for token 1 and the full KV cache.
        cache = DynamicCache(config=self.model.config)
        position_ids = prefill_position_ids(self.model, inputs)
        with torch.no_grad():
            out = self.model(
                **inputs, position_ids=position_ids, past_key_values=cache, use_cache=True, logits_to_keep=1
            )
        logits = out.logits[:, -1]
        attention_mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        prefill_seconds = time.perf_counter() - start

        try:  # the controller is per batch: let it go whatever happens
            if controller is not None or method.pruner is not None:
                attention_mask = self._prepare_cache(inputs, cache, attention_mask)
            cached_prompt_tokens = attention_mask.sum(dim=1).tolist()
            optimizers = self._optimizers() if controller is not None else []

            state = schedule.initial_state(batch, self.device)
            generators = sample_generators(seed, keys, self.device)
            sequences = inputs["input_ids"]
            next_position = position_ids[..., -1:] + 1
            active = torch.ones(batch, dtype=torch.bool, device=self.device)
            norms = torch.zeros(batch)
            step, optimizing = 0, False
            self._snapshots = {}
            while True:
                finite = torch.isfinite(logits.detach()).all(dim=-1)
                faults = self._contain_non_finite(finite, active, optimizers)
                # Entropy with grad on optimisation steps; sampling from the detached logits (Algorithm 1).
                with torch.set_grad_enabled(optimizing):
                    entropy = torch.where(finite, entropy_of(logits.nan_to_num()), float("nan"))
                    peak = schedule.update(state, entropy, optimizing, valid=finite)
                    loss, alpha = method.objective(entropy, state.ema, peak)
                scores = self.processor(
                    sequences, logits.detach().float().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
                )
                token = next_tokens(scores, self.sampling, generators)
                token = torch.where(active, token, self.pad_token_id)
                if optimizing:
                    faults = {**self._optimize(loss, alpha, active & finite, optimizers), **faults}
                if controller is not None and (optimizing or faults):
                    norms = controller.norms().cpu()
                self._record(
                    traces, active, token, entropy, state.ema, alpha, optimizing, norms, faults, step
                )

                sequences = torch.cat([sequences, token[:, None]], dim=-1)
                finished = self._finished(sequences, token, traces, active, step)
                active = active & ~finished
                step += 1
                if not bool(active.any()) or step >= self.sampling.max_new_tokens:
                    break

                # Decode forward `step` (Algorithm 1 line 21): one forward per generated token.
                optimizing = controller is not None and schedule.is_optimization_step(step)
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=-1)
                with torch.set_grad_enabled(optimizing), self._applied():
                    out = self.model(
                        input_ids=token[:, None],
                        attention_mask=attention_mask,
                        position_ids=next_position,
                        past_key_values=cache,
                        use_cache=True,
                    )
                    logits = out.logits[
                        :, -1
                    ]  # sliced inside grad mode: a view made under no_grad is cut off
                next_position = next_position + 1

        finally:
            if controller is not None:
                controller.detach()
        self._finish(traces, inputs, cached_prompt_tokens, start, prefill_seconds)
        return traces

    def _prepare_cache(
        self, inputs: Mapping[str, Tensor], cache: DynamicCache, attention_mask: Tensor
    ) -> Tensor:
        """Select positions, measure Eq. 1's reference norm, evict (Lite), attach the controller."""
        method = self.method
        positions = select_positions(method.positions, self.model, inputs)
        if method.controller is not None:
            method.controller.measure(self.model, cache, positions)
        if method.pruner is not None:
            pruned = method.pruner.prune(cache, positions, attention_mask)
            if pruned is not None:
                positions, attention_mask = pruned
        if method.controller is not None:
            method.controller.attach(self.model, cache, positions)
        return attention_mask

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        cfg, controller = self.method.optimizer, self.method.controller
        return [
            torch.optim.AdamW(
                controller.sample_parameters(i),
                lr=cfg.lr,
                betas=cfg.betas,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
            )
            for i in range(len(controller.params))
        ]

    def _contain_non_finite(self, finite: Tensor, active: Tensor, optimizers: list) -> dict[int, str]:
        """Rows whose logits hold NaN/Inf: record the fault and put the controller back to its value
        before its last step (the last value known to give finite logits). Generation continues; the
        EMA skips that token and no step is taken on it."""
        faults: dict[int, str] = {}
        if bool(finite.all()):
            return faults
        for row in (active & ~finite).nonzero().flatten().tolist():
            faults[row] = "non-finite logits"
            self._restore(row, optimizers)
        return faults

    def _restore(self, row: int, optimizers: list) -> None:
        if row not in self._snapshots:
            return
        with torch.no_grad():
            for param, saved in zip(
                self.method.controller.sample_parameters(row), self._snapshots[row], strict=True
            ):
                param.copy_(saved)
        optimizers[row].state.clear()  # its moments led here; start them afresh

    def _optimize(self, loss: Tensor, alpha: Tensor, active: Tensor, optimizers: list) -> dict[int, str]:
        """One AdamW step per sample that is active and has alpha != 0; per-sample gradient clipping.

        A sample whose loss or gradient is not finite skips the step (its controller keeps its last
        finite value); a step that makes the controller non-finite is undone. Faults are returned for
        the trace.
        """
        take = active & (alpha != 0)
        faults: dict[int, str] = {}
        if not bool(take.any()):
            return faults
        finite_loss = torch.isfinite(loss.detach())
        for row in (take & ~finite_loss).nonzero().flatten().tolist():
            faults[row] = "non-finite entropy"
        take = take & finite_loss
        with torch.enable_grad():
            (loss * take).where(take, 0.0).sum().backward()
        clip = self.method.optimizer.grad_clip
        for row in take.nonzero().flatten().tolist():
            params = self.method.controller.sample_parameters(row)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else float("inf"))
            if not torch.isfinite(grad_norm):
                faults[row] = "non-finite gradient"
                continue
            self._snapshots[row] = [p.detach().clone() for p in params]
            optimizers[row].step()
            if not all(bool(torch.isfinite(p).all()) for p in params):
                faults[row] = "non-finite controller"
                self._restore(row, optimizers)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        return faults

    def _applied(self):
        controller = self.method.controller
        return controller.applied() if controller is not None else nullcontext()

    def _finished(self, sequences: Tensor, token: Tensor, traces: list, active: Tensor, step: int) -> Tensor:
        is_eos = torch.isin(token, self.eos.to(token.device))
        by_string = self.stop(sequences, None) if len(self.stop) else torch.zeros_like(is_eos)
        for row in (active & (is_eos | by_string)).nonzero().flatten().tolist():
            traces[row].finish_reason = "eos" if bool(is_eos[row]) else "stop_string"
        return is_eos | by_string

    @staticmethod
    def _record(traces, active, token, entropy, ema, alpha, optimizing, norms, faults, step) -> None:
        token, entropy, ema, alpha = (t.detach().cpu() for t in (token, entropy, ema, alpha))
        for row in active.nonzero().flatten().tolist():
            trace = traces[row]
            trace.token_ids.append(int(token[row]))
            trace.entropy.append(float(entropy[row]))
            trace.ema.append(float(ema[row]))
            trace.alpha.append(int(alpha[row]))
            trace.optimized.append(optimizing and row not in faults and int(alpha[row]) != 0)
            trace.controller_norm.append(float(norms[row]))
            if row in faults:
                trace.faults.append({"token": step + 1, "reason": faults[row]})

    def _finish(self, traces, inputs, cached_prompt_tokens, start, prefill_seconds) -> None:
        seconds = time.perf_counter() - start
        if self.device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS
        prompt_mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        for row, trace in enumerate(traces):
            trace.prompt_tokens = int(prompt_mask[row].sum())
            trace.cached_prompt_tokens = int(cached_prompt_tokens[row])
            trace.prefill_seconds = prefill_seconds
            trace.seconds = seconds
            trace.peak_memory_mb = peak_mb
