"""Grain input pipelines over TFDS sources: shuffled, sharded, augmented, batched, resumable.

A training pipeline, for each source: read by index → example dict → random view(s) →
shuffle (a new order every epoch, from the seed) ; then mix the sources by weight, drop the
last few examples so every process gets as many, take this process's shard, batch, mixup,
repeat. An evaluation pipeline reads one split in order, shards it and pads the last batch
(mask 0) so that every process runs the same number of full batches.

Randomness is a pure function of (seed, epoch, example index): the shuffle is
`grain`'s index shuffle seeded with seed + epoch and the views use `random_map`, whose
generator is keyed by the element's position (epoch · N + index). A grain iterator restored
from its state (`Pipeline.iterator().get_state()`) therefore resumes with the same batches
and the same augmentations.

Batches are dicts of numpy arrays, each with this process's `local_batch_size` rows:
  "inputs" float32 [B, ...]; "label" int32 [B] (−1 for unlabelled sources);
  "mask" float32 [B] (1 = real example, 0 = padding of the last evaluation batch);
  optional "teacher_inputs" (teacher_view "independent" or "clean"), "source_id" int32
  (several sources), "index" int32 (with_index: the example's index in its split),
  and the mixup keys of `jaxkd.data.mixup`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import grain
import numpy as np

from jaxkd.data.in_memory import Arrangement, InMemoryEpochs, arrange, in_memory_epochs
from jaxkd.data.mixup import Mixup
from jaxkd.data.preprocess import Preprocess
from jaxkd.data.sharding import local_batch_size, process_shard
from jaxkd.data.sources import DatasetSpec, dataset_spec, open_source

TeacherView = Literal["same", "independent", "clean"]
TEACHER_VIEWS = ("same", "independent", "clean")


@dataclasses.dataclass(frozen=True)
class Source:
    """One TFDS split to read, and its share of a mixture.

    Attributes:
      name: TFDS name, e.g. "cifar100", "mnist1d/transfer".
      split: TFDS split string, e.g. "train", "unlabeled", "train[:90%]".
      weight: mixing weight (relative share of examples) when several sources are mixed.
      labeled: False replaces every label with −1, for transfer sets whose targets come
        from the teacher.
      preprocess: views of this source; None uses `Preprocess.for_dataset`.
    """

    name: str
    split: str = "train"
    weight: float = 1.0
    labeled: bool = True
    preprocess: Preprocess | None = None


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """A built input pipeline of one process.

    Attributes:
      dataset: `grain.MapDataset` of this process's batches (random access by step).
      steps_per_epoch: batches per epoch (the same on every process).
      batch_size: global batch size (all processes).
      local_batch_size: rows of each batch on this process.
      num_examples: examples in one epoch before sharding.
      specs: the `DatasetSpec` of each source.
      in_memory: the examples as arrays and the epochs' order, when `epoch(e)` can gather
        them (`jaxkd.data.in_memory`); None reads epochs through `dataset`.
    """

    dataset: grain.MapDataset
    steps_per_epoch: int
    batch_size: int
    local_batch_size: int
    num_examples: int
    specs: tuple[DatasetSpec, ...]
    in_memory: InMemoryEpochs | None = dataclasses.field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.dataset)

    def iterator(self, *, num_threads: int = 4, prefetch: int = 8) -> grain.DatasetIterator:
        """A checkpointable grain iterator over the batches.

        Save and restore its position with `get_state()` / `set_state(state)` (a small
        JSON-able dict), or with `grain.checkpoint.CheckpointSave` / `CheckpointRestore`
        in an Orbax `CheckpointManager`.

        Args:
          num_threads: threads preparing batches ahead (0 reads in the calling thread).
          prefetch: batches prepared ahead.
        """
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
        return iter(self.dataset.to_iter_dataset(options))

    def epoch(self, epoch: int) -> dict[str, np.ndarray]:
        """All batches of one epoch stacked to [steps_per_epoch, local_batch_size, ...].

        For small datasets whose epoch fits on the device, so that a compiled `lax.scan`
        runs the whole epoch; the result is the same as iterating over that epoch (also
        when `in_memory` gathers it from arrays).
        """
        if epoch < 0 or (epoch + 1) * self.steps_per_epoch > len(self.dataset):
            raise ValueError(
                f"`epoch` must be in [0, {len(self.dataset) // self.steps_per_epoch}), got {epoch}."
            )
        if self.in_memory is not None:
            return self.in_memory.epoch(epoch)
        start = epoch * self.steps_per_epoch
        batches = [self.dataset[start + j] for j in range(self.steps_per_epoch)]
        return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


class _ToExample(grain.transforms.MapWithIndex):
    """Picks input and label, adds mask, and optionally index and source id."""

    def __init__(
        self,
        spec: DatasetSpec,
        length: int,
        labeled: bool,
        source_id: int | None,
        with_index: bool,
    ):
        self.spec, self.length, self.labeled = spec, length, labeled
        self.source_id, self.with_index = source_id, with_index

    def map_with_index(self, index: int, example: dict[str, Any]) -> dict[str, Any]:
        label = example[self.spec.label_key] if self.labeled else -1
        out = {
            "inputs": example[self.spec.input_key],
            "label": np.int32(label),
            "mask": np.float32(1.0),
        }
        if self.with_index:
            # Past the first epoch grain reads index + epoch · length.
            out["index"] = np.int32(index % self.length)
        if self.source_id is not None:
            out["source_id"] = np.int32(self.source_id)
        return out


class _TrainView(grain.transforms.RandomMap):
    def __init__(self, preprocess: Preprocess, teacher_view: TeacherView):
        self.preprocess, self.teacher_view = preprocess, teacher_view

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        raw = element["inputs"]
        out = dict(element, inputs=self.preprocess.train_view(raw, rng))
        if self.teacher_view == "independent":
            out["teacher_inputs"] = self.preprocess.train_view(raw, rng)
        elif self.teacher_view == "clean":
            out["teacher_inputs"] = self.preprocess.eval_view(raw)
        return out


class _EvalView(grain.transforms.Map):
    def __init__(self, preprocess: Preprocess):
        self.preprocess = preprocess

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return dict(element, inputs=self.preprocess.eval_view(element["inputs"]))


class _Padding(grain.transforms.Map):
    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return dict(element, mask=np.float32(0.0))


def _derive_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _as_sources(sources: str | Source | Sequence[Source], split: str) -> tuple[Source, ...]:
    if isinstance(sources, str):
        return (Source(sources, split),)
    if isinstance(sources, Source):
        return (sources,)
    sources = tuple(sources)
    if not sources or not all(isinstance(s, Source) for s in sources):
        raise TypeError(
            f"`sources` must be a TFDS name, a Source or a non-empty sequence of Source, got "
            f"{sources!r}."
        )
    return sources


def _decoded(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record of a source, decoded once (bulk reads where the source offers them)."""
    indices = list(range(len(records)))
    try:
        return list(records.__getitems__(indices))
    except (AttributeError, TypeError, NotImplementedError):
        return [records[i] for i in indices]


