"""Evaluating a finished (or running) run from its checkpoints alone.

The student is rebuilt by the name recorded in the run's `config` item and restored alone;
the teacher is neither built nor read unless asked for, and then comes from the copy the
run saved at its start (`<workdir>/teacher`), so the numbers are those of the teacher the
student was actually distilled from.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import ml_collections

from jaxkd import engine, parallel
from jaxkd.checkpoint import restore_config, restore_student, restore_teacher
from jaxkd.data import dataset_spec
from jaxkd.engine import TeacherConfig, TrainState
from jaxkd.experiment import build as build_lib
from jaxkd.experiment import models, pipelines
from jaxkd.run import steps


def _restore(workdir: str, step: int | Literal["best", "latest"]) -> tuple[dict[str, Any], str]:
    if step == "best":
        try:
            return restore_student(workdir, step="best"), "best"
        except (FileNotFoundError, ValueError):  # saved without eval metrics
            return restore_student(workdir, step="latest"), "latest"
    if isinstance(step, str) and step != "latest":
        raise ValueError(f"`step` must be 'best', 'latest' or an int, got {step!r}.")
    return restore_student(workdir, step=step), str(step)


def evaluate_checkpoint(
    workdir: str,
    *,
    split: str = "test",
    with_teacher: bool = False,
    data_dir: str | None = None,
    step: int | Literal["best", "latest"] = "best",
    model: str | None = None,
) -> dict[str, Any]:
    """Restores a run's student alone and evaluates it on `split`.

    Args:
      workdir: the run's workdir.
      split: the split of the run's dataset to evaluate on.
      with_teacher: also evaluate the teacher (its accuracy, agreement, KL(teacher‖student))
        from the copy saved in `workdir/teacher` (or the EMA params of an "ema" run).
      data_dir: TFDS data dir (default: the run's `config.data.data_dir`).
      step: "best" (by the run's best metric; the latest step if it saved none),
        "latest", or a step number.
      model: the model the caller expects; a run of another model is an error.

    Returns:
      `{"workdir", "split", "step", "model", "params", "accuracy", "loss", "count"}` plus,
      with the teacher, `teacher_accuracy`, `agreement` and `kl`.

    Raises:
      FileNotFoundError: no checkpoint (or not that step) in `workdir`.
      ValueError: the checkpoint does not hold the recorded (or expected) model; the
        message is one line naming the path and the model.

    References:
      Stanton et al., "Does Knowledge Distillation Really Work?", NeurIPS 2021 (agreement
      and KL as fidelity metrics).
    """
    stored, chosen = _restore(workdir, step)
    at = int(stored["step"])
    info = restore_config(workdir, step=at)
    config = ml_collections.ConfigDict(info["config"])
    name = (info.get("models") or {}).get("student") or config.student.model
    if model is not None and model != name:
        raise ValueError(f"checkpoint {workdir} holds a {name!r} model, expected {model!r}.")
    data_dir = pipelines.data_dir_of(config, data_dir)
    num_classes = dataset_spec(config.data.name, data_dir=data_dir).num_classes
    student = models.build_model(
        name, config.student.kwargs, num_classes=num_classes, abstract=True
    )
    where = f"{workdir} (step {at})"
    params = models.fit_variables(stored["params"], student.params, where=where, expected=name)
    model_state = models.fit_variables(
        stored.get("model_state", {}), student.state, where=where, expected=name
    )
    teacher = teacher_config = ema = None
    if with_teacher:
        teacher, teacher_config, ema = _teacher(workdir, config, stored, student, num_classes)
    state = TrainState(
        step=jnp.asarray(at, jnp.int32),
        params=params,
        model_state=model_state,
        adapter_params={},
        adapter_state={},
        opt_state={},
        rng=jnp.zeros((2,), jnp.uint32),
        loss_state={},
        ema_params=ema,
    )
    mesh = parallel.make_mesh()
    state = parallel.shard_tree(state, mesh)
    teacher = None if teacher is None else parallel.shard_tree(teacher, mesh)
    pipeline = pipelines.build_eval_pipeline(config, split=split, data_dir=data_dir)
    evaluate = steps.make_evaluator(
        engine.make_eval_step(student, teacher=teacher_config),
        mesh,
        state,
        teacher,
        pipeline,
        in_memory=False,
    )
    metrics = evaluate(state, teacher)
    count = sum(int(x.size) for x in jax.tree.leaves(student.params))
    header = {"workdir": str(workdir), "split": split, "step": at, "step_kind": chosen}
    return {**header, "model": name, "params": count, **metrics}


def _teacher(workdir, config, stored, student, num_classes):
    mode = config.teacher.mode
    if mode == "ema":
        ema = models.fit_variables(
            stored["ema_params"], student.params, where=workdir, expected="EMA teacher"
        )
        return None, TeacherConfig(mode="ema"), ema
    if not config.teacher.model:
        raise ValueError(f"run {workdir} was trained without a teacher; nothing to compare with.")
    name = config.teacher.model
    abstract = models.build_model(
        name, config.teacher.kwargs, num_classes=num_classes, abstract=True
    )
    saved = restore_teacher(workdir)
    where = f"{workdir}/teacher"
    params = models.fit_variables(saved["params"], abstract.params, where=where, expected=name)
    state = models.fit_variables(saved["state"], abstract.state, where=where, expected=name)
    teacher = engine.freeze_teacher(
        engine.Model(abstract.apply, params, state), dtype=build_lib.teacher_dtype(config)
    )
    return teacher, TeacherConfig(apply=abstract.apply, dtype=build_lib.teacher_dtype(config)), None
