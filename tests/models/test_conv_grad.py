"""jaxkd's convolution: lax's value and gradients, the swapped kernel gradient on CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkd.models import create_model, swapped_kernel_gradients
from jaxkd.models._conv_grad import conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")


def _grads(conv, x, w, cot, strides=(1, 1), **kw):
    def loss(x, w):
        return jnp.vdot(conv(x, w, strides, dimension_numbers=NHWC, **kw), cot)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)


def _summed(x, window_strides, padding, **kw):
    def f(w):
        return conv_general_dilated(
            x, w, window_strides, padding, dimension_numbers=NHWC, **kw
        ).sum()

    return f


def _inputs(shape, kernel, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    w = jnp.asarray(rng.standard_normal(kernel) / np.sqrt(np.prod(kernel[:3])), dtype)
    return x, w


@pytest.mark.parametrize(
    ("shape", "kernel", "strides", "padding"),
    [
        ((4, 8, 8, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),  # SAME, 3x3
        ((2, 9, 7, 4), (3, 3, 4, 2), (1, 1), ((0, 0), (0, 0))),  # VALID, odd sizes
        ((2, 8, 6, 2), (3, 3, 2, 3), (1, 1), ((2, 1), (0, 2))),  # asymmetric
        ((2, 10, 10, 3), (5, 5, 3, 4), (1, 1), ((2, 2), (2, 2))),  # 5x5
        ((2, 6, 9, 2), (2, 3, 2, 2), (1, 1), ((1, 0), (1, 1))),  # non-square kernel
    ],
)
def test_gradients_equal_xla_in_the_context(shape, kernel, strides, padding):
    x, w = _inputs(shape, kernel)
    y = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)
    cot = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
    want = _grads(jax.lax.conv_general_dilated, x, w, cot, strides, padding=padding)
    with swapped_kernel_gradients():
        got = _grads(conv_general_dilated, x, w, cot, strides, padding=padding)
        jaxpr = str(jax.make_jaxpr(jax.grad(_summed(x, strides, padding)))(w))
    # The swapped rule was used, not lax's: its gradient picks the kernel per platform.
    assert "branches_platforms" in jaxpr
    for g, r in zip(got, want, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.abs(r).max()))


def test_bf16_kernel_gradient_keeps_the_kernel_dtype():
    x, w = _inputs((2, 8, 8, 4), (3, 3, 4, 4), dtype=jnp.bfloat16)
    cot = jnp.ones((2, 8, 8, 4), jnp.bfloat16)
    want = _grads(jax.lax.conv_general_dilated, x, w, cot, padding=((1, 1), (1, 1)))
    with swapped_kernel_gradients():
        got = _grads(conv_general_dilated, x, w, cot, padding=((1, 1), (1, 1)))
    assert got[1].dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(got[1], np.float32), np.asarray(want[1], np.float32), rtol=0.05, atol=0.05
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"window_strides": (1, 1), "padding": ((0, 0), (0, 0)), "one_by_one": True},
        {"window_strides": (2, 2)},
        {"lhs_dilation": (2, 2)},
        {"rhs_dilation": (2, 2)},
        {"feature_group_count": 2},
        {"padding": "SAME"},
    ],
)
def test_other_convolutions_are_lax_itself(kw):
    kw = dict(kw)
    size = 1 if kw.pop("one_by_one", False) else 3
    x, w = _inputs((2, 8, 8, 4), (size, size, 2 if "feature_group_count" in kw else 4, 4))
    args = {"window_strides": (1, 1), "padding": ((1, 1), (1, 1))} | kw
    with swapped_kernel_gradients():
        jaxpr = str(jax.make_jaxpr(jax.grad(_summed(x, **args)))(w))
    assert "branches_platforms" not in jaxpr and "conv_general_dilated" in jaxpr


def test_outside_the_context_forward_mode_works_through_a_model():
    model = create_model("resnet8", num_classes=10, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    x = jnp.ones((2, 32, 32, 3))

    def logits(params):
        return nnx.merge(graphdef, params, rest)(x)

    tangent = jax.tree.map(jnp.ones_like, params)
    _, jvp = jax.jvp(logits, (params,), (tangent,))
    assert jvp.shape == (2, 10) and bool(jnp.all(jnp.isfinite(jvp)))

    # ... and reverse mode in the context gives the same gradient as outside it.
    def loss(p):
        return jnp.sum(logits(p) ** 2)

    want = jax.jit(jax.grad(loss))(params)
    with swapped_kernel_gradients():
        got = jax.jit(jax.grad(loss))(params)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * float(jnp.abs(r).max()))


def test_the_context_is_restored_after_an_error():
    from jaxkd.models._conv_grad import _SWAP

    with pytest.raises(RuntimeError), swapped_kernel_gradients():
        raise RuntimeError("boom")
    assert _SWAP.get() is False