def _examples(
    source: Source,
    source_id: int | None,
    with_index: bool,
    data_dir: str | None,
    cache: bool = False,
) -> tuple[grain.MapDataset, DatasetSpec, Preprocess]:
    spec = dataset_spec(source.name, data_dir=data_dir)
    preprocess = source.preprocess or Preprocess.for_dataset(spec)
    records = open_source(source.name, source.split, data_dir=data_dir)
    if len(records) == 0:
        raise ValueError(f"Split {source.split!r} of {source.name!r} is empty.")
    if cache:
        # Decoding a TFDS record costs ~100 µs; small splits read in every epoch (a transfer
        # set trained for many epochs) are decoded once and kept in host memory.
        records = _decoded(records)
    to_example = _ToExample(spec, len(records), source.labeled, source_id, with_index)
    return grain.MapDataset.source(records).map_with_index(to_example), spec, preprocess


def _check_same_inputs(datasets: Sequence[grain.MapDataset], sources: Sequence[Source]):
    shapes = [
        (s.name, s.split, np.shape(ds[0]["inputs"]))
        for ds, s in zip(datasets, sources, strict=True)
    ]
    if len({shape for *_, shape in shapes}) > 1:
        raise ValueError(f"Mixed sources must give inputs of one shape, got {shapes}.")


