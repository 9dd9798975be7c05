"""Lightning wiring: records -> batches (DataModule), batches -> predictions (predict_step), and a
writer callback that appends each finished sample to a JSONL shard as soon as its batch ends.

Lightning owns the loop around us (devices, DDP ranks, distributed samplers without repeats, the
progress bar); the engine owns decoding. ``Trainer(inference_mode=False)`` is required: V-Reason
takes gradient steps inside predict.

One record never stops a run. A record that cannot be loaded, whose prompt does not fit the model's
context, or whose decoding raises becomes its own failed prediction with the reason; a record with no
tokens at the method's positions (a text record under ``positions: video``) is decoded without the
controller and its prediction says so in ``warnings``. The rest of its batch is answered: a batch that
raises is decoded again sample by sample (a batch gives each sample what it gets alone).
"""

from __future__ import annotations

import logging
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
from vreason.data.video import VideoConfig
from vreason.data.video_reader import LoadedVideo
from vreason.engine import Decoder, SampleTrace
from vreason.families import Family, family_for_processor, family_named, family_of
from vreason.positions import POSITIONS
from vreason.predictions import PredictionStore

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Records whose inputs were built, their processor tensors, and records that failed to load.

    ``messages`` and ``videos`` (one entry per ready record) let the module rebuild the inputs of part of
    the batch; ``warnings`` are per sample id (e.g. frames a file lists but cannot decode).
    """

    records: list[Record]
    inputs: dict[str, torch.Tensor] | None
    failures: list[tuple[Record, str]] = field(default_factory=list)
    messages: list[list[dict]] = field(default_factory=list)
    videos: list[list[LoadedVideo]] = field(default_factory=list)
    warnings: dict[str, list[str]] = field(default_factory=dict)


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class RecordCollator:
    """Turns records into one left-padded processor batch; a record that fails is set aside with its reason.

    Videos are read record by record (so one bad file fails only its own sample) in DataLoader workers,
    so video decoding overlaps decoding on the accelerator. A video path is joined to ``root`` and used
    as it resolves: records may point outside ``root`` (``../``, absolute paths), as a benchmark file
    is trusted like the config that names it.

    How videos are read and the batch is built is the model's family's (``Family.video_options``,
    ``load_videos``, ``video_tokens``, ``collate``): build with ``RecordCollator.for_model``. Given only
    ``multimodal``, the family is the one that ships ``processor``'s class (text-only: the text family).
    """

    def __init__(
        self,
        processor: Any,
        video: VideoConfig,
        root: Path,
        multimodal: bool | None = None,
        family: Family | None = None,
    ) -> None:
        if family is None:
            family = family_for_processor(processor) if multimodal else family_named("text")
        self.processor, self.video, self.root, self.family = processor, video, root, family
        self.multimodal = family.multimodal

    @classmethod
    def for_model(
        cls, model: torch.nn.Module, processor: Any, video: VideoConfig, root: Path
    ) -> RecordCollator:
        """The collator of ``model``'s family (the family object travels to DataLoader workers, the model not)."""
        return cls(processor, video, root, family=family_of(model))

    def messages(self, record: Record) -> list[dict]:
        if record.data_type == "video":
            if not self.multimodal:
                raise ValueError("a video record needs a multimodal model (model.kind is text-only)")
            path = (self.root / record.path).resolve()
            return build_messages(record, str(path), self.family.video_options(self.video))
        return build_text_messages(build_prompt(record))

    def load(self, record: Record) -> tuple[list[dict], list[LoadedVideo]]:
        messages = self.messages(record)
        videos = self.family.load_videos(messages) if self.multimodal else []
        for video in videos:
            tokens = self.family.video_tokens(self.processor, video)
            budget = self.video.max_video_tokens
            if budget is not None and tokens > budget:
                raise ValueError(
                    f"video needs {tokens} tokens even at the smallest frame size, over "
                    f"video.max_video_tokens={budget}"
                )
        return messages, videos

    def collate(self, messages: list[list[dict]], videos: list[list[LoadedVideo]]) -> dict[str, torch.Tensor]:
        """Processor inputs for already-loaded samples, left-padded (the family's ``collate``)."""
        return dict(self.family.collate(self.processor, messages, videos))

    def __call__(self, records: list[Record]) -> Batch:
        failures = [(r, r.error) for r in records if r.error]
        ready, messages, videos = [], [], []
        for record in (r for r in records if not r.error):
            try:
                record_messages, record_videos = self.load(record)
            except (OSError, ValueError, RuntimeError) as err:
                failures.append((record, _reason(err)))
                continue
            ready.append(record)
            messages.append(record_messages)
            videos.append(record_videos)
        try:
            inputs = self.collate(messages, videos) if ready else None
        except Exception:  # the processor refused one of them: find which, alone
            keep = []
            for i, record in enumerate(ready):
                try:
                    self.collate([messages[i]], [videos[i]])
                    keep.append(i)
                except Exception as err:  # recorded as that sample's failure
                    failures.append((record, f"the processor refused it: {_reason(err)}"))
            ready, messages, videos = ([x[i] for i in keep] for x in (ready, messages, videos))
            inputs = self.collate(messages, videos) if ready else None
        warnings = {
            r.sample_id: [w for v in vs for w in v.warnings] for r, vs in zip(ready, videos, strict=True)
        }
        return Batch(ready, inputs, failures, messages, videos, {k: v for k, v in warnings.items() if v})


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
    record: Record,
    trace: SampleTrace | None,
    text: str = "",
    error: str | None = None,
    warnings: list[str] | None = None,
) -> dict:
    """One JSONL line: the answer, its score against the solution, and the per-token trace."""
    failed = trace is None
    answer = extract_answer(text, record.benchmark) if not failed else ""
    solution = extract_answer(record.solution or "")
    value = 0.0 if failed else score(record.problem_type, text, record.solution, record.benchmark)
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
        "warnings": list(warnings or []),
    }
    return with_trace(prediction, trace)


