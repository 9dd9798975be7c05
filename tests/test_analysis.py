"""Specification of ``vreason.analysis`` on constructed inputs whose answers are known by hand."""

from __future__ import annotations

import io
import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vreason import analysis
from vreason.analysis import Run

T_975_DF2 = 4.302652729911275  # Student t quantile, two-sided 95%, 2 degrees of freedom (table value)


def ema_of(entropy: list[float], beta: float = 0.98) -> list[float]:
    """Eq. 3 with H_0 as the first value."""
    out = [entropy[0]]
    for h in entropy[1:]:
        out.append(beta * out[-1] + (1 - beta) * h)
    return out


def make_trace(entropy: list[float], optimized: list[bool] | None = None) -> dict:
    ema = ema_of(entropy)
    alpha = analysis.alpha_from_ema(ema).tolist()
    optimized = optimized if optimized is not None else [True] * len(entropy)
    return {
        "entropy": entropy,
        "ema": ema,
        "alpha": [a if o else 0 for a, o in zip(alpha, optimized, strict=True)],
        "optimized": optimized,
        "controller_norm": [0.0] * len(entropy),
    }


def prediction(
    sample_id: str, score: float = 1.0, num_tokens: int = 4, failed: bool = False, **extra
) -> dict:
    """A finished prediction with a trace of ``num_tokens`` tokens, or a failed one (no trace, no tokens)."""
    if failed:
        return {"sample_id": sample_id, "benchmark": "synthetic", "score": 0.0, "failed": True, **extra}
    entropy = [0.1 + 0.01 * i for i in range(num_tokens)]
    return {
        "sample_id": sample_id,
        "benchmark": extra.pop("benchmark", "synthetic"),
        "score": score,
        "failed": False,
        "num_tokens": num_tokens,
        "seconds": 2.0,
        "trace": make_trace(entropy),
        **extra,
    }


def run_with_outcomes(name: str, correct: list[bool], tokens: list[int] | None = None, **params) -> Run:
    tokens = tokens or [4] * len(correct)
    predictions = [
        prediction(f"s{i:02d}", float(c), n) for i, (c, n) in enumerate(zip(correct, tokens, strict=True))
    ]
    return Run(
        run_id=f"id-{name}", name=name, params={k: str(v) for k, v in params.items()}, predictions=predictions
    )


# --- one trace ------------------------------------------------------------------------------------


def test_micro_cycles_counts_prominent_maxima_and_minima_only():
    t = np.linspace(0, 6 * np.pi, 2000)
    curve = np.sin(t) + 0.01 * np.sin(60 * t)  # 3 big tops and 3 big bottoms, plus small ripples
    assert analysis.micro_cycles(curve, prominence=0.5) == (3, 3)
    ripples = analysis.micro_cycles(curve, prominence=1e-6)
    assert ripples.maxima > 3 and ripples.minima > 3


def test_micro_cycles_never_count_endpoints():
    rising = np.linspace(0.0, 1.0, 50)  # its maximum is the last point, not an interior peak
    assert analysis.micro_cycles(rising, prominence=0.01) == (0, 0)


def test_ema_peak_is_first_global_maximum():
    assert analysis.ema_peak([0.1, 0.5, 0.9, 0.9, 0.4]) == (2, 0.9)


def test_ema_peak_is_later_and_lower_than_raw_entropy_peak():
    entropy = [0.2] * 20 + [2.0] * 5 + [0.1] * 200  # a short burst of high entropy
    raw_index, raw_height = analysis.ema_peak(entropy)
    ema_index, ema_height = analysis.ema_peak(ema_of(entropy))
    assert ema_index >= raw_index and ema_height < raw_height


def test_ema_peak_of_empty_curve_raises():
    with pytest.raises(ValueError, match="non-empty"):
        analysis.ema_peak([])


def test_final_entropy_is_mean_of_last_tokens():
    assert analysis.final_entropy([5.0] * 10 + [1.0] * 32, last_n=32) == 1.0
    assert analysis.final_entropy([1.0, 3.0], last_n=32) == 2.0  # shorter than the window: all tokens


# --- mean curves ----------------------------------------------------------------------------------


