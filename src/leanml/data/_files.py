"""User data: CSV files, NPZ files and ``pkg.mod:function`` entry points."""

from __future__ import annotations

import csv
import importlib
import sys
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError
from ._dataset import Dataset, Split, cannot_split_message, check_finite, n_rows, split_arrays


def import_entry_point(spec: str, *, search_dir: Path | None = None, what: str = "entry point"):
    """Import ``pkg.mod:attr``; ``search_dir`` (the recipe's folder) is put on ``sys.path`` first."""
    if ":" not in spec:
        raise InvalidInputError(f"{what} {spec!r} must look like 'pkg.module:function'")
    module_name, attr = spec.split(":", 1)
    if search_dir is not None and str(search_dir) not in sys.path:
        sys.path.insert(0, str(search_dir))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, but also errors raised while the module runs
        raise InvalidInputError(
            f"{what} {spec!r} does not import: {type(e).__name__}: {e}; check the module name "
            "and that it is importable from the recipe's folder"
        ) from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidInputError(
            f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None


def require_file(path: Path, *, what: str, fix: str) -> None:
    """Raise one line unless ``path`` is a regular file, saying what it is instead.

    Args:
        path: the path the user gave.
        what: its role, e.g. ``data file`` or ``calibration file``.
        fix: what to give instead, e.g. ``give a .csv file``.
    """
    if path.is_file():
        return
    if path.is_dir():
        found = "is a directory"
    elif path.exists():
        found = "is not a regular file (a device, pipe or socket)"
    else:
        found = "does not exist"
    raise InvalidInputError(f"{what} {str(path)!r} {found}; {fix}")


def _task_kind(x: np.ndarray | dict) -> str:
    if isinstance(x, dict):
        return "other"
    if x.ndim == 2:
        return "tabular"
    if x.ndim == 4 or x.ndim == 3:
        return "image"
    return "other"


def _classes(y: np.ndarray | None) -> int | None:
    if y is None or not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        return None
    return int(y.max()) + 1


def _finish(
    name: str,
    tr: Split,
    va: Split,
    te: Split,
    names: list[str] | None,
    *,
    float_targets: bool = False,
) -> Dataset:
    """Check the splits and build the Dataset. ``float_targets``: the targets were given as floats
    (integral floats still read as class labels, but a regression metric may take them)."""
    splits = (("train", tr), ("val", va), ("test", te))
    labelled = [split_name for split_name, s in splits if s.y is not None]
    if labelled and len(labelled) < len(splits):
        unlabelled = [split_name for split_name, s in splits if s.y is None]
        raise InvalidInputError(
            f"{name}: the {'/'.join(labelled)} split(s) have labels but {'/'.join(unlabelled)} "
            "do not; give labels on every split or on none"
        )
    for split_name, s in splits:
        check_finite(f"{name} ({split_name})", s.x)
        if s.y is not None:
            check_finite(f"{name} ({split_name})", s.y, what="the targets (y)")
            if len(s.y) != n_rows(s.x):
                raise InvalidInputError(
                    f"{name}: {split_name} has {n_rows(s.x)} inputs but {len(s.y)} labels; "
                    "every input row needs exactly one label"
                )
    return Dataset(
        name,
        _task_kind(tr.x),
        tr,
        va,
        te,
        feature_names=names,
        n_classes=_classes(tr.y),
        extra={"float_targets": True} if float_targets else {},
    )


def float_array(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as float32; ``what`` names the array (e.g. ``npz:d.npz: array 'x'``) when it holds
    something other than numbers."""
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32, copy=False)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        return x.astype(np.float32)
    raise InvalidInputError(
        f"{what} has dtype {x.dtype} ({_dtype_kind(x)}); model inputs must be numbers (float, "
        "int or bool): encode text or categories as numbers before saving"
    )


def _dtype_kind(x: np.ndarray) -> str:
    kinds = {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers"}
    return kinds.get(x.dtype.kind, "not numbers")


def _as_target(y: np.ndarray) -> np.ndarray:
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if np.all(np.isfinite(y)) and np.all(y == np.round(y)) and len(np.unique(y)) <= 50:
            return y.astype(np.int64)  # integral float labels from CSV are classes
        return y.astype(np.float32)
    return y


def read_npz(
    path: Path, *, what: str = "data", example: str = "x=..., y=..."
) -> dict[str, np.ndarray]:
    """Every array of an NPZ file, read with ``allow_pickle=False``; a missing or unreadable file is
    one clear error (``what`` names the file's role, ``example`` the arrays it should hold)."""
    require_file(
        path, what=f"{what} file", fix=f"give an .npz file saved with numpy.savez(path, {example})"
    )
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    # EOFError: numpy's answer to an empty or truncated file. It must not escape: click reads an
    # EOFError as end of input and reports "interrupted".
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        reason = "it is empty: 0 bytes" if path.stat().st_size == 0 else str(e)[:100]
        raise InvalidInputError(
            f"{what} file {str(path)!r} is not a readable NPZ of plain arrays ({reason}); "
            f"save it with numpy.savez(path, {example})"
        ) from None


def load_npz(path: Path, *, val: float, test: float, seed: int) -> Dataset:
    """Arrays ``x``/``y``, or a predefined split ``x_train``/``y_train``/``x_test``/``y_test``
    (optional ``x_val``/``y_val``). Loaded with ``allow_pickle=False``."""
    arrays = read_npz(path)
    name = f"npz:{path}"
    float_y = any(
        np.issubdtype(a.dtype, np.floating)
        for k, a in arrays.items()
        if k == "y" or k.startswith("y_")
    )

    def array(key: str) -> np.ndarray:
        return float_array(arrays[key], f"{name}: array {key!r}")

    if "x_train" in arrays:
        if "x_test" not in arrays:
            raise InvalidInputError(f"{name}: has x_train but no x_test; add x_test/y_test")
        parts = ["train", "test"] + (["val"] if "x_val" in arrays else [])
        with_y = [f"y_{p}" for p in parts if f"y_{p}" in arrays]
        if with_y and len(with_y) < len(parts):
            missing = [f"y_{p}" for p in parts if f"y_{p}" not in arrays]
            raise InvalidInputError(
                f"{name}: has {', '.join(with_y)} but no {', '.join(missing)}; labels must be on "
                f"every split or on none: add {', '.join(missing)}, or drop {', '.join(with_y)}"
            )
        xtr = array("x_train")
        ytr = _as_target(arrays["y_train"]) if "y_train" in arrays else None
        te = Split(
            array("x_test"),
            _as_target(arrays["y_test"]) if "y_test" in arrays else None,
        )
        if "x_val" in arrays:
            tr = Split(xtr, ytr)
            va = Split(
                array("x_val"),
                _as_target(arrays["y_val"]) if "y_val" in arrays else None,
            )
        else:
            from sklearn.model_selection import train_test_split

            idx = np.arange(len(xtr))
            strat = ytr if (ytr is not None and ytr.dtype == np.int64) else None
            try:
                a, b = train_test_split(idx, test_size=val, random_state=seed, stratify=strat)
            except ValueError as e:
                raise InvalidInputError(
                    cannot_split_message(f"{name} (x_train)", len(xtr), strat, f"val {val:g}", e)
                ) from None
            tr = Split(xtr[a], None if ytr is None else ytr[a])
            va = Split(xtr[b], None if ytr is None else ytr[b])
        return _finish(name, tr, va, te, None, float_targets=float_y)
    if "x" not in arrays:
        raise InvalidInputError(
            f"{name}: holds arrays {sorted(arrays)}; expected 'x' (and 'y'), or "
            "'x_train'/'y_train'/'x_test'/'y_test'"
        )
    x = array("x")
    y = _as_target(arrays["y"]) if "y" in arrays else None
    if y is not None and len(y) != len(x):
        raise InvalidInputError(
            f"{name}: x has {len(x)} rows but y has {len(y)}; every row needs exactly one label"
        )
    check_finite(name, x)
    stratify = y is not None and y.dtype == np.int64
    tr, va, te = split_arrays(x, y, val=val, test=test, seed=seed, stratify=stratify, name=name)
    return _finish(name, tr, va, te, None, float_targets=float_y)


def load_csv(
    path: Path, *, target: str | None, val: float, test: float, seed: int, one_hot: bool = False
) -> Dataset:
    """A CSV with a header row; ``target`` names the label column."""
    require_file(path, what="data file", fix="give a CSV file with a header row")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: drop a BOM
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"csv:{path}: is not UTF-8 text (it holds byte {e.object[e.start]:#04x}, which UTF-8 "
            "does not allow there); CSV files must be UTF-8: convert it, e.g. "
            "iconv -f latin1 -t utf-8 in.csv > out.csv, or save it as 'CSV UTF-8'"
        ) from None
    if len(rows) < 2:
        raise InvalidInputError(f"csv:{path}: needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise InvalidInputError(
            f"csv:{path}: the header names column(s) {repeated} more than once; every column "
            "needs its own name: rename or drop the repeated ones"
        )
    if target is None:
        raise InvalidInputError(
            f"csv:{path}: task.target is not set; name the label column (one of {header})"
        )
    if target not in header:
        raise InvalidInputError(
            f"csv:{path}: target column {target!r} does not exist; columns are {header}"
        )
    t = header.index(target)
    cols = [c for i, c in enumerate(header) if i != t]
    columns: dict[str, list[str]] = {c: [] for c in header}
    for r_i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise InvalidInputError(
                f"csv:{path}: line {r_i} has {len(r)} fields, the header has {len(header)}"
            )
        for c, v in zip(header, r):
            columns[c].append(v)

    def numeric(values: list[str]) -> np.ndarray | None:
        try:
            return np.array(
                [float(v) if v.strip() != "" else np.nan for v in values], dtype=np.float64
            )
        except ValueError:
            return None

    features: list[np.ndarray] = []
    names: list[str] = []
    bad: list[str] = []
    for c in cols:
        arr = numeric(columns[c])
        if arr is not None:
            features.append(arr)
            names.append(c)
            continue
        levels = sorted(set(columns[c]))
        if one_hot and len(levels) <= 20:
            for lv in levels:
                features.append(np.array([v == lv for v in columns[c]], dtype=np.float64))
                names.append(f"{c}={lv}")
        else:
            bad.append(f"{c} ({len(levels)} distinct values)")
    if bad and one_hot:
        raise InvalidInputError(
            f"csv:{path}: text columns {', '.join(bad)} have more than 20 distinct values, too many "
            "to one-hot (task.one_hot); drop them, or encode them as numbers first (e.g. hash them "
            "into a few buckets)"
        )
    if bad:
        raise InvalidInputError(
            f"csv:{path}: non-numeric columns {', '.join(bad)} have no encoding; encode them as "
            "numbers, or set task.one_hot: true to one-hot the ones with at most 20 distinct values"
        )
    if not features:
        raise InvalidInputError(
            f"csv:{path}: has only the target column {target!r}; give at least one feature "
            "column beside it"
        )
    x = np.stack(features, axis=1).astype(np.float32)
    yn = numeric(columns[target])
    if yn is None:
        classes = sorted(set(columns[target]))
        y = np.array([classes.index(v) for v in columns[target]], dtype=np.int64)
    else:
        y = _as_target(yn)
    name = f"csv:{path}"
    empty = [n for n, f in zip(names, features, strict=True) if np.isnan(f).all()]
    if empty:
        raise InvalidInputError(
            f"csv:{path}: feature column(s) {empty} hold no value in any row (all NaN); drop them"
        )
    nonfinite = [n for n, f in zip(names, features) if not np.isfinite(f).all()]
    check_finite(name, x, what=f"feature column(s) {nonfinite}")
    check_finite(name, y, what=f"target column {target!r}")
    if y.dtype == np.int64 and len(np.unique(y)) == 1:
        only = columns[target][0] if yn is None else str(int(y[0]))
        raise InvalidInputError(
            f"csv:{path}: target column {target!r} holds a single class ({only!r}) in all "
            f"{len(y)} rows; a classifier needs at least two classes to learn from: add rows of "
            "the other classes, or pick another target column"
        )
    tr, va, te = split_arrays(
        x, y, val=val, test=test, seed=seed, stratify=y.dtype == np.int64, name=name
    )
    written_as_floats = yn is not None and any(
        "." in v or "e" in v.lower() for v in columns[target]
    )
    return _finish(name, tr, va, te, names, float_targets=written_as_floats)


def _to_arrays(obj) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays from (x, y), x, or a torch Dataset yielding (x, y) pairs."""
    import torch

    if isinstance(obj, torch.utils.data.Dataset):
        xs, ys = [], []
        for item in obj:  # type: ignore[attr-defined]
            if isinstance(item, (tuple, list)):
                xs.append(np.asarray(item[0]))
                ys.append(np.asarray(item[1]))
            else:
                xs.append(np.asarray(item))
        return np.stack(xs), (np.stack(ys) if ys else None)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return np.asarray(obj[0]), (None if obj[1] is None else np.asarray(obj[1]))
    return np.asarray(obj), None


def load_entry_point(
    spec: str, *, search_dir: Path | None, val: float, test: float, seed: int
) -> Dataset:
    """A function returning ``(x, y)``, a torch Dataset, or a dict with train/val/test of those."""
    fn = import_entry_point(spec, search_dir=search_dir, what="data entry point")
    try:
        out = fn()
    except Exception as e:
        raise InvalidInputError(f"data entry point {spec!r} raised {type(e).__name__}: {e}") from e
    if isinstance(out, dict) and "train" in out:
        parts = {}
        float_y = False
        for k in ("train", "val", "test"):
            if k in out:
                x, y = _to_arrays(out[k])
                float_y = float_y or (y is not None and np.issubdtype(y.dtype, np.floating))
                x = float_array(x, f"data entry point {spec!r}: {k} inputs")
                parts[k] = Split(x, None if y is None else _as_target(y))
        if "test" not in parts:
            raise InvalidInputError(f"data entry point {spec!r}: returned splits without 'test'")
        if "val" not in parts:
            tr = parts["train"]
            idx = np.random.default_rng(seed).permutation(len(tr))
            cut = max(1, int(len(idx) * val))
            parts["val"] = Split(tr.x[idx[:cut]], None if tr.y is None else tr.y[idx[:cut]])
            parts["train"] = Split(tr.x[idx[cut:]], None if tr.y is None else tr.y[idx[cut:]])
        return _finish(
            f"entry:{spec}",
            parts["train"],
            parts["val"],
            parts["test"],
            None,
            float_targets=float_y,
        )
    x, y = _to_arrays(out)
    float_y = y is not None and np.issubdtype(y.dtype, np.floating)
    x = float_array(x, f"data entry point {spec!r}: the inputs")
    y = None if y is None else _as_target(y)
    if y is not None and len(y) != len(x):
        raise InvalidInputError(
            f"data entry point {spec!r}: returned {len(x)} inputs but {len(y)} labels"
        )
    check_finite(f"entry:{spec}", x)
    tr, va, te = split_arrays(
        x,
        y,
        val=val,
        test=test,
        seed=seed,
        stratify=y is not None and y.dtype == np.int64,
        name=f"entry:{spec}",
    )
    return _finish(f"entry:{spec}", tr, va, te, None, float_targets=float_y)
