"""Shared fixtures: the paper's MNIST-1D generated once per test session into a temp dir."""

import pytest
import tensorflow_datasets as tfds

import jaxkd.data  # noqa: F401  (registers the `mnist1d` builder)


@pytest.fixture(scope="session")
def mnist1d_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.data_source("mnist1d", data_dir=data_dir)  # generates the 5,000 examples (~1 s)
    return data_dir
