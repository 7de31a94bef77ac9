"""Tests for jaxkd.losses.logit_relations.dist against a float64 NumPy DIST reference."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.losses import dist

HYPER = {"beta": 2.0, "gamma": 3.0, "temperature": 4.0}


def np_softmax(x):
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def np_pearson_rows(a, b):
    """Pearson correlation of matching rows, with the official `|a| |b| + 1e-8` denominator."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / (norms + 1e-8)


def ref_dist(s, t, *, beta, gamma, temperature, mask=None):
    """Huang et al. 2022, Eq. (4)-(6), with `T²` on both terms as in the official code."""
    classes = s.shape[-1]
    s = np.asarray(s, np.float64).reshape(-1, classes)
    t = np.asarray(t, np.float64).reshape(-1, classes)
    if mask is not None:
        keep = np.asarray(mask).reshape(-1).astype(bool)
        s, t = s[keep], t[keep]
    y_s, y_t = np_softmax(s / temperature), np_softmax(t / temperature)
    inter = 1.0 - np_pearson_rows(y_s, y_t).mean()
    intra = 1.0 - np_pearson_rows(y_s.T, y_t.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def make_inputs(shape, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    s = (scale * rng.standard_normal(shape)).astype(np.float32)
    t = (scale * rng.standard_normal(shape)).astype(np.float32)
    return s, t


@jax.jit
def value_and_grads(s, t, mask=None, **hyper):
    return jax.value_and_grad(lambda a, b: dist(a, b, mask=mask, **hyper), argnums=(0, 1))(s, t)


class ReferenceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((6, 7), (2, 3, 5))
    def test_matches_reference(self, *shape):
        s, t = make_inputs(shape)
        loss = self.variant(functools.partial(dist, **HYPER))
        np.testing.assert_allclose(loss(s, t), ref_dist(s, t, **HYPER), rtol=1e-5)

        mask = np.random.default_rng(1).random(shape[:-1]) < 0.6
        mask.flat[:2] = True
        masked = self.variant(lambda s, t, m: dist(s, t, mask=m, **HYPER))(s, t, mask)
        np.testing.assert_allclose(masked, ref_dist(s, t, mask=mask, **HYPER), rtol=1e-5)


def test_leading_dimensions_are_flattened_into_one_batch():
    s, t = make_inputs((2, 3, 5), seed=2)
    loss = jax.jit(functools.partial(dist, **HYPER))
    np.testing.assert_allclose(loss(s, t), loss(s.reshape(6, 5), t.reshape(6, 5)), rtol=1e-6)


def test_gradients_match_finite_differences_of_reference():
    s, t = make_inputs((4, 5), scale=2.0, seed=3)
    hyper = {"beta": 1.0, "gamma": 2.0, "temperature": 2.0}
    _, grads = value_and_grads(s, t, **hyper)
    h = 1e-6
    for arg, grad in enumerate(grads):
        expected = np.zeros(s.shape)
        for idx in np.ndindex(s.shape):
            plus = [s.astype(np.float64), t.astype(np.float64)]
            minus = [a.copy() for a in plus]
            plus[arg][idx] += h
            minus[arg][idx] -= h
            expected[idx] = (ref_dist(*plus, **hyper) - ref_dist(*minus, **hyper)) / (2 * h)
        np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=2e-5)


def test_vmap_treats_each_group_as_its_own_batch():
    s, t = make_inputs((3, 4, 6), seed=4)
    batched = jax.jit(jax.vmap(functools.partial(dist, **HYPER)))(s, t)
    np.testing.assert_allclose(batched, [ref_dist(s[i], t[i], **HYPER) for i in range(3)], 1e-5)


def test_hyperparameters_may_be_traced():
    s, t = make_inputs((4, 5), seed=5)
    traced = {k: jnp.asarray(v) for k, v in HYPER.items()}
    value, _ = value_and_grads(s, t, **traced)
    np.testing.assert_allclose(value, ref_dist(s, t, **HYPER), rtol=1e-5)
    grads = jax.grad(lambda h: jax.jit(dist)(s, t, **h))(traced)
    assert all(np.isfinite(g) for g in jax.tree.leaves(grads))


def test_bfloat16_inputs_give_float32_results():
    s, t = make_inputs((4, 6), seed=6)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    out, grads = value_and_grads(s16, t16, **HYPER)
    assert out.dtype == jnp.float32
    upcast, _ = value_and_grads(s16.astype(jnp.float32), t16.astype(jnp.float32), **HYPER)
    np.testing.assert_allclose(out, upcast, rtol=1e-6)
    np.testing.assert_allclose(out, ref_dist(s, t, **HYPER), rtol=0.05)
    assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in grads)


def test_magnitude_1e4_is_finite_and_accurate():
    s, t = make_inputs((5, 6), scale=1e4, seed=7)
    value, grads = value_and_grads(s, t, **HYPER)
    np.testing.assert_allclose(value, ref_dist(s, t, **HYPER), rtol=1e-4)
    assert all(np.isfinite(g).all() for g in grads)


