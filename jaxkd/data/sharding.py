"""Host batches (numpy, this process's rows) to global `jax.Array`s over a mesh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
