"""`leanml data export DATA --out FILE.npz`: a dataset split in the NPZ layout that `leanml quantize`
(`--calib`, `--eval`) and `leanml measure --data` read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from .._utils import atomic_path
from ..data import Split, load_data
from ..errors import InvalidInputError
from ._app import (
    Command,
    Group,
    SeedOption,
    app,
    check_output_dir,
    flag_names,
    handle_errors,
    out_console,
)

data_app = typer.Typer(cls=Group, help="Datasets: export a split as NPZ.", no_args_is_help=True)
app.add_typer(data_app, name="data")

SPLITS = ("train", "val", "test", "all")


def _arrays(split: Split, suffix: str = "") -> dict[str, np.ndarray]:
    x = split.x
    out = {f"{k}{suffix}": v for k, v in x.items()} if isinstance(x, dict) else {f"x{suffix}": x}
    if split.y is not None:
        out[f"y{suffix}"] = split.y
    return out


@data_app.command("export", cls=Command)
@handle_errors
def export_cmd(
    data: Annotated[
        str, typer.Argument(help="digits | breast_cancer | wine | csv:PATH | npz:PATH")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the NPZ file to write")],
    split: Annotated[
        str, typer.Option("--split", help="train | val | test | all [default: test]")
    ] = "test",
    target: Annotated[
        str | None, typer.Option("--target", help="label column, for CSV data")
    ] = None,
    seed: SeedOption = None,
) -> None:
    """Write a dataset split as NPZ: arrays x and y (one array per input for named inputs).

    --split all writes x_train/y_train (train and validation together) and x_test/y_test, the
    layout `task.data: npz:PATH` reads as a predefined split. The splits are the ones a recipe with
    the same seed uses. Built-in data is scaled as leanml trains on it (digits: pixels / 16, in
    [0, 1]; the tabular sets: raw feature values).

    Example: leanml data export digits --split test --out digits-test.npz
    """
    from ..pipeline import Recipe, validate_keys

    if split not in SPLITS:
        raise InvalidInputError(f"--split must be one of {', '.join(SPLITS)}; got {split!r}")
    if out.suffix != ".npz":
        raise InvalidInputError(f"--out must name a .npz file; got {str(out)!r}")
    if out.is_dir():
        raise InvalidInputError(f"--out {str(out)!r} is a folder; name the .npz file to write")
    check_output_dir(out.parent, given_as="--out's folder")
    seed = validate_keys(Recipe, {"seed": seed}, flags=flag_names(["seed"])).seed
    ds = load_data(data, target=target, seed=seed)
    if split == "all":
        joined = Split(
            {k: np.concatenate([v, ds.val.x[k]]) for k, v in ds.train.x.items()}
            if isinstance(ds.train.x, dict)
            else np.concatenate([ds.train.x, ds.val.x]),
            None if ds.train.y is None else np.concatenate([ds.train.y, ds.val.y]),
        )
        arrays = {**_arrays(joined, "_train"), **_arrays(ds.test, "_test")}
    else:
        arrays = _arrays(getattr(ds, split))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except OSError as e:
        raise InvalidInputError(
            f"--out {str(out)!r} cannot be written ({e.strerror or type(e).__name__}); give a path "
            "in a folder you can write to"
        ) from None
    shapes = ", ".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in arrays.items())
    out_console.print(f"wrote {out}: {shapes}")
