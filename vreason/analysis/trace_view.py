"""A per-sample trace view as one self-contained HTML page (the run's ``trace_view.html`` artifact):
each sample's generated text coloured by the entropy of the distribution each token was drawn from,
its optimisation steps and EMA peak marked, above a small chart of entropy and EMA, as the paper
shows a reasoning trace (Fig. 3). Hovering over a token shows its step, entropy, EMA, alpha and |ΔV|.

No script and no external resource: MLflow's artifact viewer shows it in a sandboxed frame.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence

from vreason.analysis.per_sample import ema_peak
from vreason.analysis.runs import Predictions, Run, _predictions

_MAX_SAMPLES = 50  # a page per run, not per benchmark: the rest are in traces.csv

_STYLE = """
body { font: 14px/1.5 system-ui, sans-serif; margin: 1.5em; color: #111; max-width: 70em; }
h1 { font-size: 1.3em; margin-bottom: 0.2em; } h2 { font-size: 1.05em; margin: 1.6em 0 0.3em; }
.meta { color: #444; margin: 0.2em 0; } .note { color: #666; }
.legend { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: center; margin: 0.8em 0 1em;
  padding: 0.6em 0.8em; background: #f6f6f6; border-radius: 6px; }
.bar { display: inline-block; width: 12em; height: 0.9em; vertical-align: middle;
  background: linear-gradient(to right, rgba(220,38,38,0.04), rgba(220,38,38,0.75)); border: 1px solid #ccc; }
.text { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 13px; line-height: 1.9;
  border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; }
.t { border-radius: 2px; }
.opt { outline: 2px solid #2563eb; outline-offset: -1px; }
.opt::after { font-size: 0.7em; vertical-align: super; color: #2563eb; }
.opt.up::after { content: "\\25B2"; } .opt.down::after { content: "\\25BC"; }
.peak { outline: 3px solid #111; outline-offset: 0; }
.peak::before { content: "EMA peak \\25BE"; font: bold 0.65em system-ui, sans-serif; color: #111;
  vertical-align: super; margin-right: 0.2em; }
svg { display: block; margin: 0.4em 0; }
"""


def _colour(entropy: float, low: float, top: float) -> str:
    """Background for a token: pale at the run's lowest entropy, deep red at its highest."""
    span = top - low
    share = 0.0 if not math.isfinite(entropy) or span <= 0 else min(max((entropy - low) / span, 0.0), 1.0)
    return f"rgba(220,38,38,{0.04 + 0.71 * share:.3f})"


def _chart(trace: Mapping[str, Sequence], top: float, peak: int, width: int = 900, height: int = 120) -> str:
    """Entropy (thin) and EMA (thick) against generated token, ticks at optimisation steps, ▼ at the peak."""
    n = len(trace["entropy"])
    pad_l, pad_b, pad_t = 40, 18, 8
    top = top if top > 0 else 1.0

    def x(step: int) -> float:  # step is 1-based
        return pad_l + (width - pad_l - 8) * ((step - 1) / max(n - 1, 1))

    def y(value: float) -> float:
        return pad_t + (height - pad_t - pad_b) * (1 - min(max(value, 0.0), top) / top)

    def line(values: Sequence[float]) -> str:
        return " ".join(f"{x(i + 1):.1f},{y(v):.1f}" for i, v in enumerate(values) if math.isfinite(v))

    ticks = "".join(
        f'<line x1="{x(i + 1):.1f}" x2="{x(i + 1):.1f}" y1="{height - pad_b}" y2="{height - pad_b - 8}" '
        f'stroke="#2563eb" stroke-width="1.5"/>'
        for i, optimized in enumerate(trace["optimized"])
        if optimized
    )
    px, py = x(peak + 1), y(trace["ema"][peak])
    return (
        f'<svg viewBox="0 0 {width} {height}" style="width:100%;max-width:{width}px;height:auto" role="img" '
        f'aria-label="entropy and EMA by generated token">'
        f'<line x1="{pad_l}" x2="{width - 8}" y1="{height - pad_b}" y2="{height - pad_b}" stroke="#999"/>'
        f'<line x1="{pad_l}" x2="{pad_l}" y1="{pad_t}" y2="{height - pad_b}" stroke="#999"/>'
        f'<text x="{pad_l - 4}" y="{pad_t + 8}" font-size="10" text-anchor="end">{top:.2g}</text>'
        f'<text x="{pad_l - 4}" y="{height - pad_b}" font-size="10" text-anchor="end">0</text>'
        f'<text x="4" y="{height / 2:.0f}" font-size="10">nats</text>'
        f'<text x="{x(1):.1f}" y="{height - 4}" font-size="10">1</text>'
        f'<text x="{x(n):.1f}" y="{height - 4}" font-size="10" text-anchor="end">token {n}</text>'
        f"{ticks}"
        f'<polyline points="{line(trace["entropy"])}" fill="none" stroke="#dc2626" stroke-width="1" '
        f'opacity="0.6"/>'
        f'<polyline points="{line(trace["ema"])}" fill="none" stroke="#111" stroke-width="2"/>'
        f'<text x="{px:.1f}" y="{py - 3:.1f}" font-size="12" text-anchor="middle">\u25bc</text>'
        f"</svg>"
    )


def _token_spans(
    trace: Mapping[str, Sequence], text: Sequence[str], low: float, top: float, peak: int
) -> str:
    spans = []
    for i, piece in enumerate(text):
        alpha = int(trace["alpha"][i])
        optimized = bool(trace["optimized"][i])
        classes = ["t"]
        if optimized:
            classes += ["opt", "up" if alpha > 0 else "down"]
        if i == peak:
            classes.append("peak")
        tip = (
            f"token {i + 1}: H = {trace['entropy'][i]:.3f} nats, EMA = {trace['ema'][i]:.3f}, "
            f"alpha = {alpha:+d}{', optimisation step' if optimized else ''}, "
            f"|dV| = {trace['controller_norm'][i]:.4g}"
        )
        spans.append(
            f'<span class="{" ".join(classes)}" data-step="{i + 1}" title="{html.escape(tip)}" '
            f'style="background:{_colour(trace["entropy"][i], low, top)}">{html.escape(piece) or "&#8203;"}</span>'
        )
    return "".join(spans)


def _short(value: object, limit: int = 40) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _steps_text(steps: list[int]) -> str:
    if not steps:
        return "none"
    shown = ", ".join(map(str, steps[:40]))
    return shown + (f", ... ({len(steps)} in all)" if len(steps) > 40 else "")


def trace_view_html(
    run: Predictions,
    token_text: Callable[[int], str] | None = None,
    title: str | None = None,
    max_samples: int = _MAX_SAMPLES,
) -> str:
    """The HTML page of a run's traces (see the module docstring): one section per sample, the first
    ``max_samples`` by sample id. ``token_text`` decodes one token id; without it tokens show as ids.

    Each section names its optimisation steps ("optimisation steps: 4, 8, ...") and its EMA peak step;
    in the text an optimisation step is boxed in blue with ▲ (alpha = +1, entropy pushed up) or ▼
    (alpha = -1, pushed down), and the EMA peak is boxed in black."""
    predictions = sorted(_predictions(run), key=lambda p: str(p.get("sample_id")))
    name = title or (run.label if isinstance(run, Run) else "run")
    traced = [p for p in predictions if not p.get("failed") and p.get("trace") and p["trace"]["entropy"]]
    finite = [h for p in traced for h in p["trace"]["entropy"] if math.isfinite(h)]
    low, top = min(finite, default=0.0), max(finite, default=1.0)
    params = run.params if isinstance(run, Run) else {}
    baseline = params.get("method.controller.name") == "none" or params.get("method") == "baseline"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(name)}: trace view</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(name)}: generated text coloured by entropy</h1>",
        "<p class='note'>Each token's background is the entropy of the distribution it was sampled "
        "from (raw, in nats). Hover over a token for its step, entropy, EMA, alpha and |ΔV|."
        + (" This is a baseline run: no optimisation steps." if baseline else "")
        + "</p>",
        "<div class='legend'>"
        f"<span>entropy <span class='bar'></span> {low:.2f} to {top:.2f} nats (this run's range)</span>"
        "<span><span class='t opt up'>tok</span> optimisation step, alpha = +1 (entropy pushed up)</span>"
        "<span><span class='t opt down'>tok</span> optimisation step, alpha = -1 (pushed down)</span>"
        "<span><span class='t peak'>tok</span> the sample's EMA peak</span>"
        "<span>chart: entropy (red), EMA (black), blue ticks: optimisation steps</span></div>",
    ]
    if len(predictions) > max_samples:
        parts.append(
            f"<p class='note'>Showing the first {max_samples} of {len(predictions)} samples by id; "
            "every token of every sample is in traces.csv.</p>"
        )
    for p in predictions[:max_samples]:
        sample = html.escape(str(p.get("sample_id")))
        parts.append(f"<h2 id='{sample}'>{sample}</h2>")
        answer = f"answer {html.escape(_short(p.get('answer', '')))} (solution {html.escape(_short(p.get('solution', '')))})"
        if p.get("failed") or not p.get("trace") or not p["trace"]["entropy"]:
            parts.append(f"<p class='meta'>failed: {html.escape(str(p.get('error') or 'no tokens'))}</p>")
            continue
        trace = p["trace"]
        peak, height = ema_peak(trace["ema"])
        steps = [i + 1 for i, optimized in enumerate(trace["optimized"]) if optimized]
        text = [token_text(t) if token_text else f"\u27e8{t}\u27e9" for t in trace["token_ids"]]
        parts.append(
            f"<p class='meta'>{html.escape(str(p.get('benchmark', '')))} · score {p.get('score', 0):g} · "
            f"{answer} · {len(trace['entropy'])} tokens · EMA peak at token {peak + 1} ({height:.3f} nats)"
            f"</p><p class='meta'>optimisation steps: {_steps_text(steps)}</p>"
        )
        parts.append(_chart(trace, top, peak))
        parts.append(f"<div class='text'>{_token_spans(trace, text, low, top, peak)}</div>")
    parts.append("</body></html>")
    return "".join(parts)
