"""The run's constraints: how much metric a stage may lose, and how much slower it may be.

One place decides "within budget": :meth:`Constraints.allows`. The recipe (``constraints:``), the
technique functions and every stage's own choices (auto-exclusion, sensitivity) ask it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# Metric drops are differences of floats computed on the same samples: a drop equal to the budget
# must pass even when rounding makes it a hair larger.
_TOLERANCE = 1e-12


class Constraints(BaseModel):
    """The ``constraints:`` keys of a recipe."""

    model_config = ConfigDict(extra="forbid")

    max_metric_drop: float = Field(
        0.01, ge=0.0, description="the largest metric drop vs the baseline, in the metric's units"
    )
    max_latency_ratio: float | None = Field(
        None,
        gt=0.0,
        description=(
            "roll back a stage whose p50 latency, at any measured batch size, is more than this "
            "times its input's (confirmed by a paired re-measurement); null: no latency gate"
        ),
    )

    def allows(self, drop: float) -> bool:
        """Whether a metric drop (positive: worse) is within ``max_metric_drop``."""
        return drop <= self.max_metric_drop + _TOLERANCE
