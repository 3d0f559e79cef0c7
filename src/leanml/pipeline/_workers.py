"""Worker processes that share an Optuna study (``leanml tune``/``leanml optimize --workers N``):
they die with their parent and leave no trial RUNNING when stopped."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from .._utils import redeliver_dropped_interrupts
from ..errors import LeanmlError
from ..techniques.tune._sharing import Interrupts
from ._progress import Reporter

logger = logging.getLogger("leanml")

# A worker whose parent is gone stops its trials (SIGTERM -> KeyboardInterrupt -> trials marked
# failed); WATCHDOG_S is how often it looks, STOP_GRACE_S how long the stop may take before exit.
WATCHDOG_S = 1.0
STOP_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1


def split_budget(total: int | None, workers: int) -> list[int | None]:
    """Split a trial budget so the workers' shares add up to exactly ``total``."""
    if total is None:
        return [None] * workers
    base, extra = divmod(total, workers)
    return [base + (1 if w < extra else 0) for w in range(workers)]


class WorkerReporter(Reporter):
    """A worker's progress lines, through the ``leanml`` logger (the worker process shows them on stderr)."""

    def __init__(self, worker: int) -> None:
        self.prefix = f"[worker {worker}]"

    def log(self, message: str) -> None:
        logger.info("%s %s", self.prefix, message.strip())


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


def run_processes(target: Any, argses: list[tuple[Any, ...]], *, what: str) -> None:
    """Run ``target(*args)`` in one spawned process per ``args``, and wait for all of them.

    On Ctrl-C, each worker gets SIGTERM (it marks its running trial failed) and STOP_GRACE_S to stop.

    Raises:
        LeanmlError: a worker exited with an error; KeyboardInterrupt: after the workers stopped.
    """
    mp = multiprocessing.get_context("spawn")
    procs = [
        mp.Process(target=target, args=args, name=f"leanml-{what}-{w}")
        for w, args in enumerate(argses)
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


def worker_setup(parent: int, worker: int, verbose: bool) -> tuple[Interrupts, Reporter]:
    """The start of a worker process: stop on signals and with its parent, and log when verbose."""
    interrupts = stop_on_signals()
    die_with_parent(parent)
    if verbose:  # this is the process's entry point: its own stderr shows the leanml logger
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    return interrupts, (WorkerReporter(worker) if verbose else Reporter())
