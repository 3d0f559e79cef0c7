"""What ``leanml optimize`` plans with quantize, always last (every earlier stage trains in float):
post-training int8, static and dynamic, and float16 for the size objective.

Quantization-aware training is never planned: it needs a training loop per setting, and
post-training int8 is tried first; a recipe can still ask for ``quantize: {mode: qat}``.
"""

from __future__ import annotations

from ...models import Model
from ...search import Choice
from ...task import Task


def choices(task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
    out = [
        Choice("int8 static", {"mode": "static"}, strong=True),
        Choice("int8 dynamic", {"mode": "dynamic"}),
        Choice(
            "int8 static percentile", {"mode": "static", "calibration": {"method": "percentile"}}
        ),
    ]
    if objective == "size":  # float16 halves the file; on CPUs without fp16 kernels it runs slower
        out.append(Choice("fp16", {"mode": "fp16"}))
    return out
