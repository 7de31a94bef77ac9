"""Feature-level distillation losses: hints, attention maps, similarities, VID, cosine.

Feature maps are NHWC (the Flax layout), vectors `[B, D]`, hidden states `[B, L, D]`.
Student and teacher widths may differ where the method allows it (attention transfer,
similarity preserving); where they must match (hint, VID), a trainable adapter from
`jaxkd.adapters` maps the student's width to the teacher's first.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses import _checks
from jaxkd.losses._feature_utils import (
    HIGHEST,
    check_features,
    check_same_dims,
    checked_map_pair,
    l2_normalize,
    pool_to_common,
)

_S, _T = "student_features", "teacher_features"


def hint(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """FitNets hint loss: mean squared error between adapted student and teacher features.

    `L = 1/(B·N) Σ_b Σ_i (s_bi − t_bi)²` over the N = H·W·C (or D) elements of each
    example; with no mask this is `nn.MSELoss()` of RepDistiller's `HintLoss`. The student
    feature must already be mapped to the teacher's shape, e.g. by `jaxkd.adapters.HintAdapter`
    (RepDistiller's `ConvReg`) trained with the student.

    Args:
      student_features: adapted student features `[B, ...]`.
      teacher_features: teacher features, same shape.
      mask: optional `[B]` validity of each example.
      reduction: "mean" over valid examples, "sum", or "none" for the per-example MSE `[B]`.

    Returns:
      The loss (float32 for half-precision inputs). Typical weight: 100 (RepDistiller).

    References:
      Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
    """
    _checks.check_floating(student_features, "student_features")
    _checks.check_floating(teacher_features, "teacher_features")
    _checks.check_rank(student_features, "student_features", min_rank=2)
    _checks.check_same_shape(student_features, teacher_features, _S, _T)
    _checks.check_mask(mask, jnp.shape(student_features)[:1], against="student_features")
    _checks.check_reduction(reduction)
    s = _checks.to_float32(student_features)
    t = _checks.to_float32(teacher_features)
    per_example = optax.losses.squared_error(s, t).reshape(s.shape[0], -1).mean(axis=-1)
    return _checks.reduce(per_example, mask, reduction)


def _attention_map(x: jax.Array, p: float, mode: str) -> jax.Array:
    if mode == "code":
        # The authors' code: x^p averaged over channels (no absolute value), as RepDistiller.
        spatial = jnp.mean(jnp.power(x, p), axis=-1)
    else:
        spatial = jnp.sum(jnp.power(jnp.abs(x), p), axis=-1)
    return l2_normalize(spatial.reshape(x.shape[0], -1), axis=-1)


def attention_transfer(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    *,
    p: float = 2,
    mode: Literal["code", "paper"] = "code",
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Attention transfer between NHWC feature maps (activation-based, Zagoruyko & Komodakis).

    The attention map of `x` `[B, H, W, C]` is a spatial map `Q` `[B, H·W]` normalised to
    unit L2 norm per example, `a(x) = Q / ‖Q‖₂`. Two modes, as in torchdistill's `ATLoss`:

    - `mode="code"` (the authors' code, RepDistiller's `Attention`):
      `Q = mean_c x_c^p`, `L = 1/(B·H·W) Σ_b ‖a(s_b) − a(t_b)‖₂²`.
    - `mode="paper"` (Eq. 2 of the paper): `Q = Σ_c |x_c|^p`,
      `L = 1/B Σ_b ‖a(s_b) − a(t_b)‖₂` (a norm, not squared).

    The paper's factor `β/2` in front of the sum over layers is left to the term weight. Channel
    counts may differ; maps of different spatial size are average-pooled to the smaller one
    first, as RepDistiller's `Attention` does (e.g. VGG 4×4 against MobileNetV2 2×2).

    Args:
      student_features: student map `[B, H_s, W_s, C_s]`.
      teacher_features: teacher map `[B, H_t, W_t, C_t]`.
      p: exponent of the attention map (static Python number, > 0; 2 in both references).
      mode: "code" or "paper" (static).
      mask: optional `[B]` validity of each example.
      reduction: "mean" over valid examples, "sum", or "none" for per-example values `[B]`.

    Returns:
      The loss (float32 for half-precision inputs). Typical weight: 1000 in "code" mode
      (RepDistiller and the authors' β = 10³, applied per layer and summed over layers).

    References:
      Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the Performance
      of Convolutional Neural Networks via Attention Transfer", ICLR 2017.
    """
    if mode not in ("code", "paper"):
        raise ValueError(f'`mode` must be "code" or "paper", got {mode!r}.')
    if isinstance(p, int | float) and not p > 0:
        raise ValueError(f"`p` must be positive, got {p!r}.")
    student, teacher = checked_map_pair(student_features, teacher_features, mask, reduction)
    a_s = _attention_map(student, p, mode)
    a_t = _attention_map(teacher, p, mode)
    diff = a_s - a_t
    if mode == "code":
        per_example = jnp.mean(jnp.square(diff), axis=-1)
    else:
        # min_norm=0 keeps the gradient finite (zero) at student == teacher.
        per_example = optax.safe_norm(diff, 0.0, axis=-1)
    return _checks.reduce(per_example, mask, reduction)


def similarity_preserving(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Similarity-preserving loss between batch Gram matrices (Tung & Mori).

    With `F` the features flattened to `[B, N]`, `G = F Fᵀ` `[B, B]` with each row
    L2-normalised, `L = ‖G_s − G_t‖_F² / B²` (RepDistiller's `Similarity`). Widths may differ.

    Batch-relational: each example's value depends on the whole batch. Masked examples are
    removed from the Gram matrices and `B` counts valid examples, so the masked loss equals
    the loss of the valid sub-batch. `reduction="none"` returns the row contributions
    `r_i = Σ_j (G_s − G_t)_ij² / B`, whose mean is the loss; they are not independent
    per-example losses.

    Args:
      student_features: student features `[B, ...]`.
      teacher_features: teacher features `[B, ...]` (any width).
      mask: optional `[B]` validity of each example.
      reduction: "mean" (the loss), "sum", or "none" (row contributions `[B]`).

    Returns:
      The loss (float32 for half-precision inputs). Typical weight: 3000 (paper, RepDistiller).

    References:
      Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.
    """
    _checks.check_floating(student_features, "student_features")
    _checks.check_floating(teacher_features, "teacher_features")
    _checks.check_rank(student_features, "student_features", min_rank=2)
    _checks.check_rank(teacher_features, "teacher_features", min_rank=2)
    check_same_dims(student_features, teacher_features, _S, _T, (0,), "batch size")
    _checks.check_mask(mask, jnp.shape(student_features)[:1], against="student_features")
    _checks.check_reduction(reduction)
    batch = jnp.shape(student_features)[0]
    valid = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask).astype(bool)

    def gram(x):
        x = _checks.to_float32(x).reshape(batch, -1)
        x = jnp.where(valid[:, None], x, 0.0)
        return l2_normalize(jnp.matmul(x, x.T, precision=HIGHEST), axis=-1)

    sq_diff = jnp.square(gram(student_features) - gram(teacher_features))
    count = jnp.maximum(jnp.sum(valid), 1).astype(sq_diff.dtype)
    rows = jnp.sum(sq_diff, axis=-1) / count
    return _checks.reduce(rows, mask, reduction)


def vid(
    student_features: jax.typing.ArrayLike,
    teacher_features: jax.typing.ArrayLike,
    log_scale: jax.typing.ArrayLike,
    *,
    eps: float = 1e-5,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Variational information distillation: Gaussian NLL of the teacher feature (Ahn et al.).

    The student predicts the mean `μ` of the teacher feature with a trainable regressor
    (`jaxkd.adapters.VIDRegressor`); the per-channel variance is
    `σ²_c = softplus(log_scale_c) + eps`. Per element,
    `nll = ½ ((μ − t)² / σ²_c + log σ²_c)` (the constant `½ log 2π` dropped, as in
    RepDistiller's `VIDLoss`), averaged over `H·W·C`, then over the batch.

    Maps of different spatial size are average-pooled to the smaller one. RepDistiller pools
    the regressor's input instead; `VIDRegressor(spatial_shape=...)` does exactly that.

    Args:
      student_features: predicted mean `μ` `[B, H, W, C]` or `[B, C]` (regressor output).
      teacher_features: teacher features, same rank and channel count.
      log_scale: `[C]` pre-softplus variance parameter, trained with the student.
      eps: variance floor (may be traced).
      mask: optional `[B]` validity of each example.
      reduction: "mean" over valid examples, "sum", or "none" for per-example values `[B]`.

    Returns:
      The loss (float32 for half-precision inputs). Not non-negative (`log σ²` may be < 0).
      Typical weight: 1 (RepDistiller, summed over layers).

    References:
      Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019.
    """
    check_features(student_features, "student_features", (2, 4))
    check_features(teacher_features, "teacher_features", (2, 4))
    _checks.check_floating(log_scale, "log_scale")
    s_shape, t_shape = jnp.shape(student_features), jnp.shape(teacher_features)
    if len(s_shape) != len(t_shape):
        raise ValueError(
            "`student_features` and `teacher_features` must have the same rank, got "
            f"student_features.shape={s_shape} and teacher_features.shape={t_shape}."
        )
    check_same_dims(
        student_features, teacher_features, _S, _T, (0, -1), "batch size and channel count"
    )
    if tuple(jnp.shape(log_scale)) != (t_shape[-1],):
        raise ValueError(
            f"`log_scale` must have shape ({t_shape[-1]},) (the channels of "
            f"`teacher_features`), got log_scale.shape={tuple(jnp.shape(log_scale))} and "
            f"teacher_features.shape={t_shape}."
        )
    _checks.check_mask(mask, s_shape[:1], against="student_features")
    _checks.check_reduction(reduction)
    mean = _checks.to_float32(student_features)
    target = _checks.to_float32(teacher_features)
    if mean.ndim == 4:
        mean, target = pool_to_common(mean, target)
    variance = jax.nn.softplus(_checks.to_float32(log_scale)) + eps
    nll = 0.5 * (jnp.square(mean - target) / variance + jnp.log(variance))
    per_example = nll.reshape(nll.shape[0], -1).mean(axis=-1)
    return _checks.reduce(per_example, mask, reduction)


def cosine_embedding(
    student_hidden: jax.typing.ArrayLike,
    teacher_hidden: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """DistilBERT's hidden-state loss: `1 − cos(s, t)` averaged over valid tokens.

    `L = 1/|M| Σ_{(b,l) ∈ M} (1 − ⟨s_bl, t_bl⟩ / (‖s_bl‖ ‖t_bl‖))`, i.e. PyTorch's
    `CosineEmbeddingLoss` with target 1 over the tokens selected by the attention mask, as
    in DistilBERT's `distiller.py`. Squared norms are floored at 1e-12 (zero vectors give
    a loss of 1 and finite gradients).

    Args:
      student_hidden: `[B, L, D]` hidden states (or `[B, D]` vectors).
      teacher_hidden: same shape (map widths with `jaxkd.adapters.HintAdapter` if needed).
      mask: optional `[B, L]` (or `[B]`) validity of each token, e.g. the attention mask.
      reduction: "mean" over valid tokens, "sum", or "none" for per-token values `[B, L]`.

    Returns:
      The loss in [0, 2] (float32 for half-precision inputs). Typical weight: 1.0
      (DistilBERT: α_cos = 1 with α_ce = 5, α_mlm = 2).

    References:
      Sanh et al., "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and
      lighter", NeurIPS 2019 EMC² workshop.
    """
    check_features(student_hidden, "student_hidden", (2, 3))
    check_features(teacher_hidden, "teacher_hidden", (2, 3))
    _checks.check_same_shape(student_hidden, teacher_hidden, "student_hidden", "teacher_hidden")
    _checks.check_mask(mask, jnp.shape(student_hidden)[:-1], against="student_hidden")
    _checks.check_reduction(reduction)
    per_token = optax.losses.cosine_distance(
        _checks.to_float32(student_hidden), _checks.to_float32(teacher_hidden), epsilon=1e-12
    )
    return _checks.reduce(per_token, mask, reduction)
