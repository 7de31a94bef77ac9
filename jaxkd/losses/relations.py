"""Relation-level distillation: match how examples (or tokens) relate, not the features.

Every loss here compares a student relation matrix with the teacher's, so student and teacher
may have different widths; only the batch (and sequence) dimensions must agree. `mask` marks
valid examples (`[B]`, 1 = real, 0 = padding of a partial batch): padded examples take no part
in any pair, triplet or normalization. Losses that are a mean over anchors (`rkd_distance`,
`rkd_angle`, `pkt`) give per-anchor values with `reduction="none"`, scaled so that their mean
over valid anchors is the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses import _checks

_HIGHEST = jax.lax.Precision.HIGHEST


def _embeddings(student, teacher, mask, *, flatten: bool, names=("student_embed", "teacher_embed")):
    """Validates a `[B, ...]` pair that only shares the batch size; returns float32 `[B, D]`."""
    for x, name in zip((student, teacher), names, strict=True):
        _checks.check_floating(x, name)
        if flatten:
            _checks.check_rank(x, name, min_rank=2)
        else:
            _checks.check_rank(x, name, rank=2)
    if jnp.shape(student)[0] != jnp.shape(teacher)[0]:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same batch size, got "
            f"{names[0]}.shape={tuple(jnp.shape(student))} and "
            f"{names[1]}.shape={tuple(jnp.shape(teacher))}."
        )
    batch = jnp.shape(student)[0]
    _checks.check_mask(mask, (batch,), against=names[0])
    s, t = (_checks.to_float32(x).reshape(batch, -1) for x in (student, teacher))
    valid = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask).astype(bool)
    return s, t, valid


def _safe_divide(x: jax.Array, d: jax.Array) -> jax.Array:
    # The double `where` keeps the gradient finite when the denominator is zero.
    ok = d > 0
    return jnp.where(ok, x / jnp.where(ok, d, 1.0), 0.0)


def _pairwise_distances(x: jax.Array, valid: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Euclidean distance matrix with a zero diagonal, `sqrt(max(d², eps))` off it."""
    # Distances are translation invariant; centering first keeps the Gram-form cancellation
    # small for large-magnitude features.
    x = x - _safe_divide(jnp.sum(jnp.where(valid[:, None], x, 0.0), axis=0), jnp.sum(valid))
    sq = jnp.sum(x * x, axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * jnp.matmul(x, x.T, precision=_HIGHEST)
    # Clamping before the sqrt (as RepDistiller) keeps coincident points NaN-free.
    d = jnp.sqrt(jnp.maximum(d2, eps))
    return jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d)


def _per_anchor(values: jax.Array, valid: jax.Array, reduction: str) -> jax.Array:
    """Reduces `[B, B, ...]` relation values to per-anchor means, then over anchors."""
    n = jnp.maximum(jnp.sum(valid), 1).astype(values.dtype)
    partners = values.ndim - 1
    weight = valid
    for _ in range(partners - 1):
        weight = weight[..., None] & valid
    per_anchor = jnp.sum(jnp.where(weight[None], values, 0.0), axis=tuple(range(1, values.ndim)))
    return _checks.reduce(per_anchor / n**partners, valid, reduction)


