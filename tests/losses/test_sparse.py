"""Tests for jaxkd.losses.sparse.sparse_forward_kl (teacher stored as top-k log-probs).

The references are float64 NumPy transcriptions of DistillKit's two definitions: the teacher
renormalised over its k ids against the student's full-vocabulary log-probs at those ids
("renormalize"), and a KL over k + 1 outcomes whose last bucket is the mass outside the k ids
("bucket"), the student's tail being its mass outside the k ids.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.losses import forward_kl, sparse_forward_kl

TAILS = ["renormalize", "bucket"]
SHAPE = (2, 5, 11)  # 10 tokens: chunks of 3 end with a shifted chunk
K = 4


def np_log_softmax(x):
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def np_kl(p, log_p, log_q):
    with np.errstate(invalid="ignore"):  # 0 · (−inf) where p = 0 is dropped by the where
        return np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def reference(s, topk_logprobs, topk_ids, *, tail, temperature=1.0):
    s = np.asarray(s, np.float64)
    lp = np.asarray(topk_logprobs, np.float64)
    log_s = np_log_softmax(s / temperature)
    log_s_k = np.take_along_axis(log_s, np.asarray(topk_ids), axis=-1)
    if tail == "renormalize":
        log_q = np_log_softmax(lp / temperature)
        return np_kl(np.exp(log_q), log_q, log_s_k)
    p_k = np.exp(lp)
    buckets = np.concatenate([p_k, np.maximum(1 - p_k.sum(-1, keepdims=True), 0)], -1)
    buckets = buckets ** (1 / temperature)
    buckets /= buckets.sum(-1, keepdims=True)
    # The student's mass outside the k ids, summed in log space (it can be e^-1000).
    outside = np.ones(log_s.shape, bool)
    np.put_along_axis(outside, np.asarray(topk_ids), False, axis=-1)
    with np.errstate(divide="ignore"):
        masked = np.where(outside, log_s, -np.inf)
        top = np.max(masked, axis=-1, keepdims=True)
        log_tail = (
            top + np.log(np.sum(np.exp(masked - np.where(np.isfinite(top), top, 0)), -1))[..., None]
        )
        # Documented floor: an empty student tail counts as mass 1e-30.
        log_tail = np.logaddexp(log_tail, np.log(1e-30))
        log_student = np.concatenate([log_s_k, log_tail], -1)
        return np_kl(buckets, np.log(buckets), log_student)


def make_inputs(shape=SHAPE, k=K, scale=3.0, seed=0, dtype=np.float32):
    """Student logits and a teacher's top-k log-probs / ids taken from full teacher logits."""
    rng = np.random.default_rng(seed)
    s = (scale * rng.standard_normal(shape)).astype(dtype)
    t = (scale * rng.standard_normal(shape)).astype(np.float32)
    lp, ids = jax.lax.top_k(jax.nn.log_softmax(t), k)
    return s, np.asarray(lp), np.asarray(ids), t


MASK = np.random.default_rng(1).random(SHAPE[:2]) < 0.7
MASK.flat[0] = True


@functools.partial(jax.jit, static_argnames=("tail", "chunk_size"))
def value_and_grads(s, lp, ids, mask=None, *, tail, chunk_size=None, temperature=1.0):
    """Loss value and its gradients w.r.t. the student logits and the teacher log-probs."""

    def f(a, b):
        return sparse_forward_kl(
            a, b, ids, mask=mask, tail=tail, chunk_size=chunk_size, temperature=temperature
        )

    return jax.value_and_grad(f, argnums=(0, 1))(s, lp)


class ReferenceTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(("renormalize", 2.0), ("bucket", 2.0))
    def test_matches_reference(self, tail, temperature):
        s, lp, ids, _ = make_inputs()
        per_token = reference(s, lp, ids, tail=tail, temperature=temperature)
        loss = functools.partial(
            sparse_forward_kl, tail=tail, temperature=temperature, chunk_size=3
        )
        none = self.variant(functools.partial(loss, reduction="none"))(s, lp, ids, mask=MASK)
        chex.assert_shape(none, SHAPE[:2])
        np.testing.assert_allclose(none, np.where(MASK, per_token, 0.0), rtol=2e-5, atol=2e-6)
        mean = self.variant(loss)(s, lp, ids, mask=MASK)
        np.testing.assert_allclose(mean, per_token[MASK].mean(), rtol=2e-5)


