"""Several sources mixed by weight, with the source id in every batch."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxkd.data import Source, train_pipeline


def test_mixture_keeps_proportions_and_source_ids(mnist1d_dir):
    sources = [Source("mnist1d", "train", weight=3.0), Source("mnist1d", "test", weight=1.0)]
    pipeline = train_pipeline(
        sources, batch_size=16, seed=0, num_epochs=2, with_index=True, data_dir=mnist1d_dir
    )
    # An epoch lasts until one source is used up relative to its weight: min(4000/.75, 1000/.25).
    assert pipeline.num_examples == 4000 and pipeline.steps_per_epoch == 250
    ids, indices = [], []
    for step in range(2 * pipeline.steps_per_epoch):
        batch = pipeline.dataset[step]
        assert batch["source_id"].dtype == np.int32
        # Grain interleaves by weight, so every batch holds the exact proportions.
        assert np.bincount(batch["source_id"], minlength=2).tolist() == [12, 4]
        ids.append(batch["source_id"])
        indices.append(batch["index"])
    ids, indices = np.concatenate(ids), np.concatenate(indices)
    epoch = 4000
    test_epoch0 = indices[:epoch][ids[:epoch] == 1]
    test_epoch1 = indices[epoch:][ids[epoch:] == 1]
    # The small source is visited once per epoch, in a new order each time.
    assert sorted(test_epoch0.tolist()) == list(range(1000)) == sorted(test_epoch1.tolist())
    assert not np.array_equal(test_epoch0, test_epoch1)
    # The large source continues where it stopped: 6,000 draws are one full pass over its
    # 4,000 examples followed by 2,000 distinct examples of its next pass.
    train_indices = indices[ids == 0]
    assert sorted(train_indices[:4000].tolist()) == list(range(4000))
    assert len(set(train_indices[4000:].tolist())) == 2000


def test_unlabeled_source_in_a_mixture(mnist1d_dir):
    sources = [Source("mnist1d", "train"), Source("mnist1d", "test", labeled=False)]
    batch = train_pipeline(sources, batch_size=20, seed=1, data_dir=mnist1d_dir).dataset[0]
    assert np.all(batch["label"][batch["source_id"] == 1] == -1)
    assert np.all(batch["label"][batch["source_id"] == 0] >= 0)


def test_mixed_inputs_must_share_a_shape():
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(ValueError, match="inputs of one shape"):
            train_pipeline([Source("cifar10"), Source("mnist1d")], batch_size=4, seed=0)


def test_weights_must_be_positive(mnist1d_dir):
    with pytest.raises(ValueError, match="weights"):
        train_pipeline(
            [Source("mnist1d", weight=1.0), Source("mnist1d", "test", weight=0.0)],
            batch_size=4,
            seed=0,
            data_dir=mnist1d_dir,
        )
