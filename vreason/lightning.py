"""Lightning wiring: records -> batches (DataModule), batches -> predictions (predict_step), and a
writer callback that appends each finished sample to a JSONL shard as soon as its batch ends.

Lightning owns the loop around us (devices, DDP ranks, distributed samplers without repeats, the
progress bar); the engine owns decoding. ``Trainer(inference_mode=False)`` is required: V-Reason
takes gradient steps inside predict.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from torch.utils.data import DataLoader

from vreason.data.prompts import build_messages, build_prompt, build_text_messages
from vreason.data.records import Record
from vreason.data.scoring import extract_answer, score
from vreason.data.video import (
    VideoConfig,
    collate_inputs,
    load_videos,
    prepare_text_inputs,
    video_element_options,
    video_tokens,
)
from vreason.data.video_reader import LoadedVideo
from vreason.engine import Decoder, SampleTrace
from vreason.predictions import PredictionStore


@dataclass
class Batch:
    """Records whose inputs were built, their processor tensors, and records that failed to load."""

    records: list[Record]
    inputs: dict[str, torch.Tensor] | None
    failures: list[tuple[Record, str]] = field(default_factory=list)


class RecordCollator:
    """Turns records into one left-padded processor batch; a record that fails is set aside with its reason.

    Videos are read record by record (so one bad file fails only its own sample) in DataLoader workers,
    so video decoding overlaps decoding on the accelerator.
    """

    def __init__(self, processor: Any, video: VideoConfig, root: Path, multimodal: bool) -> None:
        self.processor, self.video, self.root, self.multimodal = processor, video, root, multimodal

    def messages(self, record: Record) -> list[dict]:
        if record.data_type == "video":
            if not self.multimodal:
                raise ValueError("a video record needs a multimodal model (model.kind is text-only)")
            path = (self.root / record.path).resolve()
            return build_messages(record, str(path), video_element_options(self.video))
        return build_text_messages(build_prompt(record))

    def load(self, record: Record) -> tuple[list[dict], list[LoadedVideo]]:
        messages = self.messages(record)
        videos = load_videos(messages) if self.multimodal else []
        for video in videos:
            n_frames, _, height, width = video.frames.shape  # already sampled and resized
            tokens = video_tokens(n_frames, height, width)
            budget = self.video.max_video_tokens
            if budget is not None and tokens > budget:
                raise ValueError(
                    f"video needs {tokens} tokens even at the smallest frame size, over "
                    f"video.max_video_tokens={budget}"
                )
        return messages, videos

    def __call__(self, records: list[Record]) -> Batch:
        failures = [(r, r.error) for r in records if r.error]
        ready, messages, videos = [], [], []
        for record in (r for r in records if not r.error):
            try:
                record_messages, record_videos = self.load(record)
            except (OSError, ValueError, RuntimeError) as err:
                failures.append((record, f"{type(err).__name__}: {err}"))
                continue
            ready.append(record)
            messages.append(record_messages)
            videos.append(record_videos)
        if not ready:
            return Batch([], None, failures)
        if self.multimodal:
            inputs = collate_inputs(self.processor, messages, videos)
        else:
            inputs = prepare_text_inputs(self.processor, messages)
        return Batch(ready, dict(inputs), failures)


class RecordDataModule(L.LightningDataModule):
    """Serves the records that have no prediction yet (so a restarted run resumes)."""

    def __init__(
        self, records: list[Record], collator: RecordCollator, batch_size: int = 1, num_workers: int = 0
    ):
        super().__init__()
        self.records, self.collator = records, collator
        self.batch_size, self.num_workers = batch_size, num_workers

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.records,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collator,
        )


def make_prediction(
    record: Record, trace: SampleTrace | None, text: str = "", error: str | None = None
) -> dict:
    """One JSONL line: the answer, its score against the solution, and the per-token trace."""
    failed = trace is None
    answer = extract_answer(text) if not failed else ""
    solution = extract_answer(record.solution or "")
    value = 0.0 if failed else score(record.problem_type, text, record.solution)
    prediction = {
        "sample_id": record.sample_id,
        "benchmark": record.benchmark,
        "problem_id": record.problem_id,
        "problem_type": record.problem_type,
        "output": text,
        "answer": answer,
        "solution": solution,
        "score": value,
        "failed": failed,
        "error": error,
    }
    if trace is not None:
        summary = trace.to_dict()
        lists = ("entropy", "ema", "alpha", "optimized", "controller_norm", "faults", "token_ids")
        prediction.update({k: v for k, v in summary.items() if k not in lists})
        prediction["trace"] = {k: summary[k] for k in lists}
    return prediction


class VReasonModule(L.LightningModule):
    """``predict_step`` hands a batch to the engine and returns one prediction per record."""

    def __init__(
        self, model: torch.nn.Module, decoder_factory: Callable[[], Decoder], tokenizer: Any, seed: int
    ):
        super().__init__()
        self.model = model
        self.decoder_factory = decoder_factory
        self.tokenizer = tokenizer
        self.seed = seed
        self.stats = {"samples": 0, "tokens": 0, "seconds": 0.0, "score": 0.0}
        self._decoder: Decoder | None = None

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch  # the engine moves tensors itself

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict]:
        if self._decoder is None:
            self._decoder = self.decoder_factory()
        predictions = [make_prediction(r, None, error=why) for r, why in batch.failures]
        if batch.inputs is not None:
            start = time.perf_counter()
            traces = self._decoder.generate(
                batch.inputs, keys=[r.sample_id for r in batch.records], seed=self.seed
            )
            self.stats["seconds"] += time.perf_counter() - start
            for record, trace in zip(batch.records, traces, strict=True):
                text = self.tokenizer.decode(trace.token_ids, skip_special_tokens=True)
                predictions.append(make_prediction(record, trace, text))
        for p in predictions:
            self.stats["samples"] += 1
            self.stats["tokens"] += p.get("num_tokens", 0)
            self.stats["score"] += p["score"]
        return predictions


class PredictionWriter(BasePredictionWriter):
    """Appends every finished prediction to this rank's shard as soon as its batch ends."""

    def __init__(self, store: PredictionStore) -> None:
        super().__init__(write_interval="batch")
        self.store = store

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        self.store.append(prediction, rank=trainer.global_rank)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar with tokens/s and running accuracy."""

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        stats = pl_module.stats
        if stats["samples"] and self.predict_progress_bar is not None:
            self.predict_progress_bar.set_postfix(
                tok_s=f"{stats['tokens'] / max(stats['seconds'], 1e-9):.1f}",
                acc=f"{stats['score'] / stats['samples']:.3f}",
                refresh=False,
            )
