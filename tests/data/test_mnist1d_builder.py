"""The MNIST-1D TFDS builder: split sizes, dtypes, content, configs, reuse."""

import random

import numpy as np
import pytest
import tensorflow_datasets as tfds
from mnist1d.data import get_dataset_args, make_dataset

from jaxkd.data import mnist1d_builder
from jaxkd.data.mnist1d_builder import Mnist1d, Mnist1dConfig


def _all(source):
    rows = [source[i] for i in range(len(source))]
    return np.stack([r["x"] for r in rows]), np.array([r["label"] for r in rows])


def _sorted_rows(x, y):
    # TFDS stores examples in its own shuffled order; compare as multisets of rows.
    table = np.concatenate([x.astype(np.float64), y[:, None].astype(np.float64)], axis=1)
    return table[np.lexsort(table.T[::-1])]


def test_paper_config_by_name(mnist1d_dir):
    sources = tfds.data_source("mnist1d", data_dir=mnist1d_dir)
    assert {k: len(v) for k, v in sources.items()} == {"train": 4000, "test": 1000}
    example = sources["train"][0]
    assert example["x"].shape == (40,) and example["x"].dtype == np.float32
    info = tfds.builder("mnist1d", data_dir=mnist1d_dir).info
    assert info.supervised_keys == ("x", "label")
    assert info.features["label"].num_classes == 10
    assert info.file_format.value == "array_record"


def test_paper_config_is_the_reference_generator(mnist1d_dir):
    reference = make_dataset(get_dataset_args())
    sources = tfds.data_source("mnist1d", data_dir=mnist1d_dir)
    for split, xk, yk in (("train", "x", "y"), ("test", "x_test", "y_test")):
        x, y = _all(sources[split])
        np.testing.assert_array_equal(
            _sorted_rows(x, y), _sorted_rows(reference[xk].astype(np.float32), reference[yk])
        )
    _, y = _all(sources["train"])
    assert set(np.unique(y)) == set(range(10))


def test_prepared_once_then_reused(mnist1d_dir, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the prepared dataset must be reused, not generated again")

    monkeypatch.setattr(mnist1d_builder, "generate", fail)
    assert len(tfds.data_source("mnist1d", split="test", data_dir=mnist1d_dir)) == 1000


def test_small_transfer_config_splits(tmp_path):
    config = Mnist1dConfig(name="small", num_samples=200, num_unlabeled=300, unlabeled_seed=7)
    builder = Mnist1d(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    sources = builder.as_data_source()
    assert {k: len(v) for k, v in sources.items()} == {"train": 160, "test": 40, "unlabeled": 300}
    x_train, _ = _all(sources["train"])
    x_extra, y_extra = _all(sources["unlabeled"])
    assert x_extra.dtype == np.float32 and x_extra.shape == (300, 40)
    assert np.bincount(y_extra, minlength=10).tolist() == [30] * 10
    # Another seed: no unlabeled signal repeats a labelled one.
    distances = np.abs(x_extra[:, None, :] - x_train[None, :, :]).max(-1)
    assert distances.min() > 1e-3


def test_generate_keeps_global_random_streams():
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    py_state = random.getstate()
    data = mnist1d_builder.generate(100, seed=3, train_fraction=0.8)
    # The reference generator reseeds the global streams; the caller's must not change.
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert random.getstate() == py_state
    assert data["x"].shape == (80, 40) and data["x_test"].shape == (20, 40)
    assert data["x"].dtype == np.float32 and data["y"].dtype == np.int64


def test_transfer_config_is_registered():
    builder = tfds.builder("mnist1d/transfer", data_dir="/nonexistent")
    assert builder.builder_config.num_unlabeled == 50_000
    assert builder.builder_config.seed == 42
    assert builder.builder_config.unlabeled_seed != 42


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 105}, "num_samples"),
        ({"train_fraction": 1.0}, "train_fraction"),
        ({"num_unlabeled": 15}, "num_unlabeled"),
        ({"num_unlabeled": 10, "unlabeled_seed": 42}, "unlabeled_seed"),
    ],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mnist1dConfig(name="bad", **kwargs)
