"""The experiment recipe, top to bottom: config -> records -> method -> model -> Lightning predict ->
predictions -> MLflow. Everything that can be wrong in the config, the data paths, the output
directory (another run on it) or the tracking store fails before the model loads. A run whose output
directory already holds predictions resumes: finished samples are skipped and the same MLflow run is
continued. An exception once the MLflow run has started marks it FAILED (KILLED for Ctrl-C).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from vreason.config import ConfigError, build_method
from vreason.controllers.base import kv_layer_index
from vreason.data.arithmetic import SHORT_BENCHMARK, arithmetic_problems, short_arithmetic_problems
from vreason.data.benchmarks import resolve_benchmark_file
from vreason.data.records import Record, load_records
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.data.video import VideoConfig
from vreason.engine import Decoder, Method
from vreason.lightning import (
    PredictionWriter,
    ProgressBar,
    RecordCollator,
    RecordDataModule,
    VReasonModule,
    context_length,
)
from vreason.models import build_model
from vreason.positions import POSITIONS
from vreason.predictions import PredictionStore, exclusive_output_dir
from vreason.sampling import SamplingConfig
from vreason.tracking import Tracker, experiment_params, log_results, run_label, run_tags, summary_metrics

log = logging.getLogger(__name__)


def load_experiment_records(cfg: DictConfig) -> list[Record]:
    """The records of every benchmark in ``data.benchmarks`` (each truncated to ``data.limit``)."""
    root = Path(cfg.data.root)
    records: list[Record] = []
    for name in cfg.data.benchmarks:
        if name == "synthetic":
            if not (root / "synthetic.json").exists():
                write_synthetic_benchmark(root, n=cfg.data.synthetic_size, seed=cfg.seed)
            found = load_records(root / "synthetic.json", "synthetic")
        elif name == "arithmetic":
            found = arithmetic_problems(cfg.data.synthetic_size, seed=cfg.seed)
        elif name == SHORT_BENCHMARK:
            found = short_arithmetic_problems(cfg.data.synthetic_size, seed=cfg.seed)
        else:
            try:  # an unknown benchmark or an unreadable file fails here, before the model loads
                found = load_records(resolve_benchmark_file(root, name), name)
            except (KeyError, ValueError) as err:
                raise ConfigError(f"data.benchmarks: {err.args[0] if err.args else err}") from err
        records.extend(found[: cfg.data.limit] if cfg.data.limit else found)
    return records


def sampling_config(cfg: DictConfig) -> SamplingConfig:
    return SamplingConfig(**OmegaConf.to_container(cfg.sampling, resolve=True))


def video_config(cfg: DictConfig) -> VideoConfig:
    return VideoConfig(**OmegaConf.to_container(cfg.video, resolve=True))


def launched_rank_zero() -> bool:
    """Whether this process is the one a user started, not a DDP rank Lightning or torchrun launched
    (those inherit the output directory from it and must not take its lock)."""
    return all(
        os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    )


def check_positions(method: Method | None, model: torch.nn.Module) -> None:
    """A method whose positions the model has no token for (``video`` on a text-only LM), or whose
    cache controller names a layer without a KV cache (a hybrid model's linear layers), stops here."""
    if method is None or (method.controller is None and method.pruner is None):
        return
    probe = {"input_ids": torch.zeros(1, 1, dtype=torch.long), "attention_mask": torch.ones(1, 1)}
    try:
        POSITIONS.get(method.positions)(model, probe)
    except ValueError as err:
        raise ConfigError(f"method.{err}") from err
    layer = getattr(method.controller, "layer", None)
    if isinstance(layer, int) and hasattr(method.controller, "target"):  # value/key cache controllers
        try:
            kv_layer_index(model, layer)
        except ValueError as err:
            raise ConfigError(f"method.{err}") from err


def run_experiment(cfg: DictConfig) -> dict[str, float] | None:
    """Run one experiment; returns the summary metrics on rank 0 (None on other ranks)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.output_dir)
    lock = exclusive_output_dir(output_dir) if launched_rank_zero() else contextlib.nullcontext()
    with lock:
        return _run(cfg, output_dir)


def _run(cfg: DictConfig, output_dir: Path) -> dict[str, float] | None:
    store = PredictionStore(output_dir)
    records = load_experiment_records(cfg)
    done = store.done_ids()
    todo = [r for r in records if r.sample_id not in done]
    try:
        method = build_method(cfg.method)
    except (KeyError, TypeError, ValueError) as err:  # a custom component's constructor refused
        raise ConfigError(f"method: {err}") from err
    sampling = sampling_config(cfg)
    video = video_config(cfg)
    tracker = None
    if cfg.tracking.enabled and launched_rank_zero():  # opens (or creates) the store; checks a resume
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, output_dir, run_name=run_label(cfg))
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        inference_mode=False,  # V-Reason takes gradient steps inside predict
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[PredictionWriter(store), ProgressBar()],
    )
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    model, processor = build_model(**OmegaConf.to_container(cfg.model, resolve=True))
    check_positions(method, model)
    tokenizer = getattr(processor, "tokenizer", processor)
    collator = RecordCollator.for_model(model, processor, video, Path(cfg.data.root))
    module = VReasonModule(
        model,
        decoder_factory=lambda: Decoder(model, method, sampling, tokenizer),
        tokenizer=tokenizer,
        seed=cfg.seed,
        collate=collator.collate,
        max_prompt_tokens=context_length(model),
    )
    if tracker is not None:
        tracker.start(run_label(cfg), run_tags(cfg))
    try:
        metrics = _predict_and_record(
            cfg, trainer, module, collator, store, records, todo, tracker, tokenizer
        )
    except BaseException as err:
        if tracker is not None:
            _mark_ended(tracker, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    return metrics


def _predict_and_record(cfg, trainer, module, collator, store, records, todo, tracker, tokenizer):
    params = experiment_params(cfg)
    if tracker is not None:
        tracker.log_params(params)
    log.info("%d records, %d already done, %d to run", len(records), len(records) - len(todo), len(todo))
    if todo:
        datamodule = RecordDataModule(todo, collator, cfg.data.batch_size, cfg.data.num_workers)
        trainer.predict(module, datamodule=datamodule, return_predictions=False)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None

    merged = store.merge()
    wanted = {r.sample_id for r in records}
    predictions = [p for p in store.load() if p["sample_id"] in wanted]
    if tracker is None:
        return summary_metrics(predictions)
    metrics = log_results(
        tracker, predictions, merged, run_name=run_label(cfg), params=params, token_text=token_text(tokenizer)
    )
    tracker.finish()
    return metrics


def token_text(tokenizer) -> Callable[[int], str]:
    """One token id as the text it adds (for the trace table and the trace view)."""
    return lambda token_id: tokenizer.decode([token_id], skip_special_tokens=False)


def _mark_ended(tracker: Tracker, status: str) -> None:
    """Mark the run FAILED/KILLED; if even that fails, say so (the error that got here is re-raised)."""
    try:
        tracker.finish(status)
    except Exception as err:  # the store itself may be what broke
        log.error("could not mark MLflow run %s %s: %s", tracker.run_id, status, err)
