"""Shared vocabularies of teacher and student: size checks and padded-logit masking.

Token-level distillation compares the teacher's and the student's distributions over the
same token ids, so both must cover the tokenizer's vocabulary. Models often pad their
embedding beyond it for fast matrix shapes (Qwen2.5: 151,936 rows in the small models,
152,064 in the 7B and up, for a tokenizer of 151,665 ids); the padding rows are not tokens.
Setting their logits to -inf removes them from every softmax, and the losses of
`jaxkd.losses` give finite values and gradients with -inf entries.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp


def _check_size(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def check_vocab_compatible(
    teacher_vocab_size: int,
    student_vocab_size: int,
    tokenizer_vocab_size: int | None = None,
) -> int:
    """Checks that teacher and student logits index one vocabulary; returns its size.

    With a tokenizer size V_tok both models need V_teacher >= V_tok and V_student >= V_tok;
    rows past V_tok are padding (mask them with `mask_padded_vocab`, which also brings
    both logits to one width). Without it the two sizes must be equal.

    Args:
      teacher_vocab_size: rows of the teacher's output head.
      student_vocab_size: rows of the student's output head.
      tokenizer_vocab_size: ids the shared tokenizer produces, or None.

    Returns:
      The real vocabulary size: `tokenizer_vocab_size`, or the common model size.

    Raises:
      ValueError: naming both model sizes (and the tokenizer's) when they do not fit.

    References:
      Hinton et al. 2015, "Distilling the Knowledge in a Neural Network" (matching outputs).
    """
    teacher = _check_size(teacher_vocab_size, "teacher_vocab_size")
    student = _check_size(student_vocab_size, "student_vocab_size")
    if tokenizer_vocab_size is None:
        if teacher != student:
            raise ValueError(
                f"Teacher vocab_size {teacher} and student vocab_size {student} differ. If "
                "one of them is padded, pass `tokenizer_vocab_size` (the real vocabulary) "
                "and mask the padding with mask_padded_vocab."
            )
        return teacher
    real = _check_size(tokenizer_vocab_size, "tokenizer_vocab_size")
    if teacher < real or student < real:
        raise ValueError(
            f"Teacher vocab_size {teacher} and student vocab_size {student} must both cover "
            f"the tokenizer's {real} ids; teacher and student need the same tokenizer."
        )
    return real


def mask_padded_vocab(
    logits: jax.Array, real_vocab_size: int, *, vocab_size: int | None = None
) -> jax.Array:
    """Sets the logits of padding ids (>= `real_vocab_size`) to -inf.

    out[..., v] = logits[..., v] for v < V_real and -inf otherwise, for v < `vocab_size`:
    wider logits are cut and narrower ones extended with -inf, so a teacher padded to
    152,064 and a student padded to 151,936 can be compared entry by entry.

    Args:
      logits: `[..., V]` logits.
      real_vocab_size: the tokenizer's vocabulary size, <= V unless `vocab_size` widens.
      vocab_size: width of the result; None keeps V.

    Returns:
      `[..., vocab_size or V]` logits of the dtype of `logits`.

    References:
      Qwen Team 2024, "Qwen2 Technical Report" (padded embedding of 151,936 / 152,064).
    """
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating) or logits.ndim < 1:
        raise ValueError(
            f"`logits` must be a floating array [..., V], got dtype {logits.dtype} and shape "
            f"{tuple(logits.shape)}."
        )
    real = _check_size(real_vocab_size, "real_vocab_size")
    width = logits.shape[-1] if vocab_size is None else _check_size(vocab_size, "vocab_size")
    if real > width or real > logits.shape[-1]:
        raise ValueError(
            f"`real_vocab_size` {real} exceeds the logits' vocabulary: logits shape "
            f"{tuple(logits.shape)}, vocab_size {width}."
        )
    kept = logits[..., : min(width, logits.shape[-1])]
    if width > kept.shape[-1]:
        kept = jnp.pad(
            kept,
            [(0, 0)] * (logits.ndim - 1) + [(0, width - kept.shape[-1])],
            constant_values=-jnp.inf,
        )
    return jnp.where(jnp.arange(width) < real, kept, jnp.asarray(-jnp.inf, logits.dtype))
