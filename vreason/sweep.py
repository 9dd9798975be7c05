"""``vreason sweep``: one config over a grid of values times seeds, each point a ``vreason run`` with
its own output folder under the sweep's, paired with a baseline point (``method: baseline``) of the
same seed, recorded in MLflow as one parent run with a child run per point.

The grid comes from ``--grid KEY=V1,V2`` options or the config's ``sweep:`` block; every combination
of values is a point, run once per seed. Baseline points vary only the keys outside ``method`` (a
sweep of ``sampling.temperature`` gets a baseline per temperature), so every point has a reference
with the same seed and the same non-method values. Everything is checked before anything runs: every
point's config is validated by ``load_config`` (a key outside the schema or a value out of
``config.RANGES`` names the grid key), and a point folder that holds the predictions of another
config stops the sweep.

Points run one after another in this process through ``run.run_experiment``, so each one is exactly
``vreason run`` with the point's overrides: a finished point (its MLflow run FINISHED) is skipped on a
rerun, an interrupted one resumes its predictions and its MLflow run, and one that raises is recorded
(in ``sweep.json``, the summary and the parent run) while the sweep goes on. Ctrl-C stops the sweep
(the parent run is marked KILLED); the same command continues it. At the end, and again on every
rerun, the sweep folder gets ``runs.csv`` (one row per run, paired statistics and divergence against
its baseline), ``summary.md``/``summary.csv`` (mean ± std over seeds per point) and one plot per swept
key under ``plots/``, all logged to the parent run.

Why a loop of ours and not a sweeper library: a grid is ``itertools.product``; what a sweep needs
beyond it (resuming points, skipping finished ones, pairing with baselines, MLflow nesting) is ours in
any case. Hydra's multirun would replace the config layer and the CLI and has no resume; Optuna's grid
sampler brings its own storage and no resume of a half-run trial; joblib (locked) would add process
parallelism that a CPU machine does not want and that the per-point folders already make safe to add.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vreason.config import ConfigError, check_method, load_config
from vreason.predictions import exclusive_output_dir, read_jsonl
from vreason.tracking import (
    RUN_FILE,
    Tracker,
    experiment_params,
    experiment_url,
    flatten,
    method_label,
    run_url,
    ui_command,
)
from vreason.tracking.store import _write_json

log = logging.getLogger(__name__)

MANIFEST = "sweep.json"
ERROR_FILE = "sweep_error.txt"
# Keys a grid cannot sweep: the sweep sets them per point (seed, folder, run name and tags) or they
# would make points of one sweep land in different experiments or stores.
NOT_SWEPT = ("seed", "output_dir", "name", "tracking", "sweep")
# Keys that differ between points of one sweep and are not part of what a point computes.
NOT_COMPARED = ("sweep", "tracking.tags")


@dataclass(frozen=True)
class Point:
    """One run of the sweep: the swept ``values`` (typed) and the dotlist ``overrides`` that set them,
    the seed, whether it is a baseline point, and the label of the baseline point it pairs with."""

    label: str
    seed: int
    values: dict[str, Any]
    overrides: tuple[str, ...]
    baseline: bool = False
    reference: str | None = None

    @property
    def folder(self) -> str:
        return f"{_safe(self.label)}/seed{self.seed}"


@dataclass
class SweepPlan:
    """A checked sweep: its grid (key -> override texts), seeds, whether baselines run, its folder, the
    config every point starts from, and each point with its validated config."""

    config: str
    overrides: list[str]
    grid: dict[str, list[str]]
    seeds: list[int]
    baseline: bool
    output_dir: Path
    base: DictConfig
    points: list[tuple[Point, DictConfig]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.output_dir.name

    @property
    def keys(self) -> list[str]:
        return list(self.grid)

    @property
    def parent_name(self) -> str:
        return f"{self.name}/sweep"


def split_values(text: str) -> list[str]:
    """``1e-4,1e-3`` -> ["1e-4", "1e-3"]; commas inside brackets or braces stay (``[0.9,0.99],[0.8,0.9]``)."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def parse_grid_option(text: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,...`` -> (key, value texts)."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2,... (e.g. method.optimizer.lr=1e-3,1e-2)")
    found = split_values(values)
    if any(v == "" for v in found):
        raise ConfigError(f"--grid {key}: empty value in {values!r}")
    return key, found


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in split_values(text)]
    except ValueError as err:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from err


