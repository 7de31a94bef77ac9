"""Shared fixtures: MNIST-1D in a temp data dir, and one tiny teacher and KD run per session."""

import pathlib

import pytest
import tensorflow_datasets as tfds

import jaxkd.data  # noqa: F401  (registers the `mnist1d` builder)
from jaxkd.cli import main

TINY_CONFIG = str(pathlib.Path(__file__).with_name("tiny_mnist1d.py"))


@pytest.fixture(scope="session")
def mnist1d_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.data_source("mnist1d", data_dir=data_dir)  # generates the 5,000 examples (~1 s)
    return data_dir


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, mnist1d_dir) -> dict[str, str]:
    """A tiny CNN teacher and an MLP student distilled from it, trained with `jaxkd train`."""
    root = tmp_path_factory.mktemp("runs")
    runs = {"teacher": str(root / "teacher"), "kd": str(root / "kd")}
    data = f"--config.data.data_dir={mnist1d_dir}"
    assert (
        main(["train", "--config", f"{TINY_CONFIG}:teacher", "--workdir", runs["teacher"], data])
        == 0
    )
    teacher = f"--config.teacher.checkpoint={runs['teacher']}"
    assert (
        main(["train", "--config", f"{TINY_CONFIG}:kd", "--workdir", runs["kd"], data, teacher])
        == 0
    )
    return runs