@pytest.mark.parametrize("tail", TAILS)
def test_chunked_value_and_gradients_equal_unchunked_and_finite_differences(tail):
    s, lp, ids, _ = make_inputs(seed=2)
    value, grads = value_and_grads(s, lp, ids, MASK, tail=tail)
    chunked_value, chunked_grads = value_and_grads(s, lp, ids, MASK, tail=tail, chunk_size=3)
    np.testing.assert_allclose(chunked_value, value, rtol=1e-6)
    for chunked, plain in zip(chunked_grads, grads, strict=True):
        np.testing.assert_allclose(chunked, plain, rtol=1e-5, atol=1e-7)
    h = 1e-6
    expected = np.zeros(SHAPE)
    for idx in np.ndindex(SHAPE):
        plus, minus = s.astype(np.float64), s.astype(np.float64)
        plus[idx] += h
        minus[idx] -= h
        diff = reference(plus, lp, ids, tail=tail) - reference(minus, lp, ids, tail=tail)
        expected[idx] = diff[MASK].mean() / (2 * h)
    np.testing.assert_allclose(chunked_grads[0], expected, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("tail", TAILS)
def test_full_vocabulary_top_k_equals_forward_kl(tail):
    s, lp, ids, t = make_inputs(k=SHAPE[-1], seed=3)
    value = jax.jit(functools.partial(sparse_forward_kl, tail=tail, chunk_size=3))(s, lp, ids)
    np.testing.assert_allclose(value, forward_kl(s, t), rtol=2e-5)


def test_vmap_equals_a_python_loop():
    s, lp, ids, _ = make_inputs((3, 2, 4, 9), k=3, seed=4)
    loss = jax.value_and_grad(functools.partial(sparse_forward_kl, tail="bucket", chunk_size=3))
    values, grads = jax.jit(jax.vmap(loss))(s, lp, ids)
    for i in range(3):
        value, grad = jax.jit(loss)(s[i], lp[i], ids[i])
        np.testing.assert_allclose(values[i], value, rtol=1e-6)
        np.testing.assert_allclose(grads[i], grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("tail", TAILS)
def test_bf16_student_gives_float32_result(tail):
    s, lp, ids, _ = make_inputs(seed=5)
    s16 = jnp.asarray(s, jnp.bfloat16)
    value, (grad_s, _) = value_and_grads(s16, lp, ids, MASK, tail=tail, chunk_size=3)
    assert value.dtype == jnp.float32 and grad_s.dtype == jnp.bfloat16
    rounded = reference(np.asarray(s16, np.float32), lp, ids, tail=tail)
    np.testing.assert_allclose(value, rounded[MASK].mean(), rtol=1e-5)


@pytest.mark.parametrize("tail", TAILS)
def test_finite_for_magnitude_1e4_and_padded_vocabulary(tail):
    s, lp, ids, _ = make_inputs(scale=1e4, seed=6)
    value, grads = value_and_grads(s, lp, ids, MASK, tail=tail, chunk_size=3)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)

    # Teacher top-k over the 11 real ids, student logits padded with -inf to 14 entries.
    s, lp, ids, _ = make_inputs(seed=7)
    s_pad = np.concatenate([s, np.full((*SHAPE[:2], 3), -np.inf, np.float32)], -1)
    value, (grad_s, grad_lp) = value_and_grads(s_pad, lp, ids, MASK, tail=tail, chunk_size=3)
    np.testing.assert_allclose(value, reference(s, lp, ids, tail=tail)[MASK].mean(), rtol=2e-5)
    assert np.all(np.isfinite(grad_s)) and np.all(np.isfinite(grad_lp))
    np.testing.assert_array_equal(grad_s[..., SHAPE[-1] :], 0.0)


def test_zero_when_the_student_matches_the_teacher():
    _, lp, ids, t = make_inputs(seed=8)
    # Bucket: the student is the full teacher, its tail is the teacher's missing mass.
    value, grads = value_and_grads(t, lp, ids, MASK, tail="bucket", chunk_size=3)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    np.testing.assert_allclose(grads[0], 0.0, atol=1e-6)
    # Renormalize: zero only when the student keeps all its mass on the k ids.
    on_topk = np.full_like(t, -np.inf)
    np.put_along_axis(on_topk, ids, np.take_along_axis(t, ids, -1), -1)
    value, _ = value_and_grads(on_topk, lp, ids, MASK, tail="renormalize", chunk_size=3)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)
    # The full teacher as student: the loss is −log Σ_k p_T, the mass it puts outside the k.
    value, _ = value_and_grads(t, lp, ids, MASK, tail="renormalize", chunk_size=3)
    outside = -np.log(np.exp(lp.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(value, outside[MASK].mean(), rtol=1e-4)


@functools.partial(jax.jit, static_argnames="tail")
def per_token_jitted(s, lp, ids, *, tail):
    return sparse_forward_kl(s, lp, ids, tail=tail, chunk_size=3, reduction="none")


@settings(max_examples=15, deadline=None)
@given(
    tail=st.sampled_from(TAILS),
    length=st.sampled_from([1, 5]),
    vocab=st.sampled_from([2, 9, 33]),
    k=st.sampled_from([1, 3, 33]),
    scale=st.sampled_from([1e-2, 1.0, 10.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_property_non_negative_finite_and_matches_reference(tail, length, vocab, k, scale, seed):
    s, lp, ids, _ = make_inputs((2, length, vocab), k=min(k, vocab), scale=scale, seed=seed)
    values = per_token_jitted(s, lp, ids, tail=tail)
    assert np.all(np.isfinite(values)) and np.all(values >= -1e-6)
    np.testing.assert_allclose(values, reference(s, lp, ids, tail=tail), rtol=1e-3, atol=1e-4)


def test_bad_input_names_arguments_and_shapes():
    s, lp, ids, _ = make_inputs()
    with pytest.raises(TypeError, match=r"`teacher_topk_ids`.*\(2, 5, 4\).*float32"):
        sparse_forward_kl(s, lp, ids.astype(np.float32))
    with pytest.raises(ValueError, match=r"`teacher_topk_ids`.*\(2, 5, 3\).*\(2, 5, 4\)"):
        sparse_forward_kl(s, lp, ids[..., :3])
    with pytest.raises(ValueError, match=r"\[B, L\].*\(2, 5, 11\).*\(2, 4, 4\)"):
        sparse_forward_kl(s, lp[:, :4], ids[:, :4])
    big = jax.ShapeDtypeStruct((2, 5, 12), jnp.float32)
    big_ids = jax.ShapeDtypeStruct((2, 5, 12), jnp.int32)
    with pytest.raises(ValueError, match=r"k=12.*V=11"):
        jax.eval_shape(sparse_forward_kl, s, big, big_ids)
    with pytest.raises(TypeError, match=r"`student_logits`.*floating.*int32"):
        sparse_forward_kl(s.astype(np.int32), lp, ids)
    with pytest.raises(ValueError, match=r"`teacher_topk_logprobs` must have rank 3.*\(10, 4\)"):
        sparse_forward_kl(s, lp.reshape(10, 4), ids.reshape(10, 4))
    with pytest.raises(ValueError, match=r"`mask` must have shape \(2, 5\)"):
        sparse_forward_kl(s, lp, ids, mask=np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"`tail`.*'zero'"):
        sparse_forward_kl(s, lp, ids, tail="zero")
    with pytest.raises(ValueError, match="`chunk_size`"):
        sparse_forward_kl(s, lp, ids, chunk_size=-1)
