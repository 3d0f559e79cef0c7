"""Write metrics.json, report.md and report.html into a run directory (atomically)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from .._text import signed
from .._utils import atomic_write_text
from ..measure import Timing
from ._plots import draw, plan_scatter, size_bars, tradeoff_scatter, training_curves
from ._records import RunRecord

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("leanml.report", "templates"),
    # report.html.j2: the .j2 suffix hides the .html one from select_autoescape(["html"])
    autoescape=jinja2.select_autoescape(["html", "html.j2"]),
    keep_trailing_newline=True,
)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def human_count(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def human_params(n: int | None) -> str:
    """A parameter count for the tables. Models whose ONNX graph keeps its numbers in operator
    attributes rather than weight tensors (tree ensembles, linear models exported with ONNX-ML
    ops) count 0 parameters; showing ``0`` would read as an empty model."""
    return "n/a (no weight tensors)" if n == 0 else human_count(n)


def within_noise(a: Timing, b: Timing) -> bool:
    """Whether two medians differ by less than the spread measured around them (p95 - p50 of
    each): a difference the timing itself cannot tell from the machine's noise."""
    return abs(a.p50 - b.p50) <= (a.p95 - a.p50) + (b.p95 - b.p50)


def _rows(run: RunRecord, batch_sizes: list[int], with_plots: bool) -> list[dict[str, Any]]:
    rows = []
    base = run.stages[0].measurement if run.stages else None
    for s in run.stages:
        m = s.measurement
        timings = []
        for b in batch_sizes:
            t = m.latency.get(b)
            ref = base.latency.get(b) if base is not None and s is not run.stages[0] else None
            noisy = t is not None and ref is not None and within_noise(t, ref)
            p50 = f"{t.p50:.3f}{' ≈' if noisy else ''}" if t else "–"
            timings += [p50, f"{t.p95:.3f}"] if t else ["–", "–"]
        d = s.as_dict()
        rows.append(
            {
                "name": s.name,
                "kind": s.kind,
                "metric": m.metric,
                "delta": s.metric_delta,
                "timings": timings,
                "size": human_bytes(m.size_bytes),
                "compressed": human_bytes(m.compressed_size_bytes),
                "params": human_params(m.params),
                "nonzero": human_params(m.nonzero_params),
                "flops": human_count(m.flops),
                "memory": human_bytes(m.peak_memory_bytes),
                "accepted": s.accepted,
                "reason": s.reason or "",
                "notes": s.notes,
                "training": d.get("training"),
                "plots": [draw(p) for p in s.plots] if with_plots else [],
            }
        )
    return rows


def inline_code(text: str) -> markupsafe.Markup:
    """Markdown's `code` spans as HTML ``<code>``, the rest escaped."""
    parts = str(markupsafe.escape(text)).split("`")
    return markupsafe.Markup(
        "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    )


_ENV.filters["human_bytes"] = human_bytes
_ENV.filters["signed"] = signed
_ENV.filters["inline_code"] = inline_code


def metrics_dict(run: RunRecord) -> dict[str, Any]:
    return run.as_dict()


def write_metrics(run: RunRecord, run_dir: Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write ``metrics`` (``metrics_dict(run)`` when not given) as ``run_dir/metrics.json``."""
    path = run_dir / "metrics.json"
    metrics = metrics_dict(run) if metrics is None else metrics
    atomic_write_text(path, json.dumps(metrics, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_reports(run: RunRecord, run_dir: Path) -> dict[str, Path]:
    """Write metrics.json, report.md and report.html; returns their paths."""
    batch_sizes = sorted({b for s in run.stages for b in s.measurement.latency})
    runtimes = {s.name: s.measurement.runtime for s in run.stages}
    if len(set(runtimes.values())) <= 1:
        runtime = next(iter(runtimes.values()), "onnxruntime")
    else:  # measure.runtime: torch times PyTorch models in eager mode; ONNX-only stages need ORT
        runtime = (
            "; ".join(
                f"{r} for {', '.join(n for n, rr in runtimes.items() if rr == r)}"
                for r in dict.fromkeys(runtimes.values())
            )
            + " (latencies from different runtimes do not compare)"
        )
    metrics = metrics_dict(run)
    ctx = {
        "run": run,
        "batch_sizes": batch_sizes,
        "runtime": runtime,
        "headline": run.deploy_line(),
        "reference": metrics.get("reference"),
    }
    paths = {"metrics": write_metrics(run, run_dir, metrics)}
    md = _ENV.get_template("report.md.j2").render(rows=_rows(run, batch_sizes, False), **ctx)
    atomic_write_text(run_dir / "report.md", md)
    paths["markdown"] = run_dir / "report.md"
    html = _ENV.get_template("report.html.j2").render(
        rows=_rows(run, batch_sizes, True),
        scatter=tradeoff_scatter(run),
        plans=plan_scatter(run),
        sizes=size_bars(run),
        curves=training_curves(run),
        **ctx,
    )
    atomic_write_text(run_dir / "report.html", html)
    paths["html"] = run_dir / "report.html"
    return paths
