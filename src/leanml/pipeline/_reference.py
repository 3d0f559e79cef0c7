"""A tree model beside a tabular network: HistGradientBoosting with scikit-learn's defaults, fitted on
the training split and measured like the baseline, so the report can say when trees do better.

On tables, gradient-boosted trees often beat a small MLP at a fraction of its latency; a user who
only ever sees the net's figures has no way to know. This is a reference, not a stage: it is never
deployed, and a failure only costs the report its line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .._utils import first_line
from ..measure import MeasureConfig, Measurement, measure
from ..models import Model
from ..report import TreeReference
from ..runtime import to_onnx
from ..task import Task
from ._progress import Reporter

CLASSIFIER = "HistGradientBoostingClassifier"
REGRESSOR = "HistGradientBoostingRegressor"


def tree_reference_kind(task: Task, baseline: Model) -> str | None:
    """The estimator the reference uses for this task and baseline, or None when none applies: the
    data must be a table with labels, the baseline a PyTorch net, and the metric accuracy or f1 on
    integer classes, or mse, mae or r2 on one real-valued target."""
    data = task.data
    x, y = data.train.x, data.train.y
    if baseline.torch is None or data.kind != "tabular" or isinstance(x, dict) or y is None:
        return None
    if x.ndim != 2:
        return None
    name = task.metric.name
    if name in ("accuracy", "f1") and y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return CLASSIFIER
    if name in ("mse", "mae", "r2") and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
        return REGRESSOR
    return None


def tree_reference(
    task: Task,
    baseline: Model,
    baseline_measurement: Measurement,
    config: MeasureConfig,
    *,
    seed: int,
    log: Reporter,
) -> TreeReference | None:
    """Fit, export and measure the tree reference for ``task``, or None when it does not apply or
    fails (said in the log; the run goes on).

    Only batch 1 is timed, in ONNX Runtime with the recipe's threads, warm-up and repeats, and
    without the memory probe: the report compares one latency, and the reference must cost seconds.
    """
    kind = tree_reference_kind(task, baseline)
    if kind is None:
        return None
    from sklearn import ensemble
    from threadpoolctl import threadpool_limits

    data = task.data
    x, y = data.train.x, data.train.y
    assert isinstance(x, np.ndarray) and y is not None
    estimator = getattr(ensemble, kind)(random_state=seed)
    onnx_config = config.model_copy(
        update={
            "runtime": "onnxruntime",
            "batch_sizes": [1],
            "memory": False,
            "compare_torch": False,
        }
    )
    try:
        with log.progress(f"tree reference ({kind})") as step:
            # One OpenMP thread: on a busy machine HGB's thread team spin-waits for cores and a
            # 0.1 s fit takes tens of seconds; on the tables this is for, one thread takes seconds.
            with threadpool_limits(limits=1, user_api="openmp"):
                estimator.fit(x, y.ravel() if kind == REGRESSOR else y)
            step.update("export")
            with tempfile.TemporaryDirectory(prefix="leanml-reference-") as d:
                path = Path(d) / "model.onnx"
                to_onnx(Model(sklearn=estimator), data.val, path)
                step.update("measuring")
                m = measure(path, data.test, task.metric, onnx_config)
    except Exception as e:  # noqa: BLE001 - the reference is optional: a failure costs its line only
        log.log(f"[yellow]tree reference skipped[/]: {type(e).__name__}: {first_line(e, 200)}")
        return None
    note = None
    if baseline_measurement.runtime != m.runtime:
        note = f"the baseline was timed in {baseline_measurement.runtime}, the trees in {m.runtime}"
    log.log(f"tree reference: {kind} {task.metric.name} {m.metric:.4f}")
    return TreeReference(model=kind, measurement=m, note=note)
