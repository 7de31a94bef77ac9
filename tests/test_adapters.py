"""Tests for jaxkd.adapters: HintAdapter, VIDRegressor and Embed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxkd.adapters import Embed, HintAdapter, VIDRegressor
from jaxkd.losses import hint, vid
from jaxkd.losses._feature_utils import adaptive_avg_pool


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@nnx.jit
def _apply(module, x):
    # One compiled call instead of op-by-op dispatch keeps these tests fast on CPU.
    return module(x)


def _count(module, kind=nnx.Param):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, kind)))


# ---------------------------------------------------------------- HintAdapter


@pytest.mark.parametrize(
    "student_shape, teacher_shape, kernel",
    [
        ((8, 8, 4), (4, 4, 6), (3, 3)),  # student twice the teacher's size: stride-2 conv
        ((4, 4, 4), (8, 8, 6), (4, 4)),  # student half the teacher's size: transposed conv
        ((8, 8, 4), (6, 5, 6), (3, 4)),  # larger by (2, 3): valid conv of size 1 + difference
        ((8, 8, 4), (8, 8, 6), (1, 1)),  # equal sizes: 1x1 conv
    ],
)
def test_hint_adapter_maps_to_teacher_shape(student_shape, teacher_shape, kernel):
    adapter = HintAdapter(student_shape, teacher_shape, rngs=nnx.Rngs(0))
    out = _apply(adapter, _normal(0, (2, *student_shape)))
    assert out.shape == (2, *teacher_shape)
    assert np.all(np.asarray(out) >= 0)  # ReLU last, as ConvReg
    c_in, c_out = student_shape[-1], teacher_shape[-1]
    assert adapter.proj.kernel.shape == (*kernel, c_in, c_out)
    # Conv kernel + bias, BatchNorm scale + bias; running statistics are not trainable.
    assert _count(adapter) == kernel[0] * kernel[1] * c_in * c_out + c_out + 2 * c_out
    assert _count(adapter, nnx.BatchStat) == 2 * c_out


def test_hint_adapter_for_vectors_and_tokens():
    adapter = HintAdapter((5,), (7,), use_bn=False, use_relu=False, rngs=nnx.Rngs(1))
    assert _count(adapter) == 5 * 7 + 7
    assert _apply(adapter, _normal(1, (3, 5))).shape == (3, 7)
    assert _apply(adapter, _normal(2, (3, 4, 5))).shape == (3, 4, 7)
    with_bn = HintAdapter((5,), (7,), rngs=nnx.Rngs(1))
    assert _count(with_bn) == 5 * 7 + 7 + 2 * 7


def test_hint_adapter_batch_norm_follows_train_and_eval():
    adapter = HintAdapter((4, 4, 3), (4, 4, 5), use_relu=False, rngs=nnx.Rngs(2))
    x = _normal(3, (8, 4, 4, 3)) * 3.0 + 1.0
    train_out = _apply(adapter, x)
    # Training mode normalises with the batch statistics and updates the running ones.
    np.testing.assert_allclose(train_out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    assert not np.allclose(adapter.bn.mean[...], 0.0)
    adapter.eval()
    assert not np.allclose(_apply(adapter, x), train_out, atol=1e-3)


def test_hint_adapter_bad_shapes():
    with pytest.raises(ValueError, match=r"\(3, 3, 4\).*\(8, 8, 6\)"):
        HintAdapter((3, 3, 4), (8, 8, 6), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"student_shape=\(4,\).*teacher_shape=\(8, 8, 6\)"):
        HintAdapter((4,), (8, 8, 6), rngs=nnx.Rngs(0))
    adapter = HintAdapter((4, 4, 3), (4, 4, 5), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[B, 4, 4, 3\].*\(2, 3, 4, 4\)"):
        adapter(jnp.zeros((2, 3, 4, 4)))  # NCHW


def test_hint_gradient_flows_into_adapter_params():
    adapter = HintAdapter((8, 8, 3), (4, 4, 6), rngs=nnx.Rngs(3))
    student, teacher = _normal(4, (4, 8, 8, 3)), _normal(5, (4, 4, 4, 6))
    # The pure-function view the training step uses: trainable params split from the rest.
    graphdef, params, rest = nnx.split(adapter, nnx.Param, ...)

    def loss_fn(params, rest):
        model = nnx.merge(graphdef, params, rest, copy=True)
        loss = hint(model(student), teacher)
        return loss, nnx.state(model, nnx.BatchStat)

    grads, new_stats = jax.jit(jax.grad(loss_fn, has_aux=True))(params, rest)
    # Running statistics come back as an output, not as a side effect.
    assert not np.allclose(new_stats["bn"]["mean"][...], rest["bn"]["mean"][...])
    flat = {jax.tree_util.keystr(path): g for path, g in jax.tree.leaves_with_path(grads)}
    assert all(np.all(np.isfinite(g)) for g in flat.values())
    # The conv bias is cancelled by BatchNorm's mean in training mode; everything else learns.
    for name, g in flat.items():
        if "proj" in name and "bias" in name:
            np.testing.assert_allclose(g, 0.0, atol=1e-6)
        else:
            assert np.linalg.norm(g) > 0, name


def test_hint_adapter_learns_a_linear_teacher():
    student = _normal(6, (16, 4, 4, 3))
    teacher = student @ _normal(7, (3, 5))
    adapter = HintAdapter((4, 4, 3), (4, 4, 5), use_bn=False, use_relu=False, rngs=nnx.Rngs(4))
    optimizer = nnx.Optimizer(adapter, optax.adam(0.05), wrt=nnx.Param)

    @nnx.jit
    def step(adapter, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: hint(m(student), teacher))(adapter)
        optimizer.update(adapter, grads)
        return loss

    first = step(adapter, optimizer)
    for _ in range(60):
        last = step(adapter, optimizer)
    assert last < 0.05 * first


# ---------------------------------------------------------------- VIDRegressor


def test_vid_regressor_shapes_params_and_initial_variance():
    regressor = VIDRegressor(3, 5, rngs=nnx.Rngs(5))
    mean, log_scale = _apply(regressor, _normal(8, (2, 4, 4, 3)))
    assert mean.shape == (2, 4, 4, 5) and log_scale.shape == (5,)
    assert _apply(regressor, _normal(9, (2, 3)))[0].shape == (2, 5)
    # Three bias-free 1x1 convs (mid = out, as RepDistiller) and one variance per channel.
    assert _count(regressor) == 3 * 5 + 5 * 5 + 5 * 5 + 5
    np.testing.assert_allclose(regressor.variance(), np.full(5, 5.0), rtol=1e-6)
    custom = VIDRegressor(3, 5, mid_features=7, init_pred_var=2.0, eps=1e-3, rngs=nnx.Rngs(5))
    assert _count(custom) == 3 * 7 + 7 * 7 + 7 * 5 + 5
    np.testing.assert_allclose(custom.variance(), np.full(5, 2.0), rtol=1e-6)


def test_vid_regressor_pools_larger_student_maps_first():
    regressor = VIDRegressor(3, 4, spatial_shape=(4, 4), rngs=nnx.Rngs(6))
    x = _normal(10, (2, 8, 8, 3))
    out, _ = _apply(regressor, x)
    assert out.shape == (2, 4, 4, 4)
    plain = VIDRegressor(3, 4, rngs=nnx.Rngs(6))
    np.testing.assert_allclose(out, _apply(plain, adaptive_avg_pool(x, (4, 4)))[0], rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, 3\].*\(2, 3, 8, 8\)"):
        regressor(jnp.zeros((2, 3, 8, 8)))


def test_vid_gradient_reaches_regressor_and_log_scale():
    regressor = VIDRegressor(3, 4, rngs=nnx.Rngs(7))
    student, teacher = _normal(11, (2, 4, 4, 3)), _normal(12, (2, 4, 4, 4))

    def loss_fn(model):
        mean, log_scale = model(student)
        return vid(mean, teacher, log_scale, eps=model.eps)

    grads = nnx.jit(nnx.grad(loss_fn))(regressor)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == 4
    assert all(np.all(np.isfinite(g)) and np.linalg.norm(g) > 0 for g in leaves)


# ---------------------------------------------------------------- Embed


def test_embed_returns_unit_vectors():
    embed = Embed(12, 5, rngs=nnx.Rngs(8))
    assert _count(embed) == 12 * 5 + 5
    vectors = _apply(embed, _normal(13, (3, 12)))
    maps = _apply(embed, _normal(14, (3, 2, 2, 3)))
    for out in (vectors, maps):
        assert out.shape == (3, 5)
        np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), 1.0, rtol=1e-6)


def test_embed_gradient_is_finite_and_rejects_wrong_width():
    embed = Embed(4, 3, rngs=nnx.Rngs(9))
    x = _normal(15, (2, 4))
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x)[:, 0])))(embed)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match=r"4 features.*\(2, 5\)"):
        embed(jnp.zeros((2, 5)))
