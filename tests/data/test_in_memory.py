"""In-memory epochs (`jaxkd.data.in_memory`): the same arrays as the grain path, bit for bit."""

import dataclasses

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxkd.data import Preprocess, Source, dataset_spec, train_pipeline
from jaxkd.data.in_memory import Arrangement, in_memory_epochs

EPOCHS = (0, 1, 3)


def _assert_same_epoch(got, want):
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def _check_against_grain(make, epochs=EPOCHS):
    """`make(cache)` builds a pipeline; with the cache its epochs are gathers, without grain's."""
    fast, grain_path = make(True), make(False)
    assert fast.in_memory is not None and grain_path.in_memory is None
    assert fast.steps_per_epoch == grain_path.steps_per_epoch
    epochs = {e: fast.epoch(e) for e in epochs}
    for e, got in epochs.items():
        _assert_same_epoch(got, grain_path.epoch(e))
    # The orders differ between epochs, so an epoch-blind gather would fail above.
    first, *others = epochs.values()
    assert all(not np.array_equal(first["inputs"], other["inputs"]) for other in others)
    return epochs


MNIST1D_CASES = {
    "one source": dict(sources="mnist1d", batch_size=64),
    "with index": dict(sources="mnist1d", batch_size=50, with_index=True),
    "second of two shards": dict(
        sources="mnist1d", batch_size=64, shard_index=1, shard_count=2, with_index=True
    ),
    "clean teacher view": dict(sources="mnist1d", batch_size=32, teacher_view="clean"),
    "independent teacher view": dict(sources="mnist1d", batch_size=32, teacher_view="independent"),
    "mixed sources": dict(
        sources=[
            Source("mnist1d", "train", weight=3.0),
            Source("mnist1d", "test", weight=1.0, labeled=False),
        ],
        batch_size=40,
        with_index=True,
        teacher_view="clean",
    ),
    "mixed sources, sharded": dict(
        sources=[Source("mnist1d", "test", weight=2.0), Source("mnist1d", "train", weight=5.0)],
        batch_size=30,
        shard_index=0,
        shard_count=3,
    ),
}


@pytest.mark.parametrize("case", list(MNIST1D_CASES))
def test_epochs_equal_the_grain_path(mnist1d_dir, case):
    kwargs = MNIST1D_CASES[case]

    def make(cache):
        return train_pipeline(**kwargs, seed=5, num_epochs=4, cache=cache, data_dir=mnist1d_dir)

    epochs = _check_against_grain(make)
    if isinstance(kwargs["sources"], list):
        ids = epochs[1]["source_id"]
        assert ids.dtype == np.int32 and set(np.unique(ids).tolist()) == {0, 1}


def test_the_order_depends_on_the_seed_and_stays_exact_for_a_second_seed(mnist1d_dir):
    def make(seed):
        return train_pipeline("mnist1d", batch_size=64, seed=seed, cache=True, data_dir=mnist1d_dir)

    a, b = make(1).epoch(2), make(2).epoch(2)
    assert not np.array_equal(a["label"], b["label"])
    plain = train_pipeline("mnist1d", batch_size=64, seed=2, data_dir=mnist1d_dir)
    _assert_same_epoch(b, plain.epoch(2))


def test_epoch_range_is_checked_on_the_fast_path(mnist1d_dir):
    pipeline = train_pipeline(
        "mnist1d", batch_size=64, seed=0, num_epochs=2, cache=True, data_dir=mnist1d_dir
    )
    assert pipeline.in_memory is not None
    with pytest.raises(ValueError, match="epoch"):
        pipeline.epoch(2)


def test_mixup_takes_the_grain_path(mnist1d_dir):
    def make(cache):
        return train_pipeline(
            "mnist1d", batch_size=64, seed=3, mixup_alpha=0.3, cache=cache, data_dir=mnist1d_dir
        )

    cached = make(True)
    assert cached.in_memory is None
    got = cached.epoch(1)
    assert "mixup_lambda" in got
    _assert_same_epoch(got, make(False).epoch(1))


def test_augmentation_takes_the_grain_path_and_fixed_views_the_fast_one():
    with tfds.testing.mock_data(num_examples=24):
        augmented = train_pipeline("cifar10", batch_size=8, seed=1, cache=True)
        assert augmented.in_memory is None
        _assert_same_epoch(
            augmented.epoch(1), train_pipeline("cifar10", batch_size=8, seed=1).epoch(1)
        )

        fixed = Preprocess.for_dataset(dataset_spec("cifar10"), augment=False)
        assert not fixed.is_random

        def make(cache):
            return train_pipeline(
                Source("cifar10", preprocess=fixed),
                batch_size=8,
                seed=1,
                with_index=True,
                teacher_view="clean",
                cache=cache,
            )

        _check_against_grain(make, epochs=(0, 2))


def test_sources_of_different_layouts_are_left_to_grain():
    def source(k, dtype):
        return grain.MapDataset.source(
            [{"inputs": np.full(3, 10 * k + i, dtype)} for i in range(6)]
        )

    def build(*dtypes):
        arrangement = Arrangement(
            weights=(1.0,) * len(dtypes),
            seeds=tuple(range(len(dtypes))),
            batch_size=4,
            local_batch=4,
            shard_index=0,
            shard_count=1,
        )
        return in_memory_epochs([source(k, d) for k, d in enumerate(dtypes)], arrangement)

    assert build(np.float32, np.float64) is None
    epoch = build(np.float32, np.float32).epoch(0)["inputs"]
    assert epoch.shape == (3, 4, 3) and epoch.dtype == np.float32
    # Equal weights over two sources of 6: every example of both, once, in a shuffled order.
    values = epoch[..., 0].ravel()
    assert sorted(values.tolist()) == [*range(6), *range(10, 16)]
    assert values.tolist() != sorted(values.tolist())


def test_fast_and_grain_pipelines_differ_only_in_how_epochs_are_read(mnist1d_dir):
    pipeline = train_pipeline("mnist1d", batch_size=64, seed=7, cache=True, data_dir=mnist1d_dir)
    streamed = dataclasses.replace(pipeline, in_memory=None)
    _assert_same_epoch(pipeline.epoch(4), streamed.epoch(4))
    # The streaming iterator is untouched: its first batches are the first epoch's.
    iterator = pipeline.iterator(num_threads=0)
    first = pipeline.epoch(0)
    for j in range(3):
        batch = next(iterator)
        for key in first:
            np.testing.assert_array_equal(batch[key], first[key][j])