def _override_text(value: Any) -> str:
    """A YAML value as the text of a dotlist override that reads back as the same value (JSON is YAML)."""
    return json.dumps(value)


def _typed(key: str, text: str) -> Any:
    """The value an override ``key=text`` sets, as a plain Python value."""
    try:
        value = OmegaConf.select(OmegaConf.from_dotlist([f"{key}={text}"]), key)
    except OmegaConfBaseException as err:
        raise ConfigError(f"sweep grid {key}={text}: {err}") from err
    return (
        OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value
    )


def value_text(value: Any) -> str:
    """A swept value as labels and tags show it: numbers in ``%g`` form, containers as compact JSON."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _safe(label: str) -> str:
    """A label as one folder name."""
    return re.sub(r"[^\w.,=+\-]", "_", label)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each key's last component (``method.optimizer.lr`` -> ``lr``), the full key where two share one."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _label(values: dict[str, Any], names: dict[str, str]) -> str:
    return ",".join(f"{names[k]}={value_text(v)}" for k, v in values.items())


def is_method_key(key: str) -> bool:
    return key == "method" or key.startswith("method.")


def plan_sweep(
    config: str,
    overrides: Sequence[str] = (),
    grid: Sequence[str] | None = None,
    seeds: str | Sequence[int] | None = None,
    baseline: bool | None = None,
    output_dir: str | None = None,
) -> SweepPlan:
    """Read the sweep (``grid``/``seeds``/``baseline``/``output_dir`` given here replace the config's
    ``sweep:`` block) and validate every point's config; raises ConfigError naming the grid key."""
    overrides = list(overrides)
    base = load_config(config, overrides)
    block = base.sweep
    if grid:
        texts = dict(parse_grid_option(option) for option in grid)
        if len(texts) != len(grid):
            raise ConfigError("--grid: a key is given twice; give each key once with all its values")
    else:
        grid_block = OmegaConf.to_container(block.grid, resolve=True) or {}
        texts = {str(k): [_override_text(v) for v in vs] for k, vs in grid_block.items()}
    if isinstance(seeds, str):
        seed_list = parse_seeds(seeds)
    elif seeds is not None:
        seed_list = list(seeds)
    else:
        seed_list = list(block.seeds) if block.seeds is not None else [int(base.seed)]
    with_baseline = bool(block.baseline) if baseline is None else baseline
    folder = Path(output_dir or base.sweep.output_dir)
    _check_grid(texts, seed_list)
    if not base.tracking.enabled:
        raise ConfigError(
            "vreason sweep records a parent MLflow run and a child run per point: tracking.enabled must be true"
        )
    if with_baseline and check_method(base.method) is None:
        raise ConfigError(
            f"{config}: the config's method is already the baseline; sweep a V-Reason config, or pass "
            f"--no-baseline"
        )
    plan = SweepPlan(config, overrides, texts, seed_list, with_baseline, folder, base)
    for point in _points(plan):
        plan.points.append((point, _point_config(plan, point)))
    _check_folders(plan)
    return plan


