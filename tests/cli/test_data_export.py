"""`leanml data export`: a split as NPZ, the layout leanml quantize and measure read."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from leanml.data import load_data


def _leanml(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leanml.cli", *args], capture_output=True, text=True, check=False
    )


def test_export_writes_the_split_a_recipe_with_the_same_seed_uses(tmp_path):
    out = tmp_path / "sub" / "digits-test.npz"
    proc = _leanml("data", "export", "digits", "--split", "test", "--seed", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    want = load_data("digits", seed=3).test
    with np.load(out) as got:
        assert sorted(got.files) == ["x", "y"]
        np.testing.assert_array_equal(got["x"], want.x)
        np.testing.assert_array_equal(got["y"], want.y)


def test_export_all_is_a_predefined_split_that_npz_data_reads(tmp_path):
    out = tmp_path / "all.npz"
    assert _leanml("data", "export", "wine", "--split", "all", "--out", str(out)).returncode == 0
    ds = load_data(f"npz:{out}", seed=0)
    whole = load_data("wine", seed=0)
    assert len(ds.test) == len(whole.test)
    assert len(ds.train) + len(ds.val) == len(whole.train) + len(whole.val)


@pytest.mark.parametrize(
    "args",
    [
        ["nope", "--out", "{tmp}/x.npz"],
        ["digits", "--out", "/proc/no/such/x.npz"],
        ["digits", "--out", "{tmp}/x.txt"],
        ["digits", "--split", "everything", "--out", "{tmp}/x.npz"],
    ],
)
def test_bad_export_arguments_are_one_line(tmp_path, args):
    proc = _leanml("data", "export", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
