"""Model factories registered by name (``task.model: cnn``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

from .._utils import first_line
from ..errors import InvalidInputError

F = TypeVar("F", bound=Callable[..., nn.Module])
_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[F], F]:
    """Register a model factory under ``name``.

    The factory takes ``in_shape`` (one sample's shape, without the batch axis) and ``n_outputs``
    as keyword arguments, plus the recipe's ``task.model_args``.
    """

    def deco(fn: F) -> F:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    return sorted(_MODELS)


def get_model_factory(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name]
    except KeyError:
        raise InvalidInputError(
            f"task.model {name!r} is not a registered model; known models: {', '.join(model_names())} "
            "(or give 'pkg.mod:function', PATH.onnx, or sklearn:Estimator)"
        ) from None


def build_model(
    factory: Callable[..., nn.Module],
    *,
    in_shape: tuple[int, ...],
    n_outputs: int,
    model_args: dict,
    name: str | None = None,
) -> nn.Module:
    """Call a factory with the arguments it accepts, naming any model_args key it does not.

    ``name`` is how the recipe names the model (``cnn``, ``pkg.mod:build``), for error messages;
    by default the factory's own name.
    """
    name = name or getattr(factory, "__qualname__", None) or repr(factory)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    kwargs = dict(model_args)
    if sig is not None:
        params = sig.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not takes_any:
            unknown = [k for k in kwargs if k not in params]
            if unknown:
                allowed = [k for k in params if k not in ("in_shape", "n_outputs")]
                raise InvalidInputError(
                    f"task.model_args has unknown key(s) {unknown} for model {name!r}; it accepts "
                    f"{allowed}"
                )
        if "in_shape" in params or takes_any:
            kwargs.setdefault("in_shape", in_shape)
        if "n_outputs" in params or takes_any:
            kwargs.setdefault("n_outputs", n_outputs)
    try:
        model = factory(**kwargs)
    except InvalidInputError:
        raise
    except Exception as e:  # broad: user code or user args, any error means bad model_args
        raise InvalidInputError(
            f"model {name!r} could not be built with task.model_args {model_args}: "
            f"{type(e).__name__}: {first_line(e, 200)}; check the values (e.g. sizes must be positive)"
        ) from e
    if not isinstance(model, nn.Module):
        raise InvalidInputError(
            f"the model factory of {name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
