"""Specification of ``vreason.analysis`` on constructed inputs whose answers are known by hand: the
package's public names, and the constructed runs the ``test_analysis_*`` files share."""

from __future__ import annotations

import ast
from pathlib import Path

from vreason import analysis
from vreason.analysis import Run


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


def seven_versus_two() -> tuple[Run, Run]:
    """20 shared samples: 6 both right, 5 both wrong, 2 only baseline right, 7 only other right;
    plus 3 samples only the baseline ran and 1 only the other ran."""
    base = [True] * 6 + [False] * 5 + [True] * 2 + [False] * 7
    other = [True] * 6 + [False] * 5 + [False] * 2 + [True] * 7
    a, b = run_with_outcomes("base", base), run_with_outcomes("vreason", other)
    a.predictions += [prediction(f"only-a{i}") for i in range(3)]
    b.predictions += [prediction("only-b")]
    return a, b


def public_names_defined_in(module_path: Path) -> set[str]:
    """Top-level functions, classes and constants of a module that do not start with "_"."""
    tree = ast.parse(module_path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    return {name for name in names if not name.startswith("_")}


def test_every_public_name_of_the_submodules_is_importable_from_the_package():
    # The notebooks, ``vreason compare`` and ``tracking`` import everything from ``vreason.analysis``.
    package = Path(analysis.__file__).parent
    defined = set().union(
        *(public_names_defined_in(p) for p in package.glob("*.py") if p.name != "__init__.py")
    )
    assert sorted(defined) == sorted(analysis.__all__)
    assert [name for name in analysis.__all__ if not hasattr(analysis, name)] == []
