"""Opening TFDS datasets by name, and the errors for names or data that are not there."""

import pytest
import tensorflow_datasets as tfds

from jaxkd.data import dataset_spec, open_source, train_pipeline


def test_mnist1d_spec(mnist1d_dir):
    spec = dataset_spec("mnist1d", data_dir=mnist1d_dir)
    assert (spec.input_key, spec.label_key, spec.num_classes) == ("x", "label", 10)
    assert spec.family == "mnist1d" and spec.input_shape == (40,)
    assert len(open_source("mnist1d", "train[:10%]", data_dir=mnist1d_dir)) == 400


def test_unknown_dataset_name_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="not a dataset TFDS knows") as info:
        dataset_spec("no_such_dataset_xyz")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="not a dataset TFDS knows"):
        train_pipeline("no_such_dataset_xyz", batch_size=8, seed=0)


def test_unprepared_dataset_is_not_downloaded(tmp_path):
    with pytest.raises(ValueError, match="not prepared as array_record") as info:
        open_source("cifar10", "train", data_dir=str(tmp_path))
    assert "tfds build cifar10" in str(info.value)
    assert not (tmp_path / "downloads").exists()


def test_mock_data_reads_through_the_same_path():
    with tfds.testing.mock_data(num_examples=5):
        spec = dataset_spec("imagenet2012")
        source = open_source("imagenet2012", "validation")
    assert spec.family == "imagenet" and spec.input_shape == (None, None, 3)
    assert len(source) == 5


def test_unknown_config_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="BuilderConfig foo not found") as info:
        dataset_spec("mnist1d/foo")
    assert "\n" not in str(info.value)
