"""Tests for jaxkd.losses.features: hint, attention transfer, SP, VID, cosine embedding."""

from __future__ import annotations

import functools

import chex
import jax
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
    np_l2_normalize,
    np_pool_to_common,
    raises_naming,
)
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.losses import attention_transfer, cosine_embedding, hint, similarity_preserving, vid

# ---------------------------------------------------------------- float64 references


def np_hint(s, t):
    return np.mean((s - t) ** 2)


def np_attention(x, p, mode):
    q = np.mean(x**p, axis=-1) if mode == "code" else np.sum(np.abs(x) ** p, axis=-1)
    return np_l2_normalize(q.reshape(x.shape[0], -1), axis=1)


def np_at(s, t, p=2, mode="code"):
    diff = np_attention(s, p, mode) - np_attention(t, p, mode)
    if mode == "code":
        return np.mean(diff**2)
    return np.mean(np.sqrt(np.sum(diff**2, axis=1)))


def np_sp(s, t):
    batch = s.shape[0]

    def gram(x):
        flat = x.reshape(batch, -1)
        return np_l2_normalize(flat @ flat.T, axis=1)

    return np.sum((gram(t) - gram(s)) ** 2) / batch**2


def np_vid(mean, target, log_scale, eps=1e-5):
    if mean.ndim == 4:
        mean, target = np_pool_to_common(mean, target)
    var = np.log1p(np.exp(log_scale)) + eps
    return np.mean(0.5 * ((mean - target) ** 2 / var + np.log(var)))


def np_cosine(s, t, mask=None):
    cos = np.sum(s * t, -1) / (np.linalg.norm(s, axis=-1) * np.linalg.norm(t, axis=-1))
    mask = np.ones(cos.shape) if mask is None else mask
    return np.sum((1 - cos) * mask) / np.sum(mask)


# ---------------------------------------------------------------- cases


def make_case(name: str, scale: float = 1.0) -> Case:

    def x(seed, shape):
        return normal(seed, shape, scale)

    if name == "hint":
        s, t = x(0, (4, 3, 3, 5)), x(1, (4, 3, 3, 5))
        return Case(hint, (s, t), np_hint, equal_args=(s, s))
    if name.startswith("at_"):
        mode, p = name.split("_")[1], int(name.split("_")[2][1:])
        s, t = x(2, (4, 4, 3, 3)), x(3, (4, 4, 3, 5))
        fn = functools.partial(attention_transfer, p=p, mode=mode)
        return Case(fn, (s, t), functools.partial(np_at, p=p, mode=mode), equal_args=(s, s))
    if name == "sp":
        s, t = x(4, (4, 3, 2, 2)), x(5, (4, 7))
        return Case(similarity_preserving, (s, t), np_sp, equal_args=(s, s))
    if name in ("vid_same", "vid_pool_teacher", "vid_pool_student"):
        t_hw = {"vid_same": (4, 4), "vid_pool_teacher": (2, 3), "vid_pool_student": (5, 6)}[name]
        mean, target = x(6, (3, 4, 4, 3)), x(7, (3, *t_hw, 3))
        log_scale = normal(8, (3,))
        return Case(
            vid,
            (mean, target, log_scale),
            np_vid,
            grad_argnums=(0, 2),
            batched=(True, True, False),
            nonnegative=False,
        )
    if name == "vid_vectors":
        mean, target, log_scale = x(9, (5, 4)), x(10, (5, 4)), normal(11, (4,))
        return Case(
            vid, (mean, target, log_scale), np_vid, (0, 2), (True, True, False), nonnegative=False
        )
    if name == "cos_tokens":
        s, t = x(12, (2, 5, 6)), x(13, (2, 5, 6))
        return Case(cosine_embedding, (s, t), np_cosine, equal_args=(s, s))
    if name == "cos_vectors":
        s, t = x(14, (5, 6)), x(15, (5, 6))
        return Case(cosine_embedding, (s, t), np_cosine, equal_args=(s, s))
    raise KeyError(name)


