"""Token-level divergences between student and teacher LLM logits `[B, L, V]`.

Each loss is a per-token divergence between `p_S = softmax(student / T)` and
`p_T = softmax(teacher / T)`, reduced over the tokens where `mask` `[B, L]` is nonzero (mean
over valid tokens by default, as TRL and DistiLLM do). `chunk_size` bounds memory: see
`jaxkd.losses._chunked`. Vocabulary entries that are `-inf` in both student and teacher (a
padded vocabulary) contribute nothing and get zero gradient.

Unlike `kd`, no `T²` factor is applied, as in TRL's GKD trainer and DistiLLM. DistillKit
multiplies its KL by `T²`; to match it, multiply the loss weight by `T²`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks
from jaxkd.losses._chunked import check_chunk_size, token_loss
from jaxkd.losses._logspace import kl_rows, kl_to_mixture, log_probs, safe_log, safe_log1m

ArrayLike = jax.typing.ArrayLike


def _check_token_logits(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    mask: ArrayLike | None,
    reduction: str,
    chunk_size: int | None,
) -> None:
    _checks.check_floating(student_logits, "student_logits")
    _checks.check_floating(teacher_logits, "teacher_logits")
    _checks.check_rank(student_logits, "student_logits", rank=3)
    _checks.check_rank(teacher_logits, "teacher_logits", rank=3)
    _checks.check_same_shape(student_logits, teacher_logits)
    _checks.check_mask(mask, jnp.shape(student_logits)[:2])
    _checks.check_reduction(reduction)
    check_chunk_size(chunk_size)


def _token_loss(
    rows: Callable[..., jax.Array],
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    params: tuple[ArrayLike, ...],
    mask: ArrayLike | None,
    reduction: _checks.Reduction,
    chunk_size: int | None,
) -> jax.Array:
    _check_token_logits(student_logits, teacher_logits, mask, reduction, chunk_size)
    return token_loss(
        rows,
        params,
        (student_logits, teacher_logits),
        mask=mask,
        reduction=reduction,
        chunk_size=chunk_size,
    )


def _kl_rows(params, student, teacher, *, reverse: bool):
    (temperature,) = params
    log_t, log_s = log_probs(teacher, temperature), log_probs(student, temperature)
    # Forward KL(p_T ‖ p_S), or reverse KL(p_S ‖ p_T).
    return kl_rows(log_s, log_t) if reverse else kl_rows(log_t, log_s)


def _total_variation_rows(params, student, teacher):
    (temperature,) = params
    p_s = jnp.exp(log_probs(student, temperature))
    p_t = jnp.exp(log_probs(teacher, temperature))
    return 0.5 * jnp.sum(jnp.abs(p_t - p_s), axis=-1)


def _skew_kl_rows(params, student, teacher, *, reverse: bool):
    temperature, alpha = params
    log_t, log_s = log_probs(teacher, temperature), log_probs(student, temperature)
    # KL(p ‖ α·p + (1 − α)·q): p = p_T and q = p_S (forward), or p = p_S and q = p_T (reverse).
    log_p, log_q = (log_s, log_t) if reverse else (log_t, log_s)
    return kl_to_mixture(log_p, log_q, safe_log(alpha), safe_log1m(alpha))


def _generalized_jsd_rows(params, student, teacher, *, normalize: bool):
    temperature, beta = params
    log_t, log_s = log_probs(teacher, temperature), log_probs(student, temperature)
    log_beta, log_one_minus_beta = safe_log(beta), safe_log1m(beta)
    kl_teacher = kl_to_mixture(log_t, log_s, log_beta, log_one_minus_beta)  # KL(p_T ‖ m)
    kl_student = kl_to_mixture(log_s, log_t, log_one_minus_beta, log_beta)  # KL(p_S ‖ m)
    if not normalize:
        return beta * kl_teacher + (1.0 - beta) * kl_student
    # kl_student is exactly 0 at beta = 0 and kl_teacher at beta = 1, so dividing by 1 there
    # gives the limits (forward and reverse KL) instead of 0 / 0.
    one_minus_beta = 1.0 - beta
    return kl_teacher / jnp.where(one_minus_beta > 0, one_minus_beta, 1.0) + (
        kl_student / jnp.where(beta > 0, beta, 1.0)
    )


def forward_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    temperature: ArrayLike = 1.0,
    reduction: _checks.Reduction = "mean",
    chunk_size: int | None = None,
) -> jax.Array:
    """Forward (mean-seeking) KL from the teacher to the student, per token.

    `ℓ = KL(p_T ‖ p_S) = Σ_v p_T(v) (log p_T(v) − log p_S(v))`, with `p = softmax(logits / T)`,
    averaged over the tokens where `mask` is nonzero. This is word-level KD for sequences
    (GKD's β = 0 end; DistiLLM's `forward_kl`, which drops the constant teacher entropy).

    Args:
      student_logits: `[B, L, V]` floating logits (bf16/f16 are computed in float32).
      teacher_logits: `[B, L, V]` floating logits, same shape.
      mask: optional `[B, L]`; nonzero marks tokens that count.
      temperature: softmax temperature `T > 0` (may be traced); no `T²` factor.
      reduction: "mean" over valid tokens, "sum", or "none" for per-token `[B, L]` values.
      chunk_size: None, or tokens per chunk to bound the `[B·L, V]` float32 intermediates.

    Returns:
      A float32 scalar (or `[B, L]` for reduction="none").

    References:
      Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016 (word-level KD);
      Agarwal et al., "On-Policy Distillation of Language Models" (GKD), ICLR 2024.
    """
    rows = partial(_kl_rows, reverse=False)
    return _token_loss(
        rows, student_logits, teacher_logits, (temperature,), mask, reduction, chunk_size
    )


def reverse_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    temperature: ArrayLike = 1.0,
    reduction: _checks.Reduction = "mean",
    chunk_size: int | None = None,
) -> jax.Array:
    """Reverse (mode-seeking) KL from the student to the teacher, per token.

    `ℓ = KL(p_S ‖ p_T) = Σ_v p_S(v) (log p_S(v) − log p_T(v))`, `p = softmax(logits / T)`,
    averaged over the tokens where `mask` is nonzero (MiniLLM's token-level objective, GKD's
    β = 1 end, DistiLLM's `reverse_kl`).

    Args:
      student_logits: `[B, L, V]` floating logits (bf16/f16 are computed in float32).
      teacher_logits: `[B, L, V]` floating logits, same shape.
      mask: optional `[B, L]`; nonzero marks tokens that count.
      temperature: softmax temperature `T > 0` (may be traced); no `T²` factor.
      reduction: "mean" over valid tokens, "sum", or "none" for per-token `[B, L]` values.
      chunk_size: None, or tokens per chunk to bound the `[B·L, V]` float32 intermediates.

    Returns:
      A float32 scalar (or `[B, L]` for reduction="none").

    References:
      Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", ICLR 2024.
    """
    rows = partial(_kl_rows, reverse=True)
    return _token_loss(
        rows, student_logits, teacher_logits, (temperature,), mask, reduction, chunk_size
    )


def generalized_jsd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    beta: ArrayLike = 0.5,
    temperature: ArrayLike = 1.0,
    normalize: bool = True,
    reduction: _checks.Reduction = "mean",
    chunk_size: int | None = None,
) -> jax.Array:
    """Generalized Jensen–Shannon divergence of GKD, continuous in β on [0, 1].

    With the mixture `m = β·p_T + (1 − β)·p_S` (β weights the teacher, as in the paper and
    TRL's `GKDTrainer.generalized_jsd_loss`), computed in log space as
    `logsumexp(log β + log p_T, log(1 − β) + log p_S)`:

      `JSD_β = β·KL(p_T ‖ m) + (1 − β)·KL(p_S ‖ m)`.

    `JSD_β → 0` at both ends, while `JSD_β / β → KL(p_T ‖ p_S)` (forward) as β → 0 and
    `JSD_β / (1 − β) → KL(p_S ‖ p_T)` (reverse) as β → 1. TRL returns JSD_β inside (0, 1)
    but special-cases β = 0 as forward KL and β = 1 as reverse KL, a jump at both ends.
    This function is continuous instead:

    - `normalize=True` (default): `ℓ = JSD_β / (β (1 − β)) = KL(p_T ‖ m)/(1 − β) +
      KL(p_S ‖ m)/β`. Exactly `forward_kl` at β = 0 and exactly `reverse_kl` at β = 1,
      tending to them continuously; inside (0, 1) it is TRL's value times `1 / (β (1 − β))`
      (4× at β = 0.5) — a deliberate difference, with the same gradient direction.
    - `normalize=False`: `ℓ = JSD_β`, TRL's and the paper's value inside (0, 1); it is 0 at
      β = 0 and β = 1 (and near them), so it is not a KL at the ends.

    Every term is evaluated as `Σ p (e^r − 1 − r)`, `r = log(m / p)`, so values and
    gradients stay finite and accurate for β ∈ {0, 1e-6, 1 − 1e-6, 1}.

    Args:
      student_logits: `[B, L, V]` floating logits (bf16/f16 are computed in float32).
      teacher_logits: `[B, L, V]` floating logits, same shape.
      mask: optional `[B, L]`; nonzero marks tokens that count.
      beta: teacher weight of the mixture in [0, 1] (may be traced, e.g. a schedule).
      temperature: softmax temperature `T > 0` (may be traced); no `T²` factor.
      normalize: static; divide by `β (1 − β)` so the ends are the forward/reverse KL.
      reduction: "mean" over valid tokens, "sum", or "none" for per-token `[B, L]` values.
      chunk_size: None, or tokens per chunk to bound the `[B·L, V]` float32 intermediates.

    Returns:
      A float32 scalar (or `[B, L]` for reduction="none").

    References:
      Agarwal et al., "On-Policy Distillation of Language Models: Learning from
      Self-Generated Mistakes" (GKD), ICLR 2024, Eq. (1); Huszár, "How (not) to Train your
      Generative Model", 2015 (the β → 0 limit).
    """
    if not isinstance(normalize, bool):
        raise TypeError(f"`normalize` must be a Python bool (static), got {normalize!r}.")
    rows = partial(_generalized_jsd_rows, normalize=normalize)
    return _token_loss(
        rows, student_logits, teacher_logits, (temperature, beta), mask, reduction, chunk_size
    )


def skew_forward_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    alpha: ArrayLike = 0.1,
    temperature: ArrayLike = 1.0,
    reduction: _checks.Reduction = "mean",
    chunk_size: int | None = None,
) -> jax.Array:
    """DistiLLM's skew KL: forward KL to a mixture that leans on the student.

    `ℓ = KL(p_T ‖ α·p_T + (1 − α)·p_S)`, averaged over valid tokens. α = 0 is `forward_kl`;
    α = 1 is 0. DistiLLM's code returns the cross-entropy `−Σ p_T log m`, i.e. this value plus
    the teacher entropy (same gradient); we return the divergence, which is 0 at student ==
    teacher.

    Args:
      student_logits: `[B, L, V]` floating logits (bf16/f16 are computed in float32).
      teacher_logits: `[B, L, V]` floating logits, same shape.
      mask: optional `[B, L]`; nonzero marks tokens that count.
      alpha: skew in [0, 1] (DistiLLM's default 0.1; may be traced).
      temperature: softmax temperature `T > 0` (may be traced); no `T²` factor.
      reduction: "mean" over valid tokens, "sum", or "none" for per-token `[B, L]` values.
      chunk_size: None, or tokens per chunk to bound the `[B·L, V]` float32 intermediates.

    Returns:
      A float32 scalar (or `[B, L]` for reduction="none").

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024 (α-SKL).
    """
    rows = partial(_skew_kl_rows, reverse=False)
    return _token_loss(
        rows, student_logits, teacher_logits, (temperature, alpha), mask, reduction, chunk_size
    )


def skew_reverse_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    alpha: ArrayLike = 0.1,
    temperature: ArrayLike = 1.0,
    reduction: _checks.Reduction = "mean",
    chunk_size: int | None = None,
) -> jax.Array:
    """DistiLLM's skew reverse KL: reverse KL to a mixture that leans on the teacher.

    `ℓ = KL(p_S ‖ α·p_S + (1 − α)·p_T)`, averaged over valid tokens (as DistiLLM's
    `skewed_reverse_kl`). α = 0 is `reverse_kl`; α = 1 is 0.

    Args:
      student_logits: `[B, L, V]` floating logits (bf16/f16 are computed in float32).
      teacher_logits: `[B, L, V]` floating logits, same shape.
      mask: optional `[B, L]`; nonzero marks tokens that count.
      alpha: skew in [0, 1] (DistiLLM's default 0.1; may be traced).
      temperature: softmax temperature `T > 0` (may be traced); no `T²` factor.
      reduction: "mean" over valid tokens, "sum", or "none" for per-token `[B, L]` values.
      chunk_size: None, or tokens per chunk to bound the `[B·L, V]` float32 intermediates.

    Returns:
      A float32 scalar (or `[B, L]` for reduction="none").

    References:
      Ko et al., "DistiLLM: Towards Streamlined Distillation for Large Language Models",
      ICML 2024 (α-SRKL).
    """
    rows = partial(_skew_kl_rows, reverse=True)
    return _token_loss(
        rows, student_logits, teacher_logits, (temperature, alpha), mask, reduction, chunk_size
    )


def total_variation(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    temperature: ArrayLike = 1.0,
    reduction: _checks.Reduction = "mean",
    chunk_size: int | None = None,
) -> jax.Array:
    """Total variation distance between teacher and student next-token distributions.

    `ℓ = ½ Σ_v |p_T(v) − p_S(v)|` ∈ [0, 1], averaged over valid tokens (DistiLLM's
    `tv_distance`).

    Args:
      student_logits: `[B, L, V]` floating logits (bf16/f16 are computed in float32).
      teacher_logits: `[B, L, V]` floating logits, same shape.
      mask: optional `[B, L]`; nonzero marks tokens that count.
      temperature: softmax temperature `T > 0` (may be traced).
      reduction: "mean" over valid tokens, "sum", or "none" for per-token `[B, L]` values.
      chunk_size: None, or tokens per chunk to bound the `[B·L, V]` float32 intermediates.

    Returns:
      A float32 scalar (or `[B, L]` for reduction="none").

    References:
      Wen et al., "f-Divergence Minimization for Sequence-Level Knowledge Distillation",
      ACL 2023 (TVD); Ko et al., DistiLLM, ICML 2024 (baseline).
    """
    return _token_loss(
        _total_variation_rows,
        student_logits,
        teacher_logits,
        (temperature,),
        mask,
        reduction,
        chunk_size,
    )
