"""Per-call phases of one decode at a given video length: what each costs beside the model's forwards.

Position ids (ours, the trained rule, against transformers' ``get_rope_index``), the prefill forward,
Lite's scoring and eviction over every layer, Eq. 1's reference norm and attach, Eq. 1 on the video
block (once per optimisation step), and one decode forward with and without a 2D attention mask
(alternating). Medians over repeats, one process, one intra-op thread.

    python -m bench.phases --config bench/configs/proxy.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
from transformers import DynamicCache

from bench.builders import build_model, make_inputs, settings
from bench.config import load_config
from bench.measure import machine_description
from vreason.controllers.value_cache import ValueCacheController
from vreason.engine import cache_argument
from vreason.families import prefill_position_ids
from vreason.positions import select_positions
from vreason.pruning import L2NormPruner


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def copied(cache: DynamicCache) -> DynamicCache:
    """A cache whose layers can be shortened or appended to without touching ``cache``'s."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    return out


def measure(model, inputs, repeats: int) -> dict[str, float]:
    rope = model.model.get_rope_index
    result = {
        "position_ids_ours_ms": median_ms(lambda: prefill_position_ids(model, inputs), repeats),
        "position_ids_transformers_ms": median_ms(
            lambda: rope(
                inputs["input_ids"],
                inputs["mm_token_type_ids"],
                video_grid_thw=inputs["video_grid_thw"],
                second_per_grid_ts=inputs["second_per_grid_ts"],
                attention_mask=inputs["attention_mask"],
            ),
            repeats,
        ),
    }
    cache, positions_ids = DynamicCache(config=model.config), prefill_position_ids(model, inputs)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(
            **inputs,
            position_ids=positions_ids,
            use_cache=True,
            logits_to_keep=1,
            **{cache_argument(model): cache},
        )
    result["prefill_forward_ms"] = (time.perf_counter() - start) * 1e3
    video = select_positions("video", model, inputs)
    prune = L2NormPruner(keep_ratio=0.5)
    result["lite_score_and_evict_ms"] = median_ms(
        lambda: prune.prune(copied(cache), video, inputs["attention_mask"]), max(3, repeats // 4)
    )
    controller = ValueCacheController()

    def measure_and_attach() -> None:
        controller.measure(model, cache, video)
        controller.attach(model, cache, video)
        controller.detach()

    result["eq1_measure_and_attach_ms"] = median_ms(measure_and_attach, repeats)
    controller.measure(model, cache, video)
    controller.attach(model, cache, video)
    prompt = cache.layers[-1].values[:, :, : video.shape[1]]
    result["eq1_steer_video_block_ms"] = median_ms(lambda: controller.steer(prompt), repeats)
    controller.detach()

    token = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=1)
    steps: dict[bool, list[float]] = {True: [], False: []}
    for r in range(repeats):
        for with_mask in (True, False) if r % 2 else (False, True):
            step_cache = copied(cache)
            start = time.perf_counter()
            with torch.no_grad():
                model(
                    input_ids=token,
                    attention_mask=mask if with_mask else None,
                    position_ids=positions_ids[..., -1:] + 1,
                    use_cache=True,
                    **{cache_argument(model): step_cache},
                )
            steps[with_mask].append(time.perf_counter() - start)
    result["decode_forward_with_mask_ms"] = statistics.median(steps[True]) * 1e3
    result["decode_forward_without_mask_ms"] = statistics.median(steps[False]) * 1e3
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.phases", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    torch.set_num_threads(cfg.threads or 1)
    model, tokenizer = build_model(cfg.model)
    for setting in settings(cfg):
        inputs = make_inputs(cfg, tokenizer, setting, 1)
        n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
        row = {
            "setting": setting.name,
            "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "video_tokens": n_video,
        }
        row |= measure(model, inputs, args.repeats)
        print(json.dumps(row))
    print(json.dumps({"machine": machine_description(cfg.model.device)}))


if __name__ == "__main__":
    main()
