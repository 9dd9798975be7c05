"""Seed aggregation: runs grouped by configuration (their params less the seed), and the mean and
standard deviation of each configuration's accuracy, tokens and seconds over its seeds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from vreason.analysis.runs import Run
from vreason.analysis.tables import run_summary

# Params that differ between seeds of one configuration (``model.seed`` is not one: it picks the weights
# of the random tiny models, so it changes the model).
SEED_INDEPENDENT = ("seed", "name", "output_dir", "tracking")


def group_by_config(runs: Sequence[Run], ignore: Sequence[str] = SEED_INDEPENDENT) -> dict[str, list[Run]]:
    """Runs grouped by their params minus ``ignore`` (a key is ignored if it equals an entry or starts
    with it followed by "."), i.e. the seeds of one configuration together. Each group is named by
    the params that tell the groups apart ("all" when there is one group)."""

    def config(run: Run) -> tuple[tuple[str, str], ...]:
        kept = {
            k: v for k, v in run.params.items() if not any(k == i or k.startswith(f"{i}.") for i in ignore)
        }
        return tuple(sorted(kept.items()))

    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(config(run), []).append(run)
    if len(groups) == 1:
        return {"all": next(iter(groups.values()))}
    dicts = [dict(key) for key in groups]
    differing = sorted({k for d in dicts for k in d if len({d.get(k) for d in dicts}) > 1})
    return {
        ", ".join(f"{k}={d.get(k)}" for k in differing): members
        for d, members in zip(dicts, groups.values(), strict=True)
    }


def seed_summary(runs_by_config: Mapping[str, Sequence[Run]]) -> pd.DataFrame:
    """Mean and sample standard deviation (ddof=1; NaN for a single run) of accuracy, mean tokens and
    mean seconds over the runs of each configuration (runs differing only in seed, e.g. from
    ``group_by_config``). Columns: ``config``, ``runs``, ``seeds`` (the ``seed`` params), then
    ``<metric>_mean`` and ``<metric>_std``."""
    rows = []
    for config, runs in runs_by_config.items():
        summaries = pd.DataFrame([run_summary(run) for run in runs])
        row: dict[str, Any] = {
            "config": config,
            "runs": len(runs),
            "seeds": ",".join(str(run.params.get("seed", "?")) for run in runs),
        }
        for metric in ("accuracy", "mean_tokens", "mean_seconds"):
            row[f"{metric}_mean"] = float(summaries[metric].mean())
            row[f"{metric}_std"] = float(summaries[metric].std(ddof=1)) if len(runs) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)
