"""How figures read in everything leanml prints or writes: one wording for ratios, one formatter
for signed differences. Every layer uses these, so "0.99x faster" and "-0.0000" cannot come back
through one forgotten f-string."""

from __future__ import annotations


def times(ratio: float, better: str, worse: str, *, spec: str = ".2f") -> str:
    """A ratio in words that never goes below 1: ``ratio`` is old / new (above 1 is ``better``).

    Args:
        ratio: how many times better the new figure is (old latency / new latency, old size / new
            size); below 1 it is worse, and reads as the inverse with ``worse``.
        better, worse: the words for each direction ("faster"/"slower", "smaller"/"larger").
        spec: the number's format spec.

    Example:
        >>> times(2.0, "faster", "slower"), times(0.8, "faster", "slower")
        ('2.00x faster', '1.25x slower')
    """
    if ratio >= 1:
        return f"{ratio:{spec}}x {better}"
    return f"{1 / ratio:{spec}}x {worse}"


def signed(value: float, places: int = 4) -> str:
    """A difference with its sign (``+0.0037``, ``-0.0120``), and ``0`` when it rounds to zero:
    never ``-0.0000`` or ``+0.0000``.

    Example:
        >>> signed(0.00371), signed(-0.00001), signed(-0.012)
        ('+0.0037', '0', '-0.0120')
    """
    shown = f"{value:+.{places}f}"
    return "0" if float(shown) == 0 else shown
