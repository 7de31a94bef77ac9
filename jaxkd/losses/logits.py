"""Logit-level distillation losses for classification logits `[..., num_classes]`.

Every loss here compares the class distributions of a student and a teacher, so both logit
arrays must have the same shape. Leading dimensions are examples (a `[B, C]` batch, or
`[B, L, C]` for per-position classification); `mask` and `labels` have the leading shape.

Conventions shared by the module:

- Log-probabilities come from `jax.nn.log_softmax` on float32 (half-precision inputs are
  promoted first), so logits of magnitude 1e4 are exact enough and never overflow.
- A `-inf` logit marks a padded class (e.g. a padded vocabulary). When student and teacher
  are `-inf` at the same entries the losses equal those of the unpadded logits, and values
  and gradients stay finite.
- Gradients flow into both arguments; freezing the teacher is the caller's job (the
  engine never differentiates it).
- Hyperparameters may be traced scalars (schedules); only `reduction` is static.

The plain cross-entropy against hard labels or soft targets is not repeated here: use
`optax.losses.softmax_cross_entropy_with_integer_labels` and
`optax.losses.softmax_cross_entropy`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses._checks import (
    Reduction,
    check_floating,
    check_labels,
    check_mask,
    check_rank,
    check_reduction,
    check_same_shape,
    reduce,
    to_float32,
)

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = ["dkd", "kd", "kd_with_labels", "logit_standardized_kd", "pseudo_label"]


def check_logit_pair(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    mask: ArrayLike | None,
    *,
    min_rank: int = 1,
    min_classes: int = 1,
) -> None:
    """Trace-time checks shared by the logit losses (dtype, rank, shapes, mask)."""
    check_floating(student_logits, "student_logits")
    check_floating(teacher_logits, "teacher_logits")
    check_rank(student_logits, "student_logits", min_rank=min_rank)
    check_same_shape(student_logits, teacher_logits)
    num_classes = jnp.shape(student_logits)[-1]
    if num_classes < min_classes:
        raise ValueError(
            f"`student_logits` must have at least {min_classes} classes in its last axis, got "
            f"student_logits.shape={tuple(jnp.shape(student_logits))}."
        )
    check_mask(mask, jnp.shape(student_logits)[:-1])


def check_positive(value: ArrayLike, name: str) -> None:
    """Rejects a non-positive Python number; traced values cannot be checked and pass."""
    if isinstance(value, int | float) and not value > 0:
        raise ValueError(f"`{name}` must be positive, got {name}={value!r}.")


def log_probs(logits: ArrayLike, temperature: ArrayLike = 1.0) -> Array:
    """float32 (or wider) `log softmax(logits / temperature)` over the last axis."""
    return jax.nn.log_softmax(to_float32(logits) / temperature, axis=-1)


def kl_rows(log_p_student: Array, log_p_teacher: Array) -> Array:
    """`KL(p_teacher ‖ p_student)` over the last axis, safe for `-inf` teacher entries.

    Entries where the teacher has zero probability contribute nothing. They are replaced by
    0 in both arguments before optax sees them: `0 · (-inf - (-inf))` would be NaN in the
    forward pass and masking the sum alone still back-propagates NaN through that product.
    """
    support = ~jnp.isneginf(log_p_teacher)
    log_p_teacher = jnp.where(support, log_p_teacher, 0.0)
    log_p_student = jnp.where(support, log_p_student, 0.0)
    return optax.losses.kl_divergence_with_log_targets(log_p_student, log_p_teacher, axis=-1)


def _soft_target_kl(
    student_logits: ArrayLike, teacher_logits: ArrayLike, temperature: ArrayLike
) -> Array:
    """Per-example `T² · KL(softmax(t / T) ‖ softmax(s / T))`, Hinton's soft-target term."""
    return temperature**2 * kl_rows(
        log_probs(student_logits, temperature), log_probs(teacher_logits, temperature)
    )


def kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 4.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> Array:
    """Soft-target knowledge distillation: temperature-scaled KL from teacher to student.

    `loss_i = T² · KL(softmax(t_i / T) ‖ softmax(s_i / T))
            = T² · Σ_c p_t,c (log p_t,c − log p_s,c)`,
    then the mean over valid examples. This is torchdistill's and RepDistiller's scaling
    (`kl_div(..., reduction="batchmean") · T²`: a sum over classes, a mean over examples);
    the `T²` keeps gradient magnitudes comparable across temperatures (Hinton et al. §2).

    Args:
      student_logits: `[..., C]` floating logits of the student.
      teacher_logits: `[..., C]` floating logits of the teacher, same shape.
      temperature: softmax temperature `T > 0` (may be a traced scalar).
      mask: optional `[...]` array, nonzero for valid examples.
      reduction: "mean" over valid examples, "sum", or "none" for the `[...]` per-example
        values (zero where masked).

    Returns:
      A float32 scalar (or `[...]` array for reduction="none"); float64 for float64 inputs.

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    check_logit_pair(student_logits, teacher_logits, mask)
    check_reduction(reduction)
    check_positive(temperature, "temperature")
    return reduce(_soft_target_kl(student_logits, teacher_logits, temperature), mask, reduction)


def kd_with_labels(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike,
    temperature: ArrayLike,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> Array:
    """Hinton's mix of hard-label cross-entropy and soft-target distillation.

    `loss_i = α · CE(s_i, y_i) + (1 − α) · T² · KL(softmax(t_i / T) ‖ softmax(s_i / T))`,
    then the mean over valid examples; the cross-entropy uses the raw (temperature 1)
    student logits. This is torchdistill's `KDLoss` (`α · CE + β · T² · KL_batchmean` with
    its default `β = 1 − α`). One deliberate difference: torchdistill returns the bare KL
    without `T²` when `α = 0` (or no targets are given), a jump in scale; here `α = 0` is
    exactly `kd(...)` and the loss is continuous in `α`. For independent weights call
    `kd` and `optax.losses.softmax_cross_entropy_with_integer_labels` separately.

    Args:
      student_logits: `[..., C]` floating logits of the student.
      teacher_logits: `[..., C]` floating logits of the teacher, same shape.
      labels: `[...]` integer class ids in `[0, C)`.
      alpha: weight of the hard-label cross-entropy, usually in `[0, 1]` (may be traced).
      temperature: softmax temperature `T > 0` of the distillation term (may be traced).
      mask: optional `[...]` array, nonzero for valid examples.
      reduction: "mean" over valid examples, "sum", or "none" for per-example values.

    Returns:
      A float32 scalar (or `[...]` array for reduction="none").

    References:
      Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    check_logit_pair(student_logits, teacher_logits, mask)
    check_labels(labels, jnp.shape(student_logits)[:-1])
    check_reduction(reduction)
    check_positive(temperature, "temperature")
    hard = optax.losses.softmax_cross_entropy_with_integer_labels(
        to_float32(student_logits), jnp.asarray(labels)
    )
    soft = _soft_target_kl(student_logits, teacher_logits, temperature)
    return reduce(alpha * hard + (1.0 - alpha) * soft, mask, reduction)


def _split_target(scaled_logits: Array, is_target: Array) -> tuple[Array, Array]:
    """Binary (target, rest) log-probabilities and the log-distribution over the rest.

    `log p_rest` is a logsumexp over the non-target log-probabilities rather than
    `log(1 − p_target)`, which is `-inf` once `p_target` rounds to 1; the non-target
    distribution is a log-softmax over the non-target logits, not a difference of two
    large log-probabilities.
    """
    others = jnp.where(is_target, -jnp.inf, scaled_logits)
    # When every non-target class is padded, the rest has probability 0 and an empty
    # distribution: keep those -inf (they contribute nothing) instead of reducing over
    # all -inf entries, whose logsumexp and log-softmax have NaN gradients.
    has_others = jnp.any(~jnp.isneginf(others), axis=-1, keepdims=True)
    log_p = jax.nn.log_softmax(scaled_logits, axis=-1)
    log_p_target = jnp.sum(jnp.where(is_target, log_p, 0.0), axis=-1)
    log_p_others = jnp.where(is_target, -jnp.inf, log_p)
    log_p_rest = jax.nn.logsumexp(jnp.where(has_others, log_p_others, 0.0), axis=-1)
    log_p_rest = jnp.where(has_others[..., 0], log_p_rest, -jnp.inf)
    binary = jnp.stack([log_p_target, log_p_rest], axis=-1)
    nontarget = jax.nn.log_softmax(jnp.where(has_others, others, 0.0), axis=-1)
    return binary, jnp.where(has_others, nontarget, -jnp.inf)


