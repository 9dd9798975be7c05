"""Where a variant's decode time goes: torch.profiler over the decode phase, split into the model's
forwards, the optimisation step (with the ops inside it), the controller (Eq. 1) and the loop's rest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bench.config import BenchConfig
from bench.measure import run_variant
from bench.variants import parse_variant


def _labelled_classes():
    """A Decoder and a ValueCacheController whose parts show up as named ranges in torch.profiler."""
    from torch.autograd.profiler import record_function

    from vreason.controllers.value_cache import ValueCacheController
    from vreason.engine import Decoder

    class LabelledDecoder(Decoder):
        def _optimize(self, *args):
            with record_function("loop.optimize (backward + clip + AdamW)"):
                return super()._optimize(*args)

    class LabelledValueCache(ValueCacheController):
        def _transform(self, keys, values):
            with record_function("controller.steer (Eq. 1, inside the forward)"):
                return super()._transform(keys, values)

    return LabelledDecoder, LabelledValueCache


@contextmanager
def _labelled_forwards(model: torch.nn.Module):
    """Name every model forward ``model.forward`` (``[autograd]`` on optimisation steps) in the profile."""
    from torch.autograd.profiler import record_function

    ranges: list = []

    def pre(module, args):
        label = "model.forward[autograd]" if torch.is_grad_enabled() else "model.forward"
        ranges.append(record_function(label))
        ranges[-1].__enter__()

    def post(module, args, output):
        ranges.pop().__exit__(None, None, None)

    handles = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profile_decode(model, cfg: BenchConfig, inputs: Mapping[str, Tensor], out_dir: Path) -> dict[str, Any]:
    """torch.profiler over the decode phase (prefill excluded) of each of ``cfg.profile_variants``."""
    from torch.profiler import ProfilerActivity, profile

    decoder_class, controller_class = _labelled_classes()
    activities = [ProfilerActivity.CPU]
    if model.get_output_embeddings().weight.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    report: dict[str, Any] = {}
    for name in cfg.profile_variants:
        variant = parse_variant(name, cfg.lite_keep_ratio)
        prof = profile(activities=activities, record_shapes=True)
        with _labelled_forwards(model):
            run = run_variant(
                model,
                variant,
                inputs,
                cfg.profile_tokens,
                cfg.positions,
                on_decode_start=prof.start,
                decoder_class=None if variant.uses_generate else decoder_class,
                controller_class=controller_class,
            )
        prof.stop()
        averages = prof.key_averages()
        decode_us = run.decode_s * 1e6
        parts = {
            e.key: e.cpu_time_total
            for e in averages
            if e.key.startswith(("loop.", "controller.", "model.forward"))
        }
        top_level = sum(v for k, v in parts.items() if not k.startswith("controller."))
        parts["loop, rest (entropy, EMA, objective, sampling, host read, trace, cats)"] = max(
            0.0, decode_us - top_level
        )
        ops = sorted(
            (e for e in averages if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total
        )
        (out_dir / f"profile_{cfg.name}_{name}.txt").write_text(
            averages.table(sort_by="self_cpu_time_total", row_limit=40)
        )
        steps = cfg.profile_tokens - 1
        inside_optimize = _self_times_under(prof.events(), "loop.optimize")
        n_opt = max(1, run.optimisation_steps)
        report[name] = {
            "decode_ms_per_token": run.per_token_s * 1e3,
            "optimisation_steps": run.optimisation_steps,
            "optimize_ms_per_step": {
                k: v / 1e3 / n_opt for k, v in inside_optimize.most_common(8) if run.optimisation_steps
            },
            "parts_ms_per_token": {
                k: v / 1e3 / steps for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
            },
            "parts_share": {k: v / decode_us for k, v in parts.items()},
            "top_aten_self_ms_per_token": {e.key: e.self_cpu_time_total / 1e3 / steps for e in ops[:12]},
        }
    return report


def _self_times_under(events, label: str) -> Counter:
    """Self CPU time (us) of everything nested in the ranges whose name starts with ``label``, by op
    (matrix products keyed with their shapes, so the LM head's is told apart)."""
    totals: Counter = Counter()

    def walk(event) -> None:
        for child in event.cpu_children:
            shapes = f" {child.input_shapes}" if child.name in ("aten::mm", "aten::addmm") else ""
            totals[child.name + shapes] += child.self_cpu_time_total
            walk(child)

    for event in events:
        if event.name.startswith(label):
            totals["python between ops (" + label + ")"] += event.self_cpu_time_total
            walk(event)
    return totals
