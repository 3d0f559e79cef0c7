"""One trial of a tune stage: build and train the candidate, apply tuned later stages, score it in ORT."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..._utils import seed_everything
from ...errors import InvalidInputError, StageError
from ...models import Model
from ...search import Interrupts, owner, within_budget
from ...training import TrainResult
from .._base import Stage, StageContext, get_stage_class
from ._space import Dim, Target, deep_merge, nest


@dataclass
class Settings:
    """A trial's parameters, sorted by what they change."""

    train: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    stages: dict[int, dict[str, Any]] = field(default_factory=dict)


def split_params(params: dict[str, Any], targets: dict[str, Target]) -> Settings:
    s = Settings()
    for path, value in params.items():
        t = targets[path]
        if t.where == "train":
            s.train = deep_merge(s.train, nest(t.key, value))
        elif t.where == "model":
            s.model_args[t.key] = value
        else:
            assert t.stage_index is not None
            s.stages[t.stage_index] = deep_merge(
                s.stages.get(t.stage_index, {}), nest(t.key, value)
            )
    return s


def stage_entry(recipe: dict[str, Any], index: int) -> tuple[str, dict[str, Any], bool]:
    """``(kind, settings, enabled)`` of ``recipe["stages"][index]``."""
    entry = recipe["stages"][index]
    kind = next(k for k in entry if k not in ("name", "enabled"))
    return kind, dict(entry[kind] or {}), bool(entry.get("enabled", True))


def stage_overrides(
    recipe: dict[str, Any], updates: dict[int, dict[str, Any]]
) -> dict[int, dict[str, Any]]:
    """Top-level keys to give the pipeline for each later stage (nested settings merged into their section)."""
    out: dict[int, dict[str, Any]] = {}
    for index, update in updates.items():
        _, settings, _ = stage_entry(recipe, index)
        merged = deep_merge(settings, update)
        out[index] = {k: merged[k] for k in update}
    return out


class BudgetSpent(Exception):
    """Raised in a trial asked for after the study's budget was claimed (by this or another process)."""


@dataclass
class Candidate:
    """A trained trial model, before any tuned later stage is applied (that is the stage's output)."""

    model: Model
    train_result: TrainResult | None


