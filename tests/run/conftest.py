"""Shared fixtures: MNIST-1D (paper split) generated once per session, and a tiny config."""

from __future__ import annotations

import pytest
import tensorflow_datasets as tfds

import jaxkd.data  # noqa: F401  (registers the `mnist1d` builder)
from jaxkd.experiment.config import add_terms, base_config, finalize


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.data_source("mnist1d", data_dir=path)  # generates the 5,000 examples (~1 s)
    return path


def tiny_config(
    data_dir: str,
    *,
    epochs: int = 2,
    in_memory: bool = True,
    teacher: str = "",
    terms=(),
    student: str = "mnist1d_mlp_small",
):
    """A 62-steps-per-epoch MNIST-1D run of a 2.7k-parameter MLP."""
    c = base_config()
    c.data.data_dir = data_dir
    c.data.in_memory = in_memory
    c.student.model = student
    c.optimizer.lr = 0.05
    c.optimizer.schedule = "constant"
    c.num_epochs = epochs
    c.log_every_steps = 20
    if teacher:
        c.teacher.model = "mnist1d_mlp_small"
        c.teacher.checkpoint = teacher
        c.objective.task_weight = 0.1
        add_terms(c, *terms)
    return finalize(c)


@pytest.fixture(scope="session")
def make_config(data_dir):
    """`make_config(epochs=..., in_memory=..., teacher=..., terms=...)` -> a locked config."""
    return lambda **kwargs: tiny_config(data_dir, **kwargs)
