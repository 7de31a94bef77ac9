"""Tiny models and batches shared by the engine tests (NNX and Linen, with BatchNorm)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxkd import engine


class NnxMLP(nnx.Module):
    """Linear -> BatchNorm -> ReLU (feature "hidden") -> Linear."""

    def __init__(self, din: int, hidden: int, dout: int, *, rngs: nnx.Rngs, norm: bool = True):
        self.fc1 = nnx.Linear(din, hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, rngs=rngs) if norm else None
        self.fc2 = nnx.Linear(hidden, dout, rngs=rngs)

    def __call__(self, x):
        h = self.fc1(x)
        if self.norm is not None:
            h = self.norm(h)
        h = nnx.relu(h)
        self.sow(nnx.Intermediate, "hidden", h)
        return self.fc2(h)


class LinenMLP(nn.Module):
    """The same network in Linen: features through `sow` into "intermediates"."""

    hidden: int
    dout: int

    @nn.compact
    def __call__(self, x, train: bool):
        h = nn.Dense(self.hidden)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
        h = nn.relu(h)
        self.sow("intermediates", "hidden", h)
        return nn.Dense(self.dout)(h)


# Cached: building a model runs many small eager ops, and the tests never modify one
# (train states copy the params, teachers are never donated).
@functools.cache
def nnx_model(din=6, hidden=8, dout=5, seed=0, norm=True) -> engine.Model:
    return engine.from_nnx(NnxMLP(din, hidden, dout, rngs=nnx.Rngs(seed), norm=norm))


@functools.cache
def linen_model(din=6, hidden=8, dout=5, seed=0) -> engine.Model:
    module = LinenMLP(hidden, dout)
    variables = module.init(jax.random.key(seed), jnp.zeros((2, din)), train=False)
    return engine.from_linen(module, variables)


def batch(n=8, din=6, classes=5, seed=0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {
        "inputs": jnp.asarray(rng.normal(size=(n, din)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, classes, size=n), jnp.int32),
        "mask": jnp.ones((n,), jnp.float32),
    }
