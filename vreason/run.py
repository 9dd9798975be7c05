"""The experiment recipe, top to bottom: config -> records -> method -> model -> Lightning predict ->
predictions -> MLflow. Everything that can be wrong in the config or the data paths fails before the
model loads. A run whose output directory already holds predictions resumes: finished samples are
skipped and the same MLflow run is continued.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from vreason.config import ConfigError, build_method
from vreason.data.arithmetic import arithmetic_problems
from vreason.data.benchmarks import resolve_benchmark_file
from vreason.data.records import Record, load_records
from vreason.data.synthetic import write_synthetic_benchmark
from vreason.data.video import VideoConfig
from vreason.engine import Decoder
from vreason.lightning import PredictionWriter, ProgressBar, RecordCollator, RecordDataModule, VReasonModule
from vreason.models import build_model, is_multimodal
from vreason.predictions import PredictionStore
from vreason.sampling import SamplingConfig
from vreason.tracking import Tracker, flatten, log_results, summary_metrics

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


def run_experiment(cfg: DictConfig) -> dict[str, float] | None:
    """Run one experiment; returns the summary metrics on rank 0 (None on other ranks)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    output_dir = Path(cfg.output_dir)
    store = PredictionStore(output_dir)
    records = load_experiment_records(cfg)
    done = store.done_ids()
    todo = [r for r in records if r.sample_id not in done]
    method = build_method(cfg.method)
    sampling = sampling_config(cfg)
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    model, processor = build_model(**OmegaConf.to_container(cfg.model, resolve=True))
    tokenizer = getattr(processor, "tokenizer", processor)
    collator = RecordCollator(processor, video_config(cfg), Path(cfg.data.root), is_multimodal(model))
    module = VReasonModule(
        model,
        decoder_factory=lambda: Decoder(model, method, sampling, tokenizer),
        tokenizer=tokenizer,
        seed=cfg.seed,
    )
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        precision=cfg.trainer.precision,
        inference_mode=False,  # V-Reason takes gradient steps inside predict
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[PredictionWriter(store), ProgressBar()],
    )
    tracker = None
    if cfg.tracking.enabled and trainer.is_global_zero:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, output_dir)
        tracker.start(cfg.tracking.run_name or cfg.name, dict(cfg.tracking.tags))
        tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))

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
    metrics = log_results(tracker, predictions, merged, run_name=cfg.tracking.run_name or cfg.name)
    tracker.finish()
    return metrics
