"""From a config to everything a run needs: models, frozen teacher, objective, optimizer, data.

    experiment = build(config)
    state = experiment.init_state()
    step = engine.make_train_step(experiment.student, experiment.objective,
                                  experiment.optimizer, teacher=experiment.teacher_config)
    state, metrics = step(state, experiment.teacher, batch)

Nothing here writes files or runs a step: the outer loop (`jaxkd.run`) owns the side effects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from etils import epath

from jaxkd import engine
from jaxkd.checkpoint import restore_teacher
from jaxkd.data import Pipeline, dataset_spec
from jaxkd.engine import Model, TeacherConfig, TeacherState, TrainState
from jaxkd.experiment import models, objective_builder, optimizer, pipelines
from jaxkd.objective import Objective

TEACHER_MODES = ("online", "ema")


@dataclasses.dataclass(frozen=True, eq=False)
class Experiment:
    """Everything built from one config.

    Attributes:
      config: the experiment config.
      num_classes: classes of `config.data.name`.
      student: the student `Model` (freshly initialised from `config.seed`).
      teacher: the frozen teacher's `TeacherState` (in `config.teacher.dtype`), or None.
      teacher_config: where the step gets teacher outputs ("online", "ema"), or None.
      teacher_source: `{"checkpoint": path, "step": step}` the teacher was restored from.
      objective: the `Objective` (task loss and distillation terms).
      optimizer: the optax optimizer.
      learning_rate: the learning-rate schedule (per step).
      train: the training `Pipeline`.
      eval: the evaluation `Pipeline` (`config.data.eval_split`).
      steps_per_epoch: optimizer steps per epoch.
      num_steps: steps of the whole run (`num_epochs · steps_per_epoch`).
    """

    config: ml_collections.ConfigDict
    num_classes: int
    student: Model
    teacher: TeacherState | None
    teacher_config: TeacherConfig | None
    teacher_source: dict[str, Any] | None
    objective: Objective
    optimizer: optax.GradientTransformation
    learning_rate: optax.Schedule
    train: Pipeline
    eval: Pipeline
    steps_per_epoch: int
    num_steps: int

    def init_state(self) -> TrainState:
        """The initial `TrainState` (student, adapters, optimizer, CRD bank, EMA copy)."""
        return engine.init_train_state(
            self.student,
            self.optimizer,
            objective=self.objective,
            rng=jax.random.fold_in(jax.random.key(int(self.config.seed)), 1),
            ema=self.teacher_config is not None and self.teacher_config.mode == "ema",
        )


def teacher_dtype(config: ml_collections.ConfigDict) -> Any:
    """The teacher's storage and compute dtype; None for float32 (no casts).

    Args:
      config: the experiment config (`config.teacher.dtype`, e.g. "bfloat16").

    Returns:
      The dtype, or None.

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018.
    """
    try:
        dtype = jnp.dtype(config.teacher.dtype)
    except TypeError:
        raise ValueError(
            f"config.teacher.dtype must be a dtype name such as 'float32' or 'bfloat16', got "
            f"{config.teacher.dtype!r}."
        ) from None
    return None if dtype == jnp.float32 else dtype


def _teacher_mode(config: ml_collections.ConfigDict) -> str:
    mode = config.teacher.mode
    if mode == "offline":
        raise ValueError(
            "config.teacher.mode='offline' needs the teacher's logits in every batch, which the "
            "experiment pipelines do not provide; use 'online' or 'ema'."
        )
    if mode not in TEACHER_MODES:
        raise ValueError(f"config.teacher.mode must be one of {TEACHER_MODES}, got {mode!r}.")
    if mode == "ema" and config.teacher.model:
        raise ValueError(
            "config.teacher.mode='ema' distills from the student's own average; leave "
            f"config.teacher.model empty (got {config.teacher.model!r})."
        )
    if mode == "ema":
        return "ema"
    return "online" if config.teacher.model else "none"


def build_teacher(
    config: ml_collections.ConfigDict, *, num_classes: int, workdir: str | None = None
) -> tuple[Model, TeacherState, dict[str, Any]]:
    """The frozen teacher of `config.teacher`: its `Model`, `TeacherState` and source.

    The teacher's variables come from the run in `config.teacher.checkpoint` (its best step,
    else its latest), are checked against `config.teacher.model`, and are cast to
    `config.teacher.dtype`. A resumed run (`workdir` holding a saved `teacher/`) reuses the
    copy it saved at its start, so it keeps distilling from exactly the same teacher.

    Args:
      config: the experiment config.
      num_classes: classifier width.
      workdir: the run's workdir, to reuse its saved teacher on resume.

    Returns:
      `(model, teacher_state, source)`.

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015; big_vision
      distillation trainer (a frozen teacher restored from its own run).
    """
    name, kwargs = config.teacher.model, config.teacher.kwargs
    saved = None if workdir is None else epath.Path(workdir) / "teacher"
    if saved is not None and saved.exists():
        abstract = models.build_model(name, kwargs, num_classes=num_classes, abstract=True)
        stored = restore_teacher(workdir)
        params = models.fit_variables(stored["params"], abstract.params, where=saved, expected=name)
        state = models.fit_variables(stored["state"], abstract.state, where=saved, expected=name)
        model = Model(abstract.apply, params, state)
        source = {"checkpoint": str(saved), "step": None}
    else:
        path = config.teacher.checkpoint
        model, step = models.restore_trained_model(
            path, name, kwargs, num_classes=num_classes, role="config.teacher.checkpoint"
        )
        source = {"checkpoint": str(epath.Path(path).absolute()), "step": step}
    return model, engine.freeze_teacher(model, dtype=teacher_dtype(config)), source


def _outputs_shape(model: Model, inputs: jax.ShapeDtypeStruct) -> Any:
    return jax.eval_shape(
        lambda p, s, x: model.apply(p, s, x, train=False)[0], model.params, model.state, inputs
    )


def build(
    config: ml_collections.ConfigDict,
    *,
    data_dir: str | None = None,
    workdir: str | None = None,
) -> Experiment:
    """Builds the experiment of `config`: student, teacher, objective, optimizer, pipelines.

    Args:
      config: the experiment config (`jaxkd.experiment.config.base_config()` schema).
      data_dir: TFDS data dir (overrides `config.data.data_dir`).
      workdir: the run's workdir; on resume the teacher saved there is reused.

    Returns:
      The `Experiment`.

    Raises:
      ValueError: an unknown model, loss, adapter, dataset, optimizer or schedule name (the
        message lists the valid ones), a teacher checkpoint of another model, or a term that
        reads a teacher the config does not have.
      FileNotFoundError: `config.teacher.checkpoint` holds no finished checkpoint.

    References:
      big_vision configs (the config is the whole experiment).
    """
    data_dir = pipelines.data_dir_of(config, data_dir)
    num_classes = dataset_spec(config.data.name, data_dir=data_dir).num_classes
    mode = _teacher_mode(config)
    needs_teacher = [t.name for t in config.objective.terms.values() if t.teacher is not None]
    if needs_teacher and mode == "none":
        raise ValueError(
            f"objective terms {needs_teacher} read a teacher, but config.teacher.model is empty."
        )
    with_index = any("index" in t.inputs for t in config.objective.terms.values())
    train = pipelines.build_train_pipeline(config, with_index=with_index, data_dir=data_dir)
    evaluation = pipelines.build_eval_pipeline(config, data_dir=data_dir)
    steps_per_epoch = train.steps_per_epoch

    student = models.build_model(
        config.student.model, config.student.kwargs, num_classes=num_classes, seed=config.seed
    )
    sample = train.dataset[0]["inputs"]
    inputs = jax.ShapeDtypeStruct((2, *sample.shape[1:]), jnp.float32)
    teacher = teacher_config = source = teacher_outputs = None
    if mode == "online":
        teacher_model, teacher, source = build_teacher(
            config, num_classes=num_classes, workdir=workdir
        )
        teacher_config = TeacherConfig(apply=teacher_model.apply, dtype=teacher_dtype(config))
        teacher_outputs = _outputs_shape(teacher_model, inputs)
    elif mode == "ema":
        teacher_config = TeacherConfig(mode="ema", ema_decay=float(config.teacher.ema_decay))
        teacher_outputs = _outputs_shape(student, inputs)

    if with_index and len(train.specs) > 1:
        raise ValueError(
            "terms with inputs ('index',) (CRD's memory bank) index one split; they cannot be "
            "combined with config.data.unlabeled_split."
        )
    objective = objective_builder.build_objective(
        config,
        student_outputs=_outputs_shape(student, inputs),
        teacher_outputs=teacher_outputs,
        steps_per_epoch=steps_per_epoch,
        num_data=train.num_examples,
        seed=int(config.seed),
    )
    schedule = optimizer.learning_rate_schedule(
        config, steps_per_epoch=steps_per_epoch, num_epochs=float(config.num_epochs)
    )
    return Experiment(
        config=config,
        num_classes=num_classes,
        student=student,
        teacher=teacher,
        teacher_config=teacher_config,
        teacher_source=source,
        objective=objective,
        optimizer=optimizer.make_optimizer(config, schedule),
        learning_rate=schedule,
        train=train,
        eval=evaluation,
        steps_per_epoch=steps_per_epoch,
        num_steps=round(float(config.num_epochs) * steps_per_epoch),
    )
