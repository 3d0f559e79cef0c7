"""Loading user model files: weights into a built model, or (trusted) pickled modules."""

from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from ..errors import InvalidInputError


def load_weights(net: nn.Module, path: Path) -> None:
    """Load a state dict from safetensors, or from a .pt file with ``weights_only=True`` (no code
    runs).

    Raises:
        InvalidInputError: the file is missing, unreadable, holds something other than a plain
            state dict (e.g. a pickle payload), or does not fit ``net``.
    """
    import torch

    if not path.is_file():
        raise InvalidInputError(f"task.weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # torch warns (e.g. about the pickle protocol) while it refuses a pickle payload; the
            # refusal below is the one line the user needs, so the warning must not add more.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable or unsafe file: one clear line
        raise InvalidInputError(
            f"task.weights {str(path)!r} is not a safetensors file or a plain state dict ({type(e).__name__}); "
            "save weights with safetensors.torch.save_model or torch.save(model.state_dict())"
        ) from None
    if not isinstance(state, dict):
        raise InvalidInputError(
            f"task.weights {str(path)!r} holds {type(state).__name__}, not a state dict"
        )
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise InvalidInputError(
            f"task.weights {str(path)!r} do not fit the model: {str(e).splitlines()[0]}; "
            "check task.model and task.model_args"
        ) from None


def load_pickled_module(path: Path, *, trust: bool) -> nn.Module:
    """A whole pickled nn.Module: unpickling runs code from the file, so only with ``trust``
    (``--trust-pickle``).

    Raises:
        InvalidInputError: the file is missing, not trusted, not a PyTorch file, or holds
            something other than an nn.Module.
    """
    import torch

    if not path.is_file():
        raise InvalidInputError(f"model file {str(path)!r} does not exist")
    if not trust:
        raise InvalidInputError(
            f"task.model {str(path)!r} is a pickled PyTorch file; loading it runs code from the file. "
            "Pass --trust-pickle if you trust it, or give weights as task.weights (safetensors) or an ONNX file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - not a PyTorch file: one clear line
        raise InvalidInputError(
            f"model file {str(path)!r} is not a PyTorch file ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(obj, nn.Module):
        raise InvalidInputError(
            f"model file {str(path)!r} holds {type(obj).__name__}, not a torch.nn.Module; "
            "for a state dict use task.weights with task.model naming the architecture"
        )
    return obj.eval()
