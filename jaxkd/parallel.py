"""Device meshes, sharding rules for param trees and batches, and multi-host setup.

The primary path is `jax.jit` with explicit shardings over a mesh with axes
`("data", "fsdp")`: batches are split over both axes, and every large array of the
student, the teacher and the optimizer state is split along one dimension over `fsdp`
(fully sharded data parallelism, as in big_vision's `fsdp` rule). XLA inserts the
all-gathers and reduce-scatters, so one step gives the same result on any mesh shape.
`jax.pmap`/`shard_map` users can instead pass `axis_name` to `make_train_step`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxkd.engine.step import TrainStep, jit_train_step

AXES = ("data", "fsdp")


def make_mesh(
    data: int | None = None, fsdp: int = 1, *, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A `data × fsdp` device mesh with axes `("data", "fsdp")`.

    Args:
      data: size of the data-parallel axis; None uses all devices left after `fsdp`.
      fsdp: size of the parameter-sharding axis.
      devices: the devices to use; defaults to `jax.devices()` (all processes).

    Returns:
      A `jax.sharding.Mesh` in Auto mode (XLA propagates shardings through the step).

    References:
      JAX, "Distributed arrays and automatic parallelization"; Rajbhandari et al., "ZeRO",
      SC 2020 (parameter sharding).
    """
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"`fsdp`={fsdp} must be >= 1 and divide the {len(devices)} devices.")
    data = len(devices) // fsdp if data is None else data
    if data < 1 or data * fsdp != len(devices):
        raise ValueError(
            f"the mesh shape (data={data}, fsdp={fsdp}) must multiply to the number of "
            f"devices, {len(devices)}."
        )
    return jax.make_mesh((data, fsdp), AXES, (AxisType.Auto, AxisType.Auto), devices=devices)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """How arrays are laid out on the mesh.

    Attributes:
      min_size: arrays with fewer elements are replicated (sharding them costs more in
        communication than it saves in memory).
      fsdp_axis: mesh axis that parameters are split over.
      batch_axes: mesh axes that the batch dimension is split over.
    """

    min_size: int = 2**16
    fsdp_axis: str = "fsdp"
    batch_axes: tuple[str, ...] = AXES


