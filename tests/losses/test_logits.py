"""Tests for jaxkd.losses.logits: kd, kd_with_labels, dkd, logit_standardized_kd.

The references below are float64 NumPy transcriptions of the papers' formulas, written
independently of the JAX code (e.g. DKD's non-target distribution is a softmax over the
logits with the target column deleted, row by row).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.losses import dkd, kd, kd_with_labels, logit_standardized_kd

# ----------------------------------------------------------------------------------------
# float64 NumPy references (per-example values)


def np_log_softmax(x):
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def np_logsumexp(x):
    top = np.max(x)
    return top + np.log(np.sum(np.exp(x - top)))


def np_kl(p_t, log_p_t, log_p_s):
    """Σ p_t (log p_t − log p_s) with 0 · log 0 = 0."""
    terms = np.where(p_t > 0, p_t * (log_p_t - np.where(p_t > 0, log_p_s, 0.0)), 0.0)
    return np.sum(terms, axis=-1)


def ref_kd(s, t, y, *, temperature):
    del y
    log_p_s, log_p_t = np_log_softmax(s / temperature), np_log_softmax(t / temperature)
    return temperature**2 * np_kl(np.exp(log_p_t), log_p_t, log_p_s)


def ref_kd_with_labels(s, t, y, *, alpha, temperature):
    ce = -np.take_along_axis(np_log_softmax(s), y[..., None], axis=-1)[..., 0]
    return alpha * ce + (1 - alpha) * ref_kd(s, t, y, temperature=temperature)


def _tckd_nckd(s, t, y, temperature):
    """TCKD and NCKD per example from the paper's definitions (Zhao et al. §3.1)."""
    flat_s = s.reshape(-1, s.shape[-1]) / temperature
    flat_t = t.reshape(-1, t.shape[-1]) / temperature
    tckd, nckd = [], []
    for zs, zt, label in zip(flat_s, flat_t, y.reshape(-1), strict=True):
        # b = (p_y, 1 − p_y), with 1 − p_y summed in log space so it survives p_y ≈ 1.
        log_ps, log_pt = np_log_softmax(zs), np_log_softmax(zt)
        log_bs = np.array([log_ps[label], np_logsumexp(np.delete(log_ps, label))])
        log_bt = np.array([log_pt[label], np_logsumexp(np.delete(log_pt, label))])
        tckd.append(np_kl(np.exp(log_bt), log_bt, log_bs))
        hat_s = np_log_softmax(np.delete(zs, label))
        hat_t = np_log_softmax(np.delete(zt, label))
        nckd.append(np_kl(np.exp(hat_t), hat_t, hat_s))
    return np.reshape(tckd, y.shape), np.reshape(nckd, y.shape)


def ref_dkd(s, t, y, *, alpha, beta, temperature):
    tckd, nckd = _tckd_nckd(s, t, y, temperature)
    return temperature**2 * (alpha * tckd + beta * nckd)


def ref_lskd(s, t, y, *, temperature, eps=1e-7):
    def zscore(x):
        mean = x.mean(axis=-1, keepdims=True)
        return (x - mean) / (eps + x.std(axis=-1, ddof=1, keepdims=True))

    return ref_kd(zscore(s), zscore(t), y, temperature=temperature)


def mdistiller_dkd(s, t, y, *, alpha, beta, temperature):
    """mdistiller's `dkd_loss` formula, including its `- 1000 · gt_mask` offset (batch mean)."""
    gt = np.eye(s.shape[-1], dtype=bool)[y]
    ps, pt = np.exp(np_log_softmax(s / temperature)), np.exp(np_log_softmax(t / temperature))
    bs = np.stack([(ps * gt).sum(-1), (ps * ~gt).sum(-1)], -1)
    bt = np.stack([(pt * gt).sum(-1), (pt * ~gt).sum(-1)], -1)
    with np.errstate(divide="ignore", invalid="ignore"):  # log 0 where p_t = 0 is dropped
        tckd = np_kl(bt, np.log(bt), np.log(bs))
    log_hat_t = np_log_softmax(t / temperature - 1000.0 * gt)
    log_hat_s = np_log_softmax(s / temperature - 1000.0 * gt)
    nckd = np_kl(np.exp(log_hat_t), log_hat_t, log_hat_s)
    return np.mean(temperature**2 * (alpha * tckd + beta * nckd))


