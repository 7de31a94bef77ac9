"""Forward KL against a teacher stored as its top-k log-probabilities (offline distillation).

Caching a teacher's full `[B, L, V]` logits is impractical at V = 151,936, so offline caches
(DistillKit's, vLLM logprob outputs) keep the top-k log-probabilities and their token ids per
position. `sparse_forward_kl` compares the student's full-vocabulary distribution with that
sparse teacher, chunk by chunk over tokens when `chunk_size` is set.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks
from jaxkd.losses._chunked import check_chunk_size, token_loss
from jaxkd.losses._logspace import LOG_FLOOR, floor_log, kl_rows, log1mexp, log_probs

ArrayLike = jax.typing.ArrayLike
Tail = Literal["renormalize", "bucket"]
TAILS = ("renormalize", "bucket")
_LOG_TAIL_FLOOR = math.log(1e-30)


def _check_sparse(
    student_logits: ArrayLike,
    teacher_topk_logprobs: ArrayLike,
    teacher_topk_ids: ArrayLike,
    mask: ArrayLike | None,
    tail: str,
    reduction: str,
    chunk_size: int | None,
) -> None:
    _checks.check_floating(student_logits, "student_logits")
    _checks.check_floating(teacher_topk_logprobs, "teacher_topk_logprobs")
    _checks.check_rank(student_logits, "student_logits", rank=3)
    _checks.check_rank(teacher_topk_logprobs, "teacher_topk_logprobs", rank=3)
    if not jnp.issubdtype(jnp.result_type(teacher_topk_ids), jnp.integer):
        raise TypeError(
            "`teacher_topk_ids` must be integer token ids, got shape "
            f"{tuple(jnp.shape(teacher_topk_ids))} and dtype {jnp.result_type(teacher_topk_ids)}."
        )
    _checks.check_same_shape(
        teacher_topk_ids, teacher_topk_logprobs, "teacher_topk_ids", "teacher_topk_logprobs"
    )
    s_shape, t_shape = jnp.shape(student_logits), jnp.shape(teacher_topk_logprobs)
    if s_shape[:2] != t_shape[:2]:
        raise ValueError(
            "`student_logits` and `teacher_topk_logprobs` must share the [B, L] dimensions, got "
            f"student_logits.shape={tuple(s_shape)} and teacher_topk_logprobs.shape="
            f"{tuple(t_shape)}."
        )
    if not 1 <= t_shape[2] <= s_shape[2]:
        raise ValueError(
            f"top-k size k={t_shape[2]} of `teacher_topk_logprobs` must be in [1, V={s_shape[2]}] "
            f"(student_logits.shape={tuple(s_shape)}, teacher_topk_logprobs.shape="
            f"{tuple(t_shape)})."
        )
    if tail not in TAILS:
        raise ValueError(f"`tail` must be one of {TAILS}, got {tail!r}.")
    _checks.check_mask(mask, s_shape[:2])
    _checks.check_reduction(reduction)
    check_chunk_size(chunk_size)


def _sparse_rows(params, student, topk_logprobs, topk_ids, *, tail: str):
    (temperature,) = params
    log_s = floor_log(log_probs(student, temperature))  # [n, V], full vocabulary
    log_s_topk = jnp.take_along_axis(log_s, topk_ids, axis=-1)  # [n, k]
    log_t_topk = _checks.to_float32(topk_logprobs)
    if tail == "renormalize":
        # softmax(lp / T) over the k ids: the teacher's logits at T, renormalised over K.
        return kl_rows(log_probs(log_t_topk, temperature), log_s_topk)
    # The teacher's missing mass at its sampling temperature becomes one more bucket; at
    # temperature T all k + 1 buckets are tempered as single tokens and renormalised.
    log_t_tail = log1mexp(jax.nn.logsumexp(log_t_topk, axis=-1, keepdims=True))
    log_t = log_probs(jnp.concatenate([log_t_topk, log_t_tail], -1), temperature)
    # The student's tail is summed over the ids outside the top k, not taken as 1 − Σ top-k,
    # which would lose all precision when the tail is small.
    rows = jnp.arange(log_s.shape[0])[:, None]
    log_s_tail = jax.nn.logsumexp(log_s.at[rows, topk_ids].set(LOG_FLOOR), -1, keepdims=True)
    # An empty student tail (k = V, or only padded ids outside the top k) against a teacher
    # tail that is float rounding of 1 − Σ top-k would be an infinite KL: the student's tail
    # mass is floored, smoothly, at 1e-30.
    log_s_tail = jnp.logaddexp(log_s_tail, _LOG_TAIL_FLOOR)
    return kl_rows(log_t, jnp.concatenate([log_s_topk, log_s_tail], -1))


def sparse_forward_kl(
    student_logits: ArrayLike,
    teacher_topk_logprobs: ArrayLike,
    teacher_topk_ids: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    tail: Tail = "renormalize",
    temperature: ArrayLike = 1.0,
    reduction: _checks.Reduction = "mean",
    chunk_size: int | None = None,
) -> jax.Array:
    """Forward KL from a top-k teacher to the student's full-vocabulary distribution.

    With `K` the teacher's k ids per token, `log p_S = log_softmax(student / T)` over the full
    vocabulary and `lp_T` the stored teacher top-k log-probabilities (at temperature 1):

    - `tail="renormalize"` (DistillKit's `missing=ZERO`): the teacher is renormalised over K,
      `q_T = softmax(lp_T / T)` over K, and `ℓ = Σ_{v∈K} q_T(v) (log q_T(v) − log p_S(v))`.
      The student is deliberately *not* renormalised over K, so the loss is 0 only when the
      student puts all its mass on K in the teacher's proportions (it pushes the student's
      mass off the ids the teacher left out).
    - `tail="bucket"` (DistillKit's `SYMMETRIC_UNIFORM` tail term): the teacher's missing
      mass `1 − Σ_K exp(lp_T)` is one extra bucket compared with the student's mass outside
      K, `ℓ = Σ_{v∈K} p_T(v) log(p_T(v)/p_S(v)) + p_T(tail) log(p_T(tail)/p_S(tail))`, a KL
      between two distributions over k + 1 outcomes. At `T ≠ 1` the teacher's k + 1 buckets
      are tempered as single tokens and renormalised (the tail's true tempered mass is not
      recoverable from top-k data; DistillKit makes the same approximation), while the
      student's tail is exact, floored smoothly at 1e-30 so that an empty tail (k = V, or
      only padded ids outside K) stays finite.

    With k = V both modes equal `forward_kl`. The mean is over valid tokens; no `T²` factor
    (DistillKit applies `T²`: scale the weight to match). The ids must be distinct and in
    [0, V) (as `jax.lax.top_k` returns them); this is not checked at run time.

    Args:
      student_logits: `[B, L, V]` floating logits (bf16/f16 are computed in float32).
      teacher_topk_logprobs: `[B, L, k]` teacher log-probabilities of its top-k tokens.
      teacher_topk_ids: `[B, L, k]` integer token ids of those entries.
      mask: optional `[B, L]`; nonzero marks tokens that count.
      tail: static, "renormalize" or "bucket" (see above).
      temperature: distillation temperature `T > 0` (may be traced).
      reduction: "mean" over valid tokens, "sum", or "none" for per-token `[B, L]` values.
      chunk_size: None, or tokens per chunk to bound the `[B·L, V]` float32 intermediates.

    Returns:
      A float32 scalar (or `[B, L]` for reduction="none").

    References:
      Arcee AI, DistillKit (github.com/arcee-ai/DistillKit), sparse top-k logit
      distillation, 2024; Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.
    """
    _check_sparse(
        student_logits,
        teacher_topk_logprobs,
        teacher_topk_ids,
        mask,
        tail,
        reduction,
        chunk_size,
    )
    return token_loss(
        partial(_sparse_rows, tail=tail),
        (temperature,),
        (student_logits, teacher_topk_logprobs, teacher_topk_ids),
        mask=mask,
        reduction=reduction,
        chunk_size=chunk_size,
    )
