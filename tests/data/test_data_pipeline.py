"""Training/evaluation pipelines on MNIST-1D: shuffling, sharding, padding, resume."""

import json

import grain
import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxkd.data import Source, eval_pipeline, load_arrays, to_global_arrays, train_pipeline

TEST = Source("mnist1d", "test")  # 1,000 examples: small enough to read many epochs


def _epoch_indices(pipeline, epoch):
    steps = pipeline.steps_per_epoch
    batches = [pipeline.dataset[epoch * steps + j] for j in range(steps)]
    return np.concatenate([b["index"] for b in batches])


def test_batches_have_the_documented_keys(mnist1d_dir):
    pipeline = train_pipeline(TEST, batch_size=64, seed=0, data_dir=mnist1d_dir)
    batch = pipeline.dataset[0]
    assert sorted(batch) == ["inputs", "label", "mask"]
    assert batch["inputs"].shape == (64, 40) and batch["inputs"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["mask"].dtype == np.float32
    assert np.all(batch["mask"] == 1)
    assert pipeline.steps_per_epoch == 1000 // 64
    assert len(pipeline) > 10**9  # num_epochs=None repeats forever


def test_shuffle_is_deterministic_and_changes_every_epoch(mnist1d_dir):
    def make(seed):
        return train_pipeline(
            TEST, batch_size=100, seed=seed, num_epochs=2, with_index=True, data_dir=mnist1d_dir
        )

    first, again, other = make(1), make(1), make(2)
    assert len(first) == 2 * first.steps_per_epoch == 20
    e0, e1 = _epoch_indices(first, 0), _epoch_indices(first, 1)
    np.testing.assert_array_equal(e0, _epoch_indices(again, 0))
    np.testing.assert_array_equal(e1, _epoch_indices(again, 1))
    assert sorted(e0.tolist()) == list(range(1000)) == sorted(e1.tolist())
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, _epoch_indices(other, 0))
    # The labels follow the examples: reading the split directly agrees.
    arrays = load_arrays(TEST, data_dir=mnist1d_dir)
    batch = first.dataset[3]
    np.testing.assert_array_equal(batch["label"], arrays["label"][batch["index"]])
    np.testing.assert_array_equal(batch["inputs"], arrays["inputs"][batch["index"]])


