"""The MLflow store survives kills and company: a kill at any moment of its creation leaves no store
or a complete one, two first runs at once both work, and a broken store stops with one line."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from vreason.cli import main
from vreason.tracking import ARTIFACTS, StoreError, Tracker, open_store, store_problem

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.yaml"

# Creates the store at argv[1], SIGKILLing itself at its argv[2]-th SQL statement (0: just before the
# rename that moves the finished store into place).
KILL_DURING_CREATION = textwrap.dedent(
    """
    import os, signal, sys
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    uri, kill_at = sys.argv[1], int(sys.argv[2])
    count = [0]

    @event.listens_for(Engine, "before_cursor_execute")
    def maybe_kill(*args):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    if kill_at == 0:
        os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    from vreason.tracking import open_store
    open_store(uri)
    """
)


def python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def statements_of_a_store_creation(path: Path) -> int:
    count = [0]

    def counter(*args):
        count[0] += 1

    event.listen(Engine, "before_cursor_execute", counter)
    try:
        open_store(f"sqlite:///{path}")
    finally:
        event.remove(Engine, "before_cursor_execute", counter)
    return count[0]


def test_a_kill_at_any_moment_of_store_creation_leaves_no_store_or_a_complete_one(tmp_path):
    statements = statements_of_a_store_creation(tmp_path / "reference.db")
    assert statements > 50, "MLflow's creation runs many statements: the kills below land inside it"

    # SIGKILL at the first statement, a third and two thirds of the way, the last one, and between the
    # finished migration and the rename (0); each on its own new store, all at once.
    kill_points = [1, statements // 3, 2 * statements // 3, statements - 1, 0]
    stores = [tmp_path / f"killed_at_{n}" / "mlflow.db" for n in kill_points]
    procs = [
        python(KILL_DURING_CREATION, f"sqlite:///{db}", str(n))
        for db, n in zip(stores, kill_points, strict=True)
    ]
    for db, n, proc in zip(stores, kill_points, procs, strict=True):
        rc, out = finish(proc)
        assert rc == -9, (n, out)  # it was killed, mid-creation
        assert not db.exists(), n  # never a half-made store where the next run looks
    assert list(stores[-1].parent.glob(".mlflow.db.*.creating")), "killed with the finished store unrenamed"

    # The next run is neither blocked by the dead processes' locks nor confused by what they left.
    rc, out = finish(python(RECREATE, *(f"sqlite:///{db}" for db in stores)), timeout=120)
    assert rc == 0, out
    for db in stores:
        assert store_problem(db) is None
        assert sorted(p.name for p in db.parent.iterdir()) == ["mlflow.db", "mlflow.db.lock"]
    assert MlflowClient(tracking_uri=f"sqlite:///{stores[0]}").search_experiments()  # MLflow's own


RECREATE = (
    "import sys\nfrom vreason.tracking import open_store\nfor uri in sys.argv[1:]:\n    open_store(uri)\n"
)


FIRST_USE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from vreason.tracking import Tracker

    uri, out, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True)
    (out / "ready").touch()
    while not go.exists():
        time.sleep(0.01)
    tracker = Tracker(uri, "shared", out)
    tracker.start("first-use", {})
    tracker.log_metrics({"x": 1.0})
    tracker.finish()
    """
)


def test_two_first_runs_on_a_new_store_at_once_both_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    go = tmp_path / "go"
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [python(FIRST_USE, uri, str(out), str(go)) for out in outs]
    deadline = time.time() + 60
    while not all((out / "ready").exists() for out in outs) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()  # both imported: they open the new store at the same moment
    results = [finish(proc) for proc in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("shared")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    # artifacts live beside the store, not in whatever folder the run started from
    assert experiment.artifact_location.startswith(str(tmp_path / ARTIFACTS))


def half_made_store(path: Path) -> None:
    """What a kill did to a store that MLflow creates in place (before this project created stores)."""
    code = KILL_DURING_CREATION.replace("from vreason.tracking import open_store\nopen_store(uri)\n", "")
    code += (
        "\nfrom mlflow.tracking import MlflowClient\nMlflowClient(tracking_uri=uri).search_experiments()\n"
    )
    rc, out = finish(python(code, f"sqlite:///{path}", "120"))
    assert rc == -9, out


@pytest.mark.parametrize("damage", ["half_made", "not_sqlite", "wrong_schema"])
def test_a_broken_store_stops_the_run_with_one_line_saying_how_to_recover(
    tmp_path, monkeypatch, capsys, damage
):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    if damage == "half_made":
        half_made_store(db)
    elif damage == "not_sqlite":
        db.write_bytes(b"this is not a database" * 100)
    else:
        open_store(f"sqlite:///{db}")
        with sqlite3.connect(db) as con:
            con.execute("UPDATE alembic_version SET version_num = 'abc123'")
    assert store_problem(db) is not None
    capsys.readouterr()
    monkeypatch.setattr("vreason.run.build_model", lambda **_: pytest.fail("model loaded"))
    args = ["run", str(SMOKE), f"output_dir={tmp_path}/out", f"data.root={tmp_path}/data"]
    assert main([*args, f"tracking.uri=sqlite:///{db}", "data.synthetic_size=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: tracking store"), err
    assert "incomplete or damaged" in err and f"mv {db} {db}.broken" in err

    # Following the message works: the store is moved aside and the rerun creates a fresh one.
    db.rename(tmp_path / "mlflow.db.broken")
    Tracker(f"sqlite:///{db}", "after", tmp_path / "out")
    assert store_problem(db) is None


def test_a_store_that_is_an_empty_file_is_created_in_its_place(tmp_path):
    db = tmp_path / "mlflow.db"
    db.touch()  # what connecting with sqlite3 to a missing path leaves
    open_store(f"sqlite:///{db}")
    assert store_problem(db) is None


def test_a_corrupt_run_record_is_named(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mlflow_run.json").write_text('{"run_id": "abc')
    with pytest.raises(StoreError, match="mlflow_run.json: not a run record"):
        Tracker(f"sqlite:///{tmp_path}/mlflow.db", "x", out)
