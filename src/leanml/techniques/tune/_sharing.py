"""Processes sharing one study: each trial claims its place in the budget in the storage, trials of
dead processes are marked failed, and every process and resume samples with a seed of its own."""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
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


def within_budget(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether trial ``number`` (just asked for) may run: fewer than ``budget`` trials numbered before it
    spend the budget. The storage numbers trials atomically, so processes sharing a study agree on which
    trials are over the budget without any lock of their own."""
    taken = sum(
        1 for t in study.get_trials(deepcopy=False) if t.number < number and counts_toward_budget(t)
    )
    return taken < budget


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


class Interrupts:
    """Where a worker's stop signal may raise KeyboardInterrupt: anywhere but between Optuna creating
    a trial and the trial naming its process (a trial stopped there would stay RUNNING with no owner
    to fail it). A signal there is held until the next trial starts or the study's loop ends.

    One KeyboardInterrupt is raised per stop; later signals are ignored so they cannot break off the
    clean-up. If that one lands in a finalizer (a weakref callback run by the garbage collector),
    Python prints and drops it: :meth:`dropped` then forgets it was raised, so the caller can
    deliver it again.

    Call order: :meth:`signal` from the signal handler; :meth:`loop_started`/:meth:`loop_ended`
    around ``study.optimize``; :meth:`trial_started`/:meth:`trial_ended` inside each trial."""

    def __init__(self) -> None:
        self.between_trials = False
        self.pending = False
        self.raised = False

    def signal(self) -> None:
        if self.raised:
            return
        if self.between_trials:
            self.pending = True
        else:
            self._raise()

    def dropped(self) -> bool:
        """Called for an exception Python could not raise (``sys.unraisablehook``): True when it was
        this stop's KeyboardInterrupt, which must be delivered again."""
        if not self.raised:
            return False
        self.raised = False
        return True

    def loop_started(self) -> None:
        self.between_trials = True

    def trial_started(self) -> None:
        self.between_trials = False
        if self.pending:
            self._raise()

    def trial_ended(self) -> None:
        self.between_trials = True

    def loop_ended(self) -> None:
        self.between_trials = False
        if self.pending:
            self._raise()

    def _raise(self) -> None:
        self.pending = False
        self.raised = True
        raise KeyboardInterrupt
