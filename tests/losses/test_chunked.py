"""Tests for jaxkd.losses._chunked.token_map, the chunked per-token evaluation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkd.losses._chunked import token_map


def rows(params, x, y, ids):
    """A row-wise function of two float arrays, integer ids and a scalar parameter."""
    (scale,) = params
    log_x = jax.nn.log_softmax(x.astype(jnp.float32) * scale, axis=-1)
    picked = jnp.take_along_axis(log_x, ids, axis=-1).sum(-1)
    return jnp.sum(jnp.tanh(y.astype(jnp.float32)) * log_x, axis=-1) + picked


def make_arrays(num_rows, width=6, k=2, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_rows, width)).astype(dtype)
    y = rng.standard_normal((num_rows, width)).astype(dtype)
    ids = rng.integers(0, width, (num_rows, k)).astype(np.int32)
    return x, y, ids


@functools.partial(jax.jit, static_argnames="chunk_size")
def value_and_grads(x, y, ids, scale, weights, chunk_size=None):
    def f(x, y, scale):
        return jnp.sum(weights * token_map(rows, (scale,), (x, y, ids), chunk_size=chunk_size))

    return jax.value_and_grad(f, argnums=(0, 1, 2))(x, y, scale)


@pytest.mark.parametrize(("num_rows", "chunk_size"), [(8, 4), (10, 3), (7, 6), (5, 9)])
def test_chunked_values_and_gradients_equal_unchunked(num_rows, chunk_size):
    x, y, ids = make_arrays(num_rows)
    weights = np.random.default_rng(1).random(num_rows).astype(np.float32)
    per_row = token_map(rows, (1.5,), (x, y, ids))
    chunked_rows = jax.jit(
        lambda x, y: token_map(rows, (1.5,), (x, y, ids), chunk_size=chunk_size)
    )(x, y)
    np.testing.assert_allclose(chunked_rows, per_row, rtol=1e-6, atol=1e-6)
    value, grads = value_and_grads(x, y, ids, 1.5, weights)
    chunked_value, chunked_grads = value_and_grads(x, y, ids, 1.5, weights, chunk_size)
    np.testing.assert_allclose(chunked_value, value, rtol=1e-6)
    # Includes the scalar parameter: rows shared by the shifted last chunk count once.
    for chunked, plain in zip(chunked_grads, grads, strict=True):
        np.testing.assert_allclose(chunked, plain, rtol=1e-5, atol=1e-7)


def test_only_the_differentiated_input_gets_a_gradient_and_vmap_works():
    x, y, ids = make_arrays(10)
    loss = lambda x, y: token_map(rows, (1.0,), (x, y, ids), chunk_size=3).sum()
    plain = lambda x, y: token_map(rows, (1.0,), (x, y, ids)).sum()
    np.testing.assert_allclose(jax.grad(loss)(x, y), jax.grad(plain)(x, y), rtol=1e-5)
    stacked = np.stack([x, 2 * x]), np.stack([y, -y])
    batched = jax.vmap(jax.grad(loss, argnums=1))(*stacked)
    for i in range(2):
        expected = jax.grad(plain, argnums=1)(stacked[0][i], stacked[1][i])
        np.testing.assert_allclose(batched[i], expected, rtol=1e-5, atol=1e-7)


def test_half_precision_inputs_keep_their_dtype_and_match():
    x, y, ids = make_arrays(10, dtype=np.float32)
    x16, y16 = jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16)
    weights = np.ones(10, np.float32)
    value, grads = value_and_grads(x16, y16, ids, 1.0, weights)
    chunked_value, chunked_grads = value_and_grads(x16, y16, ids, 1.0, weights, chunk_size=4)
    np.testing.assert_allclose(chunked_value, value, rtol=1e-6)
    assert chunked_grads[0].dtype == jnp.bfloat16 and chunked_grads[1].dtype == jnp.bfloat16
    for chunked, plain in zip(chunked_grads, grads, strict=True):
        np.testing.assert_allclose(
            np.asarray(chunked, np.float32), np.asarray(plain, np.float32), rtol=1e-2
        )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_no_full_size_float32_temporaries_forward_or_backward(dtype):
    num_rows, width = 256, 1024
    full = num_rows * width * 4  # one float32 [N, V] array
    arg = jax.ShapeDtypeStruct((num_rows, width), dtype)
    ids = jax.ShapeDtypeStruct((num_rows, 2), jnp.int32)

    def temp_bytes(fn):
        stats = jax.jit(fn).lower(arg, arg, ids).compile().memory_analysis()
        if stats is None:
            pytest.skip("this backend has no memory analysis")
        return stats.temp_size_in_bytes

    def loss(chunk_size):
        return lambda x, y, i: token_map(rows, (1.0,), (x, y, i), chunk_size=chunk_size).sum()

    assert temp_bytes(jax.value_and_grad(loss(None))) >= full
    # float32: a few chunks of 16 rows. bfloat16 on CPU: plus one same-width (uint16) copy of
    # each input, and no float32 copy of the whole arrays (which XLA:CPU would otherwise make).
    budget = full / 2 if dtype == jnp.float32 else 1.5 * full
    assert temp_bytes(loss(16)) < budget
    assert temp_bytes(jax.value_and_grad(loss(16))) < budget


def test_chunk_size_must_be_a_positive_int_and_jvp_is_not_supported():
    x, y, ids = make_arrays(4)
    for bad, error in ((0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(error, match="`chunk_size`"):
            token_map(rows, (1.0,), (x, y, ids), chunk_size=bad)
    with pytest.raises(TypeError, match="jvp"):
        jax.jvp(lambda x: token_map(rows, (1.0,), (x, y, ids), chunk_size=2), (x,), (x,))
