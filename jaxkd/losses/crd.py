"""Contrastive representation distillation (CRD) with its memory bank as an explicit pytree.

`crd_init` builds a `CRDState` (one bank of past embeddings per side plus the NCE normalizers);
`crd` returns the loss and the updated state. Both are pure and `jax.jit`-able: the caller
threads the state through its train step and checkpoints it with the rest of the train state.
The projection heads that produce the embeddings are not part of the loss (see
`jaxkd.adapters.Embed`): pass their L2-normalized outputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses import _checks


class CRDState(NamedTuple):
    """Memory banks and NCE normalizers of CRD (RepDistiller's `ContrastMemory` buffers).

    Attributes:
      student_memory: `[num_data, feat_dim]` running student embeddings per dataset index
        (RepDistiller's `memory_v1`); the teacher embeddings are contrasted against it.
      teacher_memory: `[num_data, feat_dim]` running teacher embeddings (`memory_v2`); the
        student embeddings are contrasted against it.
      z_student: scalar normalizer `Z` of the student-anchored scores (`Z_v1`); negative
        means "not yet set": the first `crd` call estimates it from its batch.
      z_teacher: the same for the teacher-anchored scores (`Z_v2`).
    """

    student_memory: jax.Array
    teacher_memory: jax.Array
    z_student: jax.Array
    z_teacher: jax.Array


def crd_init(
    key: jax.Array, *, num_data: int, feat_dim: int, dtype: jnp.dtype = jnp.float32
) -> CRDState:
    """Initial CRD state: two random memory banks and unset normalizers.

    As RepDistiller's `ContrastMemory`, every bank entry is drawn from `U(−a, a)` with
    `a = 1 / sqrt(feat_dim / 3)`, so rows have expected squared norm 1 without being exactly
    unit vectors; a row becomes unit-norm the first time its index is updated. `Z` starts at
    the sentinel −1.

    Args:
      key: PRNG key.
      num_data: number of training examples (bank rows); dataset indices are `0..num_data-1`.
      feat_dim: embedding width (RepDistiller's `feat_dim`, 128).
      dtype: bank dtype.

    Returns:
      A `CRDState`.

    References:
      Tian et al., Contrastive Representation Distillation, ICLR 2020.
    """
    for value, name in ((num_data, "num_data"), (feat_dim, "feat_dim")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a Python int >= 1, got {value!r}.")
    bound = 1.0 / math.sqrt(feat_dim / 3.0)
    k_student, k_teacher = jax.random.split(key)
    shape = (num_data, feat_dim)
    unset = jnp.array(-1.0, jnp.float32)
    return CRDState(
        student_memory=jax.random.uniform(k_student, shape, dtype, -bound, bound),
        teacher_memory=jax.random.uniform(k_teacher, shape, dtype, -bound, bound),
        z_student=unset,
        z_teacher=unset,
    )


def crd_contrast_indices(
    key: jax.Array,
    indices: jax.typing.ArrayLike,
    *,
    num_data: int,
    num_negatives: int,
    exclude_positive: bool = False,
) -> jax.Array:
    """Bank rows to contrast: `[B, 1 + num_negatives]`, column 0 the positive `indices`.

    Negatives are uniform over `0..num_data-1` with replacement, as RepDistiller's uniform
    alias sampler, which may draw the positive itself. With `exclude_positive=True` they are
    uniform over the other `num_data − 1` rows.
    """
    if isinstance(num_negatives, bool) or not isinstance(num_negatives, int) or num_negatives < 1:
        raise ValueError(f"`num_negatives` must be a Python int >= 1, got {num_negatives!r}.")
    indices = jnp.asarray(indices)
    shape = (indices.shape[0], num_negatives)
    if exclude_positive:
        if num_data < 2:
            raise ValueError(f"`exclude_positive` needs `num_data` >= 2, got {num_data}.")
        negatives = jax.random.randint(key, shape, 0, num_data - 1, dtype=indices.dtype)
        # Shifting the draws at or above the positive skips it and keeps the rest uniform.
        negatives = negatives + (negatives >= indices[:, None])
    else:
        negatives = jax.random.randint(key, shape, 0, num_data, dtype=indices.dtype)
    return jnp.concatenate([indices[:, None], negatives], axis=1)


def _check_crd_inputs(student_embed, teacher_embed, indices, state, contrast_indices, mask):
    if not isinstance(state, CRDState):
        raise TypeError(f"`state` must be a CRDState from crd_init, got {type(state).__name__}.")
    for x, name in ((student_embed, "student_embed"), (teacher_embed, "teacher_embed")):
        _checks.check_floating(x, name)
        _checks.check_rank(x, name, rank=2)
    _checks.check_same_shape(student_embed, teacher_embed, "student_embed", "teacher_embed")
    batch, width = jnp.shape(student_embed)
    banks = {"state.student_memory": state.student_memory}
    banks["state.teacher_memory"] = state.teacher_memory
    for name, bank in banks.items():
        if jnp.ndim(bank) != 2 or jnp.shape(bank)[1] != width:
            raise ValueError(
                f"`{name}` must be [num_data, {width}] to match "
                f"student_embed.shape={(batch, width)}, got {name}.shape={tuple(jnp.shape(bank))}."
            )
    if jnp.shape(state.student_memory) != jnp.shape(state.teacher_memory):
        raise ValueError(
            "`state.student_memory` and `state.teacher_memory` must have the same shape, got "
            f"{tuple(jnp.shape(state.student_memory))} and "
            f"{tuple(jnp.shape(state.teacher_memory))}."
        )
    _checks.check_labels(indices, (batch,), name="indices")
    if contrast_indices is not None:
        if not jnp.issubdtype(jnp.result_type(contrast_indices), jnp.integer):
            raise TypeError(
                "`contrast_indices` must be integer bank rows, got dtype "
                f"{jnp.result_type(contrast_indices)}."
            )
        shape = tuple(jnp.shape(contrast_indices))
        if len(shape) != 2 or shape[0] != batch or shape[1] < 2:
            raise ValueError(
                f"`contrast_indices` must be [B, 1 + K] = [{batch}, 1 + K] with K >= 1 (column 0 "
                f"the positive), got contrast_indices.shape={shape} for "
                f"student_embed.shape={(batch, width)}."
            )
    _checks.check_mask(mask, (batch,), against="student_embed")


def _nce_per_example(log_p: jax.Array, num_data: int, eps: float) -> jax.Array:
    """RepDistiller's `ContrastLoss` per anchor, in log space.

    `h = P / (P + K/N + ε)`; value `−log h(pos) − Σ_k log((K/N) / (P_k + K/N + ε))`.
    """
    num_negatives = log_p.shape[1] - 1
    noise = num_negatives / num_data
    log_denominator = jnp.logaddexp(log_p, jnp.log(noise + eps))
    log_d1 = log_p[:, 0] - log_denominator[:, 0]
    log_d0 = math.log(noise) - log_denominator[:, 1:]
    return -(log_d1 + jnp.sum(log_d0, axis=1))


def _log_normalizer(z: jax.Array, scaled: jax.Array, valid: jax.Array, num_data: int):
    """`log Z`: the stored one, or (if unset) `log(N · mean exp(scores / T))` of this batch."""
    count = jnp.sum(valid) * scaled.shape[1]
    mean = jax.nn.logsumexp(jnp.where(valid[:, None], scaled, -jnp.inf)) - jnp.log(
        jnp.maximum(count, 1)
    )
    estimate = jnp.where(count > 0, mean, 0.0) + math.log(num_data)
    unset = z < 0
    log_z = jnp.where(unset, estimate, jnp.log(jnp.where(unset, 1.0, z)))
    new_z = jnp.where(unset & (count > 0), jnp.exp(estimate), z)
    return jax.lax.stop_gradient(log_z), jax.lax.stop_gradient(new_z).astype(z.dtype)


def _update_bank(bank, embed, indices, valid, momentum):
    """Momentum update of the rows at `indices`, renormalized; padded rows are not written."""
    rows = optax.incremental_update(jax.lax.stop_gradient(embed), bank[indices], 1.0 - momentum)
    rows = rows / jnp.maximum(jnp.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    targets = jnp.where(valid, indices, bank.shape[0])  # out of range: dropped
    return bank.at[targets].set(rows.astype(bank.dtype), mode="drop")


def crd(
    student_embed: jax.typing.ArrayLike,
    teacher_embed: jax.typing.ArrayLike,
    indices: jax.typing.ArrayLike,
    state: CRDState,
    key: jax.Array | None,
    *,
    num_negatives: int = 16384,
    nce_t: float = 0.07,
    momentum: float = 0.5,
    contrast_indices: jax.typing.ArrayLike | None = None,
    exclude_positive: bool = False,
    mask: jax.typing.ArrayLike | None = None,
    eps: float = 1e-7,
    reduction: _checks.Reduction = "mean",
) -> tuple[jax.Array, CRDState]:
    """Contrastive representation distillation loss (NCE against memory banks) and new state.

    With bank rows `m` at `contrast_indices` (column 0 the positive), the student anchor `s`
    scores `P_k = exp(m^t_k · s / T) / Z_s` against the teacher bank and the teacher anchor
    `t` scores `exp(m^s_k · t / T) / Z_t` against the student bank. Each side's NCE loss is
    RepDistiller's `ContrastLoss`: with `K` negatives and noise `K/N`,
    `−log(P_0 / (P_0 + K/N + ε)) − Σ_{k≥1} log((K/N) / (P_k + K/N + ε))`,
    summed over both sides and averaged over the batch; computed in log space. `Z` is set once,
    from the first batch, to `N · mean(exp(scores / T))` (constant, no gradient). Banks enter
    without gradient; afterwards both are updated at `indices`:
    `m ← normalize(momentum · m + (1 − momentum) · embed)`. Typical weight 0.8 (RepDistiller).

    Without `contrast_indices`, negatives are drawn uniformly from all `N` rows with
    `key` (see `crd_contrast_indices`; like RepDistiller this can draw the positive unless
    `exclude_positive`). RepDistiller's CIFAR pipeline instead passes class-conditional
    negatives from the data loader: give those as `contrast_indices`.

    Args:
      student_embed: `[B, feat_dim]` L2-normalized student embeddings.
      teacher_embed: `[B, feat_dim]` L2-normalized teacher embeddings.
      indices: `[B]` int dataset indices of the examples (unique within a batch).
      state: `CRDState` from `crd_init` or the previous call.
      key: PRNG key for negative sampling; may be None when `contrast_indices` is given.
      num_negatives: `K` (static), used when sampling.
      nce_t: temperature `T`.
      momentum: bank momentum.
      contrast_indices: optional `[B, 1 + K]` int bank rows, column 0 the positive.
      exclude_positive: sample negatives among rows other than the positive (static).
      mask: optional `[B]` valid-example mask; padded examples neither count nor update banks.
      eps: the ε above.
      reduction: "mean", "sum" or "none" (per-example values, both sides summed).

    Returns:
      `(loss, new_state)`; loss is a float32 scalar (or `[B]` with `reduction="none"`).

    References:
      Tian et al., Contrastive Representation Distillation, ICLR 2020.
    """
    _checks.check_reduction(reduction)
    _check_crd_inputs(student_embed, teacher_embed, indices, state, contrast_indices, mask)
    num_data = state.student_memory.shape[0]
    indices = jnp.asarray(indices)
    if contrast_indices is None:
        if key is None:
            raise ValueError("`key` is required when `contrast_indices` is not given.")
        contrast_indices = crd_contrast_indices(
            key,
            indices,
            num_data=num_data,
            num_negatives=num_negatives,
            exclude_positive=exclude_positive,
        )
    contrast_indices = jnp.asarray(contrast_indices)
    valid = jnp.ones(indices.shape, bool) if mask is None else jnp.asarray(mask).astype(bool)
    s, t = _checks.to_float32(student_embed), _checks.to_float32(teacher_embed)

    def side(bank, anchor, z):
        rows = jax.lax.stop_gradient(jnp.take(bank, contrast_indices, axis=0)).astype(anchor.dtype)
        scaled = jnp.einsum("bkd,bd->bk", rows, anchor, precision=jax.lax.Precision.HIGHEST)
        scaled = scaled / nce_t
        log_z, new_z = _log_normalizer(z, scaled, valid, num_data)
        return _nce_per_example(scaled - log_z, num_data, eps), new_z

    loss_s, z_student = side(state.teacher_memory, s, state.z_student)
    loss_t, z_teacher = side(state.student_memory, t, state.z_teacher)
    new_state = CRDState(
        student_memory=_update_bank(state.student_memory, s, indices, valid, momentum),
        teacher_memory=_update_bank(state.teacher_memory, t, indices, valid, momentum),
        z_student=z_student,
        z_teacher=z_teacher,
    )
    return _checks.reduce(loss_s + loss_t, valid, reduction), new_state