def dkd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    labels: ArrayLike,
    *,
    alpha: ArrayLike = 1.0,
    beta: ArrayLike = 8.0,
    temperature: ArrayLike = 4.0,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> Array:
    """Decoupled knowledge distillation: target-class and non-target-class KD terms.

    With `p = softmax(z / T)` and target class `y`:
    `b = (p_y, 1 − p_y)` (binary target-vs-rest probabilities) and
    `p̂_c = p_c / (1 − p_y)` for `c ≠ y` (the distribution over non-target classes);
    `TCKD_i = KL(b_t ‖ b_s)`, `NCKD_i = KL(p̂_t ‖ p̂_s)`,
    `loss_i = T² · (α · TCKD_i + β · NCKD_i)`, then the mean over valid examples.
    Plain KD decomposes as `KL(p_t ‖ p_s) = TCKD + (1 − p_t,y) · NCKD` (Zhao et al. Eq. 5).

    Scaling follows mdistiller's `dkd_loss` (sum over classes, `· T² / batch`). mdistiller
    builds `p̂` as `softmax(z / T − 1000 · onehot(y))`; here the target class is removed
    exactly (`-inf`) and `1 − p_y` is a logsumexp over the other classes, so the values are
    the same on ordinary inputs (the offset leaves `e^-1000 ≈ 0` target mass) but stay
    right when `|z / T|` exceeds 1000 and when `p_y` rounds to 1. mdistiller's epoch
    warm-up factor `min(epoch / warmup, 1)` is not part of the loss: schedule the weight of
    this term in the objective instead.

    Args:
      student_logits: `[..., C]` floating logits of the student, `C >= 2`.
      teacher_logits: `[..., C]` floating logits of the teacher, same shape.
      labels: `[...]` integer target class ids in `[0, C)`.
      alpha: weight of TCKD (mdistiller: 1.0; may be traced).
      beta: weight of NCKD (mdistiller: 8.0 on CIFAR-100, 0.5 on ImageNet; may be traced).
      temperature: softmax temperature `T > 0` (mdistiller: 4.0 on CIFAR-100, 1.0 on ImageNet).
      mask: optional `[...]` array, nonzero for valid examples.
      reduction: "mean" over valid examples, "sum", or "none" for per-example values.

    Returns:
      A float32 scalar (or `[...]` array for reduction="none").

    References:
      Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.
    """
    check_logit_pair(student_logits, teacher_logits, mask, min_classes=2)
    check_labels(labels, jnp.shape(student_logits)[:-1])
    check_reduction(reduction)
    check_positive(temperature, "temperature")
    is_target = jax.nn.one_hot(labels, jnp.shape(student_logits)[-1], dtype=jnp.bool_)
    binary_s, rest_s = _split_target(to_float32(student_logits) / temperature, is_target)
    binary_t, rest_t = _split_target(to_float32(teacher_logits) / temperature, is_target)
    tckd = kl_rows(binary_s, binary_t)
    nckd = kl_rows(rest_s, rest_t)
    return reduce(temperature**2 * (alpha * tckd + beta * nckd), mask, reduction)


