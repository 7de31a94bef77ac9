"""`generalized_jsd` at and near β = 0 and 1, and the skew KLs at α = 0 and 1.

`generalized_jsd` (normalised, the default) is exactly `forward_kl` at β = 0 and exactly
`reverse_kl` at β = 1 and tends to them continuously; unnormalised it is TRL's value inside
(0, 1) and 0 at the ends. Neither form may give NaN values or gradients at the ends.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _token_refs import (
    CHUNKS,
    MASK,
    SHAPE,
    make_inputs,
    ref_forward_kl,
    ref_generalized_jsd,
    ref_jsd,
    ref_reverse_kl,
)

from jaxkd.losses import (
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
)

# ----------------------------------------------------------------------------------------
# generalized JSD at and near the ends of β, skew KL at the ends of α

BETAS = [0.0, 1e-6, 0.5, 1.0 - 1e-6, 1.0]


@functools.partial(jax.jit, static_argnums=0, static_argnames=("chunk_size", "normalize"))
def weighted_value_and_grad(loss, s, t, weight, *, chunk_size=None, **static):
    """Value and student gradient of `generalized_jsd` (traced β) or a skew KL (traced α)."""
    key = "beta" if loss is generalized_jsd else "alpha"
    return jax.value_and_grad(
        lambda a: loss(a, t, mask=MASK, chunk_size=chunk_size, **{key: weight}, **static)
    )(s)


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_generalized_jsd_is_forward_kl_at_0_and_reverse_kl_at_1_continuously(chunk_size):
    # Unit-scale logits: the distance from the end value grows like β · Σ p_T² / p_S, so
    # continuity shows at β = 1e-6 only while the probability ratios stay moderate.
    s, t = make_inputs(SHAPE, scale=1.0, seed=11)
    results = {
        b: weighted_value_and_grad(generalized_jsd, s, t, b, chunk_size=chunk_size) for b in BETAS
    }
    for value, grad in results.values():
        assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(results[0.0][0], ref_forward_kl(s, t)[MASK].mean(), rtol=1e-5)
    np.testing.assert_allclose(results[1.0][0], ref_reverse_kl(s, t)[MASK].mean(), rtol=1e-5)
    for end, plain in ((0.0, forward_kl), (1.0, reverse_kl)):
        _, plain_grad = jax.value_and_grad(lambda a, plain=plain: plain(a, t, mask=MASK))(s)
        np.testing.assert_allclose(results[end][1], plain_grad, rtol=1e-5, atol=1e-8)
    # Near the ends: close to the end values, and equal to the float64 JSD(β) / (β (1 − β))
    # at the float32 value of β (float32 holds 1 − 1e-6 only to ~6%).
    for near, end in ((1e-6, 0.0), (1.0 - 1e-6, 1.0)):
        np.testing.assert_allclose(results[near][0], results[end][0], rtol=1e-4)
        np.testing.assert_allclose(results[near][1], results[end][1], rtol=1e-3, atol=1e-6)
        expected = ref_generalized_jsd(s, t, beta=float(np.float32(near)))[MASK].mean()
        np.testing.assert_allclose(results[near][0], expected, rtol=1e-5)
    expected = ref_generalized_jsd(s, t, beta=0.5)[MASK].mean()
    np.testing.assert_allclose(results[0.5][0], expected, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_unnormalized_generalized_jsd_matches_trl_inside_and_vanishes_at_the_ends(chunk_size):
    s, t = make_inputs(SHAPE, seed=12)

    def jsd(beta, normalize):
        return weighted_value_and_grad(
            generalized_jsd, s, t, beta, chunk_size=chunk_size, normalize=normalize
        )

    for beta in (0.0, 1.0):
        value, grad = jsd(beta, False)
        np.testing.assert_allclose(value, 0.0, atol=1e-7)
        np.testing.assert_allclose(grad, 0.0, atol=1e-7)
    for beta in (1e-6, 1.0 - 1e-6):
        assert 0.0 <= jsd(beta, False)[0] < 1e-4
    # TRL's generalized_jsd_loss inside (0, 1): β KL(p_T ‖ m) + (1 − β) KL(p_S ‖ m).
    for beta in (0.1, 0.5, 0.9):
        value, _ = jsd(beta, False)
        np.testing.assert_allclose(value, ref_jsd(s, t, beta=beta)[MASK].mean(), rtol=1e-5)
        np.testing.assert_allclose(jsd(beta, True)[0], value / (beta * (1 - beta)), rtol=1e-5)
    # JSD(β) is at most the entropy of Bernoulli(β).
    assert jsd(0.5, False)[0] < np.log(2.0)


def test_generalized_jsd_ends_are_finite_for_padded_vocabulary_and_traced_beta():
    s, t = make_inputs(SHAPE, seed=13)
    pad = np.full((*SHAPE[:2], 2), -np.inf, np.float32)
    s_pad, t_pad = np.concatenate([s, pad], -1), np.concatenate([t, pad], -1)
    grad_beta = jax.jit(jax.grad(lambda b: generalized_jsd(s_pad, t_pad, beta=b)))
    for beta in BETAS:
        value, grad = weighted_value_and_grad(generalized_jsd, s_pad, t_pad, beta, chunk_size=3)
        expected, _ = weighted_value_and_grad(generalized_jsd, s, t, beta, chunk_size=3)
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-9)
        assert np.all(np.isfinite(grad))
        assert np.isfinite(grad_beta(jnp.float32(beta)))


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_skew_kls_are_plain_kls_at_alpha_0_and_zero_at_alpha_1(chunk_size):
    s, t = make_inputs(SHAPE, scale=1.0, seed=14)
    for skew, ref in ((skew_forward_kl, ref_forward_kl), (skew_reverse_kl, ref_reverse_kl)):
        plain = ref(s, t)[MASK].mean()
        for alpha in (0.0, 1e-6):
            value, _ = weighted_value_and_grad(skew, s, t, alpha, chunk_size=chunk_size)
            np.testing.assert_allclose(value, plain, rtol=1e-4)
        for alpha in (1.0, 1.0 - 1e-6):
            value, grad = weighted_value_and_grad(skew, s, t, alpha, chunk_size=chunk_size)
            np.testing.assert_allclose(value, 0.0, atol=1e-5)
            assert np.all(np.isfinite(grad))


def test_generalized_jsd_normalize_must_be_a_python_bool():
    s, t = make_inputs((1, 2, 3))
    with pytest.raises(TypeError, match="`normalize`"):
        generalized_jsd(s, t, normalize=jnp.bool_(True))
