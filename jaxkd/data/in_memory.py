"""Whole training epochs of a small cached dataset, gathered from arrays by index batches.

`Pipeline.epoch(e)` reads one epoch of a training pipeline at once (MNIST-1D runs scan whole
epochs on the device). Read through the full grain chain, each example costs ~30 µs of
Python (decode, example dict, a generator per random view, shuffle, mix, stack), paid again
every epoch. When a source's training view is deterministic (`Preprocess.is_random` is
False) and mixup is off, an example is the same array in every epoch; only its position
changes. So the examples of each source are computed once, through the pipeline's own
transforms, and kept as arrays; a second grain pipeline over `MapDataset.range` row
numbers, arranged by the same `arrange` call with the same seeds, gives each epoch's order,
and the epoch is one numpy gather per key — the same arrays as the grain path, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import grain
import numpy as np


@dataclasses.dataclass(frozen=True)
class Arrangement:
    """How `arrange` orders a pipeline's sources into this process's batches.

    Hashable (tuples only), so that it can key the cached epoch orders.

    Attributes:
      weights: the sources' mixing weights (ignored for one source).
      seeds: the sources' shuffle seeds.
      batch_size: global batch size (for the error message).
      local_batch: rows of each batch on this process.
      shard_index: this process's shard.
      shard_count: number of shards.
    """

    weights: tuple[float, ...]
    seeds: tuple[int, ...]
    batch_size: int
    local_batch: int
    shard_index: int
    shard_count: int


def arrange(
    datasets: Sequence[grain.MapDataset], arrangement: Arrangement
) -> tuple[grain.MapDataset, int, int]:
    """Orders one or more sources into this process's batches: shuffle, mix, shard, batch.

    Each source is shuffled (a new order every epoch, from its seed) before the sources are
    mixed by weight, which keeps the mixture's exact proportions; the last
    `num_examples mod shard_count` examples of the order are dropped so that every process
    runs as many steps, then process `shard_index` takes every `shard_count`-th example.

    Args:
      datasets: one `MapDataset` per source.
      arrangement: the weights, seeds, batch sizes and shard of the `Arrangement`.

    Returns:
      (batches, examples per epoch before sharding, steps per epoch).

    References: Grain `MapDataset` (shuffle, mix, slice, batch).
    """
    a = arrangement
    shuffled = [ds.shuffle(seed=s) for ds, s in zip(datasets, a.seeds, strict=True)]
    if len(shuffled) > 1:
        examples = grain.MapDataset.mix(shuffled, list(a.weights))
    else:
        examples = shuffled[0]
    num_examples = len(examples)
    per_shard = num_examples // a.shard_count
    steps_per_epoch = per_shard // a.local_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"`batch_size`={a.batch_size} leaves no full batch: {num_examples} examples per "
            f"epoch over {a.shard_count} process(es)."
        )
    # Equal shards give every process the same number of steps, which multi-host
    # training needs; the dropped examples change every epoch with the shuffle.
    examples = examples[: per_shard * a.shard_count][a.shard_index :: a.shard_count]
    return examples.batch(a.local_batch, drop_remainder=True), num_examples, steps_per_epoch


@dataclasses.dataclass(frozen=True)
class EpochOrder:
    """What fixes the order of a training pipeline's epochs: everything `arrange` reads.

    Attributes:
      lengths: examples of each source.
      arrangement: the `Arrangement` of the sources.
    """

    lengths: tuple[int, ...]
    arrangement: Arrangement


@functools.lru_cache(maxsize=8)
def _row_batches(order: EpochOrder) -> tuple[grain.MapDataset, int]:
    offsets = np.cumsum([0, *order.lengths]).tolist()
    rows = [grain.MapDataset.range(offsets[k], offsets[k + 1]) for k in range(len(order.lengths))]
    batches, _, steps = arrange(rows, order.arrangement)
    return batches.repeat(), steps


# Runs in one process that share a seed and a batch size (the demo's teacher and students,
# the runs of one seed in a seeds table) read the same orders: each is computed once
# (at most 128 epochs of N int64 rows are kept).
@functools.lru_cache(maxsize=128)
def epoch_rows(order: EpochOrder, epoch: int) -> np.ndarray:
    """Rows of one epoch, [steps_per_epoch, local batch] int64, in the pipeline's batch order.

    Row r of source k is example r − (examples of sources 0..k−1) of that source; the rows
    are read from a grain pipeline over `MapDataset.range` built by `arrange`, so they are
    the order of the pipeline with those sources, weights and seeds.

    Args:
      order: the pipeline's `EpochOrder`.
      epoch: the epoch, ≥ 0.

    Returns:
      The rows (read-only; shared by every caller with the same arguments).

    References: Grain `MapDataset.range`, `arrange`.
    """
    batches, steps = _row_batches(order)
    rows = np.stack([batches[epoch * steps + j] for j in range(steps)])
    rows.flags.writeable = False
    return rows


@dataclasses.dataclass(frozen=True)
class InMemoryEpochs:
    """A training pipeline's examples as arrays, and the order of its epochs.

    Attributes:
      arrays: every example of every source, concatenated in source order: key → [N, ...].
      order: the `EpochOrder` giving each epoch's rows of `arrays` (`epoch_rows`).
    """

    arrays: dict[str, np.ndarray]
    order: EpochOrder

    def epoch(self, epoch: int) -> dict[str, np.ndarray]:
        """All batches of one epoch stacked to [steps_per_epoch, local batch, ...]."""
        rows = epoch_rows(self.order, epoch)
        return {key: value[rows] for key, value in self.arrays.items()}


def _materialize(datasets: Sequence[grain.MapDataset]) -> dict[str, np.ndarray] | None:
    per_source = [ds.batch(len(ds))[0] for ds in datasets]
    layout = {k: (v.dtype, v.shape[1:]) for k, v in per_source[0].items()}
    for arrays in per_source[1:]:
        # Stacking batches that mix dtypes would promote them; leave that to grain.
        if {k: (v.dtype, v.shape[1:]) for k, v in arrays.items()} != layout:
            return None
    return {key: np.concatenate([a[key] for a in per_source]) for key in layout}


def in_memory_epochs(
    datasets: Sequence[grain.MapDataset], arrangement: Arrangement
) -> InMemoryEpochs | None:
    """The in-memory epochs of the pipeline `arrange(datasets, arrangement)` (then repeated).

    Only for sources whose elements do not depend on the epoch (no random views, no
    mixup): element i of each source is read once, at epoch 0.

    Args:
      datasets: the sources' examples before shuffling (the pipeline's own datasets).
      arrangement: as in `arrange`.

    Returns:
      The `InMemoryEpochs`, or None when the sources' examples differ in keys, dtypes or
      shapes (the grain path then stacks them as it always has).

    References: Grain `MapDataset.range` (the index pipeline), `arrange`.
    """
    arrays = _materialize(datasets)
    if arrays is None:
        return None
    return InMemoryEpochs(arrays, EpochOrder(tuple(len(ds) for ds in datasets), arrangement))