@pytest.mark.parametrize("epoch", [0, 1])
def test_process_shards_partition_each_epoch(mnist1d_dir, epoch):
    shards = [
        train_pipeline(
            TEST,
            batch_size=30,
            seed=5,
            with_index=True,
            data_dir=mnist1d_dir,
            shard_index=p,
            shard_count=3,
        )
        for p in range(3)
    ]
    assert {s.local_batch_size for s in shards} == {10}
    assert {s.steps_per_epoch for s in shards} == {333 // 10}
    seen = [set(_epoch_indices(s, epoch).tolist()) for s in shards]
    assert sum(len(s) for s in seen) == 3 * 330
    assert set.union(*seen) <= set(range(1000)) and len(set.union(*seen)) == 990


def test_eval_pads_the_last_batch_and_keeps_every_example(mnist1d_dir):
    pipeline = eval_pipeline("mnist1d", batch_size=96, with_index=True, data_dir=mnist1d_dir)
    batches = [pipeline.dataset[j] for j in range(len(pipeline))]
    assert len(batches) == pipeline.steps_per_epoch == 11
    assert all(b["inputs"].shape == (96, 40) for b in batches)
    assert batches[-1]["mask"].tolist() == [1.0] * 40 + [0.0] * 56
    real = np.concatenate([b["index"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(real, np.arange(1000))


def test_eval_shards_run_the_same_steps_and_cover_the_split(mnist1d_dir):
    shards = [
        eval_pipeline(
            "mnist1d",
            batch_size=64,
            with_index=True,
            data_dir=mnist1d_dir,
            shard_index=p,
            shard_count=4,
        )
        for p in range(4)
    ]
    assert {len(s) for s in shards} == {16}  # ceil(ceil(1000 / 4) / 16)
    real = []
    for s in shards:
        for j in range(len(s)):
            batch = s.dataset[j]
            real.extend(batch["index"][batch["mask"] == 1].tolist())
    assert sorted(real) == list(range(1000))


def test_iterator_state_resumes_at_the_same_batch(mnist1d_dir, tmp_path):
    def make():
        return train_pipeline(
            TEST, batch_size=128, seed=3, num_epochs=3, with_index=True, data_dir=mnist1d_dir
        )

    reference = [b["index"] for b in make().iterator(num_threads=0)]
    assert len(reference) == 3 * 7
    iterator = make().iterator(num_threads=2)
    for _ in range(9):  # past the first epoch boundary
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    grain.checkpoint.CheckpointHandler().save(tmp_path, item=iterator)

    resumed = make().iterator()
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["index"], reference[9])
    restored = make().iterator(num_threads=0)
    grain.checkpoint.CheckpointHandler().restore(tmp_path, item=restored)
    rest = [b["index"] for b in restored]
    assert len(rest) == len(reference) - 9
    for got, want in zip(rest, reference[9:], strict=True):
        np.testing.assert_array_equal(got, want)


def test_stacked_epoch_equals_iterating_it(mnist1d_dir):
    pipeline = train_pipeline(
        TEST, batch_size=200, seed=8, num_epochs=2, with_index=True, data_dir=mnist1d_dir
    )
    stacked = pipeline.epoch(1)
    assert stacked["inputs"].shape == (5, 200, 40)
    batches = list(pipeline.iterator(num_threads=0))[5:]
    for key, value in stacked.items():
        np.testing.assert_array_equal(value, np.stack([b[key] for b in batches]))
    with pytest.raises(ValueError, match="epoch"):
        pipeline.epoch(2)


def test_unlabeled_sources_hide_their_labels(mnist1d_dir):
    pipeline = train_pipeline(
        Source("mnist1d", "test", labeled=False), batch_size=50, seed=0, data_dir=mnist1d_dir
    )
    assert np.all(pipeline.dataset[0]["label"] == -1)


def test_to_global_arrays_places_the_batch(mnist1d_dir):
    batch = eval_pipeline("mnist1d", batch_size=8, data_dir=mnist1d_dir).dataset[0]
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    arrays = to_global_arrays(batch, sharding)
    assert set(arrays) == set(batch)
    for key, value in arrays.items():
        assert isinstance(value, jax.Array) and value.sharding == sharding
        np.testing.assert_array_equal(np.asarray(value), batch[key])
    nested = to_global_arrays({"teachers": {"a": batch["inputs"]}}, {"teachers": sharding})
    np.testing.assert_array_equal(np.asarray(nested["teachers"]["a"]), batch["inputs"])
    with pytest.raises(ValueError, match=r"\['scale'\] of shape \(\).*leading dimension"):
        to_global_arrays({"scale": np.float32(1.0)}, sharding)
    with pytest.raises(ValueError, match="no entry for batch keys"):
        to_global_arrays(batch, {"inputs": sharding})
    with pytest.raises(TypeError, match="batch"):
        to_global_arrays([batch["inputs"]], sharding)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"batch_size": 10, "shard_count": 3, "shard_index": 0}, ValueError, "multiple"),
        ({"batch_size": 4096}, ValueError, "no full batch"),
        ({"batch_size": 8, "teacher_view": "teacher"}, ValueError, "teacher_view"),
        ({"batch_size": 8, "shard_index": 3, "shard_count": 3}, ValueError, "shard_index"),
        ({"batch_size": 8, "seed": -1}, ValueError, "seed"),
        ({"batch_size": 8, "mixup_alpha": -1.0}, ValueError, "mixup_alpha"),
    ],
)
def test_train_pipeline_rejects_bad_arguments(mnist1d_dir, kwargs, error, message):
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(error, match=message):
        train_pipeline(TEST, data_dir=mnist1d_dir, **kwargs)


def test_sources_must_be_sources():
    with pytest.raises(TypeError, match="sources"):
        train_pipeline([("mnist1d", "train")], batch_size=8, seed=0)
