"""The decode-and-optimise loop (paper Algorithm 1 and 2). Read this file first.

Prefill once; then for each token: the controller applies, one forward (with autograd on at
optimisation steps), sample from those logits, fold the entropy into the EMA, and at optimisation
steps backpropagate ``-alpha * H`` into the controller and take one AdamW step. The next forward
sees the updated controller. There is never an extra forward for the gradient: the controller only
changes the last layer's attention, so the ordinary decode forward already holds the whole graph
from the controller to the logits (all model weights are frozen, so autograd records nothing
upstream of it).

Positions are the model's trained rule, computed by ``vreason.families`` (for Qwen2.5-VL, not
transformers' ``get_rope_index``, which starts the text after a video too early), and tracked
explicitly while decoding, so they stay correct after Lite shortens the cache.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import Tensor
from transformers import DynamicCache, PreTrainedModel, StoppingCriteriaList, StopStringCriteria

from vreason.controllers.base import Controller
from vreason.families import prefill_position_ids
from vreason.memory import peak_memory_bytes, reset_peak_memory, synchronize
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
    seconds: float = 0.0  # the whole batch's call, prefill included
    peak_memory_mb: float = 0.0  # over the call: CUDA memory allocated, or (CPU) the process's peak RSS
    kv_cache_mb: float = 0.0  # the whole batch's KV cache at the end of the call (after Lite eviction)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict:
        return {**asdict(self), "num_tokens": self.num_tokens}

    def append(self, step: StepOnHost, row: int, optimized: bool, controller_norm: float) -> None:
        """Record sample ``row``'s generated token of ``step``."""
        self.token_ids.append(step.token[row])
        self.entropy.append(step.entropy[row])
        self.ema.append(step.ema[row])
        self.alpha.append(step.alpha[row])
        self.optimized.append(optimized)
        self.controller_norm.append(controller_norm)


def cache_argument(model: PreTrainedModel) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.24 on, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_bytes(cache: DynamicCache) -> int:
    """Bytes held by the keys and values of every layer of ``cache`` that keeps them (a hybrid model's
    linear-attention layers hold a fixed-size recurrent state instead, not counted here)."""
    return sum(
        t.nbytes
        for layer in cache.layers
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
        if isinstance(t, Tensor)
    )


