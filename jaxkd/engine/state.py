"""The trainable side of distillation as one pytree: `TrainState`."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxkd.engine.models import Model
from jaxkd.objective import Objective


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and returns; the teacher is deliberately not in it.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the student's trainable parameters.
      model_state: the student's other variables (BatchNorm statistics, NNX RNG counters).
      adapter_params: trainable adapters of the objective, `{term: {side: params}}`.
      adapter_state: their non-trainable state, same layout.
      opt_state: optimizer state of `{"params": params, "adapter_params": adapter_params}`.
      rng: raw `uint32` key data; the step derives its keys with `fold_in(rng, step)`, so
        the key never changes and a restored state replays the same randomness.
      loss_state: state of stateful terms, `{term: state}` (CRD's memory bank).
      ema_params: the EMA teacher's parameters in self-distillation, else None.
    """

    step: jax.Array
    params: Any
    model_state: Any
    adapter_params: Any
    adapter_state: Any
    opt_state: Any
    rng: jax.Array
    loss_state: Any
    ema_params: Any = None

    def trainable(self) -> dict[str, Any]:
        """The tree the optimizer sees: `{"params": ..., "adapter_params": ...}`."""
        return {"params": self.params, "adapter_params": self.adapter_params}


def _copy(tree: Any) -> Any:
    # Fresh buffers: the train step donates the state, and two leaves sharing one buffer
    # (params and their EMA copy) cannot both be donated.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def init_train_state(
    student: Model,
    optimizer: optax.GradientTransformation,
    *,
    objective: Objective | None = None,
    rng: int | jax.Array = 0,
    ema: bool = False,
) -> TrainState:
    """Builds the initial `TrainState` of a student (and the objective's adapters).

    Args:
      student: the student `Model` (from `from_nnx` / `from_linen`).
      optimizer: the optax optimizer; it is initialized on the student's params and the
        adapters' params only, never on a teacher.
      objective: supplies the initial adapter params/state and loss state, if any.
      rng: seed or PRNG key (typed or raw) for the step's randomness.
      ema: also keep an EMA copy of the params as the self-distillation teacher.

    Returns:
      A `TrainState` at step 0.

    References:
      Flax `train_state.TrainState` (same role; ours also holds adapters and loss state).
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    rng = jnp.asarray(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    if rng.dtype != jnp.uint32:
        raise TypeError(f"`rng` must be an int seed or a PRNG key, got dtype {rng.dtype}.")
    adapter_params = {} if objective is None else objective.init_adapter_params()
    adapter_state = {} if objective is None else objective.init_adapter_state()
    loss_state = {} if objective is None else objective.init_loss_state()
    params = _copy(student.params)
    adapter_params = _copy(adapter_params)
    trainable = {"params": params, "adapter_params": adapter_params}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=_copy(student.state),
        adapter_params=adapter_params,
        adapter_state=_copy(adapter_state),
        opt_state=optimizer.init(trainable),
        rng=rng,
        loss_state=_copy(loss_state),
        ema_params=_copy(params) if ema else None,
    )
