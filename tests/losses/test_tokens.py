"""Tests for jaxkd.losses.tokens: forward/reverse KL, generalized JSD, skew KLs, TV.

References and shared fixtures are in `_token_refs`; the behaviour of `generalized_jsd` and
the skew KLs at the ends of β and α is tested in `test_tokens_endpoints`.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _token_refs import (
    CHUNKS,
    LOSSES,
    MASK,
    NAMES,
    SHAPE,
    call,
    jitted,
    make_inputs,
    reference,
    value_and_grads,
)
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.losses import forward_kl

# ----------------------------------------------------------------------------------------
# agreement with the references, jit and no-jit, every reduction


class ReferenceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*NAMES)
    def test_matches_reference_with_traced_hyperparameters(self, name):
        s, t = make_inputs(SHAPE)
        hyper = {k: v / 2 for k, v in LOSSES[name][2].items()}
        per_token = reference(name, s, t, **hyper)

        # Hyperparameters are arguments, so the jit variant traces them (schedules do that).
        @self.variant
        def per_token_loss(s, t, mask, hyper):
            return call(name, s, t, mask=mask, chunk_size=3, reduction="none", **hyper)

        values = per_token_loss(s, t, MASK, {k: jnp.float32(v) for k, v in hyper.items()})
        chex.assert_shape(values, SHAPE[:-1])
        np.testing.assert_allclose(values, np.where(MASK, per_token, 0.0), rtol=2e-5, atol=2e-6)


def test_sum_reduction_is_the_masked_sum():
    s, t = make_inputs(SHAPE)
    for chunk_size in CHUNKS:
        total = jitted("generalized_jsd", s, t, chunk_size=chunk_size, reduction="sum", mask=MASK)
        expected = reference("generalized_jsd", s, t)[MASK].sum()
        np.testing.assert_allclose(total, expected, rtol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences_of_reference(name):
    s, t = make_inputs(SHAPE, scale=2.0, seed=2)
    _, (grad_s, grad_t, _) = value_and_grads(name, s, t, MASK, chunk_size=3)
    h = 1e-6
    for arg, grad in enumerate((grad_s, grad_t)):
        expected = np.zeros(SHAPE)
        for idx in np.ndindex(SHAPE):
            plus = [s.astype(np.float64), t.astype(np.float64)]
            minus = [a.copy() for a in plus]
            plus[arg][idx] += h
            minus[arg][idx] -= h
            diff = reference(name, *plus) - reference(name, *minus)
            expected[idx] = diff[MASK].mean() / (2 * h)
        np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_value_and_gradients_equal_unchunked(name):
    s, t = make_inputs(SHAPE, seed=3)
    value, grads = value_and_grads(name, s, t, MASK)
    chunked_value, chunked_grads = value_and_grads(name, s, t, MASK, chunk_size=3)
    np.testing.assert_allclose(chunked_value, value, rtol=1e-6)
    for chunked, plain in zip(chunked_grads, grads, strict=True):
        np.testing.assert_allclose(chunked, plain, rtol=1e-5, atol=1e-7)


# vmap goes through the shared chunking plumbing; two losses (one with β) cover it.
@pytest.mark.parametrize("name", ["forward_kl", "generalized_jsd"])
def test_vmap_equals_a_python_loop(name):
    s, t = make_inputs((3, *SHAPE), seed=4)
    loss = functools.partial(call, name, mask=MASK, chunk_size=3)
    batched, grads = jax.jit(jax.vmap(jax.value_and_grad(loss)))(s, t)
    looped = [value_and_grads(name, s[i], t[i], MASK, chunk_size=3) for i in range(3)]
    np.testing.assert_allclose(batched, [v for v, _ in looped], rtol=1e-6)
    np.testing.assert_allclose(grads, [g[0] for _, g in looped], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------
# numerics: half precision, large logits, padded vocabulary


# The row functions (and so the numerics) are shared by the chunked and unchunked paths: every
# loss is checked chunked, the unchunked plumbing with one loss.
NUMERICS_CASES = [(name, 3) for name in NAMES] + [("generalized_jsd", None)]


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_bf16_inputs_give_float32_results_close_to_float32(chunk_size):
    s, t = make_inputs(SHAPE, seed=6)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    # Same bf16-rounded inputs in float64: only the input rounding differs from float32.
    s_rounded, t_rounded = np.asarray(s16, np.float32), np.asarray(t16, np.float32)
    for name in NAMES:
        value = jitted(name, s16, t16, chunk_size=chunk_size, mask=MASK)
        assert value.dtype == jnp.float32
        expected = reference(name, s_rounded, t_rounded)[MASK].mean()
        np.testing.assert_allclose(value, expected, rtol=1e-5)
        np.testing.assert_allclose(value, reference(name, s, t)[MASK].mean(), rtol=0.05)
    value, grads = value_and_grads("generalized_jsd", s16, t16, MASK, chunk_size=chunk_size)
    assert value.dtype == jnp.float32
    assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    _, rounded_grads = value_and_grads("generalized_jsd", s_rounded, t_rounded, MASK)
    np.testing.assert_allclose(np.asarray(grads[0], np.float32), rounded_grads[0], atol=2e-3)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_finite_values_and_gradients_for_logits_of_magnitude_1e4(name, chunk_size):
    s, t = make_inputs(SHAPE, scale=1e4, seed=7)
    value, grads = value_and_grads(name, s, t, MASK, chunk_size=chunk_size)
    assert np.isfinite(value)
    for grad in grads:
        assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, reference(name, s, t)[MASK].mean(), rtol=1e-4)


@pytest.mark.parametrize(("name", "chunk_size"), NUMERICS_CASES)
def test_padded_vocabulary_is_ignored_with_finite_gradients(name, chunk_size):
    """-inf logits in the same entries (151,936 real ids inside 152,064, scaled down)."""
    s, t = make_inputs(SHAPE, seed=8)
    pad = np.full((*SHAPE[:2], 3), -np.inf, np.float32)
    s_pad, t_pad = np.concatenate([s, pad], -1), np.concatenate([t, pad], -1)
    value, grads = value_and_grads(name, s_pad, t_pad, MASK, chunk_size=chunk_size)
    _, real_grads = value_and_grads(name, s, t, MASK, chunk_size=chunk_size)
    np.testing.assert_allclose(value, reference(name, s, t)[MASK].mean(), rtol=2e-5)
    for grad, real in zip(grads, real_grads, strict=True):
        assert np.all(np.isfinite(grad))
        if np.ndim(grad):
            np.testing.assert_array_equal(grad[..., 7:], 0.0)
            grad = grad[..., :7]
        np.testing.assert_allclose(grad, real, rtol=1e-5, atol=1e-8)


# ----------------------------------------------------------------------------------------
# properties


@pytest.mark.parametrize("name", NAMES)
def test_zero_with_zero_gradient_when_student_equals_teacher(name):
    s, _ = make_inputs(SHAPE, seed=9)
    value, (grad_s, _, _) = value_and_grads(name, s, s, MASK, chunk_size=3)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    np.testing.assert_allclose(grad_s, 0.0, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    length=st.sampled_from([1, 4, 6]),
    vocab=st.sampled_from([2, 7, 33]),
    scale=st.sampled_from([1e-3, 1.0, 10.0, 1e3]),
    chunk_size=st.sampled_from([None, 1, 4]),
    seed=st.integers(0, 2**16),
)
def test_property_non_negative_finite_and_matches_reference(
    name, length, vocab, scale, chunk_size, seed
):
    s, t = make_inputs((2, length, vocab), scale=scale, seed=seed)
    values = jitted(name, s, t, chunk_size=chunk_size, reduction="none")
    assert np.all(np.isfinite(values))
    assert np.all(values >= -1e-6)
    if name == "total_variation":
        assert np.all(values <= 1.0 + 1e-6)
    np.testing.assert_allclose(values, reference(name, s, t), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_all_masked_batch_gives_zero_not_nan(chunk_size):
    s, t = make_inputs(SHAPE, seed=10)
    for name in NAMES:
        value, grads = value_and_grads(name, s, t, np.zeros_like(MASK), chunk_size=chunk_size)
        assert value == 0.0
        np.testing.assert_array_equal(grads[0], 0.0)


# ----------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------
# memory: chunking bounds the float32 intermediates, forward and backward


def test_chunked_value_and_grad_has_no_full_size_float32_temporaries():
    tokens, vocab = 256, 512
    s = jax.ShapeDtypeStruct((2, tokens // 2, vocab), jnp.float32)
    full = tokens * vocab * 4  # one float32 [B·L, V] array

    def temp_bytes(chunk_size):
        fn = jax.value_and_grad(lambda a, b: forward_kl(a, b, chunk_size=chunk_size))
        stats = jax.jit(fn).lower(s, s).compile().memory_analysis()
        if stats is None:
            pytest.skip("this backend has no memory analysis")
        return stats.temp_size_in_bytes

    assert temp_bytes(None) >= full
    assert temp_bytes(16) < full / 2


# ----------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("name", NAMES)
def test_vocabulary_mismatch_names_both_shapes(name):
    s = jax.ShapeDtypeStruct((2, 3, 151_936), jnp.bfloat16)
    t = jax.ShapeDtypeStruct((2, 3, 152_064), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"student_logits.*\(2, 3, 151936\).*\(2, 3, 152064\)"):
        jax.eval_shape(functools.partial(call, name), s, t)


@pytest.mark.parametrize("name", NAMES)
def test_bad_rank_dtype_mask_reduction_and_chunk_size(name):
    s, t = make_inputs((2, 3, 5))
    with pytest.raises(ValueError, match=r"`student_logits` must have rank 3.*\(6, 5\)"):
        call(name, s.reshape(6, 5), t.reshape(6, 5))
    with pytest.raises(TypeError, match=r"`teacher_logits`.*floating.*\(2, 3, 5\).*int32"):
        call(name, s, t.astype(np.int32))
    with pytest.raises(ValueError, match=r"`mask` must have shape \(2, 3\).*\(2, 5\)"):
        call(name, s, t, mask=np.ones((2, 5), bool))
    with pytest.raises(ValueError, match="`reduction`"):
        call(name, s, t, reduction="batchmean")
    with pytest.raises(ValueError, match=r"`chunk_size`.*0"):
        call(name, s, t, chunk_size=0)
    with pytest.raises(TypeError, match=r"`chunk_size`.*float"):
        call(name, s, t, chunk_size=2.0)
