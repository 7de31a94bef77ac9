"""Losses on second-order statistics of NHWC feature maps: FSP matrices and NST's MMD.

Both average-pool the larger of two maps to the smaller spatial size first, as RepDistiller
does (PyTorch's adaptive average pooling cells, see `_feature_utils.adaptive_avg_pool`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxkd.losses import _checks
from jaxkd.losses._feature_utils import (
    HIGHEST,
    check_features,
    check_same_dims,
    checked_map_pair,
    l2_normalize,
    pool_to_common,
)


def _fsp_matrix(first: jax.Array, second: jax.Array) -> jax.Array:
    first, second = pool_to_common(_checks.to_float32(first), _checks.to_float32(second))
    area = first.shape[1] * first.shape[2]
    return jnp.einsum("bhwi,bhwj->bij", first, second, precision=HIGHEST) / area


def fsp(
    student_first: jax.typing.ArrayLike,
    student_second: jax.typing.ArrayLike,
    teacher_first: jax.typing.ArrayLike,
    teacher_second: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Flow-of-solution-procedure (FSP) matrix loss between two layers (Yim et al.).

    For two maps of one network, `first` `[B, H, W, C₁]` and `second` `[B, H', W', C₂]`
    (the larger pooled to the smaller size), `G_ij = 1/(H·W) Σ_hw first_hwi · second_hwj`
    `[B, C₁, C₂]`. `L = 1/(B·C₁·C₂) Σ_b ‖G_s,b − G_t,b‖_F²`: RepDistiller's `FSP`
    (squared L2 averaged over the matrix entries; the paper sums the entries instead, a
    factor `C₁·C₂` that the weight absorbs). Arguments come student pair first, each pair in
    layer order; the student's channel counts must equal the teacher's.

    Args:
      student_first: student map at the start of the block `[B, H, W, C₁]`.
      student_second: student map at the end of the block `[B, H', W', C₂]`.
      teacher_first: teacher map at the start of the block `[B, H, W, C₁]`.
      teacher_second: teacher map at the end of the block `[B, H', W', C₂]`.
      mask: optional `[B]` validity of each example.
      reduction: "mean" over valid examples, "sum", or "none" for per-example values `[B]`.

    Returns:
      The loss (float32 for half-precision inputs). Typical weight: 50 (RepDistiller, which
      uses it as a separate initialisation stage, as the paper does).

    References:
      Yim et al., "A Gift From Knowledge Distillation: Fast Optimization, Network
      Minimization and Transfer Learning", CVPR 2017.
    """
    maps = {
        "student_first": student_first,
        "student_second": student_second,
        "teacher_first": teacher_first,
        "teacher_second": teacher_second,
    }
    for name, x in maps.items():
        check_features(x, name, 4)
    for name, x in list(maps.items())[1:]:
        check_same_dims(student_first, x, "student_first", name, axes=(0,), what="batch size")
    for layer in ("first", "second"):
        s_name, t_name = f"student_{layer}", f"teacher_{layer}"
        check_same_dims(maps[s_name], maps[t_name], s_name, t_name, (-1,), "channel count")
    _checks.check_mask(mask, jnp.shape(student_first)[:1], against="student_first")
    _checks.check_reduction(reduction)
    diff = _fsp_matrix(student_first, student_second) - _fsp_matrix(teacher_first, teacher_second)
    per_example = jnp.mean(jnp.square(diff), axis=(1, 2))
    return _checks.reduce(per_example, mask, reduction)


def _mean_poly_kernel(a: jax.Array, b: jax.Array) -> jax.Array:
    # Mean over channel pairs (i, j) of k(a_i, b_j) = (a_i · b_j)², per example.
    dots = jnp.einsum("bni,bnj->bij", a, b, precision=HIGHEST)
    return jnp.mean(jnp.square(dots), axis=(1, 2))


def nst(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Neuron selectivity transfer: polynomial-kernel MMD² between channel maps (Huang & Wang).

    Each channel's spatial map is flattened and L2-normalised, giving `C` vectors
    `f_i ∈ ℝ^{H·W}` per example (after pooling the larger map to the smaller size). With
    `k(x, y) = (xᵀy)²`,
    `MMD² = mean_{i,i'} k(s_i, s_i') + mean_{j,j'} k(t_j, t_j') − 2 mean_{i,j} k(s_i, t_j)`,
    averaged over the batch (RepDistiller's `NSTLoss` with its full loss). Channel counts
    may differ. Non-negative up to rounding.

    Args:
      student_features: student map `[B, H, W, C_s]`.
      teacher_features: teacher map `[B, H', W', C_t]`.
      mask: optional `[B]` validity of each example.
      reduction: "mean" over valid examples, "sum", or "none" for per-example values `[B]`.

    Returns:
      The loss (float32 for half-precision inputs). Typical weight: 50 (RepDistiller).

    References:
      Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
      Transfer", arXiv:1707.01219, 2017.
    """
    s, t = checked_map_pair(student_features, teacher_features, mask, reduction)
    batch, height, width = s.shape[:3]
    s = l2_normalize(s.reshape(batch, height * width, -1), axis=1)
    t = l2_normalize(t.reshape(batch, height * width, -1), axis=1)
    per_example = _mean_poly_kernel(s, s) + _mean_poly_kernel(t, t) - 2 * _mean_poly_kernel(s, t)
    return _checks.reduce(per_example, mask, reduction)
