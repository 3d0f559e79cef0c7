"""Small helpers shared by every layer: atomic writes, seeding, environment facts."""

from __future__ import annotations

import _thread
import contextlib
import os
import platform
import random
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

# A recipe's seed when it gives none (``Recipe.seed``): its splits, training and stages draw from it;
# the lower layers' functions default to it too.
DEFAULT_SEED = 0


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted write leaves the previous file (or none), never a half-written one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(
            tmp_path, 0o666 & ~_umask()
        )  # mkstemp makes it owner-only; files get the usual mode
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch so that the same seed gives the same result on CPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cpu_description() -> str:
    """The CPU model and the vector instruction sets that matter for int8 and fp16 kernels."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if (
                    line.startswith("model name")
                    and model in ("", platform.machine())
                    or line.startswith("model name")
                ):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "avx512_fp16",
        "amx_int8",
        "amx_bf16",
    ]
    present = [f for f in wanted if f in flags]
    return f"{model} ({', '.join(present) if present else 'no avx2'})"


def environment(threads: int) -> dict[str, object]:
    """The facts metrics.json records about where a run was measured."""
    import onnxruntime
    import torch

    env: dict[str, object] = {
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu": cpu_description(),
        "platform": platform.platform(),
    }
    for name in ("onnx", "optuna", "sklearn", "torch_pruning"):
        with contextlib.suppress(Exception):
            module = __import__(name)
            env[name] = getattr(module, "__version__", "unknown")
    return env


def redeliver_dropped_interrupts(ours: Callable[[], bool] = lambda: True) -> None:
    """Deliver again a Ctrl-C that Python dropped.

    A KeyboardInterrupt raised while a finalizer runs (a weakref callback the garbage collector
    calls, a ``__del__``) cannot propagate: Python prints "Exception ignored in ..." and the program
    goes on, so a stop would be lost. This hook (``sys.unraisablehook``) catches it instead and, when
    ``ours()`` says it was a stop to honour, raises SIGINT's handler again in the main thread a
    moment later, from another thread (from inside the finalizer it would be dropped again).
    """
    default = sys.unraisablehook

    def hook(args: object) -> None:
        if issubclass(getattr(args, "exc_type", type(None)), KeyboardInterrupt) and ours():
            threading.Timer(0.05, _thread.interrupt_main, (signal.SIGINT,)).start()
            return
        default(args)  # type: ignore[arg-type]

    sys.unraisablehook = hook


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, at most ``limit`` characters ("" when empty)."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else ""
