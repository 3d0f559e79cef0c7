"""Where a worker's stop signal may interrupt it: never between Optuna creating a trial and the
trial naming its process."""

from __future__ import annotations


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
