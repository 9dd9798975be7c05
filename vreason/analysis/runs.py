"""Runs and their predictions: the ``Run`` that every other module takes, and the readers of one
prediction (finished or failed, its trace, score, tokens, seconds) that fix the conventions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Run:
    """One run: its MLflow id and name (None for runs not from MLflow), params, and predictions."""

    run_id: str | None
    name: str | None
    params: dict[str, str] = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        """Name for legends and tables: the run name, else the first 8 characters of the id."""
        if self.name:
            return self.name
        return self.run_id[:8] if self.run_id else "run"


Predictions = Run | Sequence[Mapping[str, Any]]


def _predictions(run: Predictions) -> list[Mapping[str, Any]]:
    return list(run.predictions) if isinstance(run, Run) else list(run)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """``Run.label`` of each run, with " (2)", " (3)", ... appended where labels repeat."""
    labels: list[str] = []
    for run in runs:
        label, k = run.label, 2
        while label in labels:
            label, k = f"{run.label} ({k})", k + 1
        labels.append(label)
    return labels


def finished(run: Predictions) -> list[Mapping[str, Any]]:
    """Predictions that did not fail (the ones with a trace, a token count and a time)."""
    return [p for p in _predictions(run) if not p.get("failed", False)]


def traces(run: Predictions) -> list[Mapping[str, Any]]:
    """The per-token traces of the finished predictions that generated at least one token."""
    return [p["trace"] for p in finished(run) if p.get("trace") and len(p["trace"]["entropy"]) > 0]


def _score(prediction: Mapping[str, Any]) -> float:
    """Score in [0, 1]; a failed prediction counts as 0."""
    return 0.0 if prediction.get("failed", False) else float(prediction["score"])


def _required(prediction: Mapping[str, Any], key: str) -> Any:
    if key not in prediction:
        raise KeyError(f"prediction {prediction.get('sample_id')!r} lacks {key!r}")
    return prediction[key]


def _seconds(prediction: Mapping[str, Any]) -> float:
    """Wall-clock seconds per sample: a batch's time divided by its size, as ``tracking`` does."""
    return float(_required(prediction, "seconds")) / prediction.get("batch_size", 1)
