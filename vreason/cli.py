"""``vreason run | sweep | validate | score | report | compare`` (also ``python -m vreason``).

The terminal shows our messages, one progress bar and the results; third-party log lines,
advertisements, deprecation warnings and download progress bars are held back unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from vreason.config import ConfigError, load_config

# Loggers of the libraries under us: INFO chatter (GPU/TPU lines, tips, store migrations) by default
# hidden. Lightning's own handler is kept and propagation stopped, so nothing prints twice.
THIRD_PARTY_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "mlflow",
    "alembic",
    "transformers",
)
THIRD_PARTY_MODULES = r"(lightning|lightning_fabric|pytorch_lightning|mlflow|transformers|torch|torchvision|qwen_vl_utils|pydantic|alembic|sqlalchemy)(\.|$)"


@contextlib.contextmanager
def terminal(verbose: bool, libraries: bool) -> Iterator[None]:
    """Logging and warnings for one command, put back as they were afterwards. ``libraries``: the
    command uses Lightning and MLflow, which configure their loggers when imported, so they are
    imported first and their loggers set after."""
    if libraries:
        import lightning.pytorch  # noqa: F401
        import mlflow  # noqa: F401
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = {
        name: (logging.getLogger(name).level, logging.getLogger(name).propagate)
        for name in THIRD_PARTY_LOGGERS
    }
    saved_root, saved_env = root.level, os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    ours = logging.getLogger("vreason")
    saved_ours = ours.level
    ours.setLevel(logging.INFO)
    if logging.getLogger("lightning").handlers:  # Lightning prints through its own handler: not twice
        logging.getLogger("lightning").propagate = False
    with warnings.catch_warnings():
        if not verbose:
            for name in THIRD_PARTY_LOGGERS:
                logging.getLogger(name).setLevel(logging.WARNING)
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
            warnings.filterwarnings("ignore", module=THIRD_PARTY_MODULES)
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            yield
        finally:
            root.removeHandler(handler)
            root.setLevel(saved_root)
            ours.setLevel(saved_ours)
            for name, (level, propagate) in saved.items():
                logging.getLogger(name).setLevel(level)
                logging.getLogger(name).propagate = propagate
            if saved_env is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = saved_env


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    baseline = baseline_config(cfg, args.config, args.overrides) if args.with_baseline else None
    from vreason.report import markdown, table_rows
    from vreason.run import run_experiment
    from vreason.tracking import run_label

    metrics = run_experiment(cfg)
    if metrics is None:  # a non-zero DDP rank
        return 0
    rows = [(run_label(cfg), metrics)]
    if baseline is not None:
        print(f"\nthe baseline: {args.config} method=baseline (output_dir {baseline.output_dir})")
        rows.append((run_label(baseline), run_experiment(baseline)))
    print()
    print(markdown(*table_rows(rows, only_present=True)))
    print(f"\npredictions: {Path(cfg.output_dir) / 'predictions.jsonl'}")
    if baseline is not None:
        print_comparison(baseline, cfg)
    if cfg.tracking.enabled:
        print_where_to_look(cfg, args.config)
    return 0


def baseline_config(cfg, config_path: str, overrides: list[str]):
    """The config with ``method=baseline``, checked before anything runs: it must be a V-Reason run with
    tracking on (the comparison reads both runs from MLflow) and the baseline needs its own output_dir."""
    from vreason.config import check_method

    if check_method(cfg.method) is None:
        raise ConfigError(f"--with-baseline: {config_path}'s method is already the baseline")
    if not cfg.tracking.enabled:
        raise ConfigError("--with-baseline compares the two runs from MLflow: tracking.enabled must be true")
    baseline = load_config(config_path, [*overrides, "method=baseline"])
    if baseline.output_dir == cfg.output_dir:
        raise ConfigError(
            f"--with-baseline: with method=baseline, output_dir is still {cfg.output_dir}; give the config an "
            f"output_dir per method, e.g. output_dir: outputs/NAME/${{oc.select:method.name,baseline}}"
        )
    return baseline


def print_comparison(baseline, cfg) -> None:
    """``vreason compare`` of the baseline and the run just made: paired statistics and divergence."""
    from vreason.compare import compare_runs
    from vreason.tracking import RUN_FILE

    ids = [
        json.loads((Path(c.output_dir) / RUN_FILE).read_text(encoding="utf-8"))["run_id"]
        for c in (baseline, cfg)
    ]
    print()
    compare_runs(ids, tracking_uri=cfg.tracking.uri)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Every point of the grid times the seeds (and a baseline per seed), then the summary."""
    from vreason.sweep import plan_sweep, run_sweep, where_to_look

    plan = plan_sweep(
        args.config,
        args.overrides,
        grid=args.grid,
        seeds=args.seeds,
        baseline=args.baseline,
        output_dir=args.output_dir,
    )
    keys = ", ".join(f"{k} ({len(v)} values)" for k, v in plan.grid.items()) or "no grid key"
    print(
        f"sweep {plan.name}: {keys} x seeds {plan.seeds}"
        f"{' + a baseline per seed' if plan.baseline else ''} = {len(plan.points)} runs, in {plan.output_dir}"
    )
    result = run_sweep(plan)
    print()
    print(result.markdown)
    print(where_to_look(plan, result))
    return 1 if result.failed else 0