def test_mean_curve_by_step_averages_samples_still_generating():
    curve = analysis.mean_curve([[1.0, 2.0, 3.0], [3.0, 4.0], [5.0]], align="step")
    np.testing.assert_array_equal(curve.x, [1, 2, 3])
    np.testing.assert_array_equal(curve.mean, [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(curve.count, [3, 2, 1])
    half = T_975_DF2 * 2.0 / math.sqrt(3)  # step 1: values 1, 3, 5 have s = 2
    assert curve.lower[0] == pytest.approx(3.0 - half)
    assert curve.upper[0] == pytest.approx(3.0 + half)
    assert math.isnan(curve.lower[2]) and math.isnan(curve.upper[2])  # one sample: no spread


def test_mean_curve_min_count_cuts_the_tail():
    curve = analysis.mean_curve([[1.0, 2.0, 3.0], [3.0, 4.0], [5.0]], align="step", min_count=2)
    np.testing.assert_array_equal(curve.count, [3, 2])


def test_mean_curve_normalized_maps_linear_curves_onto_one_line():
    # y = slope * position over each sample's own length; slopes 1 and 3 average to 2.
    curves = [np.linspace(0.0, 1.0, 5), np.linspace(0.0, 3.0, 9)]
    curve = analysis.mean_curve(curves, align="normalized", n_points=11)
    np.testing.assert_allclose(curve.x, np.linspace(0, 1, 11))
    np.testing.assert_allclose(curve.mean, 2.0 * curve.x)
    np.testing.assert_array_equal(curve.count, [2] * 11)


def test_mean_curve_rejects_unknown_alignment():
    with pytest.raises(ValueError, match="align"):
        analysis.mean_curve([[1.0]], align="time")


# --- alpha before the peak (Fig. 5) -----------------------------------------------------------------


def test_alpha_from_ema_is_plus_one_at_running_peak():
    ema = [0.1, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45, 0.3]
    assert analysis.alpha_from_ema(ema).tolist() == [1, 1, -1, 1, -1, 1, -1, -1]


def test_alpha_before_peak_counts_optimised_steps_strictly_before_peak():
    # EMA peak at index 5. Before it, optimised steps are 1 (+1), 2 (-1), 4 (-1); step 3 (+1) was not
    # optimised; the peak step (+1) and the steps after it (-1, -1) do not count.
    first = {
        "ema": [0.1, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45, 0.3],
        "alpha": [0, 1, -1, 0, -1, 1, -1, -1],
        "optimized": [False, True, True, False, True, True, True, True],
    }
    # EMA peak at index 2; before it: +1 at 0 and 1, both optimised.
    second = {"ema": [0.2, 0.3, 0.6, 0.1], "alpha": [1, 1, 1, -1], "optimized": [True] * 4}
    counts = analysis.alpha_before_peak([first, second])
    assert (counts.explore, counts.exploit, counts.samples) == (3, 2, 2)


def test_alpha_before_peak_from_ema_reads_a_baseline():
    baseline = {"ema": [0.1, 0.3, 0.2, 0.4, 0.35, 0.5, 0.45], "alpha": [0] * 7, "optimized": [False] * 7}
    assert analysis.alpha_before_peak([baseline]).steps == 0
    counts = analysis.alpha_before_peak([baseline], only_optimized=False, source="ema")
    assert (counts.explore, counts.exploit) == (3, 2)  # indices 0, 1, 3 at the running peak; 2, 4 below


# --- paired comparison ------------------------------------------------------------------------------


def seven_versus_two() -> tuple[Run, Run]:
    """20 shared samples: 6 both right, 5 both wrong, 2 only baseline right, 7 only other right;
    plus 3 samples only the baseline ran and 1 only the other ran."""
    base = [True] * 6 + [False] * 5 + [True] * 2 + [False] * 7
    other = [True] * 6 + [False] * 5 + [False] * 2 + [True] * 7
    a, b = run_with_outcomes("base", base), run_with_outcomes("vreason", other)
    a.predictions += [prediction(f"only-a{i}") for i in range(3)]
    b.predictions += [prediction("only-b")]
    return a, b


def test_mcnemar_p_matches_binomial_formula_for_7_vs_2():
    c = analysis.paired_comparison(*seven_versus_two(), n_boot=200)
    assert (c.n_pairs, c.only_in_baseline, c.only_in_other) == (20, 3, 1)
    assert (c.only_baseline_correct, c.only_other_correct) == (2, 7)
    # Two-sided exact: 2 * P(X <= 2), X ~ Binomial(9, 1/2) = 2 * (1 + 9 + 36) / 2**9.
    assert c.mcnemar_p == pytest.approx(2 * (math.comb(9, 0) + math.comb(9, 1) + math.comb(9, 2)) / 2**9)
    assert c.accuracy_diff == pytest.approx(5 / 20)
    assert c.score_diff == pytest.approx(5 / 20) and c.binary_scores


def test_no_discordant_pairs_gives_mcnemar_p_one():
    a = run_with_outcomes("a", [True, False, True])
    assert analysis.paired_comparison(a, a, n_boot=100).mcnemar_p == 1.0


def test_regression_scores_are_thresholded_for_mcnemar_and_reported_raw():
    a = Run("a", "a", predictions=[prediction("x", 0.4), prediction("y", 0.9)])
    b = Run("b", "b", predictions=[prediction("x", 0.6), prediction("y", 0.8)])
    c = analysis.paired_comparison(a, b, n_boot=100)
    assert (c.only_baseline_correct, c.only_other_correct) == (0, 1)  # x crosses 0.5; y stays correct
    assert c.score_diff == pytest.approx(((0.6 - 0.4) + (0.8 - 0.9)) / 2)
    assert c.accuracy_diff == pytest.approx(0.5) and not c.binary_scores


def test_failed_prediction_scores_zero_and_drops_out_of_token_pairs():
    a = Run("a", "a", predictions=[prediction("x", 1.0, 10), prediction("y", 1.0, 10)])
    b = Run("b", "b", predictions=[prediction("x", 1.0, 30), prediction("y", failed=True)])
    c = analysis.paired_comparison(a, b, n_boot=100)
    assert c.score_other == 0.5 and c.only_baseline_correct == 1
    assert c.token_pairs == 1 and c.token_diff == 20.0


def test_paired_bootstrap_ci_contains_true_difference_and_is_seeded():
    # Population: the other run is right whenever the baseline is, and on 10% more of the samples.
    u = np.random.default_rng(123).random(500)
    differences = (u < 0.7).astype(float) - (u < 0.6)
    low, high = analysis.paired_bootstrap_ci(differences, n_boot=4000, seed=7)
    assert low < 0.1 < high
    assert (low, high) == analysis.paired_bootstrap_ci(differences, n_boot=4000, seed=7)
    assert (low, high) != analysis.paired_bootstrap_ci(differences, n_boot=4000, seed=8)
    # Resampling pairs (not each run separately) gives the paired standard error, sd(d) / sqrt(n).
    paired_se = differences.std(ddof=1) / math.sqrt(differences.size)
    assert (high - low) / 2 == pytest.approx(1.96 * paired_se, rel=0.15)


def test_wilcoxon_detects_known_token_shift():
    tokens_a = [100 + 7 * i for i in range(20)]
    tokens_b = [n + i + 1 for i, n in enumerate(tokens_a)]  # differences 1..20, all positive
    a = run_with_outcomes("a", [True] * 20, tokens_a)
    b = run_with_outcomes("b", [True] * 20, tokens_b)
    c = analysis.paired_comparison(a, b, n_boot=100)
    assert c.token_diff == pytest.approx(10.5)
    assert c.wilcoxon_p == pytest.approx(2 / 2**20)  # exact: only the all-positive sign pattern is as extreme
    assert c.wilcoxon_note is None


def test_wilcoxon_all_zero_differences_gives_p_one_with_note():
    a = run_with_outcomes("a", [True] * 5, [10] * 5)
    c = analysis.paired_comparison(a, a, n_boot=100)
    assert c.token_diff == 0.0 and c.wilcoxon_p == 1.0
    assert "all differences are zero" in c.wilcoxon_note


def test_duplicate_sample_id_is_rejected():
    a = Run("a", "a", predictions=[prediction("x"), prediction("x")])
    with pytest.raises(ValueError, match="'x' appears twice"):
        analysis.paired_comparison(a, a)


def test_runs_without_shared_samples_are_rejected():
    a, b = Run("a", "a", predictions=[prediction("x")]), Run("b", "b", predictions=[prediction("y")])
    with pytest.raises(ValueError, match="share no sample_id"):
        analysis.paired_comparison(a, b)


# --- tables -----------------------------------------------------------------------------------------


def test_comparison_table_has_one_row_per_run_against_the_baseline():
    base, vreason = seven_versus_two()
    same = Run("id-same", "same", predictions=base.predictions)
    table = analysis.comparison_table([base, vreason, same], baseline=0, n_boot=200)
    assert table["run"].tolist() == ["base", "vreason", "same"]
    assert table["n"].tolist() == [23, 21, 23]
    assert table.loc[0, "accuracy"] == pytest.approx(11 / 23)
    assert table[["diff", "mcnemar_p", "wilcoxon_p"]].iloc[0].isna().all()  # baseline vs itself: empty
    assert table.loc[1, "diff"] == pytest.approx(0.25)
    assert table.loc[1, "ci_low"] < 0.25 < table.loc[1, "ci_high"]
    assert table.loc[1, "mcnemar_p"] == pytest.approx(92 / 512)
    assert table.loc[2, "diff"] == 0.0 and table.loc[2, "mcnemar_p"] == 1.0


def test_comparison_table_baseline_by_name():
    base, vreason = seven_versus_two()
    table = analysis.comparison_table([vreason, base], baseline="base", n_boot=100)
    assert math.isnan(table.loc[1, "diff"]) and table.loc[0, "diff"] == pytest.approx(0.25)


def test_markdown_table_renders_header_alignment_and_missing_values():
    frame = pd.DataFrame({"run": ["base", "v|r"], "n": [10, 12], "diff": [math.nan, 0.123456]})
    assert analysis.markdown_table(frame, digits=3).splitlines() == [
        "| run | n | diff |",
        "|---|---:|---:|",
        "| base | 10 | – |",
        "| v\\|r | 12 | 0.123 |",
    ]


def test_write_table_writes_markdown_and_csv(tmp_path):
    frame = pd.DataFrame({"run": ["a"], "accuracy": [0.5]})
    assert analysis.write_table(frame, tmp_path / "t.md").read_text().startswith("| run | accuracy |")
    pd.testing.assert_frame_equal(pd.read_csv(analysis.write_table(frame, tmp_path / "t.csv")), frame)
    with pytest.raises(ValueError, match="md or .csv"):
        analysis.write_table(frame, tmp_path / "t.txt")


def test_seed_summary_gives_mean_and_std_over_seeds_of_one_config():
    runs = [
        run_with_outcomes("lr1-s0", [True, False], seed=0, **{"method.lr": "1e-3"}),
        run_with_outcomes("lr1-s1", [True, True], seed=1, **{"method.lr": "1e-3"}),
        run_with_outcomes("lr2-s0", [False, False], seed=0, **{"method.lr": "1e-2"}),
    ]
    groups = analysis.group_by_config(runs)
    assert {k: [r.name for r in v] for k, v in groups.items()} == {
        "method.lr=1e-3": ["lr1-s0", "lr1-s1"],
        "method.lr=1e-2": ["lr2-s0"],
    }
    summary = analysis.seed_summary(groups).set_index("config")
    assert summary.loc["method.lr=1e-3", "accuracy_mean"] == pytest.approx(0.75)
    assert summary.loc["method.lr=1e-3", "accuracy_std"] == pytest.approx(math.sqrt(0.125))
    assert summary.loc["method.lr=1e-3", "seeds"] == "0,1"
    assert math.isnan(summary.loc["method.lr=1e-2", "accuracy_std"])


def test_token_count_distribution_lists_finished_samples_per_run():
    a = Run("a", "a", predictions=[prediction("x", num_tokens=5), prediction("y", failed=True)])
    b = Run("b", None, predictions=[prediction("x", num_tokens=7, benchmark="mmvu")])
    frame = analysis.token_count_distribution([a, b])
    assert frame.to_dict("list") == {
        "run": ["a", "b"],
        "benchmark": ["synthetic", "mmvu"],
        "sample_id": ["x", "x"],
        "num_tokens": [5, 7],
    }


def test_trace_summary_reads_peak_final_entropy_and_cycles():
    p = prediction("x", num_tokens=3)
    p["trace"] = make_trace([0.5, 1.0, 2.0, 1.5, 1.0])
    p["trace"]["ema"] = [0.5, 1.0, 2.0, 1.5, 1.0]
    row = analysis.trace_summary([p], prominence=0.1, last_n=2).iloc[0]
    assert (row.ema_peak_step, row.ema_peak_height, row.final_entropy) == (3, 2.0, 1.25)
    assert (row.maxima, row.minima, row.ema_peak_position) == (1, 0, 0.6)


# --- plots ------------------------------------------------------------------------------------------


def plotted_runs() -> list[Run]:
    a = Run("id-a", "base", predictions=[prediction(f"s{i}", num_tokens=5 + 3 * i) for i in range(4)])
    b = Run("id-b", "vreason", predictions=[prediction(f"s{i}", num_tokens=4 + i) for i in range(4)])
    b.predictions.append(prediction("failed", failed=True))
    return [a, b]


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


@pytest.mark.parametrize("align", ["step", "normalized"])
def test_plot_entropy_curves_labels_axes_with_units(align):
    figure = analysis.plot_entropy_curves(plotted_runs(), align=align)
    assert isinstance(figure.canvas, FigureCanvasAgg)
    assert figure.axes[0].get_ylabel() == "entropy (nats)"
    xlabel = figure.axes[-1].get_xlabel()
    assert xlabel == "generation step (tokens)" if align == "step" else "fraction" in xlabel
    assert len(figure.axes) == (2 if align == "step" else 1)  # the step plot shows samples still generating
    assert png_bytes(figure).startswith(b"\x89PNG")
    analysis.close(figure)


def test_plot_alpha_histogram_and_token_counts_draw_one_series_per_run():
    runs = plotted_runs()
    alpha = analysis.plot_alpha_histogram(runs)
    assert [t.get_text() for t in alpha.axes[0].get_legend().get_texts()] == [
        "base (4 samples)",
        "vreason (4 samples)",
    ]
    tokens = analysis.plot_token_counts(runs)
    assert tokens.axes[0].get_ylabel() == "output tokens per sample (tokens)"
    assert png_bytes(alpha).startswith(b"\x89PNG") and png_bytes(tokens).startswith(b"\x89PNG")


def test_plots_of_runs_without_traces_do_not_fail():
    empty = [Run("id-x", "x", predictions=[prediction("a", failed=True)])]
    for figure in (
        analysis.plot_entropy_curves(empty),
        analysis.plot_alpha_histogram(empty),
        analysis.plot_token_counts(empty),
    ):
        assert png_bytes(figure).startswith(b"\x89PNG")


# --- MLflow ------------------------------------------------------------------------------------------


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh SQLite tracking store with an experiment whose artifacts live under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment(
        "analysis-test", artifact_location=(tmp_path / "artifacts").as_uri()
    )
    yield uri, experiment_id
    mlflow.set_tracking_uri(None)


def log_run(tmp_path, experiment_id: str, name: str, params: dict, predictions: list[dict]) -> str:
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in predictions))
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
        mlflow.log_params(params)
        mlflow.log_artifact(str(path))  # at the artifact root, as tracking.log_results does
    return run.info.run_id


