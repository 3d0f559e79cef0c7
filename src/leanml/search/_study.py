"""The plan search's Optuna study: its name (what its figures depend on), its storage, its sampler
and directions, and which trials spend its budget of distinct plans."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..constraints import Constraints
from ..data import Split
from ._config import OptimizeConfig
from ._sharing import counts_toward_budget, fail_orphans, process_salt, sampler_seed
from ._storage import open_storage, quiet_optuna


def takes_constraint_from_trial() -> bool:
    """Whether Optuna takes constraints from the trial (5.0+) rather than from a function."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def counts_toward_plans(trial: Any) -> bool:
    """Whether a trial spends the budget of plans: measured, being measured, or failed by its own
    error; a plan proposed again (it reuses its twin's figures) is free."""
    return counts_toward_budget(trial) and "same_as" not in trial.user_attrs


def plan_study_name(name: str, *, baseline: Path, val: Split, identity: dict[str, Any]) -> str:
    """``<name>-optimize-<hash>``, the hash of what the study's figures depend on: ``identity``
    (the plans' settings, the objective, the recipe's training, measuring and budget) and the
    baseline ONNX file and validation inputs themselves (their bytes), so a rerun with another model
    or data starts a new study instead of reusing figures that do not belong to it."""
    data = hashlib.sha256(baseline.read_bytes())
    x = val.x
    for part in x.values() if isinstance(x, dict) else [x]:
        data.update(np.ascontiguousarray(part).tobytes())
    digest = hashlib.sha256(
        json.dumps({**identity, "baseline_and_data": data.hexdigest()}, sort_keys=True).encode()
    ).hexdigest()[:8]
    return f"{name}-optimize-{digest}"


def open_plan_study(
    name: str,
    *,
    url: str,
    config: OptimizeConfig,
    constraints: Constraints,
    seed: int,
    metric_name: str,
    higher_is_better: bool,
    worker: int | None,
) -> Any:
    """Create or load the study (``load_if_exists``: a rerun continues it), with the budget as a
    constraint, trials of a killed earlier run failed, and, for a resumed or shared study, a
    sampler seeded for this process alone (so it never replays another's draws).

    Raises:
        InvalidInputError: the storage cannot be opened (``optimize.storage``).
    """
    import optuna

    storage = open_storage(url, key="optimize.storage")
    max_drop = constraints.max_metric_drop

    def drop_over_budget(trial: optuna.trial.FrozenTrial) -> list[float]:
        return [float(trial.user_attrs.get("drop", math.inf)) - max_drop]

    # The budget is a constraint: Optuna 5 takes it from the trial (Trial.set_constraint),
    # Optuna 4 from a function of the finished trial.
    old = {} if takes_constraint_from_trial() else {"constraints_func": drop_over_budget}

    def sampler(seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            n_startup_trials=min(10, max(1, config.trials // 4)),
            **old,
        )

    with quiet_optuna(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler(seed),
            directions=["maximize" if higher_is_better else "minimize", "minimize"],
            load_if_exists=True,
        )
        if not study.metric_names:  # named in optuna-dashboard instead of "Objective 0"
            unit = "latency p50 (ms)" if config.objective == "latency" else "size (bytes)"
            study.set_metric_names([f"val {metric_name}", unit])
    fail_orphans(study)  # trials of a killed earlier run: failed, not left running
    stored = len(study.get_trials(deepcopy=False))
    if stored or worker is not None:  # a resumed or shared study: this process's own draws
        study.sampler = sampler(sampler_seed(seed, salt=process_salt(worker, stored)))
    return study
