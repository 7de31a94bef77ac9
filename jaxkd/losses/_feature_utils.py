"""Shape checks, pooling and normalisation shared by the feature-level losses.

Feature maps are NHWC (the Flax layout). Everything here works on static shapes, so the
checks raise at trace time and the pooling matrices are trace-time constants.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses import _checks

# Gram matrices and kernels are compared across two networks; TF32/bf16 matmul passes on
# accelerators would add errors of the size of the signal. The reference implementations
# run these products in full float32, so ask for it explicitly.
HIGHEST = jax.lax.Precision.HIGHEST


def check_same_dims(
    a: jax.typing.ArrayLike,
    b: jax.typing.ArrayLike,
    a_name: str,
    b_name: str,
    axes: Sequence[int],
    what: str,
) -> None:
    """Raises `ValueError` unless `a` and `b` agree on the sizes of `axes`."""
    shape_a, shape_b = tuple(jnp.shape(a)), tuple(jnp.shape(b))
    if any(shape_a[axis] != shape_b[axis] for axis in axes):
        raise ValueError(
            f"`{a_name}` and `{b_name}` must have the same {what}, got "
            f"{a_name}.shape={shape_a} and {b_name}.shape={shape_b}."
        )


def check_features(x: jax.typing.ArrayLike, name: str, rank: int | Sequence[int]) -> None:
    """Raises unless `x` is a floating-point array of rank `rank` (one of them, if several)."""
    _checks.check_floating(x, name)
    _checks.check_rank(x, name, rank=rank)


def l2_normalize(x: jax.Array, axis: int | tuple[int, ...] = -1, eps: float = 1e-12) -> jax.Array:
    """`x / max(‖x‖₂, eps)` along `axis` (torch's `F.normalize`), with finite gradients at 0."""
    return x / optax.safe_norm(x, eps, axis=axis, keepdims=True)


def _pool_matrix(size_in: int, size_out: int) -> list[list[float]]:
    # Adaptive average pooling cell i covers [floor(i*n/m), ceil((i+1)*n/m)), as in PyTorch.
    rows = []
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size_in)])
    return rows


def adaptive_avg_pool(x: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
    """Adaptive average pooling of an NHWC map `x` to `spatial_shape = (H', W')`.

    Same cells as PyTorch's `adaptive_avg_pool2d`, so losses that pool to the smaller map
    (RepDistiller's NST, FSP, VID) give the same values.
    """
    out_h, out_w = (int(s) for s in spatial_shape)
    _, in_h, in_w, _ = x.shape
    if (in_h, in_w) == (out_h, out_w):
        return x
    if out_h > in_h or out_w > in_w:
        raise ValueError(
            f"adaptive_avg_pool only shrinks maps, got input spatial shape {(in_h, in_w)} and "
            f"target {(out_h, out_w)}."
        )
    pool_h = jnp.asarray(_pool_matrix(in_h, out_h), x.dtype)
    pool_w = jnp.asarray(_pool_matrix(in_w, out_w), x.dtype)
    return jnp.einsum("ih,bhwc,jw->bijc", pool_h, x, pool_w, precision=HIGHEST)


def pool_to_common(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pools two NHWC maps to their common (per-axis smallest) spatial shape."""
    common = (min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2]))
    return adaptive_avg_pool(a, common), adaptive_avg_pool(b, common)


def checked_map_pair(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None,
    reduction: str,
) -> tuple[jax.Array, jax.Array]:
    """Checks two NHWC maps that need only share the batch size (and `mask` `[B]`, `reduction`).

    Returns:
      Both maps in float32 (float64 stays float64), pooled to their common spatial shape.
    """
    s_name, t_name = "student_features", "teacher_features"
    check_features(student_features, s_name, 4)
    check_features(teacher_features, t_name, 4)
    check_same_dims(student_features, teacher_features, s_name, t_name, (0,), "batch size")
    _checks.check_mask(mask, jnp.shape(student_features)[:1], against=s_name)
    _checks.check_reduction(reduction)
    return pool_to_common(
        _checks.to_float32(student_features), _checks.to_float32(teacher_features)
    )
