"""The CLI answers at once: loading it, ``--help``, ``--version`` and a path that does not exist
import none of the heavy libraries (each costs seconds of CPU), so nothing waits on them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "sklearn", "optuna", "matplotlib")

_PROBE = """
import json, sys
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if argv is None:
    import leanml, leanml.cli
else:
    sys.argv = ["leanml", *argv]
    from leanml.cli import main
    try:
        main()
    except SystemExit as e:
        print(f"exit {e.code}", file=sys.stderr)
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def _heavy_imports(argv: list[str] | None) -> tuple[list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_importing_leanml_and_its_cli_imports_no_heavy_library():
    imported, _ = _heavy_imports(None)
    assert imported == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["run", "no-such-recipe.yaml"],
        ["optimize", "no-such-recipe.yaml"],
        ["tune", "no-such-recipe.yaml"],
        ["quantize", "no-such-model.onnx", "--mode", "dynamic"],
        ["measure", "no-such-model.onnx", "--data", "digits"],
        ["show", "no-such-run"],
    ],
    ids=lambda a: " ".join(a),
)
def test_help_version_and_a_missing_path_import_no_heavy_library(argv):
    imported, stderr = _heavy_imports(argv)
    assert imported == [], stderr
    if argv[0] != "--help" and argv[0] != "--version":
        assert "exit 2" in stderr, stderr
        assert "does not exist" in stderr or "not a folder" in stderr, stderr


def test_the_api_is_still_there_when_asked_for():
    import leanml

    assert callable(leanml.run) and callable(leanml.quantize) and callable(leanml.measure)
    assert {"run", "optimize", "measure", "quantize"} <= set(dir(leanml))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        leanml.nope  # noqa: B018
