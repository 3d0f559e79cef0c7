"""Task metrics, computed from a model's raw outputs and the targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError


@dataclass(frozen=True)
class Metric:
    """A task metric.

    Attributes:
        name: the recipe's ``task.metric``.
        higher_is_better: direction; the metric *drop* is measured in the worse direction.
        loss: the training loss that fits it: ``cross_entropy`` (class labels), ``soft_cross_entropy``
            (a reference model's logits), or ``mse`` (real-valued targets).
        fn: ``fn(outputs, targets) -> float``.
    """

    name: str
    higher_is_better: bool
    loss: str
    fn: Callable[[np.ndarray, np.ndarray], float]

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        return float(self.fn(np.asarray(outputs), np.asarray(targets)))

    def drop(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` (negative when it is better)."""
        return baseline - value if self.higher_is_better else value - baseline

    @property
    def needs_class_labels(self) -> bool:
        return self.loss == "cross_entropy"


def _labels(outputs: np.ndarray) -> np.ndarray:
    if outputs.ndim == 1 or outputs.shape[-1] == 1:
        return (outputs.reshape(len(outputs)) > 0).astype(np.int64)
    return outputs.argmax(-1)


def _accuracy(out: np.ndarray, y: np.ndarray) -> float:
    return float((_labels(out) == y.reshape(-1)).mean())


def _f1(out: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y.reshape(-1), _labels(out), average="macro"))


def _flat_pair(out: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return out.reshape(len(out), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)


def _mse(out: np.ndarray, y: np.ndarray) -> float:
    o, t = _flat_pair(out, y)
    return float(((o - t) ** 2).mean())


def _mae(out: np.ndarray, y: np.ndarray) -> float:
    o, t = _flat_pair(out, y)
    return float(np.abs(o - t).mean())


def _r2(out: np.ndarray, y: np.ndarray) -> float:
    o, t = _flat_pair(out, y)
    ss_res = ((t - o) ** 2).sum()
    ss_tot = ((t - t.mean(0)) ** 2).sum()
    return float(1.0 - ss_res / max(ss_tot, 1e-12))


def _agreement(out: np.ndarray, ref: np.ndarray) -> float:
    return float((_labels(out) == _labels(ref)).mean())


def _cosine(out: np.ndarray, ref: np.ndarray) -> float:
    o, t = _flat_pair(out, ref)
    num = (o * t).sum(1)
    den = np.linalg.norm(o, axis=1) * np.linalg.norm(t, axis=1)
    return float((num / np.maximum(den, 1e-12)).mean())


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", True, "cross_entropy", _accuracy),
        Metric("f1", True, "cross_entropy", _f1),
        Metric("mse", False, "mse", _mse),
        Metric("mae", False, "mse", _mae),
        Metric("r2", True, "mse", _r2),
        Metric("agreement", True, "soft_cross_entropy", _agreement),
        Metric("cosine", True, "mse", _cosine),
    ]
}

FIDELITY_METRICS = ("agreement", "cosine")


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise InvalidInputError(
            f"task.metric {name!r} is not a known metric; use one of {', '.join(METRICS)}"
        ) from None
