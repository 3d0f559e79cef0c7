"""`leanml run`, `leanml demo` and `leanml measure`."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich import box
from rich.table import Table

from .._text import signed, times
from ..data import Dataset, Split
from ..errors import InvalidInputError
from ._app import (
    Command,
    JsonOption,
    QuietOption,
    RunDirOption,
    SeedOption,
    TrustPickleOption,
    app,
    check_output_dir,
    config_default,
    err_console,
    flag_names,
    handle_errors,
    out_console,
    require_model,
    require_recipe,
)
from ._plausible import warn_if_implausible


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


def _table(title: str) -> Table:
    """A compact table that fits an 80-column terminal."""
    return Table(
        title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True
    )


def stage_table(metrics: dict[str, Any]) -> Table:
    """The final terminal table: a row per stage, narrow enough for an 80-column terminal (the
    rollback reasons follow the table, see :func:`rollback_lines`)."""
    from ..report import human_bytes, human_count

    metric = metrics["task"]["metric"]
    t = _table(
        f"leanml: {metrics['task']['name']} (final: {metrics.get('final')}); {metric} and Δ on the "
        "test split"
    )
    bn_size = next(
        (
            s["latency_ms"]["batch_n"]["batch_size"]
            for s in metrics["stages"]
            if s["latency_ms"].get("batch_n")
        ),
        None,
    )
    cols = (
        "stage",
        metric,
        "Δ",
        "b1 ms",
        f"b{bn_size} ms" if bn_size else "bN ms",
        "size",
        "params",
        "FLOPs",
        "kept",
    )
    for col in cols:
        t.add_column(col, justify="left" if col in ("stage", "kept") else "right", no_wrap=True)
    for s in metrics["stages"]:
        lat = s["latency_ms"]
        bn = lat.get("batch_n")
        name = s["name"] if s["name"] == s["kind"] else f"{s['name']} ({s['kind']})"
        t.add_row(
            name,
            f"{s['metric']:.4f}",
            signed(s["metric_delta"]),
            f"{lat['batch_1']['p50']:.3f}",
            f"{bn['p50']:.3f}" if bn else "–",
            human_bytes(s["size_bytes"]),
            "n/a" if s["params"] == 0 else human_count(s["params"]),  # trees: no weight tensors
            human_count(s.get("flops")),
            "yes" if s.get("accepted", True) else "[yellow]no[/]",
        )
    return t


def rollback_lines(metrics: dict[str, Any], *, said_above: bool = False) -> list[str]:
    """Why each rolled-back stage was rolled back, each failed stage's error and why a stage was
    skipped; with ``said_above`` (the run's log printed them on this terminal as they happened)
    only which stages, so no paragraph is printed twice."""
    lines = [
        (f"[yellow]rolled back {s['name']}[/]", s.get("reason", ""))
        for s in metrics["stages"]
        if not s.get("accepted", True)
    ]
    lines += [
        (f"[red]stage {f['name']} failed[/]", f["error"]) for f in metrics.get("failed_stages", [])
    ]
    lines += [
        (f"[yellow]skipped {k['name']}[/]", f"does not apply: {k['reason']}")
        for k in metrics.get("skipped_stages", [])
    ]
    if said_above:
        return [f"{head} (why: above, and in report.md)" for head, _ in lines]
    return [f"{head}: {why}" for head, why in lines]


def plan_table(metrics: dict[str, Any]) -> Table | None:
    """After a planned run: the best plan per technique combination, measured on validation."""
    opt = metrics.get("optimize")
    if not opt or not opt.get("by_combination"):
        return None
    base = opt["baseline"]
    key = "latency_ms" if opt["objective"] == "latency" else "size_bytes"
    words = ("faster", "slower") if opt["objective"] == "latency" else ("smaller", "larger")
    t = _table(
        f"best plan per combination ({opt['trials']} plans measured on validation; {opt['stopped']})"
    )
    metric = metrics["task"]["metric"]
    for col in ("plan", f"val {metric}", "Δ", "vs the baseline"):
        t.add_column(col, justify="left" if col == "plan" else "right")
    for row in opt["by_combination"]:
        t.add_row(
            row["label"],
            f"{row['val_metric']:.4f}",
            signed(row["val_metric"] - base["val_metric"]),
            times(base[key] / row[key], *words) if row[key] else "–",
        )
    return t


def _run(
    recipe: Any,
    output: Path | None,
    as_json: bool,
    quiet: bool,
    trust_pickle: bool,
    workers: int = 1,
) -> None:
    require_recipe(recipe)
    from ..pipeline import Reporter, RichReporter, load_recipe, run

    r = load_recipe(recipe)
    if output is not None:
        check_output_dir(output)
    else:
        check_output_dir(r.run_dir, given_as="the recipe's output")
    if trust_pickle:
        r = r.model_copy(update={"trust_pickle": True})
    reporter = Reporter() if (quiet or as_json) else RichReporter(err_console)
    result = run(r, output=output, reporter=reporter, workers=workers)
    if as_json:
        sys.stdout.write(json.dumps(result.metrics, indent=2, default=_json_default) + "\n")
        return
    if not quiet:
        plans = plan_table(result.metrics)
        if plans is not None:
            out_console.print(plans)
            opt = result.metrics["optimize"]
            chosen = "plan.yaml: " if opt["plan"] else "nothing beat the baseline: "
            out_console.print(f"{chosen}{opt['reason']}")
        out_console.print(stage_table(result.metrics))
        # the run's log (stderr) said why as it happened; on one terminal, once is enough
        said = out_console.is_terminal and err_console.is_terminal
        for line in rollback_lines(result.metrics, said_above=said):
            out_console.print(line)
        out_console.print(
            f"run directory: {result.run_dir} (report.html, report.md, metrics.json, model.onnx)"
        )
        out_console.print(f"[bold]{result.record.deploy_line()}[/]")


@app.command("run", cls=Command)
@handle_errors
def run_cmd(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file")],
    output: RunDirOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Train the baseline, apply the recipe's stages, measure each on ONNX Runtime, write the report.

    Example: leanml run examples/own_model/recipe.yaml --output runs/own_model
    """
    _run(recipe, output, as_json, quiet, trust_pickle)


@app.command("demo", cls=Command)
@handle_errors
def demo_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="run directory")] = Path(
        "runs/demo"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or table")] = False,
) -> None:
    """Run the bundled demo recipe (digits CNN) end to end.

    Example: leanml demo --output runs/demo
    """
    recipe = resources.files("leanml.demo").joinpath("digits.yaml")
    with resources.as_file(recipe) as path:
        _run(path, output, False, quiet, False)


