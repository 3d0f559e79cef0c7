"""Conversion of a leanml Model to ONNX, checked against the model it came from."""

from __future__ import annotations

import contextlib
import functools
import io
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .._utils import atomic_path
from ..data import Inputs, Split, take
from ..errors import ExportError, InvalidInputError
from ..models import Model
from ..training import predict
from ._session import OnnxRunner

OPSET = 17
# ONNX Runtime and PyTorch use different kernels; outputs agree to float32 rounding, not exactly.
PARITY_RTOL = 1e-3
PARITY_ATOL = 1e-4


def _example(x: Inputs, n: int = 2) -> tuple:
    part = take(x, slice(0, n))
    if isinstance(part, dict):
        return ({k: torch.as_tensor(v) for k, v in part.items()},)
    return (torch.as_tensor(part),)


def torch_to_onnx(net: nn.Module, sample: Inputs, path: Path, *, opset: int = OPSET) -> None:
    """Export ``net`` with a dynamic batch axis (and dynamic sequence axis for 2-D named inputs)."""
    net = net.eval()
    args = _example(sample)
    if isinstance(sample, dict):
        # A dict as the last positional argument is taken as keyword arguments by torch.onnx.
        names = list(sample)
        dynamic = {
            k: ({0: "batch", 1: "sequence"} if sample[k].ndim >= 2 else {0: "batch"}) for k in names
        }
    else:
        names = ["input"]
        dynamic = {"input": {0: "batch"}}
    dynamic["output"] = {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=["output"],
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )


# skl2onnx's converter swaps a module function for the duration of one conversion (below); the lock
# keeps two threads from interleaving the swap and its undo.
_SHIM_LOCK = threading.Lock()


@contextlib.contextmanager
def _tree_missing_flags_as_ints() -> Iterator[None]:
    """Let skl2onnx 1.20 convert ``HistGradientBoosting*`` under protobuf >= 5 (for one conversion).

    Its ``add_tree_to_attribute_pairs_hist_gradient_boosting`` passes each branch's
    ``missing_go_to_left`` (``np.uint8``) as ``nodes_missing_value_tracks_true``, but a Python
    ``False`` for every leaf; the mixed list goes into ``AttributeProto.ints``, which protobuf now
    rejects ("Expected an int, got a boolean"). The ``nodes`` arrays of the fitted model are fine
    (the field is ``u1``), so the model is left alone: ``tree_ensemble.add_node``, which that function
    looks up at call time, is wrapped to pass the flag as an ``int``, and restored afterwards. The
    exported graph is what skl2onnx intends (0/1 flags; its own comment says booleans cannot be used).
    When skl2onnx renames the function, the wrapper is simply not installed.
    """
    try:
        from skl2onnx.common import tree_ensemble
    except ImportError:  # pragma: no cover - skl2onnx is a dependency
        yield
        return
    original = getattr(tree_ensemble, "add_node", None)
    if original is None:
        yield
        return

    @functools.wraps(original)
    def add_node(*args: Any, **kwargs: Any) -> Any:
        flag = kwargs.get("nodes_missing_value_tracks_true")
        if isinstance(flag, (bool, np.bool_)):
            kwargs["nodes_missing_value_tracks_true"] = int(flag)
        return original(*args, **kwargs)

    with _SHIM_LOCK:
        tree_ensemble.add_node = add_node
        try:
            yield
        finally:
            tree_ensemble.add_node = original


def sklearn_to_onnx(estimator, n_features: int, path: Path) -> None:
    """Convert a fitted scikit-learn estimator or pipeline with skl2onnx (float inputs, no zipmap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "predict_proba") else None
    try:
        with _tree_missing_flags_as_ints():
            onx = convert_sklearn(
                estimator,
                initial_types=[("input", FloatTensorType([None, n_features]))],
                options=options,
                target_opset={"": OPSET, "ai.onnx.ml": 3},
            )
    except Exception as e:
        raise ExportError(f"skl2onnx cannot convert {type(estimator).__name__}: {e}") from e
    path.write_bytes(onx.SerializeToString())


def sklearn_outputs(estimator, x: np.ndarray) -> np.ndarray:
    """What the exported sklearn model's prediction output holds: probabilities or predictions."""
    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(x), dtype=np.float32)
    return np.asarray(estimator.predict(x), dtype=np.float32).reshape(len(x), -1)


def check_parity(reference: np.ndarray, got: np.ndarray, *, what: str) -> float:
    """Largest absolute difference; raise ExportError when beyond the stated tolerance."""
    if reference.shape != got.shape:
        if reference.size == got.size:
            got = got.reshape(reference.shape)
        else:
            raise ExportError(
                f"{what}: ONNX output shape {got.shape} differs from {reference.shape}"
            )
    err = np.abs(reference.astype(np.float64) - got.astype(np.float64))
    tol = PARITY_ATOL + PARITY_RTOL * np.abs(reference)
    if not np.all(err <= tol):
        raise ExportError(
            f"{what}: ONNX Runtime outputs differ from the source model by up to {err.max():.3g} "
            f"(tolerance {PARITY_ATOL} + {PARITY_RTOL}·|ref|)"
        )
    return float(err.max()) if err.size else 0.0


def to_onnx(model: Model, sample: Split, path: str | Path, *, check: bool = True) -> float | None:
    """Write ``model`` as an ONNX file at ``path`` (atomically) and check it.

    The file passes ``onnx.checker``; for torch and sklearn models, ONNX Runtime outputs on ``sample``
    must match the source model within ``PARITY_ATOL + PARITY_RTOL·|ref|``.

    Returns:
        the largest absolute output difference measured, or None for an ONNX-only model.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if model.torch is not None:
            try:
                torch_to_onnx(model.torch, sample.x, tmp)
            except InvalidInputError:
                raise
            except Exception as e:
                raise ExportError(
                    f"torch.onnx.export failed: {str(e).splitlines()[0][:300]}"
                ) from e
        elif model.sklearn is not None:
            x = sample.x
            assert not isinstance(x, dict)
            sklearn_to_onnx(model.sklearn, x.shape[1], tmp)
        elif model.onnx is not None:
            shutil.copyfile(model.onnx, tmp)
        else:
            raise ExportError("the model has no form to export")
        onnx.checker.check_model(str(tmp))
        err = None
        if check and (model.torch is not None or model.sklearn is not None):
            probe = sample.head(16)
            runner = OnnxRunner(tmp)
            got = runner.predict(probe.x)
            if model.torch is not None:
                ref = predict(model.torch, probe.x)
            else:
                ref = sklearn_outputs(model.sklearn, probe.x)  # type: ignore[arg-type]
            err = check_parity(ref, got, what="export check")
    return err
