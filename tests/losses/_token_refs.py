"""Float64 NumPy references and shared fixtures for the token-level loss tests.

The references transcribe the papers' definitions (GKD Eq. 1, DistiLLM's α-SKL / α-SRKL,
total variation) independently of the JAX code: plain `Σ p (log p − log q)` sums, with the
mixture's log taken by `np.logaddexp`.
"""

import functools

import jax
import numpy as np

from jaxkd.losses import (
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    total_variation,
)

# ----------------------------------------------------------------------------------------
# float64 NumPy references (per-token values)


def np_log_softmax(x):
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def np_kl(log_p, log_q):
    """Σ p (log p − log q) with 0 · log 0 = 0, from log-probabilities."""
    p = np.exp(log_p)
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def np_log_mix(w, log_p, log_q):
    """log(w p + (1 − w) q)."""
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log(w) + log_p, np.log1p(-w) + log_q)


def log_probs(s, t, temperature):
    return np_log_softmax(s / temperature), np_log_softmax(t / temperature)


def ref_forward_kl(s, t, *, temperature=1.0):
    log_s, log_t = log_probs(s, t, temperature)
    return np_kl(log_t, log_s)


def ref_reverse_kl(s, t, *, temperature=1.0):
    log_s, log_t = log_probs(s, t, temperature)
    return np_kl(log_s, log_t)


def ref_jsd(s, t, *, beta, temperature=1.0):
    """GKD's JSD(β) = β KL(p_T ‖ m) + (1 − β) KL(p_S ‖ m), m = β p_T + (1 − β) p_S."""
    log_s, log_t = log_probs(s, t, temperature)
    log_m = np_log_mix(beta, log_t, log_s)
    return beta * np_kl(log_t, log_m) + (1 - beta) * np_kl(log_s, log_m)


def ref_generalized_jsd(s, t, *, beta, temperature=1.0):
    """The default, normalised form JSD(β) / (β (1 − β)) for 0 < β < 1."""
    return ref_jsd(s, t, beta=beta, temperature=temperature) / (beta * (1 - beta))


def ref_skew_forward_kl(s, t, *, alpha, temperature=1.0):
    log_s, log_t = log_probs(s, t, temperature)
    return np_kl(log_t, np_log_mix(alpha, log_t, log_s))


def ref_skew_reverse_kl(s, t, *, alpha, temperature=1.0):
    log_s, log_t = log_probs(s, t, temperature)
    return np_kl(log_s, np_log_mix(alpha, log_s, log_t))


def ref_total_variation(s, t, *, temperature=1.0):
    log_s, log_t = log_probs(s, t, temperature)
    return 0.5 * np.abs(np.exp(log_t) - np.exp(log_s)).sum(axis=-1)


# name -> (loss, reference, hyperparameters used by the generic tests)
LOSSES = {
    "forward_kl": (forward_kl, ref_forward_kl, {"temperature": 2.0}),
    "reverse_kl": (reverse_kl, ref_reverse_kl, {"temperature": 2.0}),
    "generalized_jsd": (generalized_jsd, ref_generalized_jsd, {"beta": 0.3, "temperature": 2.0}),
    "skew_forward_kl": (skew_forward_kl, ref_skew_forward_kl, {"alpha": 0.1, "temperature": 2.0}),
    "skew_reverse_kl": (skew_reverse_kl, ref_skew_reverse_kl, {"alpha": 0.1, "temperature": 2.0}),
    "total_variation": (total_variation, ref_total_variation, {"temperature": 2.0}),
}
NAMES = list(LOSSES)


def call(name, s, t, **overrides):
    fn, _, hyper = LOSSES[name]
    return fn(s, t, **{**hyper, **overrides})


def reference(name, s, t, **overrides):
    _, ref, hyper = LOSSES[name]
    return ref(np.asarray(s, np.float64), np.asarray(t, np.float64), **{**hyper, **overrides})


@functools.partial(jax.jit, static_argnums=0, static_argnames=("chunk_size", "reduction"))
def jitted(name, s, t, chunk_size=None, reduction="mean", **overrides):
    return call(name, s, t, chunk_size=chunk_size, reduction=reduction, **overrides)


@functools.partial(jax.jit, static_argnums=0, static_argnames="chunk_size")
def value_and_grads(name, s, t, mask=None, chunk_size=None):
    """Loss value and its gradients w.r.t. both logit arrays and the temperature."""

    def f(a, b, temperature):
        return call(name, a, b, mask=mask, chunk_size=chunk_size, temperature=temperature)

    return jax.value_and_grad(f, argnums=(0, 1, 2))(s, t, LOSSES[name][2]["temperature"])


def make_inputs(shape, scale=3.0, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    s = (scale * rng.standard_normal(shape)).astype(dtype)
    t = (scale * rng.standard_normal(shape)).astype(dtype)
    return s, t


def make_mask(shape, seed=1):
    mask = np.random.default_rng(seed).random(shape) < 0.7
    mask.flat[0] = True
    return mask


# Most tests share one shape, mask and pair of chunk settings, so that the jitted functions
# compile once per loss. 10 tokens in chunks of 3: the last chunk is shifted back by 2.
SHAPE = (2, 5, 7)
MASK = make_mask(SHAPE[:2])
CHUNKS = [None, 3]
