"""Intermediate tensors of a float graph over the calibration samples, in one session: the graph
with those tensors exposed as outputs. SmoothQuant (:mod:`._smooth`) takes their per-channel peaks,
bias correction (:mod:`._bias`) their per-channel means."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

from ...runtime import OnnxRunner


def exposed(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    threads: int = 1,
    rows: int | None = None,
) -> Iterator[list[np.ndarray]]:
    """The values of ``tensors`` (in that order) for each batch of ``feeds``, from one session of
    ``model`` with them added to its outputs; ``rows`` splits each batch into runs of at most that
    many rows (every tensor of a run is held at once). ``model`` is left as it was."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    wanted = dict.fromkeys(t for t in tensors if t not in known)
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted)
    with tempfile.TemporaryDirectory(prefix="leanml-exposed-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        del probe
        session = OnnxRunner(path, threads=threads).session
        for feed in feeds:
            if rows is None:
                yield session.run(list(tensors), feed)
                continue
            for start in range(0, len(next(iter(feed.values()))), rows):
                yield session.run(
                    list(tensors), {k: v[start : start + rows] for k, v in feed.items()}
                )
