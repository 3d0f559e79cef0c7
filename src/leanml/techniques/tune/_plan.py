"""What ``leanml optimize`` plans with tune: for a tree ensemble (scikit-learn), the model's own
size, fewer and shallower trees, searched as a grid that keeps the cheapest setting within the
budget. A network's width and depth are what distill's students search."""

from __future__ import annotations

from typing import Any

from ...models import Model
from ...search import Choice
from ...task import Task

NOTHING_TO_PLAN = (
    "plans tune only the size of scikit-learn tree ensembles (n_estimators, max_depth); "
    "a network's width and depth are what distill's students search"
)


def choices(task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
    est = model.sklearn
    if est is None:
        return []
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    params = final.get_params()
    if not isinstance(params.get("n_estimators"), int):
        return []
    n = params["n_estimators"]
    space: dict[str, Any] = {
        "task.model_args.n_estimators": sorted({max(1, n // 4), max(1, n // 2), n}),
    }
    if "max_depth" in params:
        depth = params["max_depth"]
        space["task.model_args.max_depth"] = [d for d in (4, 8) if depth is None or d < depth] + [
            depth if depth is not None else None
        ]
    space = {k: v for k, v in space.items() if len(v) > 1}
    if not space:
        return []
    config = {
        "sampler": "grid",
        "pruner": "none",
        "objectives": ["metric", objective],
        "space": space,
    }
    names = " x ".join(k.rsplit(".", 1)[1] for k in space)
    return [Choice(f"grid over {names}", config, strong=True)]
