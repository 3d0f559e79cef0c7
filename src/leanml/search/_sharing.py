"""Processes sharing one study: each trial claims its place in the budget in the storage, trials of
dead processes are marked failed, and every process and resume samples with a seed of its own."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial spends the study's budget: running, complete, pruned, or failed by its own error.

    A trial failed for a reason outside it (its process was killed or interrupted, or it found the
    budget already claimed) has no ``error`` attribute and does not count: a rerun runs it again.
    """
    from optuna.trial import TrialState

    if trial.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def within_budget(
    study: optuna.Study,
    number: int,
    budget: int,
    *,
    counts: Callable[[optuna.trial.FrozenTrial], bool] = counts_toward_budget,
) -> bool:
    """Whether trial ``number`` (just asked for) may run: fewer than ``budget`` trials numbered before it
    spend the budget (``counts``). The storage numbers trials atomically, so processes sharing a study
    agree on which trials are over the budget without any lock of their own."""
    taken = sum(1 for t in study.get_trials(deepcopy=False) if t.number < number and counts(t))
    return taken < budget


def count_finished(
    study: optuna.Study,
    *,
    counts: Callable[[optuna.trial.FrozenTrial], bool] = counts_toward_budget,
) -> int:
    """Finished trials that spent the budget (by default: complete, pruned, or failed by their own
    error)."""
    from optuna.trial import TrialState

    return sum(
        1 for t in study.get_trials(deepcopy=False) if t.state != TrialState.RUNNING and counts(t)
    )


def owner() -> dict[str, Any]:
    """The user attributes that name the process running a trial (for :func:`fail_orphans`)."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def fail_orphans(study: optuna.Study, *, mine: bool = False) -> list[int]:
    """Mark FAIL the RUNNING trials whose process on this machine is gone (``mine``: this process's).

    Trials of other machines are left to the storage's heartbeat (``grace_period``).

    Returns:
        the numbers of the trials marked failed.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host, pid = socket.gethostname(), os.getpid()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") != host or not isinstance(t.user_attrs.get("pid"), int):
            continue
        owner_pid = t.user_attrs["pid"]
        if (owner_pid == pid) if mine else (owner_pid != pid and not _alive(owner_pid)):
            try:
                study._storage.set_trial_user_attr(
                    t._trial_id, "stopped", "interrupted" if mine else "its process died"
                )
            except UpdateFinishedTrialError:  # another process failed it first
                continue
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sampler_seed(seed: int, *, salt: str | None) -> int:
    """``seed`` itself for a fresh private study (reproducible); else a seed mixed with ``salt``, so
    processes sharing a study, and each resume of it, draw their own points."""
    if salt is None:
        return seed
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def process_salt(worker: int | None, stored: int) -> str:
    """What makes this process's sampler differ from every other's: machine, process, worker, a nonce,
    and the trials already stored."""
    return f"{socket.gethostname()}:{os.getpid()}:{worker}:{stored}:{secrets.token_hex(8)}"
