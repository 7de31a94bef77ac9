"""Log-space building blocks for the token-level losses (row-wise over the last axis).

Every function here gives finite values and finite gradients when some vocabulary entries are
`-inf` (a padded vocabulary, e.g. 151,936 real ids inside 152,064 logits): `-inf`
log-probabilities are raised to `LOG_FLOOR`, whose exponential is exactly 0 in float32 and
float64, so `0 · log 0` terms and their gradients are 0 instead of NaN, without a
double-`where` at every use.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses._checks import to_float32

# Finite stand-in for log 0: exp(LOG_FLOOR) == 0 and sums of two floors stay finite in float32.
LOG_FLOOR = -1e30
# Above this log-ratio, m / p is computed as exp(log m) - p rather than p * expm1(r).
_FAR = 30.0
_LOG_HALF = -math.log(2.0)


def floor_log(log_p: jax.Array) -> jax.Array:
    """Replaces -inf log-probabilities by the finite `LOG_FLOOR` (gradient 0 there)."""
    return jnp.maximum(log_p, LOG_FLOOR)


def log_probs(logits: jax.Array, temperature: jax.typing.ArrayLike) -> jax.Array:
    """Float32 (or float64) `log_softmax(logits / temperature)` over the last axis."""
    logits = to_float32(logits)
    # -inf / T has gradient inf w.r.t. T; keeping those entries out of the division keeps
    # the temperature's gradient finite for a padded vocabulary.
    padded = logits == -jnp.inf
    scaled = jnp.where(padded, -jnp.inf, jnp.where(padded, 0.0, logits) / temperature)
    return jax.nn.log_softmax(scaled, axis=-1)


def safe_log(w: jax.typing.ArrayLike) -> jax.Array:
    """`log(w)` for a weight in [0, 1], with `LOG_FLOOR` (and a zero gradient) at w = 0."""
    w = jnp.asarray(w)
    positive = w > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, w, 1.0)), LOG_FLOOR)


def safe_log1m(w: jax.typing.ArrayLike) -> jax.Array:
    """`log(1 - w)` for a weight in [0, 1], with `LOG_FLOOR` (and a zero gradient) at w = 1."""
    w = jnp.asarray(w)
    below_one = w < 1
    return jnp.where(below_one, jnp.log1p(-jnp.where(below_one, w, 0.0)), LOG_FLOOR)


def log1mexp(x: jax.Array) -> jax.Array:
    """`log(1 - exp(x))` for `x <= 0` (Mächler's two-branch form); x >= 0 gives ~log(1e-30)."""
    x = jnp.minimum(x, -1e-30)
    near_zero = x > _LOG_HALF
    # Each branch only ever sees inputs where it is finite, so unselected gradients stay 0.
    x_near = jnp.where(near_zero, x, _LOG_HALF)
    x_far = jnp.where(near_zero, _LOG_HALF, x)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(x_near)), jnp.log1p(-jnp.exp(x_far)))


def kl_rows(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    """`KL(p ‖ q) = Σ p (log p − log q)` per row from log-probabilities (optax's kernel)."""
    return optax.losses.kl_divergence_with_log_targets(floor_log(log_q), floor_log(log_p))


def kl_to_mixture(
    log_p: jax.Array,
    log_q: jax.Array,
    log_w_p: jax.typing.ArrayLike,
    log_w_q: jax.typing.ArrayLike,
) -> jax.Array:
    """`KL(p ‖ m)` per row for the mixture `m = w_p·p + w_q·q` (w_p + w_q = 1).

    Computed as `Σ p·(e^r − 1 − r)` with `r = log(m / p)`: the added terms `m − p` sum to 0,
    and every summand is non-negative and second order in `r`. This keeps the value accurate
    when the mixture is within a factor 1e-6 of `p` (so that `KL(p ‖ m) / w_q` is accurate
    as `w_q → 0`, which `generalized_jsd` relies on), where `Σ p·(log p − log m)` would be
    dominated by float32 rounding. A weight of 0 is passed as `LOG_FLOOR`.
    """
    log_p, log_q = floor_log(log_p), floor_log(log_q)
    log_w_p, log_w_q = floor_log(jnp.asarray(log_w_p)), floor_log(jnp.asarray(log_w_q))
    log_ratio = jnp.logaddexp(log_w_p, log_w_q + (log_q - log_p))
    near = log_ratio < _FAR
    r_near = jnp.where(near, log_ratio, 0.0)
    p = jnp.exp(log_p)
    near_terms = p * (jnp.expm1(r_near) - r_near)
    # m >> p (including p == 0): m − p − p·r, with m taken from its own log for precision.
    log_m = jnp.logaddexp(log_w_p + log_p, log_w_q + log_q)
    far_terms = jnp.exp(log_m) - p * (1.0 + log_ratio)
    return jnp.sum(jnp.where(near, near_terms, far_terms), axis=-1)