NAMES = (
    "hint",
    "at_code_p2",
    "at_paper_p2",
    "at_code_p3",
    "sp",
    "vid_same",
    "vid_pool_teacher",
    "vid_pool_student",
    "vid_vectors",
    "cos_tokens",
    "cos_vectors",
)
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
    assert_bfloat16_gives_float32(CASES[name], atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_finite_at_magnitude_1e4(name):
    assert_finite_and_accurate(CASES[name], make_case(name, scale=1e4))


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].equal_args is not None])
def test_zero_with_finite_gradient_when_student_equals_teacher(name):
    case = CASES[name]
    value, (grad, *_) = case.value_and_grad(*case.equal_args)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    assert np.all(np.isfinite(grad))
    if "paper" not in name:
        # Paper-mode AT is a norm, not differentiable at 0: rounding picks a unit subgradient.
        np.testing.assert_allclose(grad, 0.0, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "cos_tokens"])
def test_mask_equals_loss_on_valid_sub_batch(name):
    assert_mask_equals_sub_batch(CASES[name])


def test_cosine_token_mask_matches_distilbert_selection():
    s, t = normal(20, (3, 4, 8)), normal(21, (3, 4, 8))
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], np.float32)
    run = jax.jit(cosine_embedding, static_argnames="reduction")
    value = run(s, t, mask=mask)
    np.testing.assert_allclose(value, np_cosine(s.astype(np.float64), t, mask), rtol=1e-5)
    per_token = run(s, t, mask=mask, reduction="none")
    assert per_token.shape == (3, 4)
    np.testing.assert_array_equal(per_token[mask == 0], 0.0)


def test_cosine_of_zero_vector_is_one_with_finite_gradient():
    s, t = np.zeros((2, 4), np.float32), normal(22, (2, 4))
    value, grad = jax.jit(jax.value_and_grad(cosine_embedding))(s, t)
    np.testing.assert_allclose(value, 1.0)
    assert np.all(np.isfinite(grad))


def test_attention_modes_are_scale_invariant_and_differ():
    s, t = normal(23, (2, 4, 4, 3)), normal(24, (2, 4, 4, 6))
    for mode in ("code", "paper"):
        np.testing.assert_allclose(
            attention_transfer(s, t, mode=mode),
            attention_transfer(7.0 * s, t, mode=mode),
            rtol=1e-5,
        )
    assert not np.isclose(attention_transfer(s, t), attention_transfer(s, t, mode="paper"))


def test_vid_eps_may_be_traced():
    mean, target, log_scale = CASES["vid_same"].args
    traced = jax.jit(lambda eps: vid(mean, target, log_scale, eps=eps))(1e-2)
    np.testing.assert_allclose(traced, np_vid(mean, target, log_scale, eps=1e-2), rtol=1e-5)


def test_vid_at_initial_variance_and_perfect_mean():
    # With mean == target only ½·log σ² remains.
    t = normal(25, (2, 3, 3, 4))
    log_scale = np.full((4,), np.log(np.expm1(5.0 - 1e-5)), np.float32)
    np.testing.assert_allclose(vid(t, t, log_scale), 0.5 * np.log(5.0), rtol=1e-6)


# ---------------------------------------------------------------- properties


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    batch=st.integers(1, 4),
    height=st.integers(1, 4),
    width=st.integers(1, 4),
    channels=st.integers(1, 4),
    log_scale=st.floats(-3.0, 4.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference_and_is_finite(
    name, batch, height, width, channels, log_scale, seed
):
    base = CASES[name]
    scale = 10.0**log_scale

    def resize(a, batched):
        # Keep each case's structure (ranks, which dims match) and redraw the sizes.
        if not batched:
            return normal(seed + 7, (channels,))
        if a.ndim == 4:
            return normal(seed + a.shape[-1], (batch, height, width, channels), scale)
        if a.ndim == 3:
            return normal(seed + a.shape[-1], (batch, height, channels), scale)
        return normal(seed + a.shape[-1], (batch, channels), scale)

    args = tuple(resize(a, b) for a, b in zip(base.args, base.batched, strict=True))
    args = (args[0], resize(base.args[1], True) * 1.5 + 0.1 * scale, *args[2:])
    value, grads = CASES[name].value_and_grad(*args)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    if base.nonnegative:
        assert value >= -1e-6
    np.testing.assert_allclose(value, base.ref64(*args), rtol=1e-3, atol=1e-5)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "fn",
    [hint, attention_transfer, similarity_preserving, cosine_embedding],
    ids=lambda f: f.__name__,
)
def test_mismatched_batch(fn):
    s = np.zeros((4, 3, 3, 2) if fn is not cosine_embedding else (4, 5, 2), np.float32)
    t = np.zeros((3, *s.shape[1:]), np.float32)
    names = (
        ("student_hidden", "teacher_hidden") if fn is cosine_embedding else ("student_features",)
    )
    raises_naming(ValueError, fn, s, t, names=names, shapes=(s.shape, t.shape))


