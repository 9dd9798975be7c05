"""Result tables: one row per run (accuracy, tokens, seconds, and the paired comparison against a
baseline run), and writing a table as GitHub Markdown or CSV."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vreason.analysis.paired import paired_comparison
from vreason.analysis.runs import (
    Predictions,
    Run,
    _predictions,
    _required,
    _score,
    _seconds,
    finished,
    run_labels,
)


def run_summary(run: Predictions) -> dict[str, float]:
    """n, failed, accuracy (mean score, failures as 0), mean output tokens and mean seconds per sample
    (finished samples only)."""
    predictions = _predictions(run)
    done = finished(predictions)
    return {
        "n": len(predictions),
        "failed": len(predictions) - len(done),
        "accuracy": float(np.mean([_score(p) for p in predictions])) if predictions else math.nan,
        "mean_tokens": float(np.mean([_required(p, "num_tokens") for p in done])) if done else math.nan,
        "mean_seconds": float(np.mean([_seconds(p) for p in done])) if done else math.nan,
    }


def comparison_table(
    runs: Sequence[Run],
    baseline: int | str = 0,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per run: ``run``, ``n``, ``failed``, ``accuracy``, ``mean_tokens``, ``mean_seconds``,
    and against the baseline run (index into ``runs`` or its label): ``pairs`` (shared sample ids),
    ``diff`` (paired mean score difference) with its bootstrap ``ci_low``/``ci_high``, ``mcnemar_p``,
    ``token_diff`` and ``wilcoxon_p``. The baseline's own comparison columns are NaN."""
    labels = run_labels(runs)
    if isinstance(baseline, str):
        if baseline not in labels:
            raise ValueError(f"baseline {baseline!r} is not one of the runs: {labels}")
        baseline = labels.index(baseline)
    reference = runs[baseline]
    rows = []
    for index, (run, label) in enumerate(zip(runs, labels, strict=True)):
        row: dict[str, Any] = {"run": label, **run_summary(run)}
        vs = dict.fromkeys(
            ["pairs", "diff", "ci_low", "ci_high", "mcnemar_p", "token_diff", "wilcoxon_p"], math.nan
        )
        if index != baseline:
            c = paired_comparison(reference, run, n_boot=n_boot, seed=seed, confidence=confidence)
            vs = {
                "pairs": c.n_pairs,
                "diff": c.score_diff,
                "ci_low": c.score_ci[0],
                "ci_high": c.score_ci[1],
                "mcnemar_p": c.mcnemar_p,
                "token_diff": c.token_diff,
                "wilcoxon_p": c.wilcoxon_p,
            }
        rows.append(row | vs)
    return pd.DataFrame(rows)


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub-Markdown table of ``frame`` (columns as header, no index): floats with ``digits``
    significant digits, NaN as "–", numeric columns right-aligned. Written here so that no optional
    dependency (``tabulate``) is needed."""
    header = [str(c) for c in frame.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        for c in frame.columns
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, path: str | Path, digits: int = 4) -> Path:
    """Write ``frame`` as Markdown (``.md``) or CSV (``.csv``, full precision), chosen by suffix."""
    path = Path(path)
    if path.suffix == ".md":
        path.write_text(markdown_table(frame, digits), encoding="utf-8")
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        raise ValueError(f"write_table writes .md or .csv, not {path.name!r}")
    return path