def test_padded_classes_change_nothing():
    s, t = make_inputs((4, 5), seed=8)
    pad = np.full((4, 3), -np.inf, np.float32)
    value_pad, grads_pad = value_and_grads(
        np.concatenate([s, pad], -1), np.concatenate([t, pad], -1), **HYPER
    )
    value, grads = value_and_grads(s, t, **HYPER)
    np.testing.assert_allclose(value_pad, value, rtol=1e-6)
    for g_pad, g in zip(grads_pad, grads, strict=True):
        np.testing.assert_array_equal(g_pad[:, 5:], 0.0)
        np.testing.assert_allclose(g_pad[:, :5], g, rtol=1e-5, atol=1e-7)


def test_masked_rows_have_no_influence():
    s, t = make_inputs((5, 4), seed=9)
    mask = np.array([1, 0, 1, 1, 0], np.float32)
    garbage_s, garbage_t = s.copy(), t.copy()
    garbage_s[mask == 0] = 1e4
    garbage_t[mask == 0] = -3.0
    value, grads = value_and_grads(garbage_s, garbage_t, mask=mask, **HYPER)
    np.testing.assert_allclose(value, ref_dist(s, t, mask=mask, **HYPER), rtol=1e-5)
    for g in grads:
        np.testing.assert_array_equal(g[mask == 0], 0.0)


def test_zero_with_zero_gradient_when_student_equals_teacher():
    s, _ = make_inputs((5, 6), seed=10)
    value, (grad, _) = value_and_grads(s, s, **HYPER)
    # Zero up to the official 1e-8 in the correlation's denominator: 1 − |a|² / (|a|² + ε).
    np.testing.assert_allclose(value, ref_dist(s, s, **HYPER), atol=1e-5)
    np.testing.assert_allclose(value, 0.0, atol=1e-4)
    np.testing.assert_allclose(grad, 0.0, atol=1e-4)


def test_uniform_student_has_finite_gradients():
    # A zero-initialised head: every centred student row is the zero vector.
    _, t = make_inputs((3, 4), seed=11)
    value, grads = value_and_grads(np.zeros_like(t), t, **HYPER)
    assert all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(value, ref_dist(np.zeros_like(t), t, **HYPER), rtol=1e-5)


def test_a_single_example_has_intra_term_one():
    s, t = make_inputs((1, 5), seed=12)
    value, _ = value_and_grads(s, t, beta=0.0, gamma=1.0)
    np.testing.assert_allclose(value, 1.0, rtol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    # A few fixed shapes keep the jit cache warm; magnitudes and weights vary freely.
    shape=st.sampled_from([(2, 2), (5, 3), (3, 8)]),
    log_scale=st.floats(-2.0, 4.0),
    temperature=st.floats(0.5, 8.0),
    beta=st.floats(0.0, 4.0),
    gamma=st.floats(0.0, 4.0),
    seed=st.integers(0, 2**16),
)
def test_property_bounded_finite_and_matches_reference(
    shape, log_scale, temperature, beta, gamma, seed
):
    s, t = make_inputs(shape, scale=10.0**log_scale, seed=seed)
    hyper = {"beta": beta, "gamma": gamma, "temperature": temperature}
    value, grads = value_and_grads(s, t, **hyper)
    assert -1e-5 <= value <= 2 * temperature**2 * (beta + gamma) + 1e-5
    # Nearly uniform softmaxes (tiny logits, high T) make the correlations ill-conditioned.
    np.testing.assert_allclose(value, ref_dist(s, t, **hyper), rtol=1e-3, atol=1e-3)
    assert all(np.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------------------
# bad input


def _abstract(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def _trace(s, t, **kwargs):
    return jax.eval_shape(functools.partial(dist, **kwargs), s, t)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_per_example_reductions_are_rejected(reduction):
    with pytest.raises(ValueError, match="batch-relational") as err:
        _trace(_abstract((4, 5)), _abstract((4, 5)), reduction=reduction)
    assert "reduction" in str(err.value) and repr(reduction) in str(err.value)


def test_vocab_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match="student_logits") as err:
        _trace(_abstract((2, 151_936)), _abstract((2, 152_064)))
    assert "teacher_logits" in str(err.value)
    assert "(2, 151936)" in str(err.value) and "(2, 152064)" in str(err.value)


@pytest.mark.parametrize("which", ["student_logits", "teacher_logits"])
def test_integer_logits_are_rejected(which):
    good, bad = _abstract((3, 5)), _abstract((3, 5), jnp.int32)
    with pytest.raises(TypeError, match=which) as err:
        _trace(*((bad, good) if which == "student_logits" else (good, bad)))
    assert "(3, 5)" in str(err.value)


def test_a_single_unbatched_example_is_rejected():
    with pytest.raises(ValueError, match=r"`student_logits` must have rank >= 2.*\(5,\)"):
        _trace(_abstract((5,)), _abstract((5,)))


def test_mask_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="mask") as err:
        _trace(_abstract((2, 3, 5)), _abstract((2, 3, 5)), mask=_abstract((6,)))
    assert "(2, 3)" in str(err.value) and "(6,)" in str(err.value)


def test_non_positive_temperature_is_rejected():
    with pytest.raises(ValueError, match=r"temperature=-1\.0"):
        _trace(_abstract((4, 5)), _abstract((4, 5)), temperature=-1.0)
