"""Tests for jaxkd.losses.feature_statistics (FSP, NST) and the adaptive pooling they use."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _feature_refs import (
    Case,
    assert_bfloat16_gives_float32,
    assert_finite_and_accurate,
    assert_grad_matches_reference,
    assert_mask_equals_sub_batch,
    assert_matches_reference,
    assert_vmap_matches_single,
    normal,
    np_adaptive_pool,
    np_l2_normalize,
    np_pool_to_common,
    raises_naming,
)
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.losses import fsp, nst
from jaxkd.losses._feature_utils import adaptive_avg_pool

# ---------------------------------------------------------------- float64 references


def np_fsp_matrix(first, second):
    first, second = np_pool_to_common(first, second)
    batch, height, width = first.shape[:3]
    a = first.reshape(batch, height * width, -1)
    b = second.reshape(batch, height * width, -1)
    return np.stack([a[i].T @ b[i] for i in range(batch)]) / (height * width)


def np_fsp(s1, s2, t1, t2):
    return np.mean((np_fsp_matrix(s1, s2) - np_fsp_matrix(t1, t2)) ** 2)


def np_nst(s, t):
    s, t = np_pool_to_common(s, t)
    batch = s.shape[0]
    # [B, C, H·W], each channel's map normalised.
    fs = np_l2_normalize(s.reshape(batch, -1, s.shape[-1]).transpose(0, 2, 1), axis=2)
    ft = np_l2_normalize(t.reshape(batch, -1, t.shape[-1]).transpose(0, 2, 1), axis=2)

    def kernel_mean(a, b):
        return np.mean([(a[i] @ b[i].T) ** 2 for i in range(batch)])

    return kernel_mean(ft, ft) + kernel_mean(fs, fs) - 2 * kernel_mean(fs, ft)


# ---------------------------------------------------------------- cases


def make_case(name: str, scale: float = 1.0) -> Case:
    def x(seed, shape):
        return normal(seed, shape, scale)

    if name == "fsp_same_size":
        s1, s2 = x(0, (3, 4, 4, 2)), x(1, (3, 4, 4, 3))
        t1, t2 = x(2, (3, 4, 4, 2)), x(3, (3, 4, 4, 3))
    elif name == "fsp_pooled":
        # Student block halves the resolution; teacher keeps a larger, odd-sized map.
        s1, s2 = x(4, (3, 6, 6, 2)), x(5, (3, 3, 3, 3))
        t1, t2 = x(6, (3, 5, 7, 2)), x(7, (3, 5, 7, 3))
    elif name == "nst_same_size":
        s, t = x(8, (3, 4, 4, 2)), x(9, (3, 4, 4, 5))
        return Case(nst, (s, t), np_nst, equal_args=(s, s))
    elif name == "nst_pooled":
        s, t = x(10, (3, 6, 6, 3)), x(11, (3, 4, 3, 2))
        return Case(nst, (s, t), np_nst, equal_args=(s, s))
    else:
        raise KeyError(name)
    return Case(
        fsp,
        (s1, s2, t1, t2),
        np_fsp,
        grad_argnums=(0, 1),
        batched=(True,) * 4,
        equal_args=(s1, s2, s1, s2),
    )


NAMES = ("fsp_same_size", "fsp_pooled", "nst_same_size", "nst_pooled")
CASES = {name: make_case(name) for name in NAMES}


class MatchesReferenceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(name, name) for name in NAMES])
    def test_matches_float64_numpy(self, name):
        assert_matches_reference(self.variant(CASES[name].fn), CASES[name])


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_reference_central_difference(name):
    assert_grad_matches_reference(CASES[name])


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_stacked_problems(name):
    assert_vmap_matches_single(CASES[name])


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_inputs_give_float32(name):
    assert_bfloat16_gives_float32(CASES[name])


@pytest.mark.parametrize("name", NAMES)
def test_finite_at_magnitude_1e4(name):
    assert_finite_and_accurate(CASES[name], make_case(name, scale=1e4))


@pytest.mark.parametrize("name", NAMES)
def test_zero_with_zero_gradient_when_student_equals_teacher(name):
    case = CASES[name]
    value, grads = CASES[name].value_and_grad(*case.equal_args)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    for grad in grads:
        np.testing.assert_allclose(grad, 0.0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_mask_equals_loss_on_valid_sub_batch(name):
    assert_mask_equals_sub_batch(CASES[name])


def test_nst_is_invariant_to_channel_scale_and_order():
    # Each channel map is normalised and the kernel means are over all channel pairs.
    s, t = normal(12, (2, 4, 4, 3)), normal(13, (2, 4, 4, 4))
    scaled = s[..., ::-1] * np.array([0.5, 3.0, 10.0], np.float32)
    run = jax.jit(nst)
    np.testing.assert_allclose(run(scaled, t), run(s, t), rtol=1e-5)


def test_fsp_depends_on_the_pairing_of_layers():
    s1, s2 = normal(14, (2, 4, 4, 3)), normal(15, (2, 4, 4, 3))
    run = jax.jit(fsp)
    assert run(s1, s2, s1, s2) == 0.0
    assert run(s1, s2, s2, s1) > 0.0


# ---------------------------------------------------------------- pooling


@pytest.mark.parametrize(
    "in_hw, out_hw", [((8, 8), (4, 4)), ((7, 5), (3, 2)), ((6, 6), (6, 6)), ((5, 4), (1, 1))]
)
def test_adaptive_avg_pool_matches_pytorch_cells(in_hw, out_hw):
    x = normal(16, (2, *in_hw, 3))
    np.testing.assert_allclose(
        adaptive_avg_pool(jnp.asarray(x), out_hw),
        np_adaptive_pool(x, *out_hw),
        rtol=1e-5,
        atol=1e-6,
    )


def test_adaptive_avg_pool_refuses_to_upsample():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(8, 8\)"):
        adaptive_avg_pool(jnp.zeros((1, 4, 4, 2)), (8, 8))


# ---------------------------------------------------------------- properties


@settings(max_examples=15, deadline=None)
@given(
    use_fsp=st.booleans(),
    batch=st.integers(1, 3),
    s_hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    t_hw=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    log_scale=st.floats(-3.0, 4.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference_and_is_finite(
    use_fsp, batch, s_hw, t_hw, channels, log_scale, seed
):
    scale = 10.0**log_scale
    c1, c2 = channels
    if use_fsp:
        name = "fsp_pooled"
        args = (
            normal(seed, (batch, *s_hw, c1), scale),
            normal(seed + 1, (batch, *t_hw, c2), scale),
            normal(seed + 2, (batch, *t_hw, c1), scale),
            normal(seed + 3, (batch, *s_hw, c2), scale),
        )
    else:
        name = "nst_pooled"
        args = (
            normal(seed, (batch, *s_hw, c1), scale),
            normal(seed + 1, (batch, *t_hw, c2), scale),
        )
    value, grads = CASES[name].value_and_grad(*args)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    assert value >= -1e-5  # NST's MMD² is non-negative up to rounding.
    ref = CASES[name].ref64(*args)
    np.testing.assert_allclose(
        value, ref, rtol=1e-3, atol=1e-5 * max(1.0, scale**4 if use_fsp else 1)
    )


# ---------------------------------------------------------------- bad input


def test_fsp_bad_inputs():
    s1, s2 = np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 2, 2, 5), np.float32)
    t1, t2 = np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 2, 2, 5), np.float32)
    t2_batch = np.zeros((3, 2, 2, 5), np.float32)
    raises_naming(
        ValueError,
        fsp,
        s1,
        s2,
        t1,
        t2_batch,
        names=("student_first", "teacher_second"),
        shapes=(s1.shape, t2_batch.shape),
    )
    t1_wide = np.zeros((2, 4, 4, 6), np.float32)
    raises_naming(
        ValueError,
        fsp,
        s1,
        s2,
        t1_wide,
        t2,
        names=("student_first", "teacher_first"),
        shapes=(s1.shape, t1_wide.shape),
    )
    nchw = np.zeros((3, 4, 4), np.float32)
    raises_naming(
        ValueError, fsp, s1, nchw, t1, t2, names=("student_second", "rank 4"), shapes=(nchw.shape,)
    )
    with pytest.raises(TypeError, match="teacher_first"):
        fsp(s1, s2, t1.astype(np.int32), t2)
    bad_mask = np.ones((2, 1))
    raises_naming(
        ValueError,
        fsp,
        s1,
        s2,
        t1,
        t2,
        mask=bad_mask,
        names=("mask",),
        shapes=(bad_mask.shape, (2,)),
    )


def test_nst_bad_inputs():
    s, t = np.zeros((2, 4, 4, 3), np.float32), np.zeros((3, 4, 4, 3), np.float32)
    raises_naming(
        ValueError,
        nst,
        s,
        t,
        names=("student_features", "teacher_features"),
        shapes=(s.shape, t.shape),
    )
    nchw = np.zeros((3, 4, 4), np.float32)
    raises_naming(
        ValueError, nst, nchw, s, names=("student_features", "rank 4"), shapes=(nchw.shape,)
    )
    with pytest.raises(TypeError, match="student_features"):
        nst(s.astype(np.int8), s)
    bad_mask = np.ones((3,))
    raises_naming(ValueError, nst, s, s, mask=bad_mask, names=("mask",), shapes=(bad_mask.shape,))