def _check_grid(texts: dict[str, list[str]], seeds: list[int]) -> None:
    for key, values in texts.items():
        if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
            raise ConfigError(
                f"sweep grid key {key!r}: expected a dotted config key such as method.optimizer.lr"
            )
        if any(key == n or key.startswith(f"{n}.") for n in NOT_SWEPT):
            raise ConfigError(
                f"sweep grid key {key!r}: {key.split('.')[0]} is set by the sweep itself (or shared by all its "
                f"points) and cannot be swept"
                + (" (give the seeds with --seeds or sweep.seeds)" if key == "seed" else "")
            )
        if not values:
            raise ConfigError(f"sweep grid key {key!r}: no values")
        typed = [_typed(key, v) for v in values]
        if len({json.dumps(v, sort_keys=True, default=str) for v in typed}) != len(typed):
            raise ConfigError(f"sweep grid key {key!r}: a value is given twice in {values}")
    if not seeds:
        raise ConfigError("sweep seeds: at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"sweep seeds {seeds}: a seed is given twice")


def _points(plan: SweepPlan) -> list[Point]:
    """Baseline points first (one per seed and combination of the keys outside ``method``), then every
    combination of the grid, each over the seeds."""
    keys = plan.keys
    names = short_names(keys)
    outside = [k for k in keys if not is_method_key(k)]
    points: list[Point] = []

    def combos(of: list[str]) -> list[list[tuple[str, str]]]:
        return [list(zip(of, c, strict=True)) for c in itertools.product(*(plan.grid[k] for k in of))]

    def baseline_label(pairs: list[tuple[str, str]]) -> str:
        return ",".join(["baseline", *(f"{names[k]}={value_text(_typed(k, t))}" for k, t in pairs)])

    if plan.baseline:
        for pairs in combos(outside):
            values = {k: _typed(k, t) for k, t in pairs}
            overrides = ("method=baseline", *(f"{k}={t}" for k, t in pairs))
            for seed in plan.seeds:
                points.append(Point(baseline_label(pairs), seed, values, overrides, baseline=True))
    for pairs in combos(keys):
        values = {k: _typed(k, t) for k, t in pairs}
        label = _label(values, names) if keys else method_label(plan.base.method)
        reference = baseline_label([(k, t) for k, t in pairs if k in outside]) if plan.baseline else None
        for seed in plan.seeds:
            points.append(
                Point(label, seed, values, tuple(f"{k}={t}" for k, t in pairs), reference=reference)
            )
    return points


def _point_config(plan: SweepPlan, point: Point) -> DictConfig:
    overrides = [*plan.overrides, *point.overrides, f"seed={point.seed}"]
    try:
        cfg = load_config(plan.config, overrides)
    except ConfigError as err:
        raise ConfigError(
            f"sweep point {point.label} (seed {point.seed}): {_culprit(plan, point)}{err}"
        ) from err
    cfg.output_dir = str(plan.output_dir / point.folder)
    cfg.tracking.run_name = f"{plan.name}/sweep/{point.label}/seed{point.seed}"
    return cfg


def _culprit(plan: SweepPlan, point: Point) -> str:
    """``--grid KEY=VALUE: `` for the first of the point's overrides that fails alone (else nothing)."""
    for override in point.overrides:
        try:
            load_config(plan.config, [*plan.overrides, override])
        except ConfigError:
            return f"grid value {override}: "
    return ""


def _compared(tree: dict[str, Any]) -> dict[str, str]:
    flat = flatten(tree)
    return {k: v for k, v in flat.items() if not any(k == n or k.startswith(f"{n}.") for n in NOT_COMPARED)}


def _check_folders(plan: SweepPlan) -> None:
    """A point folder that already holds a run of another config (say the sweep was started with other
    overrides) stops the sweep before anything runs: its predictions would be reused as this one's."""
    for _, cfg in plan.points:
        saved = Path(cfg.output_dir) / "config.yaml"
        if not saved.exists():
            continue
        before = _compared(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
        now = _compared(OmegaConf.to_container(cfg, resolve=True))
        differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if differ:
            shown = ", ".join(f"{k}: {before.get(k)} -> {now.get(k)}" for k in differ[:4])
            raise ConfigError(
                f"sweep point folder {cfg.output_dir} holds a run of another config ({shown}"
                f"{', ...' if len(differ) > 4 else ''}); use another sweep folder (--output-dir or "
                f"sweep.output_dir) or give the overrides it was started with"
            )


@dataclass
class SweepResult:
    """What a finished sweep wrote: the parent run, the tables, and the points that failed."""

    parent_run_id: str
    experiment_id: str
    runs: pd.DataFrame  # one row per run (``analysis.sweep_runs_table``)
    summary: pd.DataFrame  # one row per point (``analysis.sweep_summary``)
    markdown: str
    failed: list[str]
    files: list[Path]


def run_sweep(plan: SweepPlan) -> SweepResult:
    """Run every point not finished yet, then write and log the tables and plots (see the module)."""
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_output_dir(plan.output_dir):
        tracking = plan.base.tracking
        parent = Tracker(tracking.uri, tracking.experiment, plan.output_dir, run_name=plan.parent_name)
        parent.start(plan.parent_name, _parent_tags(plan))
        try:
            result = _run_points(plan, parent)
        except BaseException as err:
            parent.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        parent.finish()
        return result


def _parent_tags(plan: SweepPlan) -> dict[str, str]:
    return {
        "vreason.kind": "sweep",
        "sweep": plan.name,
        "sweep.keys": ",".join(plan.keys),
        "sweep.grid": json.dumps(plan.grid),
        "sweep.seeds": ",".join(map(str, plan.seeds)),
        "sweep.baseline": str(plan.baseline).lower(),
        "config": str(plan.base.name),
        "mlflow.source.name": "vreason sweep",
        "mlflow.source.type": "LOCAL",
    }


def point_tags(plan: SweepPlan, point: Point, parent_run_id: str) -> dict[str, str]:
    """A child run's tags: MLflow's nesting tag, then what the UI groups and filters a sweep by."""
    return {
        "mlflow.parentRunId": parent_run_id,
        "vreason.kind": "sweep_point",
        "sweep": plan.name,
        "sweep.point": point.label,
        "sweep.role": "baseline" if point.baseline else "point",
        **{f"sweep.{key}": value_text(value) for key, value in point.values.items()},
    }


def _manifest(plan: SweepPlan) -> dict[str, Any]:
    path = plan.output_dir / MANIFEST
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {
        "config": plan.config,
        "overrides": plan.overrides,
        "grid": plan.grid,
        "seeds": plan.seeds,
        "baseline": plan.baseline,
        "points": record.get("points", {}),
    }


def _finished_run_id(folder: Path, client) -> str | None:
    """The point's MLflow run id if that run finished (everything logged) and its predictions are there."""
    record = folder / RUN_FILE
    if not record.exists() or not (folder / "predictions.jsonl").exists():
        return None
    run_id = json.loads(record.read_text(encoding="utf-8"))["run_id"]
    try:
        status = client.get_run(run_id).info.status
    except MlflowException:  # gone from the store: running the point says what to do (and records it)
        return None
    return run_id if status == "FINISHED" else None


def _run_points(plan: SweepPlan, parent: Tracker) -> SweepResult:
    from vreason import analysis
    from vreason.run import run_experiment

    manifest = _manifest(plan)
    entries: list[analysis.SweepEntry] = []
    total = len(plan.points)
    for index, (point, cfg) in enumerate(plan.points, start=1):
        cfg.tracking.tags = {**cfg.tracking.tags, **point_tags(plan, point, parent.run_id)}
        folder = Path(cfg.output_dir)
        where = f"[{index}/{total}] {point.label} seed {point.seed}"
        entry = analysis.SweepEntry(
            point.label, point.seed, dict(point.values), point.baseline, reference=point.reference
        )
        run_id = _finished_run_id(folder, parent.client)
        done_before = run_id is not None
        if not done_before:
            log.info("%s: running in %s", where, folder)
            try:
                run_experiment(cfg)
            except Exception as err:  # one point never stops the sweep; Ctrl-C does
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                entry.error = f"{type(err).__name__}: {first}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / ERROR_FILE).write_text(traceback.format_exc(), encoding="utf-8")
            finally:
                gc.collect()
            if (folder / RUN_FILE).exists():
                run_id = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))["run_id"]
        if entry.error is None:
            entry.run = analysis.Run(
                run_id,
                cfg.tracking.run_name,
                experiment_params(cfg),
                read_jsonl(folder / "predictions.jsonl"),
            )
            (folder / ERROR_FILE).unlink(missing_ok=True)
        entries.append(entry)
        manifest["points"][point.folder] = {
            "label": point.label,
            "seed": point.seed,
            "baseline": point.baseline,
            "values": {k: value_text(v) for k, v in point.values.items()},
            "status": "failed" if entry.error else "finished",
            "run_id": run_id,
            "error": entry.error,
        }
        _write_json(plan.output_dir / MANIFEST, manifest)
        print(_point_line(where, entry, entries, done_before), flush=True)
    return _write_results(plan, parent, entries)


