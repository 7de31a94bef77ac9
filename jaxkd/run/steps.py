"""The compiled functions of a run: one train step, one whole epoch, evaluation.

Everything is compiled ahead of time (`jit(...).lower(...).compile()`) from the shapes of
the first batch, so each function is compiled exactly once, its compile time is measured
apart from training, and a batch of another shape fails loudly instead of silently
recompiling. The in-memory epoch is `lax.scan` over the very same pure train step, so the
two data paths compute the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxkd import engine, parallel
from jaxkd.data import Pipeline, to_global_arrays
from jaxkd.engine.evaluate import EvalStep
from jaxkd.engine.step import TrainStep


def stacked_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of `[steps, batch, ...]` arrays: steps replicated, batch over the mesh.

    Args:
      mesh: the device mesh.

    Returns:
      `NamedSharding(mesh, P(None, ("data", "fsdp")))`.

    References:
      JAX, "Distributed arrays and automatic parallelization".
    """
    return NamedSharding(mesh, PartitionSpec(None, parallel.AXES))


def shard_stacked(batches: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global `[steps, batch, ...]` arrays from this process's rows (its batch shard).

    Args:
      batches: one epoch's stacked local batches (`Pipeline.epoch(e)`).
      mesh: the device mesh.

    Returns:
      The same keys as global `jax.Array`s, batch axis split over the mesh.

    References:
      JAX, `jax.make_array_from_process_local_data`.
    """
    return to_global_arrays(batches, stacked_sharding(mesh))


def _abstract(batch: Mapping[str, np.ndarray], sharding: NamedSharding, axis: int) -> Any:
    def spec(x):
        x = np.asarray(x)
        shape = list(x.shape)
        shape[axis] *= jax.process_count()
        return jax.ShapeDtypeStruct(tuple(shape), x.dtype, sharding=sharding)

    return {k: spec(v) for k, v in batch.items()}


def _shardings(mesh: Mesh, state: Any, teacher: Any) -> tuple[Any, Any]:
    state_sharding = parallel.tree_sharding(state, mesh)
    teacher_sharding = None if teacher is None else parallel.tree_sharding(teacher, mesh)
    return state_sharding, teacher_sharding


def compile_train_step(
    train_step: TrainStep, mesh: Mesh, state: Any, teacher: Any, batch: Mapping[str, np.ndarray]
) -> Callable:
    """The train step compiled for `mesh` (state donated), for batches shaped like `batch`.

    Args:
      train_step: from `jaxkd.engine.make_train_step`.
      mesh: the device mesh.
      state: the `TrainState` (or its shapes).
      teacher: the teacher argument (or None).
      batch: one local batch (numpy), for its shapes.

    Returns:
      `step(state, teacher, batch) -> (state, metrics)`.

    References:
      JAX, "Ahead-of-time lowering and compilation" (`jit(...).lower(...).compile()`).
    """
    jitted = parallel.jit_sharded_train_step(train_step, mesh, state, teacher)
    abstract = _abstract(batch, parallel.batch_sharding(mesh), axis=0)
    return jitted.lower(state, teacher, abstract).compile()


def compile_train_epoch(
    train_step: TrainStep, mesh: Mesh, state: Any, teacher: Any, batch: Mapping[str, np.ndarray]
) -> Callable:
    """One whole epoch as one compiled call: `lax.scan` of `train_step` over its batches.

    Thousands of tiny steps (MNIST-1D) then cost one dispatch instead of one each.

    Args:
      train_step: from `jaxkd.engine.make_train_step`.
      mesh: the device mesh.
      state: the `TrainState` (or its shapes).
      teacher: the teacher argument (or None).
      batch: one epoch's stacked local batches `[steps, batch, ...]`, for their shapes.

    Returns:
      `epoch(state, teacher, batches) -> (state, metrics)`, metrics stacked `[steps]`.

    References:
      JAX, `jax.lax.scan`; Greydanus, "Scaling down deep learning" (MNIST-1D), 2020.
    """

    def epoch(state, teacher, batches):
        return jax.lax.scan(lambda s, b: train_step(s, teacher, b), state, batches)

    state_sharding, teacher_sharding = _shardings(mesh, state, teacher)
    jitted = jax.jit(
        epoch,
        in_shardings=(state_sharding, teacher_sharding, stacked_sharding(mesh)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=(0,),
    )
    return jitted.lower(state, teacher, _abstract(batch, stacked_sharding(mesh), 1)).compile()


def make_evaluator(
    eval_step: EvalStep,
    mesh: Mesh,
    state: Any,
    teacher: Any,
    pipeline: Pipeline,
    *,
    in_memory: bool,
) -> Callable[[Any, Any], dict[str, float]]:
    """`evaluate(state, teacher) -> metrics` over one pass of `pipeline`, compiled once.

    In memory, the whole split is put on the devices once and summed by one `lax.scan`;
    otherwise batches stream from the pipeline's iterator. Both add the per-batch sums in
    batch order and divide once (`engine.summarize`), so padding is exact.

    Args:
      eval_step: from `jaxkd.engine.make_eval_step`.
      mesh: the device mesh.
      state: the `TrainState` (or its shapes).
      teacher: the teacher argument (or None).
      pipeline: the evaluation `Pipeline`.
      in_memory: hold the split on the devices.

    Returns:
      The evaluation function (`accuracy`, `loss`, `count` and teacher metrics).

    References:
      Stanton et al., "Does Knowledge Distillation Really Work?", NeurIPS 2021.
    """
    state_sharding, teacher_sharding = _shardings(mesh, state, teacher)
    out = parallel.replicated(mesh)
    if not in_memory:
        jitted = jax.jit(
            eval_step,
            in_shardings=(state_sharding, teacher_sharding, parallel.batch_sharding(mesh)),
            out_shardings=out,
        )
        compiled = jitted.lower(
            state, teacher, _abstract(pipeline.dataset[0], parallel.batch_sharding(mesh), 0)
        ).compile()

        def evaluate(state, teacher):
            total = None
            for batch in pipeline.iterator():
                sums = compiled(state, teacher, parallel.shard_batch(batch, mesh))
                total = engine.accumulate(total, sums)
            return engine.summarize(jax.device_get(total))

        return evaluate

    def scan(state, teacher, batches):
        first = jax.tree.map(lambda x: x[0], batches)
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(eval_step, state, teacher, first)
        )

        def body(total, batch):
            return engine.accumulate(total, eval_step(state, teacher, batch)), None

        return jax.lax.scan(body, zeros, batches)[0]

    stacked = pipeline.epoch(0)
    jitted = jax.jit(
        scan,
        in_shardings=(state_sharding, teacher_sharding, stacked_sharding(mesh)),
        out_shardings=out,
    )
    compiled = jitted.lower(state, teacher, _abstract(stacked, stacked_sharding(mesh), 1)).compile()
    on_device = shard_stacked(stacked, mesh)
    return lambda state, teacher: engine.summarize(
        jax.device_get(compiled(state, teacher, on_device))
    )
