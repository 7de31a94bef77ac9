"""Batch-relational logit distillation: DIST's correlation losses.

DIST compares how the student ranks classes within each example (inter-class relation)
and how it ranks examples within each class (intra-class relation). The second term
correlates whole columns of the batch, so the loss has no per-example form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses._checks import reduce, to_float32
from jaxkd.losses.logits import check_logit_pair, check_positive

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["dist"]

# Added to the product of norms, as in the official code. It matters for nearly uniform
# predictions, whose centred vectors are tiny, so it is kept rather than approximated.
_EPS = 1e-8


def _pearson(y_s: Array, y_t: Array, valid: Array, axis: int) -> Array:
    """Pearson correlation along `axis` over the `valid` entries only.

    `a · b / (|a| |b| + eps)` of the centred vectors, exactly the official formula (so not
    `optax.losses.cosine_similarity`, which floors each norm instead); `optax.safe_norm`
    keeps the gradient finite when a centred vector is zero (a uniform prediction).
    """

    def centred(y: Array) -> Array:
        count = jnp.maximum(jnp.sum(valid, axis=axis, keepdims=True), 1)
        mean = jnp.sum(jnp.where(valid, y, 0.0), axis=axis, keepdims=True) / count
        return jnp.where(valid, y - mean, 0.0)

    a, b = centred(y_s), centred(y_t)
    norms = optax.safe_norm(a, 0.0, axis=axis) * optax.safe_norm(b, 0.0, axis=axis)
    return jnp.sum(a * b, axis=axis) / (norms + _EPS)


def dist(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    beta: ArrayLike = 1.0,
    gamma: ArrayLike = 1.0,
    temperature: ArrayLike = 1.0,
    mask: ArrayLike | None = None,
    reduction: str = "mean",
) -> Array:
    """DIST: match the teacher's class and example correlations, not its probabilities.

    With `Y = softmax(z / T)` as an `[N, C]` matrix (all leading dimensions flattened into
    `N` rows, as the official segmentation code flattens pixels) and `ρ` the Pearson
    correlation:
    `inter = mean_i (1 − ρ(Y_s[i, :], Y_t[i, :]))` over valid examples,
    `intra = mean_c (1 − ρ(Y_s[:, c], Y_t[:, c]))` over classes, correlating valid rows,
    `loss = T² · (β · inter + γ · intra)`.
    This is the official `DIST` module with its `tau`: correlations computed as
    `a · b / (|a| |b| + 1e-8)` of mean-centred vectors, `T²` on both terms. The official
    ImageNet setting is `β = γ = T = 1` with loss weight 1. Padded classes (teacher logit
    `-inf`) are left out of both correlations, so padding a vocabulary changes nothing.

    The intra-class term correlates each class across the batch: the loss depends on which
    examples share a batch, has no per-example value, and a batch of one valid example has
    `intra = 1` whatever the logits. `mask` removes examples from both terms; only
    `reduction="mean"` exists.

    Args:
      student_logits: `[..., C]` floating logits of the student (rank >= 2).
      teacher_logits: `[..., C]` floating logits of the teacher, same shape.
      beta: weight of the inter-class relation term (may be traced).
      gamma: weight of the intra-class relation term (may be traced).
      temperature: softmax temperature `T > 0` (may be traced).
      mask: optional `[...]` array, nonzero for valid examples.
      reduction: must be "mean"; accepted so callers can pass it uniformly.

    Returns:
      A float32 scalar.

    References:
      Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher",
      NeurIPS 2022.
    """
    check_logit_pair(student_logits, teacher_logits, mask, min_rank=2)
    if reduction != "mean":
        raise ValueError(
            "`dist` is batch-relational (its intra-class term correlates each class across "
            f"the batch) and has no per-example form: `reduction` must be 'mean', got "
            f"{reduction!r}."
        )
    check_positive(temperature, "temperature")
    num_classes = jnp.shape(student_logits)[-1]
    s = jnp.reshape(to_float32(student_logits), (-1, num_classes))
    t = jnp.reshape(to_float32(teacher_logits), (-1, num_classes))
    y_s = jax.nn.softmax(s / temperature, axis=-1)
    y_t = jax.nn.softmax(t / temperature, axis=-1)

    rows = jnp.ones(s.shape[:1], bool) if mask is None else jnp.reshape(mask, (-1,)) != 0
    valid = rows[:, None] & ~jnp.isneginf(t)

    inter = reduce(1.0 - _pearson(y_s, y_t, valid, axis=-1), rows, "mean")
    class_present = jnp.any(valid, axis=0)
    intra_per_class = jnp.where(class_present, 1.0 - _pearson(y_s, y_t, valid, axis=0), 0.0)
    intra = jnp.sum(intra_per_class) / jnp.maximum(jnp.sum(class_present), 1)
    return temperature**2 * (beta * inter + gamma * intra)
