"""Tests for jaxkd.losses.crd against a float64 NumPy version of RepDistiller's CRD."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.losses.crd import CRDState, crd, crd_contrast_indices, crd_init

STATIC = ("num_negatives", "exclude_positive", "reduction")
CRD = jax.jit(crd, static_argnames=STATIC)

# ---------------------------------------------------------------- float64 NumPy reference


def np_contrast_loss(p, num_data, eps=1e-7):
    """RepDistiller's ContrastLoss on probabilities `p` [B, 1 + K]."""
    m = p.shape[1] - 1
    pn = 1.0 / num_data
    log_d1 = np.log(p[:, 0] / (p[:, 0] + m * pn + eps))
    log_d0 = np.log((m * pn) / (p[:, 1:] + m * pn + eps))
    return -(log_d1 + log_d0.sum(axis=1))  # per example; the loss is the batch mean


def np_crd(s, t, contrast, mem_s, mem_t, z_s, z_t, temperature, eps=1e-7):
    """ContrastMemory + both ContrastLoss terms; returns per-example loss and the Z used."""
    num_data = mem_s.shape[0]
    out_s = np.exp(np.einsum("bkd,bd->bk", mem_t[contrast], s) / temperature)
    out_t = np.exp(np.einsum("bkd,bd->bk", mem_s[contrast], t) / temperature)
    z_s = out_s.mean() * num_data if z_s < 0 else z_s
    z_t = out_t.mean() * num_data if z_t < 0 else z_t
    per_example = np_contrast_loss(out_s / z_s, num_data, eps)
    per_example = per_example + np_contrast_loss(out_t / z_t, num_data, eps)
    return per_example, z_s, z_t


def np_update(memory, embed, indices, momentum):
    memory = np.array(memory, np.float64)
    rows = memory[indices] * momentum + embed * (1.0 - momentum)
    memory[indices] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return memory


