"""Per-example weights and multi-teacher soft targets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks
from jaxkd.objective.outputs import Outputs, pick_teacher

# (student_out, teacher_out, batch) -> [B] non-negative weights.
ExampleWeight = Callable[[Outputs, Any, Mapping[str, jax.Array]], jax.Array]


def ensemble_logits(
    logits: Sequence[jax.typing.ArrayLike],
    weights: Sequence[float] | jax.typing.ArrayLike,
    temperature: jax.typing.ArrayLike = 1.0,
) -> jax.Array:
    """Logits whose softmax at `temperature` is the weighted mean of the teachers' softmaxes.

    `z = T · log Σ_i w_i softmax(z_i / T)` with `w` normalized to sum to 1, so that
    `softmax(z / T) = Σ_i w_i softmax(z_i / T)` exactly: feeding `z` to a loss that applies
    temperature `T` distills from the averaged soft targets. Computed in log space.

    Args:
      logits: one `[..., C]` logits array per teacher, all the same shape.
      weights: one non-negative weight per teacher.
      temperature: the temperature `T` the consuming loss applies (may be traced).

    Returns:
      `[..., C]` float32 ensemble logits.

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015 (§3,
      ensembles); You et al., "Learning from Multiple Teacher Networks", KDD 2017.
    """
    if len(logits) == 0:
        raise ValueError("`logits` must hold at least one teacher's logits.")
    shapes = {tuple(jnp.shape(z)) for z in logits}
    if len(shapes) != 1:
        raise ValueError(f"all teacher `logits` must have the same shape, got {sorted(shapes)}.")
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape != (len(logits),):
        raise ValueError(
            f"`weights` must have one entry per teacher ({len(logits)}), got shape "
            f"{tuple(weights.shape)}."
        )
    weights = weights / jnp.sum(weights)
    log_p = jnp.stack([jax.nn.log_softmax(_checks.to_float32(z) / temperature) for z in logits])
    scale = weights.reshape((-1,) + (1,) * (log_p.ndim - 1))
    return temperature * jax.nn.logsumexp(log_p, axis=0, b=scale)


def teacher_confidence(teacher: str | None = None, power: float = 1.0) -> ExampleWeight:
    """Weights each example by the teacher's top-1 probability: `w_b = max_c p_t(c | x_b)^power`.

    Examples the teacher is unsure about (hard or mislabeled ones) count less; `power = 0`
    gives uniform weights.

    Args:
      teacher: which teacher (for `{name: Outputs}` teacher outputs); None for the only one.
      power: exponent applied to the confidence.

    Returns:
      An example-weight function for `Term(example_weight=...)` or `Objective(...)`.

    References:
      Zhou et al., "Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance
      Tradeoff Perspective", ICLR 2021 (per-example weighting of distillation).
    """

    def weight(student_out: Outputs, teacher_out: Any, batch: Mapping[str, jax.Array]):
        del student_out, batch
        logits = pick_teacher(teacher_out, teacher, "teacher_confidence").logits
        confidence = jnp.max(jax.nn.softmax(_checks.to_float32(logits), axis=-1), axis=-1)
        return confidence**power

    return weight


def source_weights(weights: Sequence[float], key: str = "source_id") -> ExampleWeight:
    """Weights each example by its source (task, dataset) id: `w_b = weights[batch[key][b]]`.

    Args:
      weights: one weight per source id `0..len(weights)-1`.
      key: the batch entry holding the int `[B]` source ids.

    Returns:
      An example-weight function.

    References:
      None: a plain per-source reweighting of the loss (e.g. for data mixtures).
    """
    table = jnp.asarray(weights, jnp.float32)
    if table.ndim != 1 or table.shape[0] == 0:
        raise ValueError(f"`weights` must be a non-empty list, got shape {tuple(table.shape)}.")

    def weight(student_out: Outputs, teacher_out: Any, batch: Mapping[str, jax.Array]):
        del student_out, teacher_out
        if key not in batch:
            raise ValueError(f"source_weights needs batch[{key!r}]; batch keys: {sorted(batch)}.")
        return table[batch[key]]

    return weight


def weighted_mean(
    values: jax.Array, weights: jax.Array, mask: jax.Array | None, term: str
) -> jax.Array:
    """Weighted mean of per-example loss values: `Σ_b w_b · v_b / Σ_b m_b`.

    Dividing by the number of valid entries (not by `Σ w`) keeps the scale of the unweighted
    mean: weights of 1 give exactly the loss's own "mean" reduction, and a batch of
    low-weight examples contributes less, which is the point of weighting by difficulty.
    Token losses (`values` `[B, L]`) broadcast the `[B]` weights over the tokens.

    Args:
      values: `[B, ...]` per-example (or per-token) values from `reduction="none"`.
      weights: `[B]` weights (no gradient flows through them).
      mask: the mask the values were computed with (`[B]` or `[B, L]`), or None.
      term: the term's name, for error messages.

    Returns:
      A scalar.

    References:
      None: importance weighting of the empirical risk.
    """
    values = jnp.asarray(values)
    weights = jax.lax.stop_gradient(jnp.asarray(weights, jnp.float32))
    if values.ndim == 0 or weights.shape != values.shape[:1]:
        raise ValueError(
            f"term {term!r}: per-example weights of shape {tuple(weights.shape)} do not match "
            f"the loss's per-example values of shape {tuple(values.shape)} (reduction='none')."
        )
    weights = weights.reshape(weights.shape + (1,) * (values.ndim - 1))
    total = jnp.sum(values * weights)
    if mask is None:
        count = values.size
    else:
        mask = jnp.asarray(mask, values.dtype)
        mask = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
        count = jnp.sum(jnp.broadcast_to(mask, values.shape))
    return total / jnp.maximum(count, 1)