def rkd_distance(
    student_embed: jax.typing.ArrayLike,
    teacher_embed: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Distance-wise relational KD: Huber loss between mean-normalized distance matrices.

    `ψ(x_i, x_j) = ‖x_i − x_j‖₂ / μ` with `μ` the mean distance over distinct pairs, and
    `loss = 1/B² Σ_ij huber(ψ_s(i, j) − ψ_t(i, j))`, Huber with δ = 1 (PyTorch's smooth L1),
    the mean over all `B²` entries (the zero diagonal included) as in RepDistiller. Inputs
    `[B, ...]` are flattened per example; widths may differ. Gradients flow into both inputs
    (RepDistiller wraps the teacher side in `no_grad`: the same for a frozen teacher).
    Typical weight 25 (RepDistiller's `w_d`).

    Args:
      student_embed: `[B, ...]` student features.
      teacher_embed: `[B, ...]` teacher features, same `B`.
      mask: optional `[B]` valid-example mask.
      reduction: "mean", "sum" or "none" (per-anchor values `1/B Σ_j huber(...)`).

    Returns:
      Scalar loss (float32 for half-precision inputs), or `[B]` per-anchor values.

    References:
      Park et al., Relational Knowledge Distillation, CVPR 2019.
    """
    _checks.check_reduction(reduction)
    s, t, valid = _embeddings(student_embed, teacher_embed, mask, flatten=True)
    pair = valid[:, None] & valid[None, :] & ~jnp.eye(s.shape[0], dtype=bool)

    def normalized(x):
        d = _pairwise_distances(x, valid)
        return _safe_divide(d, _safe_divide(jnp.sum(jnp.where(pair, d, 0.0)), jnp.sum(pair)))

    return _per_anchor(optax.losses.huber_loss(normalized(s), normalized(t)), valid, reduction)


def _angles(x: jax.Array) -> jax.Array:
    """`a[i, j, k] = <e_ij, e_ik>` with `e_ij` the unit vector from `x_i` to `x_j` (0 if equal)."""
    diff = x[None, :, :] - x[:, None, :]
    # `v / max(‖v‖, 1e-12)` as torch's F.normalize, with a gradient that stays finite at v = 0.
    unit = diff / optax.safe_norm(diff, 1e-12, axis=-1, keepdims=True)
    return jnp.einsum("ijd,ikd->ijk", unit, unit, precision=_HIGHEST)


def rkd_angle(
    student_embed: jax.typing.ArrayLike,
    teacher_embed: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Angle-wise relational KD: Huber loss between the cosines of all example triplets.

    `ψ(x_i, x_j, x_k) = <e_ij, e_ik>` with `e_ij = (x_j − x_i) / ‖x_j − x_i‖₂` (the zero
    vector when `x_j = x_i`), and `loss = 1/B³ Σ_ijk huber(ψ_s − ψ_t)` with δ = 1, the mean over
    all `B³` triplets (degenerate ones included) as in RepDistiller. Inputs `[B, ...]` are
    flattened per example; widths may differ. Memory is `O(B² D + B³)`. Typical weight 50
    (RepDistiller's `w_a`).

    Args:
      student_embed: `[B, ...]` student features.
      teacher_embed: `[B, ...]` teacher features, same `B`.
      mask: optional `[B]` valid-example mask.
      reduction: "mean", "sum" or "none" (per-vertex values `1/B² Σ_jk huber(...)`).

    Returns:
      Scalar loss (float32 for half-precision inputs), or `[B]` per-vertex values.

    References:
      Park et al., Relational Knowledge Distillation, CVPR 2019.
    """
    _checks.check_reduction(reduction)
    s, t, valid = _embeddings(student_embed, teacher_embed, mask, flatten=True)
    return _per_anchor(optax.losses.huber_loss(_angles(s), _angles(t)), valid, reduction)


def _pkt_conditionals(x: jax.Array, valid: jax.Array, eps) -> jax.Array:
    x = x / (optax.safe_norm(x, 0.0, axis=1, keepdims=True) + eps)
    kernel = (jnp.matmul(x, x.T, precision=_HIGHEST) + 1.0) / 2.0
    kernel = jnp.where(valid[None, :], kernel, 0.0)
    return _safe_divide(kernel, jnp.sum(kernel, axis=1, keepdims=True))


def pkt(
    student_embed: jax.typing.ArrayLike,
    teacher_embed: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    eps: float = 1e-7,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Probabilistic knowledge transfer: KL between cosine-kernel conditional distributions.

    `k_ij = (cos(x_i, x_j) + 1) / 2`, `p_{j|i} = k_ij / Σ_l k_il` for student (`p^s`) and
    teacher (`p^t`), and `loss = 1/B² Σ_ij p^t_{j|i} log((p^t_{j|i} + ε) / (p^s_{j|i} + ε))`.
    This is RepDistiller's (and the authors') averaging: the mean over all `B²` entries, i.e.
    the row-wise KL(p^t ‖ p^s) averaged over rows and divided by `B`, which is why the typical
    weight is large: 30000 (RepDistiller). Vectors are normalized as `x / (‖x‖ + ε)`. Widths
    may differ.

    Args:
      student_embed: `[B, D_s]` student embeddings.
      teacher_embed: `[B, D_t]` teacher embeddings.
      mask: optional `[B]` valid-example mask.
      eps: the ε above.
      reduction: "mean", "sum" or "none" (per-row values `1/B Σ_j ...`).

    Returns:
      Scalar loss (float32 for half-precision inputs), or `[B]` per-row values.

    References:
      Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer,
      ECCV 2018.
    """
    _checks.check_reduction(reduction)
    s, t, valid = _embeddings(student_embed, teacher_embed, mask, flatten=False)
    p_s, p_t = _pkt_conditionals(s, valid, eps), _pkt_conditionals(t, valid, eps)
    values = p_t * (jnp.log(p_t + eps) - jnp.log(p_s + eps))
    return _per_anchor(values, valid, reduction)


def _cc_kernel(x: jax.Array, gamma, p_order: int) -> jax.Array:
    gram = jnp.matmul(x, x.T, precision=_HIGHEST)
    kernel, power = jnp.ones_like(gram), jnp.ones_like(gram)
    for p in range(1, p_order + 1):
        power = power * gram
        kernel = kernel + (2.0 * gamma) ** p / math.factorial(p) * power
    return jnp.exp(-2.0 * gamma) * kernel


def correlation_congruence(
    student_embed: jax.typing.ArrayLike,
    teacher_embed: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    gamma: float = 0.4,
    p_order: int = 2,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Correlation congruence (CCKD): distance between Gaussian-RBF correlation matrices.

    The RBF kernel `exp(−γ‖x_i − x_j‖²)` is replaced by its order-`P` Taylor expansion
    `k_ij = e^{−2γ} Σ_{p=0..P} (2γ)^p / p! · (x_i·x_j)^p` (exact for unit vectors as P → ∞),
    and `loss = ‖K_s − K_t‖_F / B²`: the Frobenius norm, not squared, over `B²`. This is
    torchdistill's `CCKDLoss` (gaussian kernel, reduction "batchmean"), applied to the
    embeddings as given (torchdistill feeds unnormalized linear projections). RepDistiller's
    `Correlation` class is a different, element-wise simplification and is not what this
    computes. Typical weight 0.003 next to KD (torchdistill, ImageNet). Widths may differ.

    Batch-relational: the norm does not split into per-example terms, so only
    `reduction="mean"` exists.

    Args:
      student_embed: `[B, D_s]` student embeddings (typically a trained linear projection).
      teacher_embed: `[B, D_t]` teacher embeddings.
      mask: optional `[B]` valid-example mask.
      gamma: the RBF γ.
      p_order: the Taylor order `P` (static, ≥ 1).
      reduction: must be "mean".

    Returns:
      Scalar loss (float32 for half-precision inputs).

    References:
      Peng et al., Correlation Congruence for Knowledge Distillation, ICCV 2019.
    """
    _checks.check_reduction(reduction)
    if reduction != "mean":
        raise ValueError(
            "`reduction` must be 'mean' for correlation_congruence (a batch-relational norm "
            f"with no per-example form), got {reduction!r}."
        )
    if isinstance(p_order, bool) or not isinstance(p_order, int) or p_order < 1:
        raise ValueError(f"`p_order` must be a Python int >= 1, got {p_order!r}.")
    s, t, valid = _embeddings(student_embed, teacher_embed, mask, flatten=False)
    pair = valid[:, None] & valid[None, :]
    diff = jnp.where(pair, _cc_kernel(s, gamma, p_order) - _cc_kernel(t, gamma, p_order), 0.0)
    n = jnp.maximum(jnp.sum(valid), 1).astype(diff.dtype)
    # safe_norm: the norm's gradient is NaN at zero (student == teacher) otherwise.
    return optax.safe_norm(diff, 0.0) / n**2


def _relation_log_probs(x: jax.Array, num_heads: int, key_valid: jax.Array, temperature):
    """`log softmax(X_a X_aᵀ / (sqrt(d_r) T))` per relation head `a`; `[B, A, L, L]`."""
    b, length, width = x.shape
    heads = x.reshape(b, length, num_heads, width // num_heads).transpose(0, 2, 1, 3)
    logits = jnp.einsum("bald,bamd->balm", heads, heads, precision=_HIGHEST)
    logits = logits / (math.sqrt(width // num_heads) * temperature)
    logits = jnp.where(key_valid, logits, -jnp.inf)
    # Masked keys get log-prob 0 instead of -inf: their terms in the KL become exp(0)·(0 − 0).
    return jnp.where(key_valid, jax.nn.log_softmax(logits, axis=-1), 0.0)


def _check_relation_inputs(student_qkv, teacher_qkv, num_relation_heads, mask):
    for seq, name in ((student_qkv, "student_qkv"), (teacher_qkv, "teacher_qkv")):
        if not isinstance(seq, Sequence) or isinstance(seq, str) or len(seq) == 0:
            raise TypeError(
                f"`{name}` must be a non-empty tuple of [B, L, D] arrays such as (q, k, v), "
                f"got {type(seq).__name__}."
            )
    if len(student_qkv) != len(teacher_qkv):
        raise ValueError(
            "`student_qkv` and `teacher_qkv` must hold the same number of relation inputs, got "
            f"{len(student_qkv)} and {len(teacher_qkv)}."
        )
    if isinstance(num_relation_heads, bool) or not isinstance(num_relation_heads, int):
        raise TypeError(f"`num_relation_heads` must be a Python int, got {num_relation_heads!r}.")
    if num_relation_heads < 1:
        raise ValueError(f"`num_relation_heads` must be >= 1, got {num_relation_heads}.")
    lead = jnp.shape(student_qkv[0])[:2]
    for i, (s, t) in enumerate(zip(student_qkv, teacher_qkv, strict=True)):
        for x, name in ((s, f"student_qkv[{i}]"), (t, f"teacher_qkv[{i}]")):
            _checks.check_floating(x, name)
            _checks.check_rank(x, name, rank=3)
            if jnp.shape(x)[:2] != lead:
                raise ValueError(
                    f"`{name}` must have leading [B, L] = {lead} like `student_qkv[0]`, got "
                    f"{name}.shape={tuple(jnp.shape(x))}."
                )
            if jnp.shape(x)[-1] % num_relation_heads:
                raise ValueError(
                    f"The width of `{name}` (shape {tuple(jnp.shape(x))}) must be divisible by "
                    f"`num_relation_heads`={num_relation_heads}."
                )
    _checks.check_mask(mask, lead, against="student_qkv[0]")


def attention_relation(
    student_qkv: Sequence[jax.typing.ArrayLike],
    teacher_qkv: Sequence[jax.typing.ArrayLike],
    *,
    num_relation_heads: int,
    mask: jax.typing.ArrayLike | None = None,
    temperature: float = 1.0,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """MiniLMv2 self-attention relation distillation: KL between Q-Q, K-K and V-V relations.

    Each input `X` (`[B, L, D]`, all heads concatenated) is split into `A` relation heads of
    width `d_r = D / A`, and `R_a = softmax(X_a X_aᵀ / (sqrt(d_r) T))` over key positions. The
    loss for one relation type is, per sequence, `1/(A·|x|) Σ_a Σ_t KL(R^t_{a,t} ‖ R^s_{a,t})`
    over its `|x|` valid query positions `t`, then averaged over sequences (the reference
    implementation's normalization). The result is the mean over the given relation types:
    pass `(q, k, v)` for MiniLMv2, i.e. weight 1/3 per type as in the Bloomberg reference
    setup (the paper writes a weighted sum over relation pairs). Student and teacher may
    differ in width and attention-head count; `A` is shared. Padded tokens (`mask` 0) are
    excluded as keys (logit −∞) and as query rows. Typical weight 1 (the only MiniLMv2 loss).

    Args:
      student_qkv: tuple of `[B, L, D_s]` arrays, e.g. the student's (queries, keys, values).
      teacher_qkv: tuple of `[B, L, D_t]` arrays, in the same order.
      num_relation_heads: `A` (static); must divide every width.
      mask: optional `[B, L]` token mask (1 = real token).
      temperature: `T`, divides the scaled logits of both (1 in MiniLMv2).
      reduction: "mean", "sum" or "none" (per-sequence values `[B]`).

    Returns:
      Scalar loss (float32 for half-precision inputs), or `[B]` per-sequence values.

    References:
      Wang et al., MiniLMv2: Multi-Head Self-Attention Relation Distillation for Compressing
      Pretrained Transformers, Findings of ACL 2021.
    """
    _checks.check_reduction(reduction)
    _check_relation_inputs(student_qkv, teacher_qkv, num_relation_heads, mask)
    batch, length = jnp.shape(student_qkv[0])[:2]
    tokens = jnp.ones((batch, length), bool) if mask is None else jnp.asarray(mask).astype(bool)
    has_tokens = jnp.any(tokens, axis=1)
    # Sequences without a single token keep all keys so their softmax stays finite; they are
    # dropped from the reduction below.
    keys = (tokens | ~has_tokens[:, None])[:, None, None, :]
    count = jnp.maximum(jnp.sum(tokens, axis=1), 1) * num_relation_heads
    per_sequence = 0.0
    for s, t in zip(student_qkv, teacher_qkv, strict=True):
        log_s = _relation_log_probs(_checks.to_float32(s), num_relation_heads, keys, temperature)
        log_t = _relation_log_probs(_checks.to_float32(t), num_relation_heads, keys, temperature)
        kl = optax.losses.kl_divergence_with_log_targets(log_s, log_t)  # [B, A, L]
        kl = jnp.sum(jnp.where(tokens[:, None, :], kl, 0.0), axis=(1, 2))
        per_sequence = per_sequence + kl / count
    per_sequence = per_sequence / len(student_qkv)
    return _checks.reduce(per_sequence, None if mask is None else has_tokens, reduction)
