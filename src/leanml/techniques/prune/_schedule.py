"""How much to prune when: the gradual (polynomial decay) curve, and per-layer ratios from sensitivity."""

from __future__ import annotations

import numpy as np


def polynomial_schedule(amount: float, steps: int, power: float = 3.0) -> list[float]:
    """Target sparsity after each of ``steps`` pruning steps, rising from 0 to ``amount``.

    ``s_k = amount * (1 - (1 - k / steps) ** power)`` for ``k = 1 .. steps``: tfmot's PolynomialDecay
    with initial sparsity 0 and the AGP curve of Zhu & Gupta (2017) for ``power=3``. Early steps remove a
    lot while the network has redundancy; late steps remove little, leaving the fine-tuning time to recover.

    Example:
        >>> [round(s, 3) for s in polynomial_schedule(0.9, 3)]
        [0.633, 0.867, 0.9]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    return [amount * (1.0 - (1.0 - k / steps) ** power) for k in range(1, steps + 1)]


def _ratio_at(ratios: np.ndarray, drops: np.ndarray, tol: float, max_ratio: float) -> float:
    """The largest ratio whose (monotone, piecewise linear) drop curve stays within ``tol``."""
    r = np.concatenate([[0.0], ratios, [max_ratio]])
    d = np.maximum.accumulate(np.concatenate([[0.0], drops, [drops[-1] if len(drops) else 0.0]]))
    if tol >= d[-1]:
        return float(max_ratio)
    # first grid point whose drop exceeds tol; interpolate on the segment before it
    i = int(np.argmax(d > tol))
    if i == 0:
        return 0.0
    span = d[i] - d[i - 1]
    frac = 1.0 if span <= 0 else (tol - d[i - 1]) / span
    return float(min(max_ratio, r[i - 1] + frac * (r[i] - r[i - 1])))


def allocate_ratios(
    curves: dict[str, tuple[list[float], list[float]]],
    sizes: dict[str, int],
    amount: float,
    *,
    max_ratio: float = 0.95,
    iterations: int = 60,
) -> dict[str, float]:
    """Per-layer ratios whose size-weighted mean is ``amount``, pruning sensitive layers less.

    Each layer gets the largest ratio whose measured metric drop stays under one shared tolerance; the
    tolerance is found by bisection (bounded: ``iterations`` halvings), then the ratios are rescaled so
    the overall amount is exactly ``amount`` (within the ``max_ratio`` cap).

    Args:
        curves: layer -> (ratios tried, metric drop at each ratio), ratios ascending.
        sizes: layer -> how much it holds (weights, or channels), the weights of the mean.
        amount: the overall fraction to remove.
        max_ratio: no layer is pruned more than this.
    """
    names = [n for n in curves if sizes.get(n, 0) > 0]
    if not names:
        return {}
    total = float(sum(sizes[n] for n in names))
    arrays = {n: (np.asarray(curves[n][0], float), np.asarray(curves[n][1], float)) for n in names}

    def overall(tol: float) -> tuple[float, dict[str, float]]:
        r = {n: _ratio_at(*arrays[n], tol, max_ratio) for n in names}
        return sum(r[n] * sizes[n] for n in names) / total, r

    all_drops = np.concatenate([d for _, d in arrays.values()])
    lo, hi = min(0.0, float(all_drops.min())) - 1e-9, float(all_drops.max()) + 1e-9
    ratios = overall(hi)[1]
    for _ in range(iterations):
        mid = (lo + hi) / 2
        got, r = overall(mid)
        if got >= amount:
            hi, ratios = mid, r
        else:
            lo = mid
    # A flat drop curve makes the tolerance jump; rescale so the overall amount is met exactly.
    for _ in range(20):
        got = sum(ratios[n] * sizes[n] for n in names) / total
        if abs(got - amount) < 1e-6 or got <= 0:
            break
        if got > amount:
            ratios = {n: ratios[n] * amount / got for n in names}
        else:
            room = {n: max_ratio - ratios[n] for n in names}
            free = sum(room[n] * sizes[n] for n in names)
            if free <= 0:
                break
            need = (amount - got) * total
            ratios = {n: ratios[n] + room[n] * min(1.0, need / free) for n in names}
    return {n: float(min(max_ratio, max(0.0, r))) for n, r in ratios.items()}
