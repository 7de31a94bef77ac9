"""The frozen teacher: its variables, where its outputs come from, and how it runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp

from jaxkd.engine.models import ApplyFn, Model, apply_fn_of
from jaxkd.engine.state import TrainState
from jaxkd.objective import Outputs, Scheduled

TeacherMode = Literal["online", "offline", "ema", "none"]
MODES = ("online", "offline", "ema", "none")


@flax.struct.dataclass
class TeacherState:
    """A teacher's variables: passed to the step as their own argument, never optimized.

    Attributes:
      params: the teacher's parameters (possibly bf16).
      state: its other variables (BatchNorm statistics), read in inference mode only.
    """

    params: Any
    state: Any = flax.struct.field(default_factory=dict)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Casts the floating-point leaves of `tree` to `dtype` (ints and keys unchanged).

    Args:
      tree: a pytree of arrays.
      dtype: the target floating dtype, e.g. `jnp.bfloat16`.

    Returns:
      The cast tree.

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018.
    """

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def freeze_teacher(source: Model | TrainState, *, dtype: Any = None) -> TeacherState:
    """The `TeacherState` of a trained model, optionally held in `dtype` (e.g. bfloat16).

    Casting once here, not per step, is what halves the teacher's memory.

    Args:
      source: the teacher `Model`, or the final `TrainState` of the run that trained it.
      dtype: floating dtype to store the params and state in; None keeps them.

    Returns:
      A `TeacherState`.

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018 (half-precision inference).
    """
    if isinstance(source, TrainState):
        params, state = source.params, source.model_state
    elif isinstance(source, Model):
        params, state = source.params, source.state
    else:
        raise TypeError(f"`source` must be a Model or a TrainState, got {type(source).__name__}.")
    if dtype is not None:
        params, state = cast_floating(params, dtype), cast_floating(state, dtype)
    return TeacherState(params=params, state=state)


def born_again(state: TrainState, *, dtype: Any = None) -> TeacherState:
    """A trained student as the teacher of the next generation (born-again networks).

    Use with `TeacherConfig(apply=student.apply)` and a freshly initialized student. The
    arrays are copied, so donating `state` to a later step leaves the teacher intact.

    Args:
      state: the previous generation's final `TrainState`.
      dtype: optional storage dtype, as in `freeze_teacher`.

    Returns:
      A `TeacherState` holding copies of its params and model state.

    References:
      Furlanello et al., "Born-Again Neural Networks", ICML 2018.
    """
    teacher = freeze_teacher(state, dtype=dtype)
    return jax.tree.map(lambda x: jnp.array(x, copy=True), teacher)


@dataclasses.dataclass(frozen=True, eq=False)
class TeacherConfig:
    """Where the teacher's outputs come from in a step.

    Modes:
      - "online": run `apply` on the `TeacherState` passed to the step (a mapping of names
        to apply functions and states for several teachers), inside the same compiled step;
      - "offline": read precomputed outputs from the batch (`batch[outputs_key]`, a
        `{name: logits}` dict for several teachers; optional `batch[features_key]`); no
        teacher runs;
      - "ema": self-distillation from the EMA of the student's params (`TrainState.ema_params`,
        updated in the step with `optax.incremental_update`);
      - "none": no teacher (plain supervised training, e.g. of the teacher itself).

    Attributes:
      mode: one of the modes above.
      apply: the teacher's apply function(s) (or `Model`s) for "online".
      dtype: compute dtype (e.g. `jnp.bfloat16`): params and floating inputs are cast to it.
      ema_decay: EMA decay `d` for "ema": `ema ← d · ema + (1 − d) · params` (constant or
        schedule of the step).
      inputs_key: batch key of the teacher's own view of the inputs; "inputs" is used when
        the batch has none.
      outputs_key: batch key of precomputed logits for "offline".
      features_key: batch key of precomputed `{name: features}` for "offline".
    """

    mode: TeacherMode = "online"
    apply: ApplyFn | Mapping[str, ApplyFn] | None = None
    dtype: Any = None
    ema_decay: Scheduled = 0.999
    inputs_key: str = "teacher_inputs"
    outputs_key: str = "teacher_logits"
    features_key: str = "teacher_features"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}.")
        if self.mode == "online" and self.apply is None:
            raise ValueError("`apply` (the teacher's apply function) is required in online mode.")
        if self.mode != "online" and self.apply is not None:
            raise ValueError(f"`apply` is only used in online mode, got mode {self.mode!r}.")
        if isinstance(self.apply, Mapping):
            object.__setattr__(self, "apply", {k: apply_fn_of(v) for k, v in self.apply.items()})
        elif self.apply is not None:
            object.__setattr__(self, "apply", apply_fn_of(self.apply))


