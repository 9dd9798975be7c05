"""The analysis notebooks run top to bottom on a fresh V-Reason run and a fresh baseline run, draw their
figures, refuse a run name two runs share, and are stored the way git keeps them: outputs stripped,
parameters first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 120
# Small runs: the notebooks need traces to plot, not a meaningful accuracy.
SMALL = ["data.synthetic_size=4", "sampling.max_new_tokens=24"]


def vreason_run(config: str, out: str, tmp: Path, *overrides: str) -> None:
    """``vreason run`` in a subprocess, with every file it writes inside ``tmp``."""
    args = [
        f"output_dir={tmp}/{out}",
        f"data.root={tmp}/data",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        *SMALL,
        *overrides,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "vreason", "run", str(ROOT / "experiments" / config), *args],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A directory holding ``mlflow.db`` with the runs the notebooks read by default: the smoke config's
    V-Reason run and its baseline (``smoke/vreason-k4-lr1``, ``smoke/baseline``)."""
    tmp = tmp_path_factory.mktemp("notebooks")
    vreason_run("smoke.yaml", "out", tmp)
    vreason_run("smoke.yaml", "out_base", tmp, "method=baseline")
    return tmp


def kernel_env(store: Path) -> dict[str, str]:
    """The caller's environment pointed at ``store``; run selectors left to the notebooks' defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VREASON_")}
    env["VREASON_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
    env["VREASON_EXPERIMENT"] = "vreason-smoke"
    return env


def test_there_are_notebooks_to_run():
    assert {p.name for p in NOTEBOOKS} >= {
        "entropy_curves.ipynb",
        "alpha_histograms.ipynb",
        "compare_runs.ipynb",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_stripped_with_a_parameters_cell_first(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert "parameters" in notebook.cells[0].metadata.get("tags", [])
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_fresh_runs_and_draws_a_figure(path, store):
    notebook = nbformat.read(path, as_version=4)  # executed in memory: the file is never written
    # The kernel must be this interpreter (the venv's), not whatever "python3" resolves to elsewhere.
    notebook.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable, end='')"))
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(store)}},  # the kernel's working directory
    )
    client.execute(env=kernel_env(store))  # raises CellExecutionError on the first failing cell

    *cells, probe = notebook.cells
    assert probe.outputs[0].text == sys.executable
    outputs = [output for cell in cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} drew no figure"
    printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "smoke/baseline: MLflow run" in printed and "smoke/vreason-k4-lr1: MLflow run" in printed


def test_a_notebook_refuses_a_run_name_two_runs_share(store):
    vreason_run("smoke.yaml", "out_again", store)  # a second run named smoke/vreason-k4-lr1
    notebook = nbformat.read(ROOT / "notebooks" / "entropy_curves.ipynb", as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S)
    with pytest.raises(CellExecutionError, match="2 runs are named 'smoke/vreason-k4-lr1'"):
        client.execute(env=kernel_env(store))
