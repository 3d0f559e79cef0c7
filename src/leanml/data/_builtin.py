"""Datasets that ship with scikit-learn: no network needed."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._dataset import Dataset, split_arrays

_BUILTIN: dict[str, Callable[[float, float, int], Dataset]] = {}


def _register(name: str) -> Callable[[Callable[[float, float, int], Dataset]], Callable]:
    def deco(fn: Callable[[float, float, int], Dataset]) -> Callable:
        _BUILTIN[name] = fn
        return fn

    return deco


def builtin_names() -> list[str]:
    return sorted(_BUILTIN)


def load_builtin(name: str, *, val: float, test: float, seed: int) -> Dataset:
    return _BUILTIN[name](val, test, seed)


@_register("digits")
def _digits(val: float, test: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 8x8 grey images with values 0..16, scaled to [0, 1], as 1x8x8 (NCHW without N).
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    tr, va, te = split_arrays(x, y, val=val, test=test, seed=seed, stratify=True)
    return Dataset("digits", "image", tr, va, te, n_classes=10, extra={"class_labels": True})


def _tabular(name: str, bunch, val: float, test: float, seed: int) -> Dataset:
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    tr, va, te = split_arrays(x, y, val=val, test=test, seed=seed, stratify=True)
    names = [str(n) for n in bunch.feature_names]
    return Dataset(
        name,
        "tabular",
        tr,
        va,
        te,
        feature_names=names,
        n_classes=int(y.max()) + 1,
        extra={"class_labels": True},
    )


@_register("breast_cancer")
def _breast_cancer(val: float, test: float, seed: int) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    return _tabular("breast_cancer", load_breast_cancer(), val, test, seed)


@_register("wine")
def _wine(val: float, test: float, seed: int) -> Dataset:
    from sklearn.datasets import load_wine

    return _tabular("wine", load_wine(), val, test, seed)