def print_where_to_look(cfg, config_path: str) -> None:
    """The run's id, its page in the UI, the command that starts the UI on its store, and how to
    compare it with its baseline (or how to run one)."""
    from mlflow.tracking import MlflowClient

    from vreason.tracking import RUN_FILE, experiment_url, run_url, ui_command

    record = json.loads((Path(cfg.output_dir) / RUN_FILE).read_text(encoding="utf-8"))
    uri = record["tracking_uri"]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(record["run_id"])
    experiment = run.info.experiment_id
    print(f"MLflow run {run.info.run_name!r}, id {run.info.run_id}, experiment {cfg.tracking.experiment!r}")
    print(f"  store:          {uri}")
    print(f"  start the UI:   {ui_command(uri)}")
    print(f"  then open:      {run_url(experiment, run.info.run_id)}")
    print(f"  all runs:       {experiment_url(experiment)}")
    print(f"  their charts:   {experiment_url(experiment, charts=True)}")
    baseline, steered = _pair(client, experiment, run)
    if baseline is not None and steered is not None:
        print(f"  compare:        vreason compare {baseline} {steered} --tracking-uri {uri}")
    elif run.data.tags.get("method") != "baseline":
        print(f"  a baseline:     vreason run {config_path} method=baseline  (then vreason compare)")


def _pair(client, experiment: str, run) -> tuple[str | None, str | None]:
    """(baseline, V-Reason) refs for ``vreason compare``: this run and the newest run of the same config
    with the other role; a name where it is unique, else the id."""
    config = run.data.tags.get("config")
    if config is None:
        return None, None
    is_baseline = run.data.tags.get("method") == "baseline"
    quoted = json.dumps(config)
    # a sweep's points and its parent are left out: they pair among themselves
    others = [
        r
        for r in client.search_runs(
            [experiment], filter_string=f"tags.config = {quoted}", order_by=["attributes.start_time DESC"]
        )
        if (r.data.tags.get("method") == "baseline") != is_baseline
        and r.info.status == "FINISHED"
        and not r.data.tags.get("vreason.kind", "").startswith("sweep")
    ]
    if not others:
        return None, None

    def ref(r) -> str:
        named = client.search_runs(
            [experiment], filter_string=f"attributes.run_name = {json.dumps(r.info.run_name)}", max_results=2
        )
        return r.info.run_name if len(named) == 1 and " " not in r.info.run_name else r.info.run_id

    pair = (ref(run), ref(others[0]))
    return pair if is_baseline else pair[::-1]


