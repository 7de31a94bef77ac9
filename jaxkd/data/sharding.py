"""Host batches (numpy, this process's rows) to global `jax.Array`s over a mesh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np


def to_global_arrays(
    batch: Mapping[str, Any], sharding: jax.sharding.Sharding | Mapping[str, Any]
) -> dict[str, jax.Array]:
    """Assembles each process's rows of a batch into global arrays with `sharding`.

    global[key] = concatenate over processes p of batch_p[key] (along axis 0), placed by
    `jax.make_array_from_process_local_data`; with one process this is `device_put`.

    Args:
      batch: dict of numpy arrays, the rows this process read ([local_batch, ...]).
      sharding: one `jax.sharding.Sharding` for every key (e.g.
        `NamedSharding(mesh, PartitionSpec("data"))`, which splits axis 0 only and so fits
        every rank), or a mapping from key to sharding.

    Returns:
      A dict of global `jax.Array`s with leading dimension local_batch · process_count.

    References: JAX multi-process guide, `jax.make_array_from_process_local_data`.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(f"`batch` must be a dict of arrays, got {type(batch).__name__}.")
    if isinstance(sharding, Mapping):
        missing = sorted(set(batch) - set(sharding))
        if missing:
            raise ValueError(f"`sharding` has no entry for batch keys {missing}.")
        return {
            k: jax.make_array_from_process_local_data(sharding[k], np.asarray(v))
            for k, v in batch.items()
        }
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


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