TRACE_LISTS = ("entropy", "ema", "alpha", "optimized", "controller_norm", "faults", "token_ids")


def with_trace(prediction: dict, trace: SampleTrace | None) -> dict:
    """``prediction`` with ``trace``'s scalar summary at the top level and its per-token lists under
    ``"trace"`` (nothing added for a failed sample without a trace)."""
    if trace is not None:
        summary = trace.to_dict()
        prediction.update({k: v for k, v in summary.items() if k not in TRACE_LISTS})
        prediction["trace"] = {k: summary[k] for k in TRACE_LISTS}
    return prediction


def context_length(model: torch.nn.Module) -> int | None:
    """The model's context in tokens (``max_position_embeddings`` of its text config), if it says."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


class VReasonModule(L.LightningModule):
    """``predict_step`` hands a batch to the engine and returns one prediction per record.

    Args:
        decoder_factory: the run's decoder (built on first use, inside the predict loop). Records with no
            tokens at its method's positions use a plain decoder with the same sampling.
        collate: rebuilds processor inputs for part of a batch (``RecordCollator.collate``).
        max_prompt_tokens: prompts of at least this many tokens fail (the model's context).

    ``make_prediction(record, trace, text, error=, warnings=)`` turns one record's outcome into its
    prediction; a subclass whose records are scored elsewhere (lmms-eval's) replaces it.
    """

    make_prediction = staticmethod(make_prediction)

    def __init__(
        self,
        model: torch.nn.Module,
        decoder_factory: Callable[[], Decoder],
        tokenizer: Any,
        seed: int,
        collate: Callable[[list[list[dict]], list[list[LoadedVideo]]], dict[str, torch.Tensor]],
        max_prompt_tokens: int | None = None,
    ):
        super().__init__()
        if getattr(model, "hf_device_map", None):
            # accelerate spread the layers over devices (model.device_map): keep the model out of the
            # module's children, or Lightning's strategy would move all of it onto one device
            self._sharded = [model]
        else:
            self.model = model
        self.decoder_factory = decoder_factory
        self.tokenizer = tokenizer
        self.seed = seed
        self.collate = collate
        self.max_prompt_tokens = max_prompt_tokens
        self.stats = {"samples": 0, "tokens": 0, "seconds": 0.0, "score": 0.0}
        self._decoders: dict[bool, Decoder] = {}

    @property
    def lm(self) -> torch.nn.Module:
        """The model the engine decodes with."""
        return self._sharded[0] if hasattr(self, "_sharded") else self.model

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch  # the engine moves tensors itself

    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict]:
        predictions = [self.make_prediction(r, None, error=why) for r, why in batch.failures]
        if batch.inputs is not None:
            predictions += self.answer(batch)
        for p in predictions:
            self.stats["samples"] += 1
            self.stats["tokens"] += p.get("num_tokens", 0)
            self.stats["score"] += p["score"]
        return predictions

    def decoder(self, steered: bool = True) -> Decoder:
        if True not in self._decoders:
            self._decoders[True] = self.decoder_factory()
        if steered not in self._decoders:  # same sampling, no controller or pruner
            self._decoders[False] = Decoder(self.lm, None, self._decoders[True].sampling, self.tokenizer)
        return self._decoders[steered]

    def answer(self, batch: Batch) -> list[dict]:
        """One prediction per ready record of ``batch``, in order (see the module docstring)."""
        method = self.decoder().method
        lengths = batch.inputs["attention_mask"].sum(dim=1).tolist()
        steerable = [True] * len(batch.records)
        if method.controller is not None or method.pruner is not None:
            steerable = POSITIONS.get(method.positions)(self.lm, batch.inputs).any(dim=1).tolist()
        answered: dict[int, dict] = {}
        groups: dict[bool, list[int]] = {True: [], False: []}
        for row, record in enumerate(batch.records):
            if self.max_prompt_tokens is not None and lengths[row] >= self.max_prompt_tokens:
                answered[row] = self.make_prediction(
                    record,
                    None,
                    error=f"the prompt has {int(lengths[row])} tokens, at or over the model's context of "
                    f"{self.max_prompt_tokens} (max_position_embeddings)",
                )
            else:
                groups[bool(steerable[row])].append(row)
        for steered, rows in groups.items():
            if rows:
                answered.update(zip(rows, self._decode(batch, rows, steered), strict=True))
        return [answered[row] for row in range(len(batch.records))]

    def _decode(self, batch: Batch, rows: list[int], steered: bool) -> list[dict]:
        """Predictions for ``rows`` of the batch; a batch that raises is retried one sample at a time."""
        records = [batch.records[row] for row in rows]
        if len(rows) == len(batch.records):
            inputs = batch.inputs
        else:
            inputs = self.collate([batch.messages[row] for row in rows], [batch.videos[row] for row in rows])
        start = time.perf_counter()
        try:
            traces = self.decoder(steered).generate(
                inputs, keys=[r.sample_id for r in records], seed=self.seed
            )
        except Exception as err:  # one sample's fault must not cost the others theirs
            self.stats["seconds"] += time.perf_counter() - start
            if len(rows) > 1:
                log.warning(
                    "a batch of %d failed (%s); decoding its samples one by one", len(rows), _reason(err)
                )
                return [p for row in rows for p in self._decode(batch, [row], steered)]
            log.warning("%s: decoding failed", records[0].sample_id, exc_info=True)
            return [self.make_prediction(records[0], None, error=f"decoding failed: {_reason(err)}")]
        self.stats["seconds"] += time.perf_counter() - start
        predictions = []
        for record, trace in zip(records, traces, strict=True):
            warnings = list(batch.warnings.get(record.sample_id, []))
            if not steered:
                positions = self.decoder().method.positions
                warnings.append(
                    f"no {positions!r} tokens in the prompt (a {record.data_type} record): decoded without "
                    f"the controller"
                )
            text = self.tokenizer.decode(trace.token_ids, skip_special_tokens=True)
            predictions.append(self.make_prediction(record, trace, text, warnings=warnings))
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