def _batch_sizes(text: str) -> list[int]:
    """``--batch-sizes``: comma-separated integers >= 1, at least one."""
    parts = [b.strip() for b in text.split(",") if b.strip()]
    try:
        sizes = [int(b) for b in parts]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 for b in sizes):
        raise InvalidInputError(
            f"--batch-sizes must be one or more comma-separated integers >= 1; got {text!r}; "
            "e.g. --batch-sizes 1,64"
        )
    return sizes


SPLITS = ("train", "val", "test", "all")


def _split(ds: Dataset, name: str) -> Split:
    """``--split``: one split of ``ds``, or ``all``: train, val and test concatenated."""
    if name != "all":
        return getattr(ds, name)
    parts = (ds.train, ds.val, ds.test)
    x = (
        {k: np.concatenate([p.x[k] for p in parts]) for k in ds.train.x}
        if isinstance(ds.train.x, dict)
        else np.concatenate([p.x for p in parts])
    )
    y = None if any(p.y is None for p in parts) else np.concatenate([p.y for p in parts])
    return Split(x, y)


@app.command("measure", cls=Command)
@handle_errors
def measure_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            help="an ONNX model file, a Keras model (.keras, .h5) or a TensorFlow SavedModel folder"
        ),
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data", help="digits | breast_cancer | wine | npz:PATH | csv:PATH | PATH.npz"
        ),
    ],
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="task metric (default: accuracy for class labels, r2 otherwise; agreement or cosine without labels)",
        ),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="label column, for CSV data")
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="train | val | test (the split a run with the same seed uses) | all (the three "
            "together)",
        ),
    ] = "test",
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            help="ONNX Runtime's intra-op threads",
            show_default=config_default("leanml.measure:MeasureConfig.threads"),
        ),
    ] = None,
    batch_sizes: Annotated[
        str | None,
        typer.Option(
            "--batch-sizes",
            help="comma-separated",
            show_default=config_default("leanml.measure:MeasureConfig.batch_sizes"),
        ),
    ] = None,
    seed: SeedOption = None,
    expect: Annotated[
        float | None,
        typer.Option(
            "--expect",
            help="the metric you expect the model to score (e.g. from your training); a figure "
            "far below it gets a warning",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the measurement as JSON")] = False,
) -> None:
    """Measure any ONNX file: metric, latency p50/p95 at two batch sizes, size, params, FLOPs, memory.

    A Keras or TensorFlow model is measured as its ONNX export, checked against its own outputs.

    Example: leanml measure runs/demo/model.onnx --data digits --split all
    """
    require_model(model)
    from ..data import check_regression_targets, load_data
    from ..measure import MeasureConfig, measure
    from ..metrics import get_metric
    from ..models import Model, is_keras_path, is_tensorflow_path
    from ..pipeline import (
        Recipe,
        check_onnx_takes,
        default_metric,
        model_file_to_onnx,
        reference_targets,
        validate_keys,
        validate_section,
    )
    from ..runtime import OnnxRunner, load_onnx
    from ..task import check_class_labels

    source = model
    converted = is_keras_path(model) or is_tensorflow_path(model)
    if not converted:
        load_onnx(model)
    given = {
        "threads": threads,
        # given even when not: `leanml measure` times every model at MeasureConfig's batch_sizes
        # (only a recipe switches to sequence_batch_sizes for a model that takes token ids)
        "batch_sizes": MeasureConfig().batch_sizes
        if batch_sizes is None
        else _batch_sizes(batch_sizes),
    }
    cfg = validate_section(
        MeasureConfig,
        {k: v for k, v in given.items() if v is not None},
        "measure",
        flags=flag_names(given),
    )
    threads = cfg.threads
    if split not in SPLITS:
        raise InvalidInputError(
            f"--split must be one of {', '.join(SPLITS)}; got {split!r}; e.g. --split test"
        )
    seed = validate_keys(Recipe, {"seed": seed}, flags=flag_names(["seed"])).seed
    ds = load_data(data, target=target, seed=seed)
    if converted:  # what is measured is the export, checked against the model's own outputs
        model = model_file_to_onnx(model, sample=ds.val)
    check_onnx_takes(OnnxRunner(model), ds.train.x)
    part = _split(ds, split)
    note = None
    if part.y is None:
        ref = reference_targets(ds, Model(onnx=model))
        m = get_metric(metric or default_metric(ref, reference=True))
        part = _split(ref, split)
        note = f"no labels: {m.name} is fidelity to the model's own float outputs"
    else:
        m = get_metric(metric or default_metric(ds))
        if m.needs_class_labels:
            check_class_labels(ds.name, split, part.y)
        elif m.name in ("mse", "mae", "r2"):
            check_regression_targets(ds, m.name)
    res = measure(model, part, m, cfg)
    if note is None:
        warn_if_implausible(
            m.name, res.metric, part.y, expect=expect, higher_is_better=m.higher_is_better
        )
    if as_json:
        out = {
            "metric": {"name": m.name, "value": res.metric, "split": split, "samples": len(part)},
            "latency_ms": res.latency_record(),
            "size_bytes": res.size_bytes,
            "compressed_size_bytes": res.compressed_size_bytes,
            "params": res.params,
            "nonzero_params": res.nonzero_params,
            "flops": res.flops,
            "peak_memory_bytes": res.peak_memory_bytes,
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    # a line of its own, not the table's title: rich wraps a title to the table's width
    out_console.print(
        f"{source} on {data} ({split}, {len(part)} samples), ONNX Runtime, {threads} thread(s)",
        soft_wrap=True,
        markup=False,
        highlight=False,
    )
    t = Table()
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row(m.name, f"{res.metric:.4f}")
    for b, tm in sorted(res.latency.items()):
        t.add_row(
            f"latency batch {b} p50 / p95", f"{tm.p50:.3f} / {tm.p95:.3f} ms ({tm.repeats} runs)"
        )
    t.add_row("size on disk", f"{res.size_bytes:,} B")
    t.add_row("compressed (zlib -9)", f"{res.compressed_size_bytes:,} B")
    t.add_row("params (non-zero)", f"{res.params:,} ({res.nonzero_params:,})")
    t.add_row("FLOPs per sample", f"{res.flops:,}" if res.flops else "unknown")
    t.add_row(
        "peak inference memory",
        f"{res.peak_memory_bytes / 2**20:.1f} MiB"
        if res.peak_memory_bytes is not None
        else "unknown",
    )
    out_console.print(t)
    if note:
        out_console.print(note)