class Objective:
    """The function Optuna calls once per trial.

    Attributes:
        cache: trial number -> candidate, for trials of this process that may still be chosen
            (the caller trims it to the current best or Pareto front).
        errors: exceptions of failed trials of this process, in order.
        calls: trials this process ran (not counting those that found the budget spent).
        seconds: time spent inside trials (the rest of a study's wall-clock is the tuner's overhead).
    """

    def __init__(
        self,
        *,
        space: dict[str, Dim],
        targets: dict[str, Target],
        objectives: list[str],
        model: Model,
        ctx: StageContext,
        trial_train: dict[str, Any],
        report: bool,
        worker: int | None = None,
        budget: int | None = None,
        interrupts: Interrupts | None = None,
    ) -> None:
        self.space = space
        self.targets = targets
        self.objectives = objectives
        self.model = model
        self.ctx = ctx
        self.trial_train = trial_train
        self.report = report
        self.worker = worker
        self.budget = budget
        self.interrupts = interrupts
        self.calls = 0
        self.retrains = any(t.where in ("train", "model") for t in targets.values())
        self.cache: dict[int, Candidate] = {}
        self.errors: list[BaseException] = []
        self.seconds = 0.0

    def __call__(self, trial: Any) -> float | tuple[float, ...]:
        for key, value in owner().items():
            trial.set_user_attr(key, value)
        if self.interrupts is None:
            return self._run(trial)
        self.interrupts.trial_started()
        try:
            return self._run(trial)
        finally:
            self.interrupts.trial_ended()

    def _run(self, trial: Any) -> float | tuple[float, ...]:
        import optuna

        if self.budget is not None and not within_budget(trial.study, trial.number, self.budget):
            trial.set_user_attr("skipped", "the study's trial budget was already claimed")
            trial.study.stop()
            raise BudgetSpent(f"trial {trial.number} is over the budget of {self.budget} trials")
        start = time.perf_counter()
        self.calls += 1
        if self.worker is not None:
            trial.set_user_attr("worker", self.worker)
        try:
            params = {path: dim.suggest(trial, path) for path, dim in self.space.items()}
            settings = split_params(params, self.targets)
            candidate = self.train(settings, trial)
            deployed = self.apply_later_stages(candidate.model, settings, trial.number)
            values = self.score(deployed, trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # recorded on the trial, then re-raised: Optuna marks it FAIL
            trial.set_user_attr("error", _one_line(e))
            self.errors.append(e)
            raise
        finally:
            self.seconds += time.perf_counter() - start
        self.cache[trial.number] = candidate
        return values

    def train(self, settings: Settings, trial: Any | None) -> Candidate:
        """The trial's model: rebuilt and trained when the space changes training or the model."""
        if not self.retrains:
            return Candidate(self.model.clone(), None)
        base = self.model
        args = {**base.model_args, **settings.model_args}
        if base.sklearn is not None:
            return Candidate(self._fit_sklearn(args), None)
        seed_everything(self.ctx.seed)
        net = self.ctx.task.build_torch_model(model_args=args, model=base.factory or None)
        callbacks = [self._reporter(trial)] if (trial is not None and self.report) else []
        description = f"trial {trial.number}" if trial is not None else "retrain"
        result = self.ctx.fit(
            net,
            deep_merge(self.trial_train, settings.train),
            callbacks=callbacks,
            description=description,
        )
        return Candidate(
            Model(torch=net, model_args=args, factory=base.factory, info=copy.deepcopy(base.info)),
            result,
        )

    def _fit_sklearn(self, args: dict[str, Any]) -> Model:
        from sklearn.base import clone

        est = clone(self.model.sklearn)
        # A pipeline (e.g. after feature selection) keeps its steps; the arguments are the estimator's.
        final = est.steps[-1][1] if hasattr(est, "steps") else est
        try:
            final.set_params(**{k: v for k, v in args.items() if k in final.get_params()})
        except (TypeError, ValueError) as e:
            raise InvalidInputError(
                f"task.model_args {args} rejected by {type(final).__name__}: {e}"
            ) from None
        train = self.ctx.task.data.train
        x = train.x
        assert not isinstance(x, dict) and train.y is not None
        est.fit(x.reshape(len(x), -1), train.y)
        return Model(
            sklearn=est,
            model_args=args,
            factory=self.model.factory,
            info=copy.deepcopy(self.model.info),
        )

    @staticmethod
    def _reporter(trial: Any):
        import optuna

        def on_epoch(epoch: int, logs: dict[str, float]) -> None:
            value = logs["val_metric"]
            if not math.isfinite(value):
                return
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"stopped early by the Optuna pruner at epoch {epoch} (val_metric {value:.4f})"
                )

        return on_epoch

    def apply_later_stages(self, model: Model, settings: Settings, number: int) -> Model:
        """Apply the recipe's stages up to the last tuned one, with the trial's settings, in order."""
        if not settings.stages:
            return model
        stages: list[tuple[int, Stage]] = []
        for index in range(self.ctx.stage_index + 1, max(settings.stages) + 1):
            kind, config, enabled = stage_entry(self.ctx.recipe, index)
            if enabled:
                cls = get_stage_class(kind)
                merged = deep_merge(config, settings.stages.get(index, {}))
                stages.append((index, cls(cls.Config.model_validate(merged))))
        results = self.ctx.apply_stages(
            model,
            stages,
            work_dir=self.ctx.work_dir / "trials" / f"{number:04d}",
            train=deep_merge(self.trial_train, settings.train),
        )
        return results[-1].model if results else model

    def score(self, model: Model, trial: Any) -> float | tuple[float, ...]:
        """The validation metric (and latency or size) of the model's ONNX export in ONNX Runtime."""
        if len(self.objectives) == 1:
            metric = float(self.ctx.evaluate(model, "val"))
            values: tuple[float, ...] = (metric,)
        else:
            m = self.ctx.measure(model, "val")
            metric = float(m.metric)
            cost = float(m.p50()) if self.objectives[1] == "latency" else float(m.size_bytes)
            values = (metric, cost)
            trial.set_user_attr("latency_ms", float(m.p50()))
            trial.set_user_attr("size_bytes", int(m.size_bytes))
            trial.set_user_attr("params", int(m.params))
        if not all(math.isfinite(v) for v in values):
            raise StageError(
                f"the trial's model scored {values} on the validation split (not a finite number)"
            )
        trial.set_user_attr("val_metric", metric)
        return values[0] if len(values) == 1 else values


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__