def train_pipeline(
    sources: str | Source | Sequence[Source],
    *,
    batch_size: int,
    seed: int,
    num_epochs: int | None = None,
    split: str = "train",
    teacher_view: TeacherView = "same",
    mixup_alpha: float = 0.0,
    with_index: bool = False,
    data_dir: str | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    cache: bool = False,
) -> Pipeline:
    """Builds the training batches of this process: shuffled per epoch, augmented, mixed.

    Each epoch visits every example of a single source once, in a new order; with several
    sources an epoch ends when the first source (relative to its weight) is used up, and
    the others continue where they stopped. The last `num_examples mod shard_count`
    examples of each epoch's order and any incomplete last batch are dropped.

    Args:
      sources: a TFDS name (read at `split`), a `Source`, or several `Source`s mixed by
        their weights (batches then carry "source_id", the position in this sequence).
      batch_size: global batch size, a multiple of `shard_count`.
      seed: non-negative seed of the shuffles and augmentations.
      num_epochs: epochs to repeat; None repeats forever.
      split: split read when `sources` is a name.
      teacher_view: "same" — the teacher scores "inputs", the student's own view
        (function matching); "independent" — "teacher_inputs" is a second random view of
        the same example; "clean" — "teacher_inputs" is the evaluation view.
      mixup_alpha: > 0 mixes each batch (`jaxkd.data.mixup.Mixup`), 0 turns mixup off.
      with_index: add "index", each example's index in its split (e.g. for CRD's memory).
      data_dir: TFDS data dir; None uses `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
      shard_index: this process's shard; None uses `jax.process_index()`.
      shard_count: number of shards; None uses `jax.process_count()`.
      cache: decode every record once and keep it in host memory (small datasets read for
        many epochs); the batches are identical either way. With no random view and no
        mixup, `epoch(e)` also keeps the examples as arrays (`jaxkd.data.in_memory`).

    Returns:
      The `Pipeline`; `pipeline.iterator()` is the checkpointable iterator.

    References: Grain `MapDataset` (shuffle, mix, slice, batch, repeat);
    Beyer et al., "Knowledge distillation: A good teacher is patient and consistent",
    CVPR 2022 (teacher and student on the same view).
    """
    sources = _as_sources(sources, split)
    if teacher_view not in TEACHER_VIEWS:
        raise ValueError(f"`teacher_view` must be one of {TEACHER_VIEWS}, got {teacher_view!r}.")
    if seed < 0:
        raise ValueError(f"`seed` must be non-negative, got {seed}.")
    if mixup_alpha < 0:
        raise ValueError(f"`mixup_alpha` must be >= 0, got {mixup_alpha}.")
    if any(not s.weight > 0 for s in sources):
        raise ValueError(f"Source weights must be > 0, got {[s.weight for s in sources]}.")
    shard_index, shard_count = process_shard(shard_index, shard_count)
    local_batch = local_batch_size(batch_size, shard_count)

    datasets, specs, random_views = [], [], []
    for k, source in enumerate(sources):
        examples, spec, preprocess = _examples(
            source, k if len(sources) > 1 else None, with_index, data_dir, cache
        )
        examples = examples.random_map(
            _TrainView(preprocess, teacher_view), seed=_derive_seed(seed, k, 1)
        )
        datasets.append(examples)
        specs.append(spec)
        random_views.append(preprocess.is_random)
    if len(datasets) > 1:
        _check_same_inputs(datasets, sources)
    arrangement = Arrangement(
        weights=tuple(s.weight for s in sources),
        seeds=tuple(_derive_seed(seed, k, 0) for k in range(len(sources))),
        batch_size=batch_size,
        local_batch=local_batch,
        shard_index=shard_index,
        shard_count=shard_count,
    )
    batches, num_examples, steps_per_epoch = arrange(datasets, arrangement)
    fast = None
    if cache and mixup_alpha == 0 and not any(random_views):
        # Examples that are the same in every epoch are computed once; epochs are gathers.
        fast = in_memory_epochs(datasets, arrangement)
    if mixup_alpha > 0:
        num_classes = {spec.num_classes for spec in specs}
        if len(num_classes) > 1:
            raise ValueError(f"Mixup needs one label space, got num_classes {num_classes}.")
        batches = batches.random_map(
            Mixup(mixup_alpha, num_classes.pop()), seed=_derive_seed(seed, shard_index, 2)
        )
    batches = batches.repeat(num_epochs)
    return Pipeline(
        batches, steps_per_epoch, batch_size, local_batch, num_examples, tuple(specs), fast
    )


