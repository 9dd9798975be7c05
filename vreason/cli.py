"""``vreason run | validate | score | report | compare`` (also ``python -m vreason``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vreason.config import ConfigError, load_config


def cmd_run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from vreason.report import markdown, table_rows
    from vreason.run import run_experiment

    metrics = run_experiment(cfg)
    if metrics is None:  # a non-zero DDP rank
        return 0
    print()
    print(markdown(*table_rows([(cfg.name, metrics)])))
    print(f"\npredictions: {Path(cfg.output_dir) / 'predictions.jsonl'}")
    if cfg.tracking.enabled:
        print(f"MLflow store: {cfg.tracking.uri} (experiment {cfg.tracking.experiment!r})")
        print(f"browse it with: mlflow ui --backend-store-uri {cfg.tracking.uri}")
    return 0


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
            row["score"] = score(row["problem_type"], row["output"], row["solution"])
    print(markdown(*table_rows([(Path(args.predictions).parent.name, summary_metrics(rows))])))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from vreason.report import markdown, table_rows

    client = MlflowClient(tracking_uri=args.tracking_uri)
    runs = []
    for run_id in args.runs:
        run = client.get_run(run_id)
        runs.append((run.info.run_name or run_id, dict(run.data.metrics)))
    text = markdown(*table_rows(runs))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from vreason.compare import compare_runs

    compare_runs(args.runs, tracking_uri=args.tracking_uri, experiment=args.experiment, out=args.out)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vreason", description="V-Reason: video reasoning without training")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config (resumes if its output dir has predictions)")
    run.add_argument("config")
    run.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. method.schedule.step_size=2")
    run.set_defaults(func=cmd_run)
    val = sub.add_parser("validate", help="check configs without loading a model or calling any component")
    val.add_argument("configs", nargs="+")
    val.add_argument("--set", dest="overrides", action="append", default=[])
    val.set_defaults(func=cmd_validate)
    score = sub.add_parser("score", help="re-score a predictions.jsonl offline")
    score.add_argument("predictions")
    score.set_defaults(func=cmd_score)
    for name, func, help_text in (
        ("report", cmd_report, "Table 1-shaped table of MLflow runs"),
        ("compare", cmd_compare, "paired comparison of runs (first is the baseline)"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("runs", nargs="+", help="MLflow run ids (compare also takes run names)")
        cmd.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
        cmd.add_argument("--experiment", default=None)
        cmd.add_argument(
            "--out", default=None, help="write the table here (Markdown; compare also writes CSV)"
        )
        cmd.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser().parse_args(argv)
    from vreason.predictions import OutputDirInUse

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, OutputDirInUse) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
