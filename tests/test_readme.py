"""The README, followed word for word: every runnable line of its ```sh blocks works and ends with
the result the README describes.

A new shell (the project's environment activated, so `leanml` and `python` are the venv's) runs the
lines in order in a copy of the examples folder. Lines that name placeholders (RECIPE.yaml,
MODEL.onnx, RUN_DIR, [--options]) are the command reference, and `make` lines set up the
environment this test already runs in; both are skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# A token that stands for something the reader supplies: RECIPE.yaml, MODEL.onnx, RUN_DIR, N, DIR.
PLACEHOLDER = re.compile(r"^(--[\w-]+=)?[A-Z][A-Z_]*(\.\w+)?$")
# Runs that take minutes: `leanml demo` is what `make demo` runs, checked by the slow CLI tests.
TOO_LONG = {("leanml", "demo")}
# A guard against a command that hangs, not a speed test: far above what any README command takes
# on a loaded 2-core machine (the whole own-model run there takes a few minutes).
HANG_GUARD_S = 3600


def readme_commands() -> list[list[str]]:
    """The words of every line in the README's ```sh blocks, comments removed, in order."""
    blocks = re.findall(
        r"^```sh\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL
    )
    return [
        words
        for block in blocks
        for line in block.splitlines()
        if (words := shlex.split(line, comments=True))
    ]


def runnable(words: list[str]) -> bool:
    if words[0] not in ("leanml", "python") or tuple(words[:2]) in TOO_LONG:
        return False
    if words[0] == "python" and not words[1].startswith("examples/"):
        return False
    return not any(PLACEHOLDER.match(w) or w.startswith("[") for w in words[1:])


def test_the_readme_names_the_newcomers_commands():
    lines = [" ".join(w) for w in readme_commands() if runnable(w)]
    for start in (
        "python examples/own_model/prepare.py",
        "leanml run examples/own_model/recipe.yaml",
        "leanml quantize ",
        "leanml data export ",
        "leanml measure ",
        "leanml show ",
    ):
        assert any(line.startswith(start) for line in lines), (start, lines)


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    bin_dir = Path(sys.executable).parent  # what `. .venv/bin/activate` puts first on PATH
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    out: dict[str, str] = {}
    for words in filter(runnable, readme_commands()):
        proc = subprocess.run(
            words,
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD_S,
        )
        assert proc.returncode == 0, (" ".join(words), proc.stdout[-2000:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, (" ".join(words), proc.stderr[-2000:])
        out[" ".join(words[:2])] = proc.stdout
    own = tmp_path / "examples" / "own_model"
    runs = tmp_path / "runs" / "own_model"

    # prepare.py: the data and your trained weights, and it said what it did
    assert (own / "data.npz").is_file() and (own / "weights.safetensors").is_file()
    assert "test accuracy" in out["python examples/own_model/prepare.py"]
    # leanml run: the baseline is the given weights, as measured; prune, then int8, every stage kept
    metrics = json.loads((runs / "metrics.json").read_text())
    stages = {s["kind"]: s for s in metrics["stages"]}
    assert list(stages) == ["baseline", "prune", "quantize"] and not metrics["failed_stages"]
    assert stages["baseline"]["metric"] > 0.95  # the given weights, not retrained
    assert (runs / "model.onnx").is_file() and (runs / "report.html").is_file()
    # leanml show: the table and the deploy line again
    assert "deploy model.onnx" in out["leanml show"] and "baseline" in out["leanml show"]
    # leanml data export: into the example's folder, nothing in the folder the commands run in
    with np.load(own / "test.npz") as test:
        assert test["x"].shape == (500, 1, 128) and test["y"].shape == (500,)
    assert not list(tmp_path.glob("*.npz"))
    # leanml measure --split all: every sample of the data (1500 train + 500 test)
    assert "(all, 2000 samples)" in out["leanml measure"]
    # leanml quantize --mode dynamic: an int8 model (the float one is written only when no int8
    # format measured faster side by side), about 4x smaller, and the line says faster
    summary = json.loads((runs / "stages/00-baseline/model-dynamic/quantize.json").read_text())
    assert summary["accepted"] and summary["format"] == "dynamic", summary["notes"]
    (kept,) = [f for f in summary["details"]["formats"] if f["chosen"]]
    assert kept["int8"] and all(r < 1 for r in kept["latency_ratio"].values()), kept
    assert summary["size_ratio"] > 3
    assert (
        "wrote runs/own_model/stages/00-baseline/model-dynamic/model.onnx" in out["leanml quantize"]
    )


def test_pip_install_keeps_any_torch_2_from_2_4():
    """`pip install .` keeps a user's torch: the requirement admits every 2.x release from 2.4."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (torch,) = [r for r in map(Requirement, project["dependencies"]) if r.name == "torch"]
    for minor in range(4, 15):
        for version in (f"2.{minor}.0", f"2.{minor}.1", f"2.{minor}.0+cpu", f"2.{minor}.0+cu124"):
            assert torch.specifier.contains(version), (str(torch), version)
