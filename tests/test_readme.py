"""The README's Python examples run as written (pasted into a fresh interpreter namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_has_the_tiny_and_the_smollm2_example():
    assert len(BLOCKS) == 2
    assert "tiny_qwen2_5_vl()" in BLOCKS[0] and "smollm2_gguf_path()" in BLOCKS[1]


@pytest.mark.parametrize("block", BLOCKS, ids=["tiny_qwen2_5_vl", "smollm2"])
def test_readme_example_runs_and_optimises(block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    steps = re.search(r"(\d+) optimisation steps, \|dV\| = ([0-9.]+)", out)
    assert steps, out
    assert int(steps.group(1)) > 0 and float(steps.group(2)) > 0