# name -> (loss, reference, takes labels, hyperparameters used by the generic tests)
LOSSES = {
    "kd": (kd, ref_kd, False, {"temperature": 3.0}),
    "kd_with_labels": (
        kd_with_labels,
        ref_kd_with_labels,
        True,
        {"alpha": 0.3, "temperature": 3.0},
    ),
    "dkd": (dkd, ref_dkd, True, {"alpha": 1.0, "beta": 8.0, "temperature": 4.0}),
    "logit_standardized_kd": (logit_standardized_kd, ref_lskd, False, {"temperature": 2.0}),
}
NAMES = list(LOSSES)


def call(name, s, t, y, **overrides):
    fn, _, takes_labels, hyper = LOSSES[name]
    kwargs = {**hyper, **overrides}
    return fn(s, t, y, **kwargs) if takes_labels else fn(s, t, **kwargs)


@functools.partial(jax.jit, static_argnums=0, static_argnames="reduction")
def jitted(name, s, t, y, reduction="mean", **overrides):
    return call(name, s, t, y, reduction=reduction, **overrides)


@functools.partial(jax.jit, static_argnums=0)
def value_and_grads(name, s, t, y, **overrides):
    """Jitted loss value and its gradients with respect to both logit arrays."""
    return jax.value_and_grad(lambda a, b: call(name, a, b, y, **overrides), argnums=(0, 1))(s, t)


def reference(name, s, t, y, **hyper_overrides):
    _, ref, _, hyper = LOSSES[name]
    s, t = np.asarray(s, np.float64), np.asarray(t, np.float64)
    return ref(s, t, np.asarray(y), **{**hyper, **hyper_overrides})