def entropy_of(logits: Tensor) -> Tensor:
    """[batch] entropy in nats of softmax(logits) [batch, vocab], computed in float32."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


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
        self._cache_argument = cache_argument(model)
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
        traces = [SampleTrace() for _ in range(batch)]
        reset_peak_memory(self.device)
        start = time.perf_counter()

        # Prefill (Algorithm 1 line 14): logits for token 1 and the full KV cache.
        cache = DynamicCache(config=self.model.config)
        position_ids = prefill_position_ids(self.model, inputs)
        with torch.no_grad():
            out = self.model(
                **inputs,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_argument: cache},
            )
        attention_mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
        synchronize(self.device)
        prompt_tokens = attention_mask.sum(dim=1).tolist()  # before Lite evicts anything
        prefill_seconds = time.perf_counter() - start

        controller = self.method.controller
        try:  # the controller is per batch: let it go whatever happens
            if controller is not None or self.method.pruner is not None:
                attention_mask = self._prepare_cache(inputs, cache, attention_mask)
            cached_prompt_tokens = attention_mask.sum(dim=1).tolist()
            self._decode(
                inputs["input_ids"],
                out.logits[:, -1],
                cache,
                attention_mask,
                position_ids,
                traces,
                keys,
                seed,
            )
        finally:
            if controller is not None:
                controller.detach()
        synchronize(self.device)
        seconds = time.perf_counter() - start
        peak_mb, kv_mb = peak_memory_bytes(self.device) / 2**20, cache_bytes(cache) / 2**20
        for trace, prompt, cached in zip(traces, prompt_tokens, cached_prompt_tokens, strict=True):
            trace.prompt_tokens, trace.cached_prompt_tokens = int(prompt), int(cached)
            trace.prefill_seconds, trace.seconds, trace.peak_memory_mb = prefill_seconds, seconds, peak_mb
            trace.kv_cache_mb = kv_mb
        return traces

    def _decode(
        self,
        sequences: Tensor,
        logits: Tensor,
        cache: DynamicCache,
        attention_mask: Tensor,
        position_ids: Tensor,
        traces: list[SampleTrace],
        keys: list[str],
        seed: int,
    ) -> None:
        """Algorithm 1's loop, from the prefill's logits to the last token; fills ``traces``.

        Whatever the batch size, the host reads the device once per token (one copy of everything the
        trace and the stopping rule need) and twice more per optimisation step (gradient norms, then
        controller norms): per-sample controllers never serialise the batch.
        """
        method, schedule, controller = self.method, self.method.schedule, self.method.controller
        batch = len(traces)
        optimizer = self._optimizer() if controller is not None else None
        state = schedule.initial_state(batch, self.device)
        generators = sample_generators(seed, keys, self.device)
        eos = self.eos.to(self.device)
        next_position = position_ids[..., -1:] + 1
        active = [True] * batch  # host copy: it decides the loop, the trace and who steps
        active_on_device = torch.ones(batch, dtype=torch.bool, device=self.device)
        norms = [0.0] * batch
        self._snapshots = {}
        if bool(attention_mask.all()):  # no padding: decode without a mask, as generate does
            attention_mask = None
        step, optimizing = 0, False
        while True:
            finite = torch.isfinite(logits.detach()).all(dim=-1)
            # Entropy with grad on optimisation steps; sampling from the detached logits (Algorithm 1).
            with torch.set_grad_enabled(optimizing):
                entropy = torch.where(finite, entropy_of(logits.nan_to_num()), float("nan"))
                peak = schedule.update(state, entropy, optimizing, valid=finite)
                loss, alpha = method.objective(entropy, state.ema, peak)
            scores = self.processor(
                sequences, logits.detach().float().nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
            )
            token = next_tokens(scores, self.sampling, generators).where(active_on_device, self.pad_token_id)
            sequences = torch.cat([sequences, token[:, None]], dim=-1)
            stop = self.stop(sequences, None) if len(self.stop) else torch.zeros_like(finite)
            host = StepOnHost.read(
                token=token,
                entropy=entropy,
                ema=state.ema,
                alpha=alpha,
                finite=finite,
                loss_finite=torch.isfinite(loss.detach()),
                eos=torch.isin(token, eos),
                stop=stop,
            )

            # Rows with NaN/Inf logits: record the fault and put the controller back to its value before
            # its last step (the last known to give finite logits). The EMA skipped them; no step is taken.
            faults = {
                row: "non-finite logits" for row in range(batch) if active[row] and not host.finite[row]
            }
            for row in faults:
                self._restore(row, optimizer)
            stepped: set[int] = set()
            if optimizing:
                stepped, step_faults, norms = self._optimize(loss, host, active, optimizer)
                faults.update(step_faults)
            elif faults and controller is not None:
                norms = controller.norms().tolist()
            for row in range(batch):
                if active[row]:
                    traces[row].append(host, row, row in stepped, norms[row])
                    if row in faults:
                        traces[row].faults.append({"token": step + 1, "reason": faults[row]})
                    if host.eos[row] or host.stop[row]:
                        traces[row].finish_reason = "eos" if host.eos[row] else "stop_string"
                        active[row] = False
                        active_on_device[row] = False

            step += 1
            if not any(active) or step >= self.sampling.max_new_tokens:
                break
            # Decode forward `step` (Algorithm 1 line 21): one forward per generated token.
            optimizing = controller is not None and schedule.is_optimization_step(step)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=-1)
            with torch.set_grad_enabled(optimizing), self._applied():
                out = self.model(
                    input_ids=token[:, None],
                    attention_mask=attention_mask,
                    position_ids=next_position,
                    use_cache=True,
                    **{self._cache_argument: cache},
                )
                logits = out.logits[:, -1]  # sliced inside grad mode: a view made under no_grad is cut off
            next_position = next_position + 1

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

    def _optimizer(self) -> torch.optim.Optimizer:
        """One AdamW over every sample's tensors. torch keeps AdamW's state (moments, step count) per
        tensor and skips tensors without a gradient, so this is exactly one optimiser per sample, and
        on CUDA its ``foreach`` kernels update the whole batch at once."""
        cfg = self.method.optimizer
        return torch.optim.AdamW(
            self.method.controller.params,
            lr=cfg.lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )

    def _restore(self, row: int, optimizer: torch.optim.Optimizer) -> None:
        """Put sample ``row``'s controller back to its value before its last step; drop its moments."""
        if row not in self._snapshots:
            return  # never stepped: still at its initial value
        with torch.no_grad():
            for param, saved in zip(
                self.method.controller.sample_parameters(row), self._snapshots[row], strict=True
            ):
                param.copy_(saved)
                optimizer.state.pop(param, None)  # its moments led here; start them afresh

    def _optimize(
        self, loss: Tensor, host: StepOnHost, active: list[bool], optimizer: torch.optim.Optimizer
    ) -> tuple[set[int], dict[int, str], list[float]]:
        """One AdamW step for each sample that is active, has finite logits and alpha != 0, with
        per-sample gradient clipping. Returns the samples that stepped, faults and controller norms.

        A sample whose loss or gradient is not finite skips the step (its controller keeps its last
        finite value); a step that makes the controller non-finite is undone.
        """
        controller, clip = self.method.controller, self.method.optimizer.grad_clip
        faults: dict[int, str] = {}
        take = []
        for row, is_active in enumerate(active):
            if is_active and host.finite[row] and host.alpha[row] != 0:
                if host.loss_finite[row]:
                    take.append(row)
                else:
                    faults[row] = "non-finite entropy"
        if take:
            rows = torch.zeros(len(active), dtype=torch.bool)
            rows[take] = True
            with torch.enable_grad():
                loss.where(rows.to(loss.device), 0.0).sum().backward()
            grad_norms = {
                row: torch.nn.utils.get_total_norm([p.grad for p in controller.sample_parameters(row)])
                for row in take
            }
            finite = torch.isfinite(torch.stack(list(grad_norms.values()))).tolist()
            for (row, norm), ok in zip(grad_norms.items(), finite, strict=True):
                params = controller.sample_parameters(row)
                if not ok:
                    faults[row] = "non-finite gradient"
                    continue
                if clip is not None:
                    torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
                self._snapshots[row] = [p.detach().clone() for p in params]
            take = [row for row in take if row not in faults]
            for row in range(len(active)):
                if row not in take:  # torch's AdamW leaves tensors without a gradient alone
                    for param in controller.sample_parameters(row):
                        param.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        norms = controller.norms().tolist()
        broken = [row for row in take if not math.isfinite(norms[row])]
        for row in broken:
            faults[row] = "non-finite controller"
            self._restore(row, optimizer)
        if broken:
            norms = controller.norms().tolist()
        return set(take) - set(broken), faults, norms

    def _applied(self):
        controller = self.method.controller
        return controller.applied() if controller is not None else nullcontext()


@dataclass
class StepOnHost:
    """One decode step's per-sample values, copied from the device in a single transfer."""

    token: list[int]
    entropy: list[float]
    ema: list[float]
    alpha: list[int]
    finite: list[bool]  # logits free of NaN/Inf
    loss_finite: list[bool]
    eos: list[bool]
    stop: list[bool]  # a stop string completed

    @classmethod
    def read(cls, **values: Tensor) -> StepOnHost:
        """``values``: one [batch] tensor per field, by name. float64 keeps token ids (< 2**53) exact."""
        names = [f.name for f in fields(cls)]
        rows = torch.stack([values[name].detach().to(torch.float64) for name in names]).tolist()
        cast = {"list[int]": int, "list[float]": float, "list[bool]": bool}
        return cls(
            **{f.name: [cast[f.type](x) for x in row] for f, row in zip(fields(cls), rows, strict=True)}
        )
