"""The example recipes in examples/ (and the bundled demo) are valid and cover every stage kind."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

import leanml
from leanml.techniques import get_stage_class, stage_kinds

from .conftest import FAST_MEASURE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# the kinds leanml ships (tests register their own stages too)
BUILT_IN = {k for k in stage_kinds() if get_stage_class(k).__module__.startswith("leanml.")}


def _kinds(path: Path) -> set[str]:
    recipe = leanml.load_recipe(path)
    return {s.kind for s in recipe.stages}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_each_example_recipe_is_valid_and_documented(path):
    assert _kinds(path) or leanml.load_recipe(path).planned, f"{path.name} has no stages"
    assert f"examples/{path.name}" in (ROOT / "README.md").read_text(), (
        f"README does not mention {path.name}"
    )


def test_every_stage_kind_has_an_example():
    covered = set().union(*(_kinds(p) for p in EXAMPLES))
    missing = BUILT_IN - covered
    assert not missing, f"no example recipe for {sorted(missing)}"


def test_the_demo_is_the_bundled_recipe_and_shows_every_image_stage_kind():
    demo = ROOT / "examples" / "digits.yaml"
    assert demo.resolve() == (ROOT / "src" / "leanml" / "demo" / "digits.yaml").resolve()
    # features is for tabular data only; every other kind applies to the digits CNN
    assert _kinds(demo) == BUILT_IN - {"features"}


@pytest.mark.slow
def test_the_demo_runs_end_to_end_with_every_stage_measured(tmp_path, validate_metrics):
    """The demo's own recipe, with every budget cut down: same stages, same settings otherwise."""
    raw = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    recipe = copy.deepcopy(raw)
    recipe["train"]["epochs"] = 3
    recipe["measure"] = FAST_MEASURE
    for entry in recipe["stages"]:
        ((kind, cfg),) = ((k, v) for k, v in entry.items() if k not in ("name", "enabled"))
        if kind == "tune":
            cfg.update(trials=2, train={"epochs": 1})
        elif kind == "distill":
            cfg["train"] = {"epochs": 2}
        elif kind == "prune":
            cfg["finetune"] = {"epochs": 1}
    result = leanml.run(recipe, output=tmp_path / "demo")
    validate_metrics(result.metrics)
    assert not result.metrics.get("failed_stages")
    assert [s["kind"] for s in result.metrics["stages"]] == [
        "baseline",
        "tune",
        "distill",
        "prune",
        "quantize",
    ]


@pytest.mark.slow
def test_the_bring_your_own_model_example_runs_as_the_readme_says(tmp_path):
    """examples/own_model: prepare.py writes the data and trained weights, then the recipe runs
    (copied to a temporary folder, with short fine-tuning)."""
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "own_model"
    shutil.copytree(ROOT / "examples" / "own_model", folder)
    prep = subprocess.run(
        [sys.executable, "prepare.py"], cwd=folder, capture_output=True, text=True, check=False
    )
    assert prep.returncode == 0, prep.stderr
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe["measure"] = FAST_MEASURE
    recipe["stages"][0]["prune"].update(finetune={"epochs": 1}, sensitivity=False)
    recipe["stages"][1]["quantize"]["sensitivity"] = False
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = leanml.run(folder / "recipe.yaml", output=tmp_path / "run", quiet=True)
    stages = {s["name"]: s for s in result.metrics["stages"]}
    assert stages["baseline"]["metric"] > 0.9  # the given weights, not retrained
    assert [s["kind"] for s in result.metrics["stages"]] == ["baseline", "prune", "quantize"]
    assert not result.metrics["failed_stages"]
