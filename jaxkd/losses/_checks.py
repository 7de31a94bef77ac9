"""Argument checks and reductions shared by every loss function.

All checks run on static shapes and dtypes, so they raise at trace time under `jax.jit`
and cost nothing at run time. Messages always name the offending argument and its shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS = ("mean", "sum", "none")


def _describe(x: jax.typing.ArrayLike) -> str:
    return f"shape {tuple(jnp.shape(x))} and dtype {jnp.result_type(x)}"


def check_floating(x: jax.typing.ArrayLike, name: str) -> None:
    """Raises `TypeError` unless `x` has a floating-point dtype."""
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array, got {_describe(x)}.")


def check_rank(
    x: jax.typing.ArrayLike,
    name: str,
    *,
    rank: int | Sequence[int] | None = None,
    min_rank: int | None = None,
) -> None:
    """Raises `ValueError` unless `x` has the given rank (or at least `min_rank`)."""
    ndim = jnp.ndim(x)
    if rank is not None:
        allowed = (rank,) if isinstance(rank, int) else tuple(rank)
        if ndim not in allowed:
            want = " or ".join(str(r) for r in allowed)
            raise ValueError(f"`{name}` must have rank {want}, got rank {ndim} ({_describe(x)}).")
    if min_rank is not None and ndim < min_rank:
        raise ValueError(
            f"`{name}` must have rank >= {min_rank}, got rank {ndim} ({_describe(x)})."
        )


def check_same_shape(
    a: jax.typing.ArrayLike,
    b: jax.typing.ArrayLike,
    a_name: str = "student_logits",
    b_name: str = "teacher_logits",
) -> None:
    """Raises `ValueError` unless `a` and `b` have identical shapes."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"`{a_name}` and `{b_name}` must have the same shape, got "
            f"{a_name}.shape={tuple(jnp.shape(a))} and {b_name}.shape={tuple(jnp.shape(b))}."
        )


def check_mask(
    mask: jax.typing.ArrayLike | None,
    expected_shape: Sequence[int],
    name: str = "mask",
    against: str = "student_logits",
) -> None:
    """Raises `ValueError` unless `mask` is None or has exactly `expected_shape`."""
    if mask is None:
        return
    if tuple(jnp.shape(mask)) != tuple(expected_shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(expected_shape)} (the leading dimensions of "
            f"`{against}`), got {name}.shape={tuple(jnp.shape(mask))}."
        )


def check_labels(labels: jax.typing.ArrayLike, batch_shape: Sequence[int], name: str = "labels"):
    """Raises unless `labels` are integers with shape `batch_shape`."""
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"`{name}` must be integer class ids, got {_describe(labels)}.")
    if tuple(jnp.shape(labels)) != tuple(batch_shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(batch_shape)} (the leading dimensions of the "
            f"logits), got {name}.shape={tuple(jnp.shape(labels))}."
        )


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}.")


def to_float32(x: jax.typing.ArrayLike) -> jax.Array:
    """Promotes half-precision inputs to float32 (float64 stays float64)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def reduce(
    values: jax.Array,
    mask: jax.typing.ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> jax.Array:
    """Reduces per-example (per-token) `values` over the valid entries of `mask`.

    "mean" divides the masked sum by the number of valid entries (at least 1, so an
    all-masked batch gives 0, not NaN); "sum" is the masked sum; "none" returns the values
    with masked entries set to zero.
    """
    check_reduction(reduction)
    if mask is not None:
        mask = jnp.asarray(mask)
        values = jnp.where(mask.astype(bool), values, jnp.zeros_like(values))
    if reduction == "none":
        return values
    total = jnp.sum(values)
    if reduction == "sum":
        return total
    count = values.size if mask is None else jnp.sum(mask.astype(values.dtype))
    return total / jnp.maximum(count, 1)