def _inputs(config: TeacherConfig, batch: Mapping[str, Any]) -> Any:
    inputs = batch.get(config.inputs_key, batch["inputs"])
    return inputs if config.dtype is None else cast_floating(inputs, config.dtype)


def _frozen(tree: Any) -> Any:
    """`stop_gradient` on the floating leaves of `tree` (integer and key leaves pass through)."""

    def stop(x):
        return jax.lax.stop_gradient(x) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(stop, tree)


def _run(apply: ApplyFn, teacher: TeacherState, inputs: Any, dtype: Any) -> Outputs:
    params = teacher.params if dtype is None else cast_floating(teacher.params, dtype)
    outputs, _ = apply(_frozen(params), _frozen(teacher.state), inputs, train=False)
    return _frozen(outputs)


def teacher_outputs(
    config: TeacherConfig,
    teacher: TeacherState | Mapping[str, TeacherState] | None,
    state: TrainState,
    batch: Mapping[str, Any],
    student_apply: ApplyFn,
) -> Outputs | dict[str, Outputs] | None:
    """The teacher's outputs for `batch` (without gradient), per `config.mode`.

    Args:
      config: the `TeacherConfig`.
      teacher: the `TeacherState` (or `{name: TeacherState}`) for online mode, else None.
      state: the current `TrainState` (EMA params for "ema").
      batch: the batch.
      student_apply: the student's apply function (the EMA teacher's architecture).

    Returns:
      `Outputs`, `{name: Outputs}`, or None in mode "none".

    References:
      Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017 ("ema").
    """
    if config.mode == "none":
        return None
    if config.mode == "offline":
        if config.outputs_key not in batch:
            raise ValueError(
                f"offline mode needs the teacher's logits in batch[{config.outputs_key!r}]; "
                f"batch keys: {sorted(batch)}."
            )
        logits, features = batch[config.outputs_key], batch.get(config.features_key, {})
        if isinstance(logits, Mapping):
            return {
                name: _frozen(Outputs(z, dict(features.get(name, {}))))
                for name, z in logits.items()
            }
        return _frozen(Outputs(logits, dict(features)))
    inputs = _inputs(config, batch)
    if config.mode == "ema":
        if state.ema_params is None:
            raise ValueError("mode 'ema' needs `init_train_state(..., ema=True)`.")
        # The student's own statistics stand in for the EMA teacher's (as in mean teacher).
        return _run(
            student_apply, TeacherState(state.ema_params, state.model_state), inputs, config.dtype
        )
    if teacher is None:
        raise ValueError("online mode needs the teacher's `TeacherState` passed to the step.")
    if isinstance(config.apply, Mapping):
        if not isinstance(teacher, Mapping) or set(teacher) != set(config.apply):
            names = sorted(teacher) if isinstance(teacher, Mapping) else type(teacher).__name__
            raise ValueError(
                f"the teacher states {names} must match the teacher apply functions "
                f"{sorted(config.apply)}."
            )
        return {n: _run(config.apply[n], teacher[n], inputs, config.dtype) for n in config.apply}
    if not isinstance(teacher, TeacherState):
        raise TypeError(f"`teacher` must be a TeacherState, got {type(teacher).__name__}.")
    return _run(config.apply, teacher, inputs, config.dtype)
