"""Search: the Optuna studies leanml runs, and the plan search behind ``leanml optimize``.

- Study plumbing every search shares (the tune stage's and the plan search's): the storage
  (``_storage``), budget claims, orphaned trials and per-process sampler seeds (``_sharing``), and
  where a stop signal may interrupt a trial (``_interrupts``).
- Worker processes that share a study, for ``leanml tune --workers`` and ``leanml optimize
  --workers`` alike (``_workers``).
- The plan search: its ``optimize:`` keys (``_config``), the space of plans (``_space``), its study
  (``_study``), one trial (``_trial``), progress (``_progress``), the records (``_records``), the
  choice (``_choice``), and :class:`Search` tying them together (``_search``).

This layer sits below the techniques (the tune stage runs its study with it) and knows no stage:
the plan space comes from the techniques' registry, and the pipeline applies a plan's stages.
"""

from __future__ import annotations

from ._config import OptimizeConfig
from ._interrupts import Interrupts
from ._progress import SearchLog
from ._records import (
    SearchResult,
    TrialRecord,
    best_per_combination,
    best_table_text,
    pareto,
)
from ._search import ApplyPlan, Search, Spawn
from ._sharing import (
    count_finished,
    counts_toward_budget,
    fail_orphans,
    owner,
    process_salt,
    sampler_seed,
    within_budget,
)
from ._space import OFF, Choice, PlanSpace, TechniqueSpace, combination, plan_key, plan_label
from ._storage import GRACE_S, HEARTBEAT_S, open_storage, quiet_optuna, redact
from ._workers import Job, Worker, run_workers, split_budget, stop_on_signals

__all__ = [
    "GRACE_S",
    "HEARTBEAT_S",
    "OFF",
    "ApplyPlan",
    "Choice",
    "Interrupts",
    "Job",
    "OptimizeConfig",
    "PlanSpace",
    "Search",
    "SearchLog",
    "SearchResult",
    "Spawn",
    "TechniqueSpace",
    "TrialRecord",
    "Worker",
    "best_per_combination",
    "best_table_text",
    "combination",
    "count_finished",
    "counts_toward_budget",
    "fail_orphans",
    "open_storage",
    "owner",
    "pareto",
    "plan_key",
    "plan_label",
    "process_salt",
    "quiet_optuna",
    "redact",
    "run_workers",
    "sampler_seed",
    "split_budget",
    "stop_on_signals",
    "within_budget",
]
