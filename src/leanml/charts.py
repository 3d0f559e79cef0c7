"""Charts as data: what a stage wants drawn in the report. The report draws them (``report/_plots.py``);
techniques only describe them, so they sit below both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Plot:
    """A chart a stage wants in the report, as data; the report draws it.

    Attributes:
        title: the chart's title.
        kind: ``line``, ``bar`` or ``scatter``.
        series: label -> (x values, y values); for ``bar``, x values are category names.
        xlabel, ylabel: axis labels.
        points: labels of ``line`` series drawn as unconnected markers (e.g. stopped trials).
        zoom: for ``bar``, values whose differences matter more than their size (a metric near
            1 for several models): the axis spans the data instead of starting at 0, and says so.
    """

    title: str
    kind: str
    series: dict[str, tuple[list[Any], list[float]]]
    xlabel: str = ""
    ylabel: str = ""
    points: tuple[str, ...] = ()
    zoom: bool = False
