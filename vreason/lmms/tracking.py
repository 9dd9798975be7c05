"""The MLflow run of one lmms-eval invocation: every sample's trace, logged as ``vreason run`` logs its
own (``vreason.tracking.log_results``), so the two kinds of run line up in the UI and in
``vreason.analysis``.

One run per invocation, created when the first requests are answered (the task names are known by
then) in the config's ``tracking`` store and experiment, tagged ``tasks`` (and ``benchmarks``, the tag
our own runs carry) with the lmms-eval task names. Predictions are written to a folder of their own,
``<output_dir>/lmms-eval/<UTC time>-<pid>``, so an invocation never continues another's run. Only the
main process writes: the other ranks' predictions are gathered to it first.

Scores are lmms-eval's (its results and samples files under ``--output_path``): a prediction here has
``score`` NaN and ``problem_type`` ``lmms-eval``, so no accuracy is logged that lmms-eval did not compute.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from vreason.predictions import PredictionStore
from vreason.sampling import SamplingConfig
from vreason.tracking import (
    Tracker,
    experiment_params,
    log_results,
    method_label,
    run_description,
    run_tags,
    run_url,
    ui_command,
)

MAX_TASKS_IN_NAME = 3
SKIPPED_PARAMS = ("data.", "trainer.")  # lmms-eval chooses the records and the devices


def lmms_eval_version() -> str:
    from importlib.metadata import version

    return version("lmms_eval")


def invocation_name(cfg: DictConfig, tasks: list[str]) -> str:
    """``tracking.run_name``, else ``lmms-eval/<tasks>/<method label>``, e.g.
    ``lmms-eval/video_mmmu_perception/vreason-lite-k4-lr3e-4`` (three task names at most)."""
    if cfg.tracking.run_name:
        return str(cfg.tracking.run_name)
    shown = "+".join(tasks[:MAX_TASKS_IN_NAME]) + (
        f"+{len(tasks) - MAX_TASKS_IN_NAME}" if len(tasks) > 3 else ""
    )
    return f"lmms-eval/{shown}/{method_label(cfg.method)}"


def _with_tasks(cfg: DictConfig, tasks: list[str], sampling: dict[str, dict] | None = None) -> DictConfig:
    """``cfg`` with the task names as ``data.benchmarks`` and, when every task decoded with the same
    settings, those as ``sampling`` (what the run did, not the config's defaults)."""
    cfg = cfg.copy()
    cfg.data.benchmarks = list(tasks)
    settings = {json.dumps(s, sort_keys=True) for s in (sampling or {}).values()}
    if len(settings) == 1:
        cfg.sampling = SamplingConfig(**json.loads(settings.pop()))
    return cfg


def invocation_params(
    cfg: DictConfig, tasks: list[str], generation_kwargs: dict[str, dict], sampling: dict[str, dict]
) -> dict[str, str]:
    """The config's params as ``vreason run`` logs them, without the ``data.*`` and ``trainer.*`` blocks
    lmms-eval replaces, plus ``data.benchmarks`` (the task names), lmms-eval's version, and each task's
    generation kwargs and the sampling settings they gave (``sampling.*`` is those settings when every
    task shares them, else the config's defaults)."""
    params = {
        k: v
        for k, v in experiment_params(_with_tasks(cfg, tasks, sampling)).items()
        if not k.startswith(SKIPPED_PARAMS)
    }
    params["data.benchmarks"] = json.dumps(tasks)
    params["lmms_eval.version"] = lmms_eval_version()
    for task, kwargs in sorted(generation_kwargs.items()):
        params[f"lmms_eval.generation_kwargs.{task}"] = json.dumps(kwargs, sort_keys=True, default=str)
    for task, settings in sorted(sampling.items()):
        params[f"lmms_eval.sampling.{task}"] = json.dumps(settings, sort_keys=True)
    return params


def invocation_tags(cfg: DictConfig, tasks: list[str]) -> dict[str, str]:
    """``run_tags`` with the task names as ``tasks`` and ``benchmarks``, and lmms-eval as the source."""
    tags = run_tags(_with_tasks(cfg, tasks))
    tags.update(
        {
            "tasks": ",".join(tasks),
            "lmms_eval_version": lmms_eval_version(),
            "mlflow.source.name": "lmms-eval",
        }
    )
    return tags


class InvocationRun:
    """The predictions folder and MLflow run of one lmms-eval invocation (main process only).

    Opening the tracker checks the store before the model loads; the run itself starts at the first
    ``record``. Each ``record`` adds predictions, logs everything recorded so far and marks the run
    finished (a later request type resumes it).
    """

    def __init__(self, cfg: DictConfig, main_process: bool) -> None:
        self.cfg, self.main = cfg, main_process
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.output_dir = Path(cfg.output_dir) / "lmms-eval" / f"{stamp}-{os.getpid()}"
        self.tracker: Tracker | None = None
        self.store: PredictionStore | None = None
        self.generation_kwargs: dict[str, dict] = {}  # per task, as lmms-eval passed them
        self.sampling: dict[str, dict] = {}  # per task, the SamplingConfig they gave (as a dict)
        self.started = False
        if main_process:
            self.store = PredictionStore(self.output_dir)
            OmegaConf.save(cfg, self.output_dir / "config.yaml", resolve=True)
            if cfg.tracking.enabled:
                self.tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, self.output_dir)

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id if self.tracker is not None else None

    def record(self, predictions: list[dict], token_text: Callable[[int], str]) -> None:
        """Write ``predictions`` (every rank's, gathered) and log the run so far to MLflow."""
        if not self.main or not predictions:
            return
        self.store.append(predictions)
        merged = self.store.merge()
        everything = self.store.load()
        if self.tracker is None:
            return
        tasks = sorted({p["benchmark"] for p in everything})
        name = invocation_name(self.cfg, tasks)
        params = invocation_params(self.cfg, tasks, self.generation_kwargs, self.sampling)
        self.tracker.start(name, invocation_tags(self.cfg, tasks))  # the second time: resumes it
        self.tracker.log_params(params)
        self.started = True
        metrics = log_results(
            self.tracker, everything, merged, run_name=name, params=params, token_text=token_text
        )
        scored = {k: v for k, v in metrics.items() if math.isfinite(v)}  # no NaN accuracy in the table
        self.tracker.set_description(
            run_description(name, params, scored)
            + "\n\nScores are lmms-eval's: see its results and samples files (`--output_path`)."
        )
        self.tracker.finish()
        self._say_where(name)

    def fail(self, err: BaseException) -> None:
        """Mark a started run FAILED (KILLED for Ctrl-C); the exception is the caller's to re-raise."""
        if self.tracker is not None and self.started:
            self.tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")

    def _say_where(self, name: str) -> None:
        uri = self.tracker.uri
        print(
            f"V-Reason: MLflow run {name!r}, id {self.run_id}, experiment {self.cfg.tracking.experiment!r}\n"
            f"  predictions:  {self.output_dir}\n"
            f"  start the UI: {ui_command(uri)}\n"
            f"  then open:    {run_url(self.tracker.experiment_id, self.run_id)}",
            file=sys.stderr,
        )