def test_load_run_round_trips_params_and_predictions(tracking, tmp_path):
    uri, experiment_id = tracking
    first = [prediction("s0", 1.0), prediction("s1", failed=True)]
    second = [prediction("s0", 0.0)]
    first_id = log_run(tmp_path, experiment_id, "smoke", {"seed": 0, "method.lr": "1e-3"}, first)
    second_id = log_run(tmp_path, experiment_id, "smoke", {"seed": 1, "method.lr": "1e-3"}, second)

    by_id = analysis.load_run(first_id, tracking_uri=uri)
    assert (by_id.run_id, by_id.name, by_id.params) == (first_id, "smoke", {"seed": "0", "method.lr": "1e-3"})
    assert by_id.predictions == first

    by_name = analysis.load_run("smoke", tracking_uri=uri, experiment="analysis-test")
    assert by_name.run_id == second_id and by_name.predictions == second  # the latest run of that name

    latest = analysis.load_runs(tracking_uri=uri, experiment="analysis-test", latest=2)
    assert [r.run_id for r in latest] == [second_id, first_id]
    assert [r.run_id for r in analysis.load_runs([first_id, "smoke"], tracking_uri=uri)] == [
        first_id,
        second_id,
    ]


def test_load_run_names_what_it_could_not_find(tracking):
    uri, _ = tracking
    with pytest.raises(LookupError, match="'nope'"):
        analysis.load_run("nope", tracking_uri=uri, experiment="analysis-test")
    with pytest.raises(LookupError, match="no MLflow experiment"):
        analysis.load_run("nope", tracking_uri=uri, experiment="missing")
