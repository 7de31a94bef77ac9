"""The distillation train step: teacher forward, student forward/backward, update — one function."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxkd.engine.models import ApplyFn, Model, apply_fn_of
from jaxkd.engine.state import TrainState
from jaxkd.engine.teacher import TeacherConfig, TeacherState, teacher_outputs
from jaxkd.models import swapped_kernel_gradients
from jaxkd.objective import Objective, resolve

Batch = Mapping[str, Any]
TeacherArg = TeacherState | Mapping[str, TeacherState] | None
TrainStep = Callable[[TrainState, TeacherArg, Batch], tuple[TrainState, dict[str, jax.Array]]]


def _check_teacher(objective: Objective, teacher: TeacherConfig | None) -> TeacherConfig:
    teacher = TeacherConfig(mode="none") if teacher is None else teacher
    if not isinstance(teacher, TeacherConfig):
        raise TypeError(f"`teacher` must be a TeacherConfig, got {type(teacher).__name__}.")
    if objective.needs_teacher and teacher.mode == "none":
        names = [t.name for t in objective.terms if t.teacher is not None]
        raise ValueError(f"terms {names} read the teacher; pass `teacher=TeacherConfig(...)`.")
    return teacher


def pmean_floating(tree: Any, axis_name: str) -> Any:
    """`lax.pmean` of the floating leaves of `tree` over `axis_name` (others unchanged).

    Batch statistics are averaged across devices like gradients; integer leaves (NNX RNG
    counters) are identical on every device and stay as they are.

    Args:
      tree: a pytree of arrays.
      axis_name: the mapped axis.

    Returns:
      The averaged tree.

    References:
      flax `examples/imagenet/train.py` (`sync_batch_stats`).
    """

    def mean(x):
        return jax.lax.pmean(x, axis_name) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(mean, tree)


def _as_varying(tree: Any, axis_name: str) -> Any:
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(tree, axis_name, to="varying")
    return jax.lax.pvary(tree, axis_name)  # JAX releases before `pcast`


def make_train_step(
    student: Model | ApplyFn,
    objective: Objective,
    optimizer: optax.GradientTransformation,
    *,
    teacher: TeacherConfig | None = None,
    axis_name: str | None = None,
) -> TrainStep:
    """Builds the pure train step `(state, teacher, batch) -> (new_state, metrics)`.

    One call runs the frozen teacher in inference mode (or reads its outputs from the batch),
    the student forward and backward, every objective term, the optimizer update and the
    EMA teacher update. Compile it once with `jax.jit` (see `jit_train_step` and
    `jaxkd.parallel.jit_sharded_train_step`, the primary path: the batch is split over the
    mesh and XLA inserts the collectives, so results equal a single device's).

    With `axis_name`, the step can instead run under `jax.pmap` / `jax.shard_map` on a
    per-device shard of the batch: gradients, metrics and the floating model state (batch
    statistics) are averaged with `lax.pmean`. Each device's loss is the mean over its own
    shard, so this equals the global step when every shard holds the same number of valid
    examples and the model has no cross-example layers (BatchNorm statistics are per shard
    unless the model's BatchNorm has its own `axis_name`). Stateful terms (CRD's bank)
    are not supported there.

    Args:
      student: the student `Model` (or its apply function).
      objective: the `Objective`.
      optimizer: the optax optimizer over `state.trainable()`.
      teacher: where the teacher's outputs come from; None for no teacher.
      axis_name: mapped axis name for `pmap`/`shard_map`; None under `jit`.

    Returns:
      `train_step(state, teacher_state, batch) -> (state, metrics)`; `teacher_state` is the
      `TeacherState` (or `{name: TeacherState}`) in online mode and None otherwise. Metrics
      are the objective's (`loss`, `loss/<term>`, `weight/<term>`) plus `grad_norm`.

    References:
      Hinton et al., 2015; flax `examples/imagenet/train.py` (the step as a pure function).
    """
    apply = apply_fn_of(student)
    config = _check_teacher(objective, teacher)
    if axis_name is not None and objective.init_loss_state():
        raise ValueError(
            f"stateful terms {sorted(objective.init_loss_state())} keep a global state that "
            "per-device steps would fork; use the jit-compiled step (axis_name=None)."
        )

    def train_step(state: TrainState, teacher_state: TeacherArg, batch: Batch):
        if "inputs" not in batch:
            raise ValueError(f"the batch needs an 'inputs' entry; batch keys: {sorted(batch)}.")
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        dropout_key, loss_key = jax.random.split(key)
        # Computed before and outside the differentiated function: no gradient can reach it.
        teacher_out = teacher_outputs(config, teacher_state, state, batch, apply)

        def loss_fn(trainable):
            student_out, model_state = apply(
                trainable["params"],
                state.model_state,
                batch["inputs"],
                train=True,
                rng=dropout_key,
            )
            loss, aux = objective.apply(
                student_out,
                teacher_out,
                batch,
                state.step,
                adapter_params=trainable["adapter_params"],
                adapter_state=state.adapter_state,
                loss_state=state.loss_state,
                rng=loss_key,
                train=True,
            )
            return loss, (aux, model_state)

        trainable = state.trainable()
        # Per-device parameters: under shard_map's varying-axis typing the gradient of a
        # replicated (invariant) input would come back already summed over devices; as
        # varying values every mode (pmap, shard_map with or without check_vma) yields
        # local gradients, which the pmean below averages exactly once.
        local = trainable if axis_name is None else _as_varying(trainable, axis_name)
        # jaxkd's convolution layers then compute kernel gradients XLA:CPU-friendly.
        with swapped_kernel_gradients():
            (_, (aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(local)
        metrics, adapter_state = dict(aux.metrics), aux.adapter_state
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
            model_state = pmean_floating(model_state, axis_name)
            adapter_state = pmean_floating(adapter_state, axis_name)
        metrics["grad_norm"] = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        ema_params = state.ema_params
        if ema_params is not None:
            decay = resolve(config.ema_decay, state.step)
            ema_params = optax.incremental_update(trainable["params"], ema_params, 1.0 - decay)
        new_state = state.replace(
            step=state.step + 1,
            params=trainable["params"],
            adapter_params=trainable["adapter_params"],
            model_state=model_state,
            adapter_state=adapter_state,
            opt_state=opt_state,
            loss_state=aux.loss_state,
            ema_params=ema_params,
        )
        return new_state, metrics

    return train_step


def jit_train_step(
    train_step: TrainStep,
    *,
    state_sharding: Any = None,
    teacher_sharding: Any = None,
    batch_sharding: Any = None,
    metrics_sharding: Any = None,
    donate: bool = True,
) -> TrainStep:
    """`jax.jit` of a train step with explicit shardings, donating the state.

    Donation lets XLA write the new params and optimizer state into the old buffers, so a
    step needs one copy of the state, not two; the caller must not reuse the state it passed
    in. The teacher is not donated: it is read again every step. A sharding of None lets
    JAX infer it from the argument; `jaxkd.parallel.jit_sharded_train_step` fills them all in.

    Args:
      train_step: from `make_train_step`.
      state_sharding: sharding (tree prefix) of the `TrainState`, in and out.
      teacher_sharding: sharding of the teacher argument.
      batch_sharding: sharding of the batch.
      metrics_sharding: sharding of the metrics (replicated is typical).
      donate: donate the state's buffers.

    Returns:
      The compiled step, same signature.

    References:
      JAX, "Distributed arrays and automatic parallelization" (`jit` in/out shardings).
    """
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, teacher_sharding, batch_sharding),
        out_shardings=(state_sharding, metrics_sharding),
        donate_argnums=(0,) if donate else (),
    )
