"""Validation errors as users read them: one line, ``path rule; got value``, for a recipe key
(``stages[1].prune.amount must be ...``) or for a command-line flag (``--trials must be ...``).

Every rule is declared once, in a pydantic Config; this module only words what pydantic found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidInputError

_COMPARISONS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


class FormattedError(ValueError):
    """An error whose message is already formatted (it names its own path), carried through pydantic."""


def _path(loc: tuple[Any, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue  # pydantic marks errors of a mapping's key; the key is already in the path
        elif not str(part).isidentifier():
            out += f"[{str(part)!r}]"  # a mapping key like 'train.lr' must not read as nested keys
        else:
            out += ("." if out else "") + str(part)
    return out or "recipe"


def _rule(err: dict[str, Any], *, flag: bool = False) -> str:
    """The rule broken, worded for a recipe key, or (``flag``) as a command line reads it:
    ``must be >= 0``, ``must be latency or size``."""
    msg = str(err.get("msg", "is invalid"))
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        return "is not a known key"
    if typ == "missing":
        return "is required"
    for a, b in (("Input should be", "must be"), ("Value error, ", ""), ("Input should", "must")):
        msg = msg.replace(a, b)
    ctx = err.get("ctx") or {}
    if typ in _COMPARISONS:
        key, symbol = _COMPARISONS[typ]
        if flag and key in ctx:
            limit = ctx[key]
            return (
                f"must be {symbol} {limit:g}"
                if isinstance(limit, float)
                else f"must be {symbol} {limit}"
            )
        return msg
    if "expected" in ctx and typ == "literal_error":
        expected = str(ctx["expected"])
        return f"must be {expected.replace(chr(39), '')}" if flag else f"must be one of {expected}"
    return msg if msg.startswith("must") else f"must be valid: {msg}"


def format_validation_error(
    e: ValidationError, *, prefix: str = "", flags: Mapping[str, str] | None = None
) -> str:
    """One line: the first problem as ``path rule; got value``, then how many more there are.

    Args:
        prefix: the path of the validated section in the recipe (``optimize``, ``stages[0].prune``).
        flags: the command-line flag that gave a key (``{"trials": "--trials"}``, dotted for nested
            keys): an error in it names the flag instead of the path.
    """
    lines = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after[_sum(), Splits]",))
        msg = str(err.get("msg", ""))
        if isinstance(err.get("ctx", {}).get("error"), FormattedError) or msg.startswith(
            "Value error, stages["
        ):
            lines.append(msg.replace("Value error, ", ""))
            continue
        flag = (flags or {}).get(".".join(map(str, loc)))
        path = flag or _path(loc, prefix)
        rule = _rule(err, flag=flag is not None)
        if err.get("type") == "missing":
            lines.append(f"{path} {rule}")
        else:
            lines.append(f"{path} {rule}; got {err.get('input')!r}")
    first = lines[0]
    if len(lines) > 1:
        first += f" (and {len(lines) - 1} more: {'; '.join(lines[1:3])}{'...' if len(lines) > 3 else ''})"
    return first


def validate_section(
    config_cls: Any, value: Any, prefix: str, *, flags: Mapping[str, str] | None = None
) -> Any:
    """A recipe section (``train``, ``measure``, a stage's keys) from a dict, validated: errors name
    the key under ``prefix`` (or its command-line flag, see :func:`format_validation_error`). An
    instance of ``config_cls`` is returned as it is.

    Raises:
        InvalidInputError: a key breaks a rule of ``config_cls``.
    """
    if isinstance(value, config_cls):
        return value
    try:
        return config_cls.model_validate(value or {})
    except ValidationError as e:
        raise InvalidInputError(format_validation_error(e, prefix=prefix, flags=flags)) from None


def validate_keys(
    config_cls: Any,
    keys: dict[str, Any],
    *,
    prefix: str = "",
    flags: Mapping[str, str] | None = None,
) -> Any:
    """Some keys of ``config_cls`` given on their own (a function's keywords, a command's flags),
    each validated by the Config's own rule; a key given as None, and every other key, keeps the
    Config's default. Returns the Config (unvalidated where nothing was given: read only the keys
    asked for).

    Raises:
        InvalidInputError: a key breaks its rule (see :func:`format_validation_error`).
    """
    config = config_cls.model_construct()
    for key, value in keys.items():
        if value is None:
            continue
        try:
            config = config_cls.__pydantic_validator__.validate_assignment(config, key, value)
        except ValidationError as e:
            raise InvalidInputError(
                format_validation_error(e, prefix=prefix, flags=flags)
            ) from None
    return config