def make_inputs(shape, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    s = (scale * rng.standard_normal(shape)).astype(np.float32)
    t = (scale * rng.standard_normal(shape)).astype(np.float32)
    y = rng.integers(0, shape[-1], size=shape[:-1]).astype(np.int32)
    return s, t, y


# ----------------------------------------------------------------------------------------
# agreement with the references, jit and no-jit


class ReferenceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*NAMES)
    def test_matches_reference_for_every_reduction(self, name):
        shape = (2, 3, 5)  # two leading dimensions: per-position classification
        s, t, y = make_inputs(shape)
        mask = np.random.default_rng(1).random(shape[:-1]) < 0.7
        mask.flat[0] = True
        per_example = reference(name, s, t, y)

        none = self.variant(functools.partial(call, name, reduction="none"))(s, t, y)
        chex.assert_shape(none, shape[:-1])
        np.testing.assert_allclose(none, per_example, rtol=2e-5, atol=1e-5)

        mean = self.variant(functools.partial(call, name))(s, t, y)
        np.testing.assert_allclose(mean, per_example.mean(), rtol=2e-5)

        total = self.variant(functools.partial(call, name, reduction="sum"))(s, t, y)
        np.testing.assert_allclose(total, per_example.sum(), rtol=2e-5)

        masked = self.variant(lambda s, t, y, m: call(name, s, t, y, mask=m))(s, t, y, mask)
        np.testing.assert_allclose(masked, per_example[mask].mean(), rtol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences_of_reference(name):
    s, t, y = make_inputs((3, 5), scale=2.0, seed=2)
    _, grads = value_and_grads(name, s, t, y)
    for arg, grad in enumerate(grads):
        expected = np.zeros(s.shape)
        h = 1e-6
        for idx in np.ndindex(s.shape):
            args_plus = [s.astype(np.float64), t.astype(np.float64)]
            args_minus = [a.copy() for a in args_plus]
            args_plus[arg][idx] += h
            args_minus[arg][idx] -= h
            f_plus = reference(name, *args_plus, y).mean()
            f_minus = reference(name, *args_minus, y).mean()
            expected[idx] = (f_plus - f_minus) / (2 * h)
        np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_equals_a_python_loop(name):
    s, t, y = make_inputs((3, 4, 6), seed=3)
    batched = jax.jit(jax.vmap(lambda a, b, c: call(name, a, b, c)))(s, t, y)
    looped = [jitted(name, s[i], t[i], y[i]) for i in range(3)]
    np.testing.assert_allclose(batched, looped, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameters_may_be_traced(name):
    s, t, y = make_inputs((4, 5), seed=4)
    hyper = LOSSES[name][3]

    @jax.jit
    def loss(hyper):
        return call(name, s, t, y, **hyper)

    traced = {k: jnp.asarray(v * 1.5) for k, v in hyper.items()}
    np.testing.assert_allclose(
        loss(traced),
        reference(name, s, t, y, **{k: v * 1.5 for k, v in hyper.items()}).mean(),
        rtol=2e-5,
    )
    grad = jax.grad(loss)(traced)
    assert all(np.isfinite(g) for g in jax.tree.leaves(grad))


# ----------------------------------------------------------------------------------------
# numerics: bf16, large magnitudes, padded classes


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_inputs_give_float32_results(name):
    s, t, y = make_inputs((4, 6), seed=5)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    out, grads = value_and_grads(name, s16, t16, y)
    assert out.dtype == jnp.float32
    upcast, _ = value_and_grads(name, s16.astype(jnp.float32), t16.astype(jnp.float32), y)
    np.testing.assert_allclose(out, upcast, rtol=1e-6)
    np.testing.assert_allclose(out, reference(name, s, t, y).mean(), rtol=0.05)
    assert all(
        g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all() for g in grads
    )


@pytest.mark.parametrize("name", NAMES)
def test_magnitude_1e4_is_finite_and_accurate(name):
    s, t, y = make_inputs((4, 6), scale=1e4, seed=6)
    value, grads = value_and_grads(name, s, t, y)
    np.testing.assert_allclose(value, reference(name, s, t, y).mean(), rtol=1e-4)
    assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_padded_classes_change_nothing(name):
    s, t, y = make_inputs((4, 5), seed=7)
    pad = np.full((4, 3), -np.inf, np.float32)
    s_pad, t_pad = np.concatenate([s, pad], -1), np.concatenate([t, pad], -1)
    value_pad, grads_pad = value_and_grads(name, s_pad, t_pad, y)
    value, grads = value_and_grads(name, s, t, y)
    np.testing.assert_allclose(value_pad, value, rtol=1e-6)
    for g_pad, g in zip(grads_pad, grads, strict=True):
        assert np.isfinite(g_pad).all()
        np.testing.assert_array_equal(g_pad[:, 5:], 0.0)
        np.testing.assert_allclose(g_pad[:, :5], g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["kd", "dkd", "logit_standardized_kd"])
def test_zero_with_zero_gradient_when_student_equals_teacher(name):
    s, _, y = make_inputs((5, 6), seed=8)
    value, (grad, _) = value_and_grads(name, s, s, y)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    # A few fixed shapes keep the jit cache warm; magnitudes and temperatures vary freely.
    shape=st.sampled_from([(1, 2), (4, 2), (3, 7)]),
    log_scale=st.floats(-2.0, 4.0),
    temperature=st.floats(0.5, 8.0),
    seed=st.integers(0, 2**16),
)
def test_property_finite_nonnegative_and_matches_reference(
    name, shape, log_scale, temperature, seed
):
    s, t, y = make_inputs(shape, scale=10.0**log_scale, seed=seed)
    value, grads = value_and_grads(name, s, t, y, temperature=temperature)
    expected = reference(name, s, t, y, temperature=temperature).mean()
    # Non-negative up to float32 rounding of the KL (about 1e-7 for equal distributions,
    # e.g. two classes after LSKD's standardisation), which the loss scales by T².
    assert np.isfinite(value) and value >= -1e-6 * temperature**2
    # float32 log-probabilities are exact to ~1e-7 relative: an absolute error that grows
    # with T² (tiny losses) and with the logit magnitude (huge ones).
    atol = 1e-5 * temperature**2 * (1.0 + 10.0**log_scale)
    np.testing.assert_allclose(value, expected, rtol=1e-3, atol=atol)
    assert all(np.isfinite(g).all() for g in grads)


# ----------------------------------------------------------------------------------------
# method-specific properties


def test_kd_with_labels_interpolates_between_cross_entropy_and_kd():
    s, t, y = make_inputs((6, 5), seed=9)
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(s, y).mean()
    soft = jitted("kd", s, t, y, temperature=2.0)

    def mixed(alpha):
        return jitted("kd_with_labels", s, t, y, alpha=alpha, temperature=2.0)

    np.testing.assert_allclose(mixed(0.0), soft, rtol=1e-6)
    np.testing.assert_allclose(mixed(1.0), ce, rtol=1e-6)
    np.testing.assert_allclose(mixed(0.25), 0.25 * ce + 0.75 * soft, rtol=1e-6)


def test_dkd_matches_mdistiller_on_ordinary_inputs():
    s, t, y = make_inputs((8, 10), seed=10)
    for alpha, beta, temperature in [(1.0, 8.0, 4.0), (1.0, 0.5, 1.0), (2.0, 3.0, 2.0)]:
        np.testing.assert_allclose(
            jitted("dkd", s, t, y, alpha=alpha, beta=beta, temperature=temperature),
            mdistiller_dkd(
                s.astype(np.float64), t, y, alpha=alpha, beta=beta, temperature=temperature
            ),
            rtol=2e-5,
        )


def test_dkd_stays_exact_where_the_1000_offset_breaks():
    # A target logit 3000 above the rest survives mdistiller's -1000 offset, so its
    # "non-target" distribution puts nearly all mass on the target class.
    s, t, y = make_inputs((4, 6), scale=5.0, seed=11)
    rows = np.arange(4)
    s[rows, y] += 3000.0
    t[rows, y] += 3000.0
    kwargs = {"alpha": 0.0, "beta": 1.0, "temperature": 1.0}
    exact = ref_dkd(s.astype(np.float64), t.astype(np.float64), y, **kwargs).mean()
    hacked = mdistiller_dkd(s.astype(np.float64), t.astype(np.float64), y, **kwargs)
    assert abs(hacked - exact) > 0.5 * exact > 0
    np.testing.assert_allclose(jitted("dkd", s, t, y, **kwargs), exact, rtol=1e-4)


def test_dkd_decomposes_kd():
    # Zhao et al. Eq. (5): KL(p_t ‖ p_s) = TCKD + (1 − p_t,y) · NCKD, per example.
    s, t, y = make_inputs((6, 7), seed=12)
    temperature = 2.0
    tckd = jitted("dkd", s, t, y, alpha=1.0, beta=0.0, temperature=temperature, reduction="none")
    nckd = jitted("dkd", s, t, y, alpha=0.0, beta=1.0, temperature=temperature, reduction="none")
    p_target = np.exp(np_log_softmax(t / temperature))[np.arange(6), y]
    np.testing.assert_allclose(
        jitted("kd", s, t, y, temperature=temperature, reduction="none"),
        tckd + (1.0 - p_target) * nckd,
        rtol=1e-5,
    )


def test_dkd_with_every_other_class_padded_is_finite():
    s = np.array([[1.0, -np.inf], [0.5, -np.inf]], np.float32)
    t = np.array([[2.0, -np.inf], [-1.0, -np.inf]], np.float32)
    y = np.array([0, 0], np.int32)
    value, grads = value_and_grads("dkd", s, t, y)
    np.testing.assert_allclose(value, 0.0, atol=1e-7)
    assert all(np.isfinite(g).all() for g in grads)


def test_logit_standardized_kd_ignores_per_example_shift_and_scale():
    s, t, _ = make_inputs((5, 6), seed=13)
    rng = np.random.default_rng(14)
    shift, scale = rng.normal(size=(5, 1)) * 10, rng.uniform(0.1, 10.0, size=(5, 1))
    moved_s = (s * scale + shift).astype(np.float32)
    moved_t = (t * scale[::-1] - shift).astype(np.float32)
    lskd = functools.partial(jitted, "logit_standardized_kd", y=None)
    np.testing.assert_allclose(lskd(moved_s, moved_t), lskd(s, t), rtol=1e-4)
    plain = functools.partial(jitted, "kd", y=None, temperature=2.0)
    assert not np.isclose(plain(moved_s, moved_t), plain(s, t), rtol=1e-2)


def test_logit_standardized_kd_constant_logits_have_finite_gradients():
    s = np.zeros((2, 4), np.float32)  # a zero-initialised head: std 0
    _, t, _ = make_inputs((2, 4), seed=15)
    value, grads = value_and_grads("logit_standardized_kd", s, t, None)
    assert all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(value, ref_lskd(s, t, None, temperature=2.0).mean(), rtol=1e-6)


# ----------------------------------------------------------------------------------------
# bad input: trace-time errors naming the argument and the shapes


def _trace(name, s, t, y=None, **kwargs):
    """Traces the loss on abstract shapes, so huge vocabularies cost no memory."""
    if y is None:
        y = jax.ShapeDtypeStruct(s.shape[:-1], jnp.int32)
    return jax.eval_shape(lambda a, b, c: call(name, a, b, c, **kwargs), s, t, y)


def _abstract(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_vocab_mismatch_names_both_shapes(name):
    with pytest.raises(ValueError, match="student_logits") as err:
        _trace(name, _abstract((2, 151_936)), _abstract((2, 152_064)))
    assert "teacher_logits" in str(err.value)
    assert "(2, 151936)" in str(err.value) and "(2, 152064)" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", ["student_logits", "teacher_logits"])
def test_integer_logits_are_rejected(name, which):
    good, bad = _abstract((3, 5)), _abstract((3, 5), jnp.int32)
    args = (bad, good) if which == "student_logits" else (good, bad)
    with pytest.raises(TypeError, match=which) as err:
        _trace(name, *args)
    assert "(3, 5)" in str(err.value) and "int32" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_scalar_logits_are_rejected(name):
    with pytest.raises(ValueError, match=r"`student_logits` must have rank >= 1, got rank 0"):
        _trace(name, _abstract(()), _abstract(()), _abstract((), jnp.int32))


@pytest.mark.parametrize("name", NAMES)
def test_mask_of_wrong_shape_is_rejected(name):
    with pytest.raises(ValueError, match="mask") as err:
        _trace(name, _abstract((4, 5)), _abstract((4, 5)), mask=_abstract((5,)))
    assert "(4,)" in str(err.value) and "(5,)" in str(err.value)


@pytest.mark.parametrize("name", ["kd_with_labels", "dkd"])
def test_labels_of_wrong_dtype_or_shape_are_rejected(name):
    logits = _abstract((4, 5))
    with pytest.raises(TypeError, match="labels") as err:
        _trace(name, logits, logits, _abstract((4,), jnp.float32))
    assert "(4,)" in str(err.value) and "float32" in str(err.value)
    with pytest.raises(ValueError, match="labels") as err:
        _trace(name, logits, logits, _abstract((4, 1), jnp.int32))
    assert "(4,)" in str(err.value) and "(4, 1)" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_reduction_and_temperature_are_rejected(name):
    logits = _abstract((4, 5))
    with pytest.raises(ValueError, match="reduction"):
        _trace(name, logits, logits, reduction="batchmean")
    with pytest.raises(ValueError, match=r"temperature=0\.0"):
        _trace(name, logits, logits, temperature=0.0)


@pytest.mark.parametrize("name", ["dkd", "logit_standardized_kd"])
def test_single_class_is_rejected(name):
    with pytest.raises(ValueError, match=r"at least 2 classes.*\(4, 1\)"):
        _trace(name, _abstract((4, 1)), _abstract((4, 1)))