def _unit(rng, shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _setup(seed=0, batch=4, dim=8, num_data=20, num_negatives=6):
    rng = np.random.default_rng(seed)
    state = crd_init(jax.random.key(seed), num_data=num_data, feat_dim=dim)
    s, t = _unit(rng, (batch, dim)), _unit(rng, (batch, dim))
    indices = rng.choice(num_data, size=batch, replace=False)
    contrast = np.concatenate(
        [indices[:, None], rng.integers(0, num_data, (batch, num_negatives))], axis=1
    )
    return state, s, t, indices, contrast


def _np_state(state):
    return np.asarray(state.student_memory, np.float64), np.asarray(
        state.teacher_memory, np.float64
    )


# ---------------------------------------------------------------- values and state updates


class CRDValueTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_first_call_matches_numpy(self):
        state, s, t, indices, contrast = _setup()
        fn = self.variant(functools.partial(crd, nce_t=0.1, momentum=0.3))
        loss, new = fn(
            jnp.float32(s), jnp.float32(t), indices, state, None, contrast_indices=contrast
        )
        mem_s, mem_t = _np_state(state)
        per, z_s, z_t = np_crd(s, t, contrast, mem_s, mem_t, -1.0, -1.0, 0.1)
        np.testing.assert_allclose(loss, per.mean(), rtol=1e-5)
        np.testing.assert_allclose([new.z_student, new.z_teacher], [z_s, z_t], rtol=1e-5)
        np.testing.assert_allclose(new.student_memory, np_update(mem_s, s, indices, 0.3), atol=1e-6)
        np.testing.assert_allclose(new.teacher_memory, np_update(mem_t, t, indices, 0.3), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_stored_normalizers_are_used_and_kept(self):
        state, s, t, indices, contrast = _setup(1)
        state = state._replace(z_student=jnp.float32(3.0), z_teacher=jnp.float32(50.0))
        fn = self.variant(functools.partial(crd, reduction="none"))
        per_example, new = fn(
            jnp.float32(s), jnp.float32(t), indices, state, None, contrast_indices=contrast
        )
        mem_s, mem_t = _np_state(state)
        expected, _, _ = np_crd(s, t, contrast, mem_s, mem_t, 3.0, 50.0, 0.07)
        np.testing.assert_allclose(per_example, expected, rtol=1e-5)
        assert float(new.z_student) == 3.0 and float(new.z_teacher) == 50.0


def test_normalizer_is_set_once():
    state, s, t, indices, contrast = _setup(2)
    _, state1 = CRD(jnp.float32(s), jnp.float32(t), indices, state, None, contrast_indices=contrast)
    rng = np.random.default_rng(3)
    s2, t2 = _unit(rng, s.shape), _unit(rng, t.shape)
    loss2, state2 = CRD(
        jnp.float32(s2), jnp.float32(t2), indices, state1, None, contrast_indices=contrast
    )
    mem_s, mem_t = _np_state(state1)
    z_s, z_t = float(state1.z_student), float(state1.z_teacher)
    per, _, _ = np_crd(s2, t2, contrast, mem_s, mem_t, z_s, z_t, 0.07)
    np.testing.assert_allclose(loss2, per.mean(), rtol=1e-5)
    assert float(state2.z_student) == z_s and float(state2.z_teacher) == z_t


def test_only_rows_at_indices_change_and_become_unit():
    state, s, t, indices, contrast = _setup(4, num_data=12)
    _, new = CRD(jnp.float32(s), jnp.float32(t), indices, state, None, contrast_indices=contrast)
    others = np.setdiff1d(np.arange(12), indices)
    for old_bank, new_bank in (
        (state.student_memory, new.student_memory),
        (state.teacher_memory, new.teacher_memory),
    ):
        np.testing.assert_array_equal(np.asarray(new_bank)[others], np.asarray(old_bank)[others])
        assert not np.allclose(np.asarray(new_bank)[indices], np.asarray(old_bank)[indices])
        np.testing.assert_allclose(np.linalg.norm(new_bank[indices], axis=1), 1.0, rtol=1e-6)


def test_mask_skips_padding_in_loss_normalizer_and_banks():
    state, s, t, indices, contrast = _setup(5, batch=5)
    mask = np.array([1, 1, 0, 1, 0], bool)
    padded_indices = indices.copy()
    padded_indices[2] = indices[0]  # padding may point at a real row: it must not be written
    padded_indices[4] = 10**6  # or far outside the bank
    loss, new = CRD(
        jnp.float32(s),
        jnp.float32(t),
        padded_indices,
        state,
        None,
        contrast_indices=np.where(mask[:, None], contrast, 0),
        mask=mask,
    )
    sub_loss, sub = CRD(
        jnp.float32(s[mask]),
        jnp.float32(t[mask]),
        indices[mask],
        state,
        None,
        contrast_indices=contrast[mask],
    )
    np.testing.assert_allclose(loss, sub_loss, rtol=1e-6)
    for a, b in zip(new, sub, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_reductions():
    state, s, t, indices, contrast = _setup(6)
    args = (jnp.float32(s), jnp.float32(t), indices, state, None)
    mean, _ = CRD(*args, contrast_indices=contrast)
    per, _ = CRD(*args, contrast_indices=contrast, reduction="none")
    total, _ = CRD(*args, contrast_indices=contrast, reduction="sum")
    assert per.shape == (4,) and np.all(per > 0)
    np.testing.assert_allclose([np.mean(per), np.sum(per)], [mean, total], rtol=1e-6)


def test_default_hyperparameters_are_repdistillers():
    state, s, t, indices, _ = _setup(7, batch=2, dim=4, num_data=10)
    key = jax.random.key(8)
    loss, new = CRD(jnp.float32(s), jnp.float32(t), indices, state, key)
    contrast = np.asarray(crd_contrast_indices(key, indices, num_data=10, num_negatives=16384))
    assert contrast.shape == (2, 16385)
    mem_s, mem_t = _np_state(state)
    per, _, _ = np_crd(s, t, contrast, mem_s, mem_t, -1.0, -1.0, temperature=0.07)
    np.testing.assert_allclose(loss, per.mean(), rtol=5e-5)  # float32 sum over 16384 terms
    np.testing.assert_allclose(new.student_memory, np_update(mem_s, s, indices, 0.5), atol=1e-6)


# ---------------------------------------------------------------- negative sampling


def test_sampled_negatives():
    indices = jnp.array([0, 3, 4])
    key = jax.random.key(9)
    contrast = np.asarray(crd_contrast_indices(key, indices, num_data=5, num_negatives=3000))
    assert contrast.shape == (3, 3001)
    np.testing.assert_array_equal(contrast[:, 0], indices)
    assert contrast.min() >= 0 and contrast.max() <= 4
    # Like RepDistiller, plain uniform sampling can draw the positive itself.
    assert np.all(np.any(contrast[:, 1:] == np.asarray(indices)[:, None], axis=1))

    excluded = crd_contrast_indices(
        key, indices, num_data=5, num_negatives=3000, exclude_positive=True
    )
    excluded = np.asarray(excluded)
    for row, positive in zip(excluded, np.asarray(indices), strict=True):
        counts = np.bincount(row[1:], minlength=5)
        assert counts[positive] == 0
        others = np.delete(counts, positive)
        np.testing.assert_allclose(others / 3000, 0.25, atol=0.04)


def test_key_sampling_equals_explicit_indices():
    state, s, t, indices, _ = _setup(10)
    key = jax.random.key(11)
    fn = functools.partial(CRD, num_negatives=7, exclude_positive=True)
    loss, new = fn(jnp.float32(s), jnp.float32(t), indices, state, key)
    contrast = crd_contrast_indices(
        key, indices, num_data=20, num_negatives=7, exclude_positive=True
    )
    loss2, new2 = CRD(
        jnp.float32(s), jnp.float32(t), indices, state, None, contrast_indices=contrast
    )
    np.testing.assert_allclose(loss, loss2, rtol=1e-6)
    chex.assert_trees_all_close(new, new2)
    other, _ = fn(jnp.float32(s), jnp.float32(t), indices, state, jax.random.key(12))
    assert float(other) != float(loss)


# ---------------------------------------------------------------- transformations and dtypes


def test_grads_flow_to_embeddings_not_banks():
    state, s, t, indices, contrast = _setup(13)

    def loss_fn(s, t, state):
        return crd(s, t, indices, state, None, contrast_indices=contrast)[0]

    grads = jax.jit(jax.grad(loss_fn, argnums=(0, 1, 2)))(jnp.float32(s), jnp.float32(t), state)
    gs, gt, gstate = grads
    assert np.all(np.isfinite(gs)) and np.all(np.isfinite(gt))
    assert np.abs(gs).max() > 0 and np.abs(gt).max() > 0
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(gstate))


def test_vmap_over_independent_states():
    setups = [_setup(20 + g) for g in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[x[0] for x in setups])
    s, t, indices, contrast = (np.stack([x[i] for x in setups]) for i in range(1, 5))

    def one(s, t, indices, state, contrast):
        return crd(s, t, indices, state, None, contrast_indices=contrast)

    losses, states = jax.jit(jax.vmap(one))(
        jnp.float32(s), jnp.float32(t), indices, stacked, contrast
    )
    for g in range(3):
        loss, new = CRD(
            jnp.float32(s[g]),
            jnp.float32(t[g]),
            indices[g],
            setups[g][0],
            None,
            contrast_indices=contrast[g],
        )
        np.testing.assert_allclose(losses[g], loss, rtol=1e-5)
        chex.assert_trees_all_close(jax.tree.map(lambda x, g=g: x[g], states), new, rtol=1e-5)


def test_bf16_embeddings_give_float32():
    state, s, t, indices, contrast = _setup(14)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    loss, new = CRD(s16, t16, indices, state, None, contrast_indices=contrast)
    assert loss.dtype == jnp.float32 and new.student_memory.dtype == jnp.float32
    expected, _ = CRD(
        s16.astype(jnp.float32),
        t16.astype(jnp.float32),
        indices,
        state,
        None,
        contrast_indices=contrast,
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_crd_init():
    state = crd_init(jax.random.key(0), num_data=2000, feat_dim=16)
    assert isinstance(state, CRDState)
    assert state.student_memory.shape == state.teacher_memory.shape == (2000, 16)
    bound = 1.0 / math.sqrt(16 / 3)
    for bank in (state.student_memory, state.teacher_memory):
        assert bank.dtype == jnp.float32 and float(jnp.abs(bank).max()) <= bound
        # U(-a, a) with a = sqrt(3 / D): expected squared row norm 1, as RepDistiller.
        np.testing.assert_allclose(jnp.mean(jnp.sum(bank**2, axis=1)), 1.0, atol=0.02)
    assert not np.allclose(state.student_memory, state.teacher_memory)
    assert float(state.z_student) < 0 and float(state.z_teacher) < 0
    with pytest.raises(ValueError, match="num_data"):
        crd_init(jax.random.key(0), num_data=0, feat_dim=4)
    with pytest.raises(ValueError, match="feat_dim"):
        crd_init(jax.random.key(0), num_data=4, feat_dim=2.5)


@settings(max_examples=20, deadline=None)
@given(
    batch=st.sampled_from([1, 3]),
    dim=st.sampled_from([2, 5]),
    num_data=st.sampled_from([4, 9]),
    num_negatives=st.sampled_from([1, 5]),
    nce_t=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_numpy_positive(batch, dim, num_data, num_negatives, nce_t, seed):
    state, s, t, indices, contrast = _setup(seed, batch, dim, num_data, num_negatives)
    loss, new = CRD(
        jnp.float32(s),
        jnp.float32(t),
        indices,
        state,
        None,
        contrast_indices=contrast,
        nce_t=nce_t,
    )
    mem_s, mem_t = _np_state(state)
    per, _, _ = np_crd(s, t, contrast, mem_s, mem_t, -1.0, -1.0, nce_t)
    assert np.isfinite(loss) and float(loss) > 0
    np.testing.assert_allclose(loss, per.mean(), rtol=1e-4)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new))


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs():
    state, s, t, indices, contrast = _setup(15)
    s, t = jnp.float32(s), jnp.float32(t)
    call = functools.partial(crd, contrast_indices=contrast)
    with pytest.raises(ValueError, match=r"student_embed.*teacher_embed.*\(4, 8\).*\(4, 6\)"):
        call(s, t[:, :6], indices, state, None)
    with pytest.raises(ValueError, match=r"state.student_memory.*\[num_data, 6\].*\(20, 8\)"):
        call(s[:, :6], t[:, :6], indices, state, None)
    with pytest.raises(TypeError, match=r"student_embed.*floating.*int32"):
        call(s.astype(jnp.int32), t, indices, state, None)
    with pytest.raises(ValueError, match=r"teacher_embed.*rank 2.*\(4,\)"):
        call(s, t[:, 0], indices, state, None)
    with pytest.raises(TypeError, match=r"indices.*integer.*float32"):
        call(s, t, jnp.float32(indices), state, None)
    with pytest.raises(ValueError, match=r"indices.*\(4,\).*\(3,\)"):
        call(s, t, indices[:3], state, None)
    with pytest.raises(ValueError, match=r"contrast_indices.*\(4, 1\)"):
        crd(s, t, indices, state, None, contrast_indices=contrast[:, :1])
    with pytest.raises(TypeError, match=r"contrast_indices.*integer.*float"):
        crd(s, t, indices, state, None, contrast_indices=contrast.astype(np.float32))
    with pytest.raises(ValueError, match=r"mask.*\(4,\).*\(4, 1\)"):
        call(s, t, indices, state, None, mask=jnp.ones((4, 1)))
    with pytest.raises(ValueError, match=r"key.*contrast_indices"):
        crd(s, t, indices, state, None)
    with pytest.raises(TypeError, match=r"state.*CRDState.*tuple"):
        call(s, t, indices, tuple(state), None)
    with pytest.raises(ValueError, match="num_negatives"):
        crd(s, t, indices, state, jax.random.key(0), num_negatives=0)
    with pytest.raises(ValueError, match="reduction"):
        call(s, t, indices, state, None, reduction="batchmean")
