"""The lmms-eval model classes: lmms-eval's requests, decoded by vreason's engine with V-Reason.

``--model_args`` (comma-separated ``key=value``):

- ``pretrained``: a local checkpoint directory (its family is read from ``config.model_type``);
- ``config``: a vreason experiment YAML (e.g. a Table 1 row under ``experiments/paper/``), whose
  ``method``, ``video``, ``model`` (dtype, attention, ``device_map``), ``sampling`` (defaults for keys a task
  leaves unset), ``seed``, ``output_dir`` and ``tracking`` blocks apply; ``data`` and ``trainer`` do not
  (lmms-eval chooses the records and the devices). Without it: V-Reason with the paper's defaults;
- any config key, dotted, overrides it: ``method=baseline``, ``method.optimizer.lr=1e-4``,
  ``video.max_frames=32``, ``model.dtype=bfloat16``, ``tracking.enabled=false``;
- ``batch_size`` (also lmms-eval's ``--batch_size``) and ``device``.

Everything is checked before the model loads (a bad key stops the run with the key named).

Devices: one process, the model on ``device`` (default CUDA when there is one) or sharded by
``model.device_map``; under ``accelerate launch`` one copy per process on its own GPU, rank and world
size from accelerate as lmms-eval's models take them. lmms-eval shards the requests by rank and gathers
the answers; the traces are gathered to the main process, which alone writes to MLflow.

Request types: ``generate_until`` only. ``loglikelihood`` is refused: V-Reason steers the tokens a model
generates (its first step comes after ``step_size`` generated tokens), and scoring a given continuation
generates none, so it would be the plain model's likelihood under V-Reason's name.
``generate_until_multi_round`` is refused too (each round would need its own controller).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from vreason.config import build_method, load_config
from vreason.engine import Decoder, SampleTrace
from vreason.errors import ConfigError
from vreason.families import family_of
from vreason.lightning import RecordCollator, VReasonModule, context_length, with_trace
from vreason.lmms.requests import (
    LmmsSample,
    chat_messages,
    cut_at_stop,
    ignored_kwargs,
    sampling_for,
    simple_messages,
)
from vreason.lmms.tracking import InvocationRun
from vreason.models import build_model
from vreason.run import check_positions, sampling_config, token_text, video_config
from vreason.sampling import SamplingConfig

log = logging.getLogger(__name__)

# Without ``config``: V-Reason Full with every component at its paper default (see _vreason.yaml).
DEFAULT_METHOD = "method={name: vreason, controller: {name: value_cache}}"


def invocation_config(pretrained: str | None, config: str | None, overrides: dict[str, Any]) -> DictConfig:
    """The vreason config of this invocation: ``config`` (or the defaults with V-Reason on), then
    ``pretrained`` as ``model.path``, then the dotted overrides; validated (``ConfigError``)."""
    dotlist = [] if config is not None else [DEFAULT_METHOD]
    if pretrained is not None:
        dotlist += ["model.kind=pretrained", f"model.path={pretrained}"]
    dotlist += [f"{key}={'null' if value is None else value}" for key, value in overrides.items()]
    return load_config(config, dotlist)


def lmms_prediction(
    sample: LmmsSample,
    trace: SampleTrace | None,
    text: str = "",
    error: str | None = None,
    warnings: list[str] | None = None,
) -> dict:
    """One prediction line for an lmms-eval request: the answer lmms-eval scores (``text`` cut at the
    request's stop strings) and the trace. ``score`` is NaN: lmms-eval scores it (see ``tracking``)."""
    prediction = {
        "sample_id": sample.sample_id,
        "benchmark": sample.task,
        "problem_id": sample.doc_id,
        "problem_type": "lmms-eval",
        "output": text,
        "answer": cut_at_stop(text, sample.stop_strings) if trace is not None else "",
        "solution": "",
        "score": float("nan"),
        "failed": trace is None,
        "error": error,
        "warnings": list(warnings or []),
    }
    return with_trace(prediction, trace)


class LmmsModule(VReasonModule):
    """``VReasonModule`` (steering, failures isolated per sample) with lmms-eval's predictions."""

    make_prediction = staticmethod(lmms_prediction)


class SampleCollator(RecordCollator):
    """``RecordCollator`` for ``LmmsSample``s, whose messages are already built."""

    def messages(self, record: LmmsSample) -> list[dict]:
        return record.messages


class VReasonLmms(lmms):
    """What both request formats share: the config, model, devices, batching and MLflow run."""

    def __init__(
        self,
        pretrained: str | None = None,
        config: str | None = None,
        batch_size: int | str = 1,
        device: str | None = None,
        max_batch_size: int | None = None,  # lmms-eval passes it; batches here are batch_size
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.cfg = invocation_config(pretrained, config, overrides)
        try:
            self.batch_size_per_gpu = int(batch_size)
        except ValueError:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}") from None
        if self.batch_size_per_gpu < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        if self._world_size > 1:  # accelerate launch: this process's own device
            self._device = self.accelerator.device
        else:
            self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.method = build_method(self.cfg.method)
        self.sampling = sampling_config(self.cfg)
        self.video = video_config(self.cfg)
        self.run = InvocationRun(self.cfg, main_process=self._rank == 0)  # the store, before the model

        model, processor = build_model(**OmegaConf.to_container(self.cfg.model, resolve=True))
        if not getattr(model, "hf_device_map", None):
            model = model.to(self._device)
        check_positions(self.method, model)
        self._model = model.eval()
        self.processor = processor
        self._tokenizer = getattr(processor, "tokenizer", processor)
        self.family = family_of(model)
        self.video_options = self.family.video_options(self.video) if self.family.multimodal else {}
        self.collator = SampleCollator(processor, self.video, Path("."), family=self.family)
        self._by_sampling: dict[str, LmmsModule] = {}
        self._warned: set[str] = set()

    # --- what lmms-eval reads ---------------------------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def config(self) -> Any:
        return self._model.config

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # --- request types ----------------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "vreason does not score loglikelihood requests: V-Reason steers generated tokens, and scoring "
            "a given continuation generates none (it would be the plain model's likelihood). Use the "
            "task's generate_until variant, or lmms-eval's own model for this checkpoint."
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("vreason does not run multi-round tasks (generate_until_multi_round)")

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """One answer per request, in order; lmms-eval's padding requests (uneven rank shards) get ""."""
        results = [GenerationResult(text="") for _ in requests]
        predictions: list[dict] = []
        try:
            groups = self._groups(requests)
            bar = tqdm(
                total=sum(len(rows) for _, rows in groups.values()), disable=self.rank != 0, desc="V-Reason"
            )
            for sampling, rows in groups.values():
                module = self._module(sampling)
                for start in range(0, len(rows), self.batch_size):
                    chunk = rows[start : start + self.batch_size]
                    batch = self.collator([sample for _, sample in chunk])
                    answered = {p["sample_id"]: p for p in module.predict_step(batch, 0)}
                    for index, sample in chunk:
                        prediction = answered[sample.sample_id]
                        prediction["batch_size"] = len(chunk)
                        results[index] = GenerationResult(
                            text=prediction["answer"],
                            token_counts=TokenCounts(
                                input_tokens=prediction.get("prompt_tokens"),
                                output_tokens=prediction.get("num_tokens", 0),
                            ),
                        )
                        predictions.append(prediction)
                    bar.update(len(chunk))
            bar.close()
            self.run.record(self._gathered(predictions), token_text(self._tokenizer))
        except BaseException as err:
            self.run.fail(err)
            raise
        return results

    def clean(self) -> None:
        self._by_sampling.clear()
        super().clean()

    # --- internals --------------------------------------------------------------------------------------
    def request_messages(self, request: Instance, doc: dict, where: str) -> tuple[list[dict], dict]:
        """(chat messages, generation kwargs) of one request (the request format's subclass says how)."""
        raise NotImplementedError

    def _groups(
        self, requests: list[Instance]
    ) -> dict[str, tuple[SamplingConfig, list[tuple[int, LmmsSample]]]]:
        """The requests as samples, grouped by their sampling settings (a batch shares one decoder)."""
        groups: dict[str, tuple[SamplingConfig, list[tuple[int, LmmsSample]]]] = {}
        seen: Counter[str] = Counter()
        for index, request in enumerate(requests):
            if request.metadata.get("__padding_only__"):
                continue
            task, split, doc_id = request.task_name, request.args[-1], request.doc_id
            key = f"{task}/{doc_id}"
            sample_id = key if not seen[key] else f"{key}#{seen[key]}"  # repeats get their own generator
            seen[key] += 1
            where = f"task {task}, doc {doc_id}"
            messages, gen_kwargs = self.request_messages(request, self.task_dict[task][split][doc_id], where)
            sampling = sampling_for(self.sampling, gen_kwargs, task)
            self._warn_ignored(task, gen_kwargs)
            self.run.generation_kwargs.setdefault(task, dict(gen_kwargs))
            self.run.sampling.setdefault(task, asdict(sampling))
            sample = LmmsSample(sample_id, task, doc_id, messages, list(sampling.stop_strings))
            groups.setdefault(json.dumps(asdict(sampling), sort_keys=True), (sampling, []))[1].append(
                (index, sample)
            )
        return groups

    def _module(self, sampling: SamplingConfig) -> LmmsModule:
        key = json.dumps(asdict(sampling), sort_keys=True)
        if key not in self._by_sampling:
            model, method, tokenizer = self._model, self.method, self._tokenizer
            self._by_sampling[key] = LmmsModule(
                model,
                decoder_factory=lambda: Decoder(model, method, sampling, tokenizer),
                tokenizer=tokenizer,
                seed=self.cfg.seed,
                collate=self.collator.collate,
                max_prompt_tokens=context_length(model),
            )
        return self._by_sampling[key]

    def _gathered(self, predictions: list[dict]) -> list[dict]:
        """Every rank's predictions, on every rank (lmms-eval's requests were sharded by rank)."""
        if self._world_size == 1:
            return predictions
        from accelerate.utils import gather_object

        return gather_object(predictions)

    def _warn_ignored(self, task: str, gen_kwargs: dict) -> None:
        ignored = ignored_kwargs(gen_kwargs)
        if ignored and task not in self._warned:
            self._warned.add(task)
            log.warning("task %s: generation kwargs %s are not used by vreason", task, ", ".join(ignored))


class VReasonChat(VReasonLmms):
    """``--model vreason``: requests carry the task's chat messages (``doc_to_messages``)."""

    is_simple = False

    def request_messages(self, request: Instance, doc: dict, where: str) -> tuple[list[dict], dict]:
        _, doc_to_messages, gen_kwargs, *_ = request.args
        return chat_messages(doc_to_messages(doc), self.video_options, where), gen_kwargs


class VReasonSimple(VReasonLmms):
    """``--model vreason --force_simple``: requests carry the prompt text and the task's visuals."""

    is_simple = True

    def request_messages(self, request: Instance, doc: dict, where: str) -> tuple[list[dict], dict]:
        context, gen_kwargs, doc_to_visual, *_ = request.args
        return simple_messages(context, doc_to_visual(doc), self.video_options, where), gen_kwargs
