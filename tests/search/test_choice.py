"""The search's choice (``leanml.search._choice``): the winner is chosen on validation, and for
the latency objective a finalist must beat the baseline re-timed side by side."""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from leanml.constraints import Constraints
from leanml.measure import MeasureConfig
from leanml.search import OptimizeConfig, SearchResult

from .test_records import _row


class _Log:
    """A SearchLog that keeps nothing."""

    def log(self, message: str) -> None:
        pass

    @contextmanager
    def progress(self, description: str, total: int | None = None):
        yield SimpleNamespace(update=lambda info: None)


@pytest.fixture
def choose(tmp_path, monkeypatch, request):
    """The search's choice, with trials 0 and 1 on disk and side-by-side re-timing giving
    ``ratio`` (the plan's latency over the baseline's)."""
    from leanml.search._choice import choose as choose_

    ratio = request.param
    for n in (0, 1):
        folder = tmp_path / "trials" / f"{n:04d}"
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"x")
    monkeypatch.setattr("leanml.search._choice.paired_latency_ratio", lambda *a, **k: {1: ratio})

    def run(trials, base) -> SearchResult:
        return choose_(
            trials,
            base,
            config=OptimizeConfig(trials=3),
            constraints=Constraints(),
            task=SimpleNamespace(data=SimpleNamespace(val=SimpleNamespace(x=None))),
            measure_config=MeasureConfig(),
            base_path=tmp_path / "base.onnx",
            trial_dir=tmp_path / "trials",
            log=_Log(),
        )

    return run


@pytest.mark.parametrize("choose", [0.99], indirect=True)
def test_a_plan_no_faster_than_the_baseline_side_by_side_is_not_a_win(choose):
    base = _row(-1, "baseline", 0.95, 1.0, plan=[])
    found = choose([_row(0, "prune", 0.95, 0.5), _row(1, "quantize", 0.95, 0.6)], base)
    assert found.plan == []
    assert "not a real gain" in found.reason


@pytest.mark.parametrize("choose", [0.5], indirect=True)
def test_no_plan_within_the_budget_returns_the_baseline(choose):
    base = _row(-1, "baseline", 0.95, 1.0, plan=[])
    found = choose([_row(0, "prune", 0.80, 0.5, feasible=False)], base)
    assert found.plan == []
    assert "no plan held the budget" in found.reason


@pytest.mark.parametrize("choose", [0.5], indirect=True)
def test_the_fastest_finalist_side_by_side_wins(choose):
    base = _row(-1, "baseline", 0.95, 1.0, plan=[])
    found = choose([_row(0, "prune", 0.95, 0.5), _row(1, "quantize", 0.95, 0.6)], base)
    assert found.plan == [{"prune": {}}]
    assert "2.00x faster" in found.reason
