"""Worker processes and their stop signals (``leanml.search._workers``, ``_interrupts``): a stop
is raised once, held while a trial has no owner, and raised again when Python drops it; every
worker error is one line."""

from __future__ import annotations

import functools
import logging
import multiprocessing

import pytest

from leanml.errors import InvalidInputError, LeanmlError
from leanml.search import Interrupts, Worker, run_workers, split_budget

from ..conftest import stopped_in_a_finalizer


def test_a_stop_signal_dropped_in_a_finalizer_is_raised_again_without_a_traceback():
    setup = "from leanml.search import stop_on_signals\nstop_on_signals()"
    assert stopped_in_a_finalizer(setup, "SIGTERM") == ("stopped", "")


def test_interrupts_hold_a_signal_between_trials_and_raise_one_stop():
    interrupts = Interrupts()
    interrupts.loop_started()
    interrupts.signal()  # held: no trial owns the process yet
    with pytest.raises(KeyboardInterrupt):
        interrupts.trial_started()
    interrupts.signal()  # a second signal during the clean-up is ignored
    assert interrupts.dropped()  # ...unless Python dropped the first one
    with pytest.raises(KeyboardInterrupt):
        interrupts.signal()
    assert not Interrupts().dropped()  # a KeyboardInterrupt leanml did not raise is not its concern


def test_a_budget_is_split_so_the_shares_add_up_to_it():
    assert split_budget(10, 4) == [3, 3, 2, 2]
    assert sum(split_budget(7, 3)) == 7
    assert split_budget(None, 2) == [None, None]  # no budget: each runs until the time-out


def test_a_worker_logs_its_lines_with_its_number_only_when_verbose(caplog):
    caplog.set_level(logging.INFO, logger="leanml")
    Worker(3, Interrupts(), verbose=False).log("quiet")
    Worker(3, Interrupts(), verbose=True).log("  trial 1: done \n")
    assert [r.getMessage() for r in caplog.records] == ["[worker 3] trial 1: done"]


def _job(kind: str, worker: Worker) -> None:
    """A worker's job for the test below (module level: spawned processes import it)."""
    assert multiprocessing.parent_process() is not None and isinstance(
        worker.interrupts, Interrupts
    )
    if kind == "bad input":
        raise InvalidInputError("tune.space names a key the model lacks")
    if kind == "bug":
        raise RuntimeError("a bug\nwith a second line")


@pytest.mark.slow
def test_every_worker_error_is_one_line_and_the_parent_counts_the_failed_workers(capfd):
    jobs = [functools.partial(_job, kind) for kind in ("fine", "bad input", "bug")]
    with pytest.raises(LeanmlError, match=r"2 of 3 test workers failed"):
        run_workers(jobs, what="test", verbose=False)
    err = capfd.readouterr().err
    assert "[worker 1] tune.space names a key the model lacks" in err
    assert "[worker 2] RuntimeError: a bug" in err  # a bug is one line too, as a LeanmlError is
    assert "with a second line" not in err and "Traceback" not in err
