"""Host batches (numpy, this process's rows) to global `jax.Array`s over a mesh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np


def to_global_arrays(
    batch: Mapping[str, Any], sharding: jax.sharding.Sharding | Mapping[str, Any]
) -> dict[str, Any]:
    """Assembles each process's rows of a batch into global arrays with `sharding`.

    global[key] = concatenate over processes p of batch_p[key] (along the split axes), placed
    by `jax.make_array_from_process_local_data`; with one process this is `device_put`.

    Args:
      batch: dict of numpy arrays, the rows this process read ([local_batch, ...]); nested
        dicts are allowed (e.g. offline multi-teacher logits).
      sharding: one `jax.sharding.Sharding` for every entry (e.g.
        `NamedSharding(mesh, PartitionSpec("data"))`, which splits axis 0 only and so fits
        every rank), or a mapping from top-level key to the sharding of all entries under it.

    Returns:
      The same structure of global `jax.Array`s, with leading dimension
      local_batch · process_count for a sharding that splits axis 0 over every process.

    Raises:
      ValueError: an entry has fewer dimensions than its sharding splits (e.g. a scalar), or
        a split dimension is not divisible by the devices of this process it is split over.

    References: JAX multi-process guide, `jax.make_array_from_process_local_data`.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(f"`batch` must be a dict of arrays, got {type(batch).__name__}.")
    if isinstance(sharding, Mapping):
        missing = sorted(set(batch) - set(sharding))
        if missing:
            raise ValueError(f"`sharding` has no entry for batch keys {missing}.")

    def put(path: tuple[Any, ...], value: Any) -> jax.Array:
        entry = sharding[path[0].key] if isinstance(sharding, Mapping) else sharding
        value = np.asarray(value)
        _check_local_shape(jax.tree_util.keystr(path), value.shape, entry)
        return jax.make_array_from_process_local_data(entry, value)

    return jax.tree_util.tree_map_with_path(put, dict(batch))


def _check_local_shape(name: str, shape: tuple[int, ...], sharding: jax.sharding.Sharding) -> None:
    # JAX's own errors name neither the batch entry nor, for a scalar, the problem.
    described = sharding.spec if isinstance(sharding, jax.sharding.NamedSharding) else sharding
    if isinstance(sharding, jax.sharding.NamedSharding) and len(shape) < len(sharding.spec):
        raise ValueError(
            f"batch entry {name} of shape {shape} has {len(shape)} dimension(s) but its "
            f"sharding {described} splits {len(sharding.spec)}: a batch entry needs a leading "
            "dimension (and any other its sharding splits)."
        )
    # Each dimension of this process's rows is cut into as many pieces as this process's
    # devices hold distinct slices of it. Every split count divides the device count, so
    # a shape of `num_devices` in every dimension reveals them.
    probe = (sharding.num_devices,) * len(shape)
    indices = sharding.addressable_devices_indices_map(probe).values()
    for axis, size in enumerate(shape):
        pieces = len({index[axis].start for index in indices})
        if size % pieces:
            what = "a leading dimension" if axis == 0 else f"dimension {axis}"
            raise ValueError(
                f"batch entry {name} of shape {shape} must have {what} divisible by the "
                f"{pieces} local devices it is split over ({described})."
            )


def process_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """This process's `(shard_index, shard_count)`; None takes them from `jax.process_*`."""
    if shard_index is None or shard_count is None:
        jax_shard = grain.sharding.ShardByJaxProcess()
        shard_index = jax_shard.shard_index if shard_index is None else shard_index
        shard_count = jax_shard.shard_count if shard_count is None else shard_count
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(
            f"Need 0 <= `shard_index` < `shard_count`, got shard_index={shard_index}, "
            f"shard_count={shard_count}."
        )
    return shard_index, shard_count


def local_batch_size(batch_size: int, shard_count: int) -> int:
    """Rows of a global batch on each of `shard_count` processes (an exact division)."""
    if batch_size < 1 or batch_size % shard_count:
        raise ValueError(
            f"`batch_size` (global) must be a positive multiple of the number of processes "
            f"({shard_count}), got {batch_size}."
        )
    return batch_size // shard_count
