"""Data: built-in datasets, user files and entry points, as train/val/test splits."""

from __future__ import annotations

from pathlib import Path

from .._utils import DEFAULT_SEED
from ..errors import InvalidInputError
from ._builtin import builtin_names, load_builtin
from ._dataset import (
    Dataset,
    Inputs,
    Split,
    check_finite,
    check_regression_targets,
    n_rows,
    split_arrays,
    take,
)
from ._files import (
    float_array,
    import_entry_point,
    load_csv,
    load_entry_point,
    load_npz,
    read_npz,
    require_file,
)
from ._splits import Splits

__all__ = [
    "Dataset",
    "Inputs",
    "Split",
    "Splits",
    "builtin_names",
    "check_finite",
    "check_regression_targets",
    "float_array",
    "import_entry_point",
    "load_data",
    "n_rows",
    "read_npz",
    "require_file",
    "split_arrays",
    "take",
]


def load_data(
    spec: str,
    *,
    target: str | None = None,
    val: float | None = None,
    test: float | None = None,
    seed: int = DEFAULT_SEED,
    base_dir: Path | None = None,
    one_hot: bool = False,
) -> Dataset:
    """Load a dataset from a recipe's ``task.data`` string.

    Args:
        spec: a built-in name (``digits``, ``breast_cancer``, ``wine``), ``csv:PATH``, ``npz:PATH``
            or ``pkg.mod:function``.
        target: the label column of a CSV file.
        val, test: split fractions, when the data has no predefined split (default: the recipe's
            ``task.splits``, :class:`Splits`).
        seed: seeds the shuffle, so the same seed gives the same splits.
        base_dir: relative paths are relative to this folder (the recipe's).

    Raises:
        InvalidInputError: the data is missing, unreadable, or breaks a rule.
    """
    base = base_dir or Path.cwd()
    fractions = Splits.given(val, test)
    val, test = fractions.val, fractions.test
    if spec in builtin_names():
        return load_builtin(spec, val=val, test=test, seed=seed)
    if spec.startswith("csv:"):
        return load_csv(
            _path(spec[4:], base), target=target, val=val, test=test, seed=seed, one_hot=one_hot
        )
    if spec.startswith("npz:"):
        return load_npz(_path(spec[4:], base), val=val, test=test, seed=seed)
    if ":" in spec and not spec.endswith((".csv", ".npz")):
        return load_entry_point(spec, search_dir=base, val=val, test=test, seed=seed)
    if spec.endswith(".npz"):
        return load_npz(_path(spec, base), val=val, test=test, seed=seed)
    if spec.endswith(".csv"):
        return load_csv(
            _path(spec, base), target=target, val=val, test=test, seed=seed, one_hot=one_hot
        )
    raise InvalidInputError(
        f"task.data {spec!r} is not a known dataset; use one of {builtin_names()}, "
        "csv:PATH, npz:PATH or 'pkg.mod:function'"
    )


def _path(p: str, base: Path) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path