def param_spec(shape: Sequence[int], fsdp_size: int, rules: ShardingRules) -> PartitionSpec:
    """The `PartitionSpec` of one array: its largest dimension divisible by `fsdp_size`.

    Arrays smaller than `rules.min_size`, with no divisible dimension, or on a mesh with
    `fsdp_size == 1` are replicated. Ties go to the last such dimension (the output
    features of a kernel).

    Args:
      shape: the array's shape.
      fsdp_size: the size of the `fsdp` mesh axis.
      rules: the `ShardingRules`.

    Returns:
      The `PartitionSpec`.

    References:
      big_vision `sharding.py` (the `fsdp` rule); Rajbhandari et al., "ZeRO", SC 2020.
    """
    shape = tuple(shape)
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < rules.min_size:
        return PartitionSpec()
    candidates = [i for i, n in enumerate(shape) if n % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    axis = max(candidates, key=lambda i: (shape[i], i))
    spec = [None] * len(shape)
    spec[axis] = rules.fsdp_axis
    return PartitionSpec(*spec)


def tree_sharding(tree: Any, mesh: Mesh, rules: ShardingRules = ShardingRules()) -> Any:
    """A `NamedSharding` per leaf of `tree` by `param_spec` (works for a whole `TrainState`).

    The same rule applied to params and to the optimizer's moments gives them the same
    layout, so the update needs no communication.

    Args:
      tree: any pytree of arrays (or `jax.ShapeDtypeStruct`s).
      mesh: the mesh.
      rules: the `ShardingRules`.

    Returns:
      A tree of `NamedSharding` with the structure of `tree`.

    References:
      big_vision `sharding.py`.
    """
    fsdp_size = mesh.shape[rules.fsdp_axis]

    def sharding(x):
        return NamedSharding(mesh, param_spec(np.shape(x), fsdp_size, rules))

    return jax.tree.map(sharding, tree)


def batch_sharding(mesh: Mesh, rules: ShardingRules = ShardingRules()) -> NamedSharding:
    """The batch sharding: the leading dimension split over all of `rules.batch_axes`.

    Args:
      mesh: the mesh.
      rules: the `ShardingRules`.

    Returns:
      A `NamedSharding`.

    References:
      JAX, "Distributed arrays and automatic parallelization".
    """
    return NamedSharding(mesh, PartitionSpec(rules.batch_axes))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps the same value on every device of `mesh` (`PartitionSpec()`).

    Args:
      mesh: the mesh.

    Returns:
      A `NamedSharding`.

    References:
      JAX, "Distributed arrays and automatic parallelization".
    """
    return NamedSharding(mesh, PartitionSpec())


def shard_tree(tree: Any, mesh: Mesh, rules: ShardingRules = ShardingRules()) -> Any:
    """Places `tree` (params, a `TrainState`, a `TeacherState`) on `mesh` by the rules.

    Like `jax.device_put`, the result may share buffers with `tree` (a replicated leaf keeps
    the original as its first shard), and the train step donates the state it is given:
    rebind, `state = shard_tree(state, mesh)`, and do not reuse the unsharded tree.

    Args:
      tree: the pytree to place.
      mesh: the mesh.
      rules: the `ShardingRules`.

    Returns:
      The tree as global arrays on `mesh`.

    References:
      JAX, `jax.device_put`.
    """
    return jax.device_put(tree, tree_sharding(tree, mesh, rules))


def shard_batch(
    batch: Mapping[str, Any], mesh: Mesh, rules: ShardingRules = ShardingRules()
) -> dict[str, Any]:
    """Global batch arrays from this process's rows, split over the batch axes.

    Each process passes its own rows (`[local_batch, ...]` numpy or arrays); the global
    batch is their concatenation in process order, assembled without copying through
    `jax.make_array_from_process_local_data` (`jaxkd.data.to_global_arrays` with
    `batch_sharding(mesh, rules)`). With one process this is a `device_put`.

    Args:
      batch: dict of arrays (nested dicts allowed, e.g. offline multi-teacher logits).
      mesh: the mesh.
      rules: which axes split the batch.

    Returns:
      The same structure of global `jax.Array`s.

    Raises:
      ValueError: an entry's leading dimension is missing or not divisible by this
        process's devices of the batch axes.

    References:
      JAX multi-process guide, `jax.make_array_from_process_local_data`.
    """
    # Imported here: `jaxkd.data` registers its TFDS builders on import, which users who
    # bring their own data should not pay for (seconds) when they import `jaxkd.parallel`.
    from jaxkd.data.sharding import to_global_arrays

    return to_global_arrays(batch, batch_sharding(mesh, rules))


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto_detect: bool = False,
) -> None:
    """Starts JAX's multi-host runtime when there is more than one process; else a no-op.

    Call once, before any other JAX call, in every process. On Cloud TPU pods, SLURM or
    Kubernetes (`auto_detect=True`) JAX discovers the cluster itself; elsewhere pass the
    coordinator address, the process count and this process's id (or set
    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`).

    Args:
      coordinator_address: `host:port` of process 0.
      num_processes: total number of processes.
      process_id: this process's index.
      auto_detect: let `jax.distributed.initialize()` detect the cluster.

    References:
      JAX, "Multi-process environments" (`jax.distributed.initialize`).
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if auto_detect:
        jax.distributed.initialize()
        return
    if coordinator_address is None and num_processes in (None, 1):
        return
    if coordinator_address is None or num_processes is None or process_id is None:
        raise ValueError(
            "multi-process setup needs `coordinator_address`, `num_processes` and `process_id` "
            f"together, got {coordinator_address!r}, {num_processes!r}, {process_id!r}."
        )
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def jit_sharded_train_step(
    train_step: TrainStep,
    mesh: Mesh,
    state: Any,
    teacher: Any = None,
    rules: ShardingRules = ShardingRules(),
) -> TrainStep:
    """The train step compiled for `mesh`: shardings from the rules, state donated.

    `state` and `teacher` (concrete or `jax.eval_shape` trees) only give the structure and
    shapes; place the real ones with `shard_tree` and the batches with `shard_batch`.

    Args:
      train_step: from `jaxkd.engine.make_train_step` (no `axis_name`).
      mesh: the mesh.
      state: the `TrainState` (or its shapes).
      teacher: the teacher argument of the step (or its shapes), None if it takes none.
      rules: the sharding rules.

    Returns:
      `step(state, teacher, batch) -> (state, metrics)`, metrics replicated.

    References:
      big_vision `trainers/proj/distill/distill.py` (teacher and student on one mesh).
    """
    return jit_train_step(
        train_step,
        state_sharding=tree_sharding(state, mesh, rules),
        teacher_sharding=None if teacher is None else tree_sharding(teacher, mesh, rules),
        batch_sharding=batch_sharding(mesh, rules),
        metrics_sharding=replicated(mesh),
    )
