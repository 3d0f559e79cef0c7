"""Exceptions raised by leanml.

Every error leanml raises on purpose derives from :class:`LeanmlError`. Errors caused by what the user
gave (a recipe key, a data file, a model file) are :class:`InvalidInputError`, which is also a
``ValueError``; the CLI turns them into one line on stderr and exit code 2. A finished piece of work
whose result breaks the constraints is :class:`NoAcceptableResult` (exit code 3).
"""

from __future__ import annotations


class LeanmlError(Exception):
    """Base class of every error leanml raises on purpose."""


class InvalidInputError(LeanmlError, ValueError):
    """What the user gave breaks a rule: the message says what was given, the rule and the fix."""


class StageNotApplicable(InvalidInputError):
    """A stage cannot work on this kind of model (prune on a Keras-built module): a recipe run skips
    the stage and says why; a technique function (``leanml.prune``) raises it as bad input."""


class StageError(LeanmlError):
    """A stage could not produce a model; the pipeline keeps the previous model and reports why."""


class ExportError(LeanmlError):
    """A model could not be exported, or the export does not match the model it came from."""


class NoAcceptableResult(LeanmlError):
    """The work finished, but its result breaks the constraints (metric drop or latency ratio): it is
    not passed off as a success. The message says which limit was broken and by how much."""