def eval_pipeline(
    source: str | Source,
    *,
    batch_size: int,
    split: str = "test",
    with_index: bool = False,
    data_dir: str | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> Pipeline:
    """Builds one ordered pass over a split, padded so that no example is dropped.

    Process p reads examples p, p + P, p + 2P, ... (P = `shard_count`). Every process
    runs ceil(ceil(N / P) / local batch) batches; the missing rows repeat the split's
    first example with "mask" 0.

    Args:
      source: a TFDS name (read at `split`) or a `Source`.
      batch_size: global batch size, a multiple of `shard_count`.
      split: split read when `source` is a name.
      with_index: add "index", each example's index in the split.
      data_dir: TFDS data dir; None uses `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
      shard_index: this process's shard; None uses `jax.process_index()`.
      shard_count: number of shards; None uses `jax.process_count()`.

    Returns:
      The `Pipeline` (one epoch, not repeated).

    References: Grain `MapDataset` (slice, concatenate, batch).
    """
    (source,) = _as_sources(source, split)
    shard_index, shard_count = process_shard(shard_index, shard_count)
    local_batch = local_batch_size(batch_size, shard_count)
    examples, spec, preprocess = _examples(source, None, with_index, data_dir)
    examples = examples.map(_EvalView(preprocess))
    num_examples = len(examples)
    steps = math.ceil(math.ceil(num_examples / shard_count) / local_batch)
    local = examples[shard_index::shard_count]
    missing = steps * local_batch - len(local)
    if missing:
        padding = examples[:1].map(_Padding()).repeat(missing)
        local = grain.MapDataset.concatenate([local, padding])
    batches = local.batch(local_batch, drop_remainder=True)
    return Pipeline(batches, steps, batch_size, local_batch, num_examples, (spec,))


def load_arrays(
    source: str | Source, *, split: str = "test", data_dir: str | None = None
) -> dict[str, np.ndarray]:
    """Reads a whole split into memory through the evaluation path (small datasets only).

    Useful when a full epoch fits on the device (MNIST-1D), e.g. to shuffle and scan
    over it inside one compiled function.

    Args:
      source: a TFDS name (read at `split`) or a `Source`.
      split: split read when `source` is a name.
      data_dir: TFDS data dir; None uses `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.

    Returns:
      {"inputs": [N, ...] float32, "label": [N] int32, "mask": [N], "index": [N] int32}
      in the split's order.

    References: Grain `MapDataset`.
    """
    (source,) = _as_sources(source, split)
    examples, _, preprocess = _examples(source, None, True, data_dir)
    examples = examples.map(_EvalView(preprocess))
    return examples.batch(len(examples))[0]
