"""Worker processes that share an Optuna study, for ``leanml tune --workers N`` and ``leanml optimize
--workers N`` alike: one entry point, so both stop the same way on a signal, die with their parent,
leave no trial RUNNING, and report any error as one line.

A caller gives :func:`run_workers` one *job* per process: a picklable callable (a module-level
function, or a ``functools.partial`` of one) that takes the :class:`Worker` it runs in.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from .._utils import first_line, redeliver_dropped_interrupts
from ..errors import LeanmlError
from ._interrupts import Interrupts

logger = logging.getLogger("leanml")

# A worker whose parent is gone stops its trials (SIGTERM -> KeyboardInterrupt -> trials marked
# failed); WATCHDOG_S is how often it looks, STOP_GRACE_S how long the stop may take before exit.
WATCHDOG_S = 1.0
STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Worker:
    """The worker process a job runs in.

    Attributes:
        index: the worker's number, from 0 (recorded on its trials).
        interrupts: where its stop signals may interrupt (give it to the study's loop).
        verbose: whether its progress lines are shown (on the process's stderr).
    """

    index: int
    interrupts: Interrupts
    verbose: bool

    def log(self, message: str) -> None:
        """A progress line, prefixed with the worker, when verbose."""
        if self.verbose:
            logger.info("[worker %d] %s", self.index, message.strip())


Job = Callable[[Worker], None]


def split_budget(total: int | None, workers: int) -> list[int | None]:
    """Split a trial budget so the workers' shares add up to exactly ``total``."""
    if total is None:
        return [None] * workers
    base, extra = divmod(total, workers)
    return [base + (1 if w < extra else 0) for w in range(workers)]


def stop_on_signals() -> Interrupts:
    """SIGTERM and SIGINT raise one KeyboardInterrupt (held while a trial has no owner yet), so the
    running trial is marked failed; later signals are ignored, so they cannot break off that clean-up.
    A KeyboardInterrupt that Python drops because it landed in a finalizer is raised again, silently."""
    interrupts = Interrupts()

    def handler(signum: int, frame: FrameType | None) -> None:
        interrupts.signal()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    redeliver_dropped_interrupts(interrupts.dropped)
    return interrupts


def die_with_parent(parent: int) -> None:
    """Stop this worker when its parent dies, even by SIGKILL: the kernel sends SIGTERM (Linux
    PR_SET_PDEATHSIG), and a watchdog thread that sees a new parent does the same elsewhere; a stop
    that takes longer than STOP_GRACE_S ends the process."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # no prctl (e.g. musl without it): the watchdog remains
            pass

    def watch() -> None:
        gone = threading.Event()
        while os.getppid() == parent:
            gone.wait(WATCHDOG_S)
        os.kill(os.getpid(), signal.SIGTERM)
        gone.wait(STOP_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="leanml-parent-watchdog", daemon=True).start()


def run_workers(jobs: list[Job], *, what: str, verbose: bool) -> None:
    """Run each job in a spawned process of its own, and wait for all of them.

    On Ctrl-C, each worker gets SIGTERM (it marks its running trial failed) and STOP_GRACE_S to stop.

    Args:
        jobs: one picklable callable per worker, called with its :class:`Worker`.
        what: what the workers do (``tune``, ``optimize``), for process names and errors.
        verbose: show the workers' progress lines on their stderr.

    Raises:
        LeanmlError: a worker exited with an error; KeyboardInterrupt: after the workers stopped.
    """
    mp = multiprocessing.get_context("spawn")
    procs = [
        mp.Process(target=_main, args=(job, w, verbose, os.getpid()), name=f"leanml-{what}-{w}")
        for w, job in enumerate(jobs)
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        # Workers turn SIGTERM into a KeyboardInterrupt and mark their running trials failed.
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            if p.pid is not None:
                p.join(STOP_GRACE_S)
                if p.is_alive():
                    p.kill()
                    p.join()
        raise
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if bad:
        raise LeanmlError(
            f"{len(bad)} of {len(procs)} {what} workers failed (exit codes {bad}); finished trials are kept in the study"
        )


def _main(job: Job, index: int, verbose: bool, parent: int) -> None:
    """A spawned worker: stop on signals and with its parent, log when verbose, run the job.

    Exit 130 on a stop (the running trial was marked failed; the parent reports the interruption);
    any error is one line on the worker's log and exit 1 (the parent counts the failed workers),
    its traceback only at debug level.
    """
    interrupts = stop_on_signals()
    die_with_parent(parent)
    if verbose:  # this is the process's entry point: its own stderr shows the leanml logger
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        job(Worker(index, interrupts, verbose))
    except KeyboardInterrupt:
        sys.exit(130)
    except LeanmlError as e:  # one line, as the CLI shows errors
        logger.error("[worker %d] %s", index, e)
        sys.exit(1)
    except Exception as e:
        logger.error("[worker %d] %s: %s", index, type(e).__name__, first_line(e))
        logger.debug("[worker %d] traceback", index, exc_info=True)
        sys.exit(1)