def _point_line(where: str, entry, entries, done_before: bool) -> str:
    from vreason import analysis

    if entry.error is not None:
        return f"{where}: FAILED ({entry.error}); the sweep goes on"
    summary = analysis.run_summary(entry.run)
    text = f"{where}: accuracy {summary['accuracy']:.3g}, {summary['mean_tokens']:.3g} tokens"
    faults = analysis.run_faults(entry.run)
    if faults["faults"] or faults["nonfinite_entropy"]:
        text += f", {faults['faults']} faults, {faults['nonfinite_entropy']} non-finite entropies"
    reference = next(
        (
            e.run
            for e in entries
            if e.baseline and e.point == entry.reference and e.seed == entry.seed and e.run
        ),
        None,
    )
    if reference is not None and not entry.baseline:
        d = analysis.divergence_summary(reference, entry.run)
        text += f"; vs baseline: {d.changed}/{d.pairs} samples changed"
        if d.changed:
            text += f", first at token {d.first_div_min:.0f} (mean {d.first_div_mean:.3g})"
    return text + (" (finished earlier)" if done_before else "")


def _write_results(plan: SweepPlan, parent: Tracker, entries) -> SweepResult:
    import hashlib

    from vreason import analysis

    keys = plan.keys
    runs = analysis.sweep_runs_table(entries, keys)
    summary = analysis.sweep_summary(runs, keys)
    failed = [f"{e.point} seed {e.seed}: {e.error}" for e in entries if e.error is not None]
    markdown = analysis.sweep_markdown(summary, keys) + "\n" + analysis.sweep_legend() + "\n"
    if failed:
        markdown += "\nFailed runs (rerun the same command to retry them):\n" + "".join(
            f"- {f}\n" for f in failed
        )
    folder = plan.output_dir
    files = [
        analysis.write_table(runs, folder / "runs.csv"),
        analysis.write_table(summary, folder / "summary.csv"),
    ]
    (folder / "summary.md").write_text(markdown, encoding="utf-8")
    files.append(folder / "summary.md")
    (folder / "plots").mkdir(exist_ok=True)
    for key in keys:
        figure = analysis.plot_sweep(summary, key, keys)
        path = folder / "plots" / f"{_safe(key)}.png"
        figure.savefig(path, dpi=100)
        analysis.close(figure)
        files.append(path)
    for path in files:
        parent.log_artifact(path, "plots" if path.parent.name == "plots" else None)
    parent.log_artifact(folder / MANIFEST)
    stamp = parent.results_timestamp(hashlib.sha256((folder / "runs.csv").read_bytes()).hexdigest())
    parent.log_metrics(
        {"points": len(entries), "points_finished": len(entries) - len(failed), "points_failed": len(failed)},
        timestamp=stamp,
    )
    parent.client.set_tag(parent.run_id, "failed_points", str(len(failed)))
    parent.set_description(
        f"**{plan.parent_name}**: `vreason sweep {plan.config}` over {', '.join(keys) or 'no key'}, seeds {plan.seeds}.\n\n"
        + markdown
    )
    return SweepResult(parent.run_id, parent.experiment_id, runs, summary, markdown, failed, files)


def where_to_look(plan: SweepPlan, result: SweepResult) -> str:
    """The lines ``vreason sweep`` ends with: files, the parent run and the UI."""
    uri = plan.base.tracking.uri
    return "\n".join(
        [
            f"sweep folder:     {plan.output_dir} (summary.md, summary.csv, runs.csv, plots/, {MANIFEST})",
            f"MLflow parent run {plan.parent_name!r}, id {result.parent_run_id} (its child runs: one per point and seed)",
            f"  start the UI:   {ui_command(uri)}",
            f"  then open:      {run_url(result.experiment_id, result.parent_run_id)}",
            f"  all runs:       {experiment_url(result.experiment_id)}",
        ]
    )
