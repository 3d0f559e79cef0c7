"""The ``tune`` stage: hyperparameter and architecture search with Optuna.

Each trial rebuilds and trains the model with the trial's settings (``train.*``,
``task.model_args.*``), applies any tuned later stage (``stages[i].<kind>.<key>``), and scores the
result's ONNX export in ONNX Runtime on the validation split; with ``objectives: [metric, latency]``
(or ``size``) the study has a Pareto front. Studies live in an Optuna RDB storage (a SQLite file in the
run directory by default), so rerunning a recipe continues its study and many processes can share one.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ValidationError

from ...data import import_entry_point
from ...errors import InvalidInputError
from ...models import Model, build_sklearn, get_model_factory
from ...search import (
    Choice,
    Interrupts,
    count_finished,
    fail_orphans,
    open_storage,
    process_salt,
    quiet_optuna,
    sampler_seed,
)
from ...task import Task
from .._base import Stage, StageContext, StageResult, get_stage_class, register_stage
from . import _plan
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
    default_storage,
    describe_params,
    make_pruner,
    make_sampler,
    study_name,
)

if TYPE_CHECKING:
    import optuna


@dataclass
class StudyRun:
    """What :meth:`TuneStage.run_study` did in this process.

    Attributes:
        study: the Optuna study; objective: this process's objective (its cache holds candidates);
        seconds: wall-clock of the run.
    """

    study: optuna.Study
    objective: Objective
    seconds: float


@register_stage("tune")
class TuneStage(Stage[TuneConfig]):
    """Search training settings, architecture and later stages' settings with an Optuna study."""

    Config = TuneConfig
    forms = ("torch", "sklearn", "onnx")
    contract_example: ClassVar[dict[str, Any] | None] = {
        "sampler": "grid",
        "pruner": "none",
        "space": {"train.lr": [0.003, 0.01]},
        "train": {"epochs": 1},
    }
    plan_order: ClassVar[int | None] = 10
    nothing_to_plan: ClassVar[str] = _plan.NOTHING_TO_PLAN
    config: TuneConfig

    @classmethod
    def plan_choices(cls, task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
        return _plan.choices(task, model, epochs=epochs, objective=objective)

    # -- checks ---------------------------------------------------------------------------------

    def check(self, task: Task) -> None:
        targets = self.config.targets
        kinds = {t.where for t in targets.values()}
        if task.model_kind in ("onnx", "keras") and kinds & {"train", "model"}:
            raise InvalidInputError(
                f"tune.space changes training or the model, but task.model is {'an ONNX' if task.model_kind == 'onnx' else 'a Keras'} file (already trained); "
                "give a trainable model, or tune only later stages' settings (stages[i].<kind>.<key>)"
            )
        if task.model_kind == "sklearn":
            if "train" in kinds:
                bad = next(p for p, t in targets.items() if t.where == "train")
                raise InvalidInputError(
                    f"tune.space[{bad!r}]: train settings do not apply to scikit-learn models; tune task.model_args.<name> instead"
                )

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

    def check_run(self, model: Model, ctx: StageContext) -> None:
        """Called before the study opens: the recipe's later stages take the searched values, and
        the model is one that trials can rebuild."""
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

    def metric_names(self, ctx: StageContext) -> list[str]:
        """The study's objectives as the report and optuna-dashboard name them."""
        names = {
            "metric": f"val {ctx.task.metric.name}",
            "latency": "latency p50 at batch 1 (ms)",
            "size": "size (bytes)",
        }
        return [names[o] for o in self.config.objectives]

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

    def open_study(
        self, ctx: StageContext, *, worker: int | None = None, shared: bool = False
    ) -> optuna.Study:
        """Create or load the stage's study (``load_if_exists``: a rerun continues it).

        Trials left RUNNING by a process of this machine that is gone are marked failed (others'
        are failed by the storage's heartbeat). A fresh study of one process (``worker`` None, not
        ``shared``, no ``storage`` key) samples with the run's seed, so it is reproducible; any
        other process (a worker, a resume, a study others may share) seeds its sampler with its
        own salt, so it never replays another process's or an earlier run's points.

        Args:
            worker: the worker's index, when this process is one of ``leanml tune --workers``.
            shared: other processes may run this study at the same time (``leanml tune``).
        """
        import optuna

        storage = open_storage(self.storage_url(ctx))
        name = self.study_name(ctx)
        n_objectives = len(self.config.objectives)
        with quiet_optuna(logging.WARNING):  # not "A new study created" on every run
            study = optuna.create_study(
                storage=storage,
                study_name=name,
                sampler=make_sampler(
                    self.config.sampler, self.config.space, ctx.seed, n_objectives
                ),
                pruner=make_pruner(self.config.pruner),
                directions=self.directions(ctx),
                load_if_exists=True,
            )
        if not study.metric_names:  # named in optuna-dashboard instead of "Objective 0"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # set_metric_names is marked experimental
                study.set_metric_names(self.metric_names(ctx))
        if [d.name.lower() for d in study.directions] != self.directions(ctx):
            raise InvalidInputError(
                f"tune.study_name {name!r} already holds a study with directions "
                f"{[d.name.lower() for d in study.directions]}; these objectives need {self.directions(ctx)}: use another study_name"
            )
        fail_orphans(study)
        stored = len(study.get_trials(deepcopy=False))
        private = worker is None and not shared and self.config.storage is None
        if not (private and stored == 0):
            seed = sampler_seed(ctx.seed, salt=process_salt(worker, stored))
            study.sampler = make_sampler(self.config.sampler, self.config.space, seed, n_objectives)
        return study

    def remaining(self, study: optuna.Study) -> int | None:
        """Trials still to run for the study's budget (finished trials of earlier runs count)."""
        budget = self.config.budget
        return None if budget is None else max(0, budget - count_finished(study))

    def run_study(
        self,
        model: Model,
        ctx: StageContext,
        *,
        n_trials: int | None = None,
        worker: int | None = None,
        study: optuna.Study | None = None,
        interrupts: Interrupts | None = None,
    ) -> StudyRun:
        """Run up to ``n_trials`` trials (None: until the budget or ``timeout``) of the stage's study here.

        Each trial first claims its place in the budget in the storage (:func:`within_budget`), so
        processes sharing a study never run more than the budget between them. On Ctrl-C (or the
        SIGTERM a worker turns into one), this process's running trials are marked failed, and
        the KeyboardInterrupt goes on.

        Args:
            model: what trials start from; ctx: the stage's context.
            worker: the worker's index (``leanml tune --workers``), recorded on its trials.
            study: the study, when the caller opened it (else :meth:`open_study`).
            interrupts: where the process's stop signals may interrupt (a worker's handler calls it).
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
            budget=self.config.budget,
            interrupts=interrupts,
        )
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        if n_trials == 0:
            return StudyRun(study, objective, 0.0)
        start = time.perf_counter()
        try:
            if interrupts is not None:
                interrupts.loop_started()
            with quiet_optuna(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(
                    objective,
                    n_trials=n_trials,
                    timeout=self.config.timeout,
                    # A failing trial is one FAIL row (its error is on it); the study goes on.
                    catch=(Exception,),
                    callbacks=[self._after_trial(objective, ctx)],
                )
            if interrupts is not None:
                interrupts.loop_ended()
        except KeyboardInterrupt:
            fail_orphans(study, mine=True)
            raise
        return StudyRun(study, objective, time.perf_counter() - start)

    def _after_trial(self, objective: Objective, ctx: StageContext):
        metric = ctx.task.metric.name

        def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            if "skipped" in trial.user_attrs:
                return
            state = trial.state.name
            if state == "COMPLETE":
                extra = (  # with its unit: "latency p50 at batch 1 (ms) 0.0123"
                    f", {self.metric_names(ctx)[1]} {trial.values[1]:.4g}"
                    if len(trial.values) > 1
                    else ""
                )
                ctx.log(
                    f"  trial {trial.number}: {metric} {trial.values[0]:.4f}{extra} ({describe_params(trial.params)})"
                )
            elif state == "PRUNED":
                ctx.log(
                    f"  trial {trial.number}: stopped early by the Optuna pruner at epoch {trial.last_step} ({describe_params(trial.params)})"
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
        self.check_run(model, ctx)
        study = self.open_study(ctx)
        todo = self.remaining(study)
        before = count_finished(study)
        if before:
            ctx.log(
                f"  continuing study {study.study_name!r}: {before} finished trials kept, {todo if todo is not None else 'more'} to run"
            )
        run = self.run_study(model, ctx, n_trials=todo, study=study)
        return study_result(
            run.study,
            run.objective,
            ctx,
            self.config,
            storage=self.storage_url(ctx),
            directions=self.directions(ctx),
            seconds=run.seconds,
            before=before,
        )


def _factory(task: Task) -> Any:
    spec = task.model
    if ":" in spec:
        return import_entry_point(spec, search_dir=task.base_dir, what="task.model entry point")

    return get_model_factory(spec)
