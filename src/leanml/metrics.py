"""Task metrics, computed from a model's raw outputs and the targets.

Fidelity targets of a sequence model (token-level outputs of a model that takes an
``attention_mask``) are a numpy masked array whose padding positions are masked (see
:func:`mask_padding`): ``cosine`` and ``agreement`` compare real tokens only.
"""

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
        excludes_padding: ``fn`` takes masked targets (:func:`mask_padding`) and compares only
            the positions that are not masked; other metrics get the targets' plain values.
    """

    name: str
    higher_is_better: bool
    loss: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    excludes_padding: bool = False

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        masked = self.excludes_padding and np.ma.isMaskedArray(targets)
        return float(self.fn(np.asarray(outputs), targets if masked else np.asarray(targets)))

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


def _tokens(out: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outputs and targets as ``[batch, seq, features]`` float64, and which positions are real."""
    n, s = ref.shape[:2]
    o = out.reshape(n, s, -1).astype(np.float64)
    t = np.ma.getdata(ref).reshape(n, s, -1).astype(np.float64)
    real = ~np.ma.getmaskarray(ref).reshape(n, s, -1).all(-1)
    return o, t, real


def _mean_over_real_tokens(per_token: np.ndarray, real: np.ndarray) -> float:
    """Mean over each sample's real tokens, then over samples: every sample counts once, however
    short it is."""
    per_sample = (per_token * real).sum(1) / np.maximum(real.sum(1), 1)
    return float(per_sample[real.any(1)].mean()) if real.any() else float(per_token.mean())


def _agreement(out: np.ndarray, ref: np.ndarray) -> float:
    if np.ma.isMaskedArray(ref):
        o, t, real = _tokens(out, ref)
        same = (
            (o.argmax(-1) == t.argmax(-1))
            if o.shape[-1] > 1
            else ((o[..., 0] > 0) == (t[..., 0] > 0))
        )
        return _mean_over_real_tokens(same.astype(np.float64), real)
    return float((_labels(out) == _labels(ref)).mean())


def _cosine(out: np.ndarray, ref: np.ndarray) -> float:
    if np.ma.isMaskedArray(ref):
        o, t, real = _tokens(out, ref)
        num = (o * t).sum(-1)
        den = np.linalg.norm(o, axis=-1) * np.linalg.norm(t, axis=-1)
        return _mean_over_real_tokens(num / np.maximum(den, 1e-12), real)
    o, t = _flat_pair(out, ref)
    num = (o * t).sum(1)
    den = np.linalg.norm(o, axis=1) * np.linalg.norm(t, axis=1)
    return float((num / np.maximum(den, 1e-12)).mean())


MASK_INPUT = "attention_mask"


def mask_padding(targets: np.ndarray, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
    """Token-level reference outputs with their padding positions masked, so that ``cosine`` and
    ``agreement`` compare real tokens only: padding outputs are ignored by every consumer (mean
    pooling with the mask, the first token), and quantization may change them freely.

    The targets are masked when the inputs are a dict with an ``attention_mask`` of shape
    ``[batch, seq]`` and the targets are shaped ``[batch, seq, ...]``: position ``(i, j)`` counts
    where ``attention_mask[i, j]`` is not 0. A sample with no real token counts at every position.
    Other targets are returned unchanged.

    Returns:
        a ``numpy.ma.MaskedArray`` (padding masked) or ``targets`` itself.
    """
    if not isinstance(x, dict) or MASK_INPUT not in x:
        return targets
    real = np.asarray(x[MASK_INPUT]) != 0
    if real.ndim != 2 or targets.ndim < 3 or targets.shape[:2] != real.shape:
        return targets
    real[~real.any(1)] = True
    padding = np.broadcast_to(
        ~real.reshape(*real.shape, *([1] * (targets.ndim - 2))), targets.shape
    )
    return np.ma.masked_array(targets, mask=padding.copy())


METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("accuracy", True, "cross_entropy", _accuracy),
        Metric("f1", True, "cross_entropy", _f1),
        Metric("mse", False, "mse", _mse),
        Metric("mae", False, "mse", _mae),
        Metric("r2", True, "mse", _r2),
        Metric("agreement", True, "soft_cross_entropy", _agreement, excludes_padding=True),
        Metric("cosine", True, "mse", _cosine, excludes_padding=True),
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
