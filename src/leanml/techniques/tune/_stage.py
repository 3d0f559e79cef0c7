"""The ``tune`` stage: hyperparameter and architecture search with Optuna.

Each trial rebuilds and trains the model with the trial's settings (``train.*``,
``task.model_args.*``), applies any tuned later stage (``stages[i].<kind>.<key>``), and scores the
result's ONNX export in ONNX Runtime on the validation split; with ``objectives: [metric, latency]``
(or ``size``) the study has a Pareto front. Studies live in an Optuna RDB storage (a SQLite file in the
run directory by default), so rerunning a recipe continues its study and many processes can share one.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, ClassVar

from pydantic import ValidationError

from ...errors import InvalidInputError
from ...models import Model
from ...task import Task
from .._base import Stage, StageContext, StageResult, get_stage_class, register_stage
from ._config import TuneConfig
from ._objective import Objective, split_params, stage_entry
from ._result import study_result
from ._space import (
    check_model_args,
    check_recipe_paths,
    check_train_values,
    deep_merge,
)
from ._study import (
    count_finished,
    default_storage,
    describe_params,
    make_pruner,
    make_sampler,
    open_storage,
    study_name,
)


@register_stage("tune")
class TuneStage(Stage):
    """Search training settings, architecture and later stages' settings with an Optuna study."""

    Config = TuneConfig
    forms = ("torch", "sklearn", "onnx")
    contract_example: ClassVar[dict[str, Any] | None] = {
        "sampler": "grid",
        "pruner": "none",
        "space": {"train.lr": [0.003, 0.01]},
        "train": {"epochs": 1},
    }
    config: TuneConfig

    # -- checks ---------------------------------------------------------------------------------

    def check(self, task: Task) -> None:
        targets = self.config.targets
        kinds = {t.where for t in targets.values()}
        if task.model_kind == "onnx" and kinds & {"train", "model"}:
            raise InvalidInputError(
                "tune.space changes training or the model, but task.model is an ONNX file (already trained); "
                "give a trainable model, or tune only later stages' settings (stages[i].<kind>.<key>)"
            )
        if task.model_kind == "sklearn":
            if "train" in kinds:
                bad = next(p for p, t in targets.items() if t.where == "train")
                raise InvalidInputError(
                    f"tune.space[{bad!r}]: train settings do not apply to scikit-learn models; tune task.model_args.<name> instead"
                )
            from ...models import build_sklearn

            check_model_args(
                list(targets.values()), build_sklearn(task.model, task.model_args), task.model
            )
        elif task.model_kind == "torch" and "model" in kinds:
            check_model_args(list(targets.values()), _factory(task), f"model {task.model!r}")
        for path, t in targets.items():
            if t.where == "train":
                try:
                    check_train_values(path, t.key, self.config.space[path])
                except ValueError as e:
                    raise InvalidInputError(f"tune.space[{path!r}] {e}") from None
        if self.config.storage is not None:
            open_storage(self.config.storage)

    def check_recipe(self, recipe: dict[str, Any], index: int) -> None:
        """Tuned later stages exist and take the values searched."""
        targets = self.config.targets
        check_recipe_paths(list(targets.values()), recipe, index)
        for path, t in targets.items():
            if t.where == "stage":
                assert t.stage_index is not None
                kind, settings, _ = stage_entry(recipe, t.stage_index)
                cls = get_stage_class(kind)
                for value in self.config.space[path].bounds():
                    update = split_params({path: value}, {path: t}).stages[t.stage_index]
                    try:
                        cls.Config.model_validate(deep_merge(settings, update))
                    except ValidationError as e:
                        err = e.errors()[0]
                        raise InvalidInputError(
                            f"tune.space[{path!r}] has {value!r}, which stages[{t.stage_index}].{kind} rejects: "
                            f"{'.'.join(map(str, err['loc']))} {err['msg']}"
                        ) from None

    def _check_run(self, model: Model, ctx: StageContext) -> None:
        self.check_recipe(ctx.recipe, ctx.stage_index)
        targets = self.config.targets
        if model.form == "onnx" and any(t.where in ("train", "model") for t in targets.values()):
            raise InvalidInputError(
                "tune.space changes training or the model, but the model here is ONNX-only; tune later stages' settings only"
            )

    # -- the study ------------------------------------------------------------------------------

    def directions(self, ctx: StageContext) -> list[str]:
        metric = "maximize" if ctx.task.metric.higher_is_better else "minimize"
        return [metric] + ["minimize"] * (len(self.config.objectives) - 1)

    def storage_url(self, ctx: StageContext) -> str:
        return self.config.storage or default_storage(ctx.work_dir, bool(ctx.recipe))

    def study_name(self, ctx: StageContext) -> str:
        if self.config.study_name:
            return self.config.study_name
        recipe = ctx.recipe
        identity: dict[str, Any] = {
            "space": {p: d.model_dump() for p, d in self.config.space.items()},
            "objectives": self.config.objectives,
            "trial_train": self.config.train,
        }
        if recipe:
            identity.update(
                task=recipe.get("task"), train=recipe.get("train"), seed=recipe.get("seed")
            )
            indices = sorted(
                {t.stage_index for t in self.config.targets.values() if t.stage_index is not None}
            )
            identity["stages"] = (
                [recipe["stages"][i] for i in range(ctx.stage_index + 1, max(indices) + 1)]
                if indices
                else []
            )
        else:
            identity.update(
                task=[ctx.task.name, ctx.task.model, ctx.task.model_args],
                train=ctx.train_config.model_dump(),
                seed=ctx.seed,
            )
        return study_name(str(recipe.get("name") or ctx.task.name), ctx.stage_index, identity)

    def open_study(self, ctx: StageContext, *, worker: int = 0) -> Any:
        """Create or load the stage's study (``load_if_exists``: a rerun continues it)."""
        import optuna

        storage = open_storage(self.storage_url(ctx))
        name = self.study_name(ctx)
        seed = ctx.seed + 7919 * worker  # workers sharing a study must not draw the same points
        sampler = make_sampler(
            self.config.sampler, self.config.space, seed, len(self.config.objectives)
        )
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(
            optuna.logging.WARNING
        )  # not "A new study created" on every run
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                sampler=sampler,
                pruner=make_pruner(self.config.pruner),
                directions=self.directions(ctx),
                load_if_exists=True,
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
        if [d.name.lower() for d in study.directions] != self.directions(ctx):
            raise InvalidInputError(
                f"tune.study_name {name!r} already holds a study with directions "
                f"{[d.name.lower() for d in study.directions]}; these objectives need {self.directions(ctx)}: use another study_name"
            )
        return study

    def remaining(self, study: Any) -> int | None:
        """Trials still to run for the study's budget (finished trials of earlier runs count)."""
        budget = self.config.budget
        return None if budget is None else max(0, budget - count_finished(study))

    def optimize(
        self,
        model: Model,
        ctx: StageContext,
        *,
        n_trials: int | None,
        worker: int = 0,
        study: Any = None,
    ) -> tuple[Any, Objective, float]:
        """Run up to ``n_trials`` trials (None: until ``timeout``) of the stage's study in this process.

        Returns:
            the study, the objective (its cache holds this process's candidates), and the wall-clock seconds.
        """
        import optuna

        study = study if study is not None else self.open_study(ctx, worker=worker)
        objective = Objective(
            space=self.config.space,
            targets=self.config.targets,
            objectives=self.config.objectives,
            model=model,
            ctx=ctx,
            trial_train=self.config.train,
            report=len(self.config.objectives) == 1 and self.config.pruner != "none",
            worker=worker,
        )
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if n_trials == 0:
            return study, objective, 0.0
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    objective,
                    n_trials=n_trials,
                    timeout=self.config.timeout,
                    catch=(Exception,),
                    callbacks=[self._after_trial(objective, ctx)],
                )
        finally:
            optuna.logging.set_verbosity(verbosity)
        return study, objective, time.perf_counter() - start

    def _after_trial(self, objective: Objective, ctx: StageContext):
        metric = ctx.task.metric.name

        def callback(study: Any, trial: Any) -> None:
            state = trial.state.name
            if state == "COMPLETE":
                extra = (
                    f", {self.config.objectives[1]} {trial.values[1]:.4g}"
                    if len(trial.values) > 1
                    else ""
                )
                ctx.log(
                    f"  trial {trial.number}: {metric} {trial.values[0]:.4f}{extra} ({describe_params(trial.params)})"
                )
            elif state == "PRUNED":
                ctx.log(
                    f"  trial {trial.number}: pruned at epoch {trial.last_step} ({describe_params(trial.params)})"
                )
            else:
                ctx.log(
                    f"  trial {trial.number}: failed: {trial.user_attrs.get('error', 'no error recorded')}"
                )
            try:  # keep only candidates that may still be chosen
                keep = {t.number for t in study.best_trials}
            except ValueError:
                keep = set()
            for number in list(objective.cache):
                if number not in keep:
                    del objective.cache[number]

        return callback

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, model: Model, ctx: StageContext) -> StageResult:
        self._check_run(model, ctx)
        study = self.open_study(ctx)
        todo = self.remaining(study)
        before = count_finished(study)
        if before:
            ctx.log(
                f"  continuing study {study.study_name!r}: {before} finished trials kept, {todo if todo is not None else 'more'} to run"
            )
        study, objective, seconds = self.optimize(model, ctx, n_trials=todo, study=study)
        return study_result(
            study,
            objective,
            ctx,
            self.config,
            storage=self.storage_url(ctx),
            directions=self.directions(ctx),
            seconds=seconds,
            before=before,
        )


def _factory(task: Task) -> Any:
    spec = task.model
    if ":" in spec:
        from ...data import import_entry_point

        return import_entry_point(spec, search_dir=task.base_dir, what="task.model entry point")
    from ...models import get_model_factory

    return get_model_factory(spec)