def test_vid_mismatched_batch_channels_and_log_scale():
    s, t = np.zeros((2, 4, 4, 3), np.float32), np.zeros((3, 4, 4, 3), np.float32)
    raises_naming(
        ValueError, vid, s, t, np.zeros(3), names=("student_features",), shapes=(s.shape,)
    )
    t = np.zeros((2, 4, 4, 5), np.float32)
    raises_naming(
        ValueError, vid, s, t, np.zeros(5), names=("teacher_features",), shapes=(t.shape,)
    )
    t = np.zeros((2, 4, 4, 3), np.float32)
    raises_naming(ValueError, vid, s, t, np.zeros(4), names=("log_scale",), shapes=((4,), t.shape))
    raises_naming(ValueError, vid, s, t[:, 0, 0], np.zeros(3), names=("rank",), shapes=(s.shape,))


def test_nchw_looking_rank3_maps_are_rejected():
    map3 = np.zeros((3, 8, 8), np.float32)
    map4 = np.zeros((2, 8, 8, 3), np.float32)
    raises_naming(
        ValueError,
        attention_transfer,
        map3,
        map4,
        names=("student_features", "rank 4"),
        shapes=(map3.shape,),
    )
    raises_naming(
        ValueError, vid, map4, map3, np.zeros(8), names=("teacher_features",), shapes=(map3.shape,)
    )
    raises_naming(
        ValueError, cosine_embedding, map4, map4, names=("student_hidden",), shapes=(map4.shape,)
    )
    vector = np.zeros((4,), np.float32)
    raises_naming(
        ValueError, hint, vector, vector, names=("student_features",), shapes=(vector.shape,)
    )


def test_attention_pools_the_larger_map_to_the_smaller():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    t = rng.normal(size=(2, 4, 4, 5)).astype(np.float32)
    # 2x2 average pooling of the 8x8 map is exactly what adaptive pooling to 4x4 does.
    pooled = s.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(
        attention_transfer(s, t), attention_transfer(pooled, t), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        attention_transfer(t, s), attention_transfer(t, pooled), rtol=1e-5, atol=1e-7
    )


def test_attention_options():
    s = np.zeros((2, 8, 8, 3), np.float32)
    raises_naming(
        ValueError, attention_transfer, s, s, mode="l2", names=("mode", "'l2'"), shapes=()
    )
    raises_naming(ValueError, attention_transfer, s, s, p=0, names=("`p`",), shapes=())


def test_hint_shape_mismatch_names_both_shapes():
    s, t = np.zeros((2, 4, 4, 8), np.float32), np.zeros((2, 4, 4, 16), np.float32)
    raises_naming(
        ValueError,
        hint,
        s,
        t,
        names=("student_features", "teacher_features"),
        shapes=(s.shape, t.shape),
    )


@pytest.mark.parametrize("name", ["hint", "at_code_p2", "sp", "vid_same", "cos_tokens"])
def test_integer_features_raise_type_error(name):
    case = CASES[name]
    ints = (case.args[0].astype(np.int32), *case.args[1:])
    with pytest.raises(TypeError, match=r"student_(features|hidden)"):
        case.fn(*ints)
    ints = (case.args[0], case.args[1].astype(np.int32), *case.args[2:])
    with pytest.raises(TypeError, match=r"teacher_(features|hidden)"):
        case.fn(*ints)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_mask_shape(name):
    case = CASES[name]
    bad = np.ones((case.args[0].shape[0] + 1,), np.float32)
    raises_naming(ValueError, case.fn, *case.args, mask=bad, names=("mask",), shapes=(bad.shape,))


def test_unknown_reduction():
    s = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="reduction"):
        hint(s, s, reduction="batchmean")