def cmd_validate(args: argparse.Namespace) -> int:
    """Check configs (keys, types, ranges, component signatures): imports what they name, calls nothing."""
    for path in args.configs:
        load_config(path, args.overrides)
        print(f"ok  {path}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from vreason.data.scoring import score
    from vreason.predictions import read_jsonl
    from vreason.report import markdown, table_rows
    from vreason.tracking import summary_metrics

    rows = read_jsonl(Path(args.predictions))
    if not rows:
        raise ConfigError(f"{args.predictions}: no predictions found")
    for row in rows:
        if not row["failed"]:
            row["score"] = score(row["problem_type"], row["output"], row["solution"], row["benchmark"])
    name = Path(args.predictions).parent.name
    print(markdown(*table_rows([(name, summary_metrics(rows))], only_present=True)))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from vreason import analysis
    from vreason.report import markdown, table_rows

    runs = []
    for ref in args.runs:
        try:
            run = analysis.find_run(ref, tracking_uri=args.tracking_uri, experiment=args.experiment)
        except analysis.RunLookupError as err:
            raise ConfigError(str(err)) from err
        runs.append((run.info.run_name or run.info.run_id, dict(run.data.metrics)))
    text = markdown(*table_rows(runs))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from vreason import analysis
    from vreason.compare import compare_runs

    try:
        compare_runs(
            args.runs,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            out=args.out,
            log=not args.no_log,
        )
    except analysis.RunLookupError as err:
        raise ConfigError(str(err)) from err
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help="show third-party logs, warnings and progress bars too"
    )
    p = argparse.ArgumentParser(prog="vreason", description="V-Reason: video reasoning without training")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", parents=[common], help="run an experiment config (resumes if its output dir has predictions)"
    )
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. method.schedule.step_size=2")
    run.add_argument(
        "--with-baseline",
        action="store_true",
        help="then run the same config with method=baseline and compare: paired statistics and where the "
        "outputs diverge",
    )
    run.set_defaults(func=cmd_run)
    sweep = sub.add_parser(
        "sweep",
        parents=[common],
        help="run a config over a grid of values and seeds, each with a baseline (resumable)",
        description="Without --grid/--seeds/--no-baseline/--output-dir, the config's sweep: block says.",
    )
    sweep.add_argument("config")
    sweep.add_argument("overrides", nargs="*", help="dotlist overrides for every point")
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="a config key and its values (repeat for more keys: every combination is a point)",
    )
    sweep.add_argument(
        "--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (default: sweep.seeds)"
    )
    sweep.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        default=None,
        help="no baseline point per seed (no paired statistics)",
    )
    sweep.add_argument("--output-dir", default=None, help="the sweep folder (default: sweep.output_dir)")
    sweep.set_defaults(func=cmd_sweep)
    val = sub.add_parser(
        "validate", parents=[common], help="check configs without loading a model or calling any component"
    )
    val.add_argument("configs", nargs="+")
    val.add_argument("--set", dest="overrides", action="append", default=[])
    val.set_defaults(func=cmd_validate)
    score = sub.add_parser("score", parents=[common], help="re-score a predictions.jsonl offline")
    score.add_argument("predictions")
    score.set_defaults(func=cmd_score)
    for name, func, help_text in (
        ("report", cmd_report, "Table 1-shaped table of MLflow runs"),
        ("compare", cmd_compare, "paired comparison of runs (first is the baseline)"),
    ):
        cmd = sub.add_parser(name, parents=[common], help=help_text)
        cmd.add_argument(
            "runs", nargs="+", help="MLflow run ids, or run names (a name several runs share is refused)"
        )
        cmd.add_argument(
            "--tracking-uri",
            default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"),
            help="the store `vreason run` printed (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db "
            "in the current folder)",
        )
        cmd.add_argument("--experiment", default=None, help="look names up in this experiment only")
        cmd.add_argument(
            "--out", default=None, help="write the table here (Markdown; compare also writes CSV)"
        )
        if name == "compare":
            cmd.add_argument("--no-log", action="store_true", help="do not record the comparison in MLflow")
        cmd.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args, extra = cli.parse_known_args(argv)
    if extra:  # ``vreason sweep CONFIG --grid k=1,2 x=y``: overrides after the options are overrides too
        if args.command in ("run", "sweep") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            cli.error(f"unrecognized arguments: {' '.join(extra)}")
    from vreason.predictions import OutputDirInUse

    with terminal(args.verbose, libraries=args.command in ("run", "sweep", "report", "compare")):
        try:
            return args.func(args)
        except (ConfigError, FileNotFoundError, OutputDirInUse) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