def _standardize(logits: ArrayLike, eps: ArrayLike) -> Array:
    """Z-scores each row over its non-padded classes; padded (`-inf`) entries stay `-inf`.

    The standard deviation is the unbiased one (`ddof = 1`), as `torch.Tensor.std` in the
    official code; its gradient is kept finite for constant rows, where sqrt'(0) is inf.
    """
    x = to_float32(logits)
    present = ~jnp.isneginf(x)
    count = jnp.sum(present, axis=-1, keepdims=True)
    x = jnp.where(present, x, 0.0)
    mean = jnp.sum(x, axis=-1, keepdims=True) / jnp.maximum(count, 1)
    centred = jnp.where(present, x - mean, 0.0)
    var = jnp.sum(jnp.square(centred), axis=-1, keepdims=True) / jnp.maximum(count - 1, 1)
    positive = var > 0
    std = jnp.where(positive, jnp.sqrt(jnp.where(positive, var, 1.0)), 0.0)
    return jnp.where(present, centred / (eps + std), -jnp.inf)


def logit_standardized_kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 2.0,
    eps: ArrayLike = 1e-7,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> Array:
    """KD on z-scored logits, so the student matches logit relations, not their scale.

    `Z(z) = (z − mean_c(z)) / (eps + std_c(z))` per example (std with `ddof = 1`), then
    `loss_i = T² · KL(softmax(Z(t_i) / T) ‖ softmax(Z(s_i) / T))` and the mean over valid
    examples. `T` is the paper's base temperature: the effective per-example temperature is
    `T · std(z)`. Scaling and `eps = 1e-7` follow the official code (mdistiller-based
    `kd_loss` with `logit_stand=True`: `kl_div(...).sum(1).mean() · T²`), which pairs
    `T = 2` with a loss weight of 9 on CIFAR-100. The loss is invariant to adding a
    per-example constant to, or positively rescaling, either model's logits. Padded
    (`-inf`) classes are left out of the mean and std.

    Args:
      student_logits: `[..., C]` floating logits of the student, `C >= 2`.
      teacher_logits: `[..., C]` floating logits of the teacher, same shape.
      temperature: base temperature `T > 0` (may be a traced scalar).
      eps: added to the standard deviation before dividing.
      mask: optional `[...]` array, nonzero for valid examples.
      reduction: "mean" over valid examples, "sum", or "none" for per-example values.

    Returns:
      A float32 scalar (or `[...]` array for reduction="none").

    References:
      Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024.
    """
    check_logit_pair(student_logits, teacher_logits, mask, min_classes=2)
    check_reduction(reduction)
    check_positive(temperature, "temperature")
    z_student = _standardize(student_logits, eps)
    z_teacher = _standardize(teacher_logits, eps)
    return reduce(_soft_target_kl(z_student, z_teacher, temperature), mask, reduction)


def pseudo_label(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> Array:
    """Hard pseudo-label distillation: cross-entropy against the teacher's top class.

    `loss_i = −log softmax(s_i)[argmax_c t_i,c]`, then the mean over valid examples. This
    is self-training on teacher-labelled data (the zero-temperature limit of the soft
    targets): the student sees only the teacher's decision, not its confidence. The teacher
    gets no gradient (argmax is piecewise constant).

    Args:
      student_logits: `[..., C]` floating logits of the student.
      teacher_logits: `[..., C]` floating logits of the teacher, same shape.
      mask: optional `[...]` array, nonzero for valid examples.
      reduction: "mean" over valid examples, "sum", or "none" for per-example values.

    Returns:
      A float32 scalar (or `[...]` array for reduction="none").

    References:
      Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for Deep
      Neural Networks", ICML 2013 workshop; Xie et al., "Self-training with Noisy Student
      improves ImageNet classification", CVPR 2020 (hard-label variant).
    """
    check_logit_pair(student_logits, teacher_logits, mask)
    check_reduction(reduction)
    targets = jnp.argmax(jnp.asarray(teacher_logits), axis=-1)
    per_example = -jnp.take_along_axis(
        log_probs(student_logits), targets[..., None], axis=-1
    ).squeeze(-1)
    return reduce(per_example, mask, reduction)
