"""Tests for jaxkd.losses.relations against float64 NumPy versions of the papers' formulas."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxkd.losses.relations import (
    attention_relation,
    correlation_congruence,
    pkt,
    rkd_angle,
    rkd_distance,
)

# ---------------------------------------------------------------- float64 NumPy references


def np_smooth_l1(x):
    a = np.abs(x)
    return np.where(a < 1.0, 0.5 * a * a, a - 0.5)


def np_distances(e):
    return np.sqrt(np.sum((e[:, None, :] - e[None, :, :]) ** 2, axis=-1))


def np_rkd_distance(s, t):
    def normalized(e):
        d = np_distances(e.reshape(len(e), -1))
        off = ~np.eye(len(e), dtype=bool)
        return d / d[off].mean()

    return np_smooth_l1(normalized(s) - normalized(t)).mean()


def np_rkd_angle(s, t):
    def angles(e):
        e = e.reshape(len(e), -1)
        diff = e[None, :, :] - e[:, None, :]
        unit = diff / np.maximum(np.linalg.norm(diff, axis=-1, keepdims=True), 1e-12)
        return np.einsum("ijd,ikd->ijk", unit, unit)

    return np_smooth_l1(angles(s) - angles(t)).mean()


def np_pkt(s, t, eps=1e-7):
    def conditionals(x):
        x = x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)
        k = (x @ x.T + 1.0) / 2.0
        return k / k.sum(axis=1, keepdims=True)

    p_s, p_t = conditionals(s), conditionals(t)
    return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


def np_cc(s, t, gamma=0.4, p_order=2):
    def kernel(x):
        b = len(x)
        k = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                dot = float(x[i] @ x[j])
                k[i, j] = sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot**p
                    for p in range(p_order + 1)
                )
        return k

    return np.sqrt(np.sum((kernel(s) - kernel(t)) ** 2)) / len(s) ** 2


def np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def np_attention_relation(student, teacher, heads, mask=None, temperature=1.0):
    """Per sequence: select the real tokens explicitly, then MiniLMv2's formula."""
    batch, length = student[0].shape[:2]
    mask = np.ones((batch, length), bool) if mask is None else np.asarray(mask, bool)
    per_sequence = np.zeros(batch)
    for s_all, t_all in zip(student, teacher, strict=True):
        for b in range(batch):
            idx = np.flatnonzero(mask[b])
            if len(idx) == 0:
                continue
            total = 0.0
            for a in range(heads):
                rel = []
                for x in (s_all[b, idx], t_all[b, idx]):
                    d_r = x.shape[-1] // heads
                    h = x[:, a * d_r : (a + 1) * d_r]
                    rel.append(np_log_softmax(h @ h.T / math.sqrt(d_r) / temperature))
                log_s, log_t = rel
                total += np.sum(np.exp(log_t) * (log_t - log_s))
            per_sequence[b] += total / (heads * len(idx)) / len(student)
    keep = mask.any(axis=1)
    return per_sequence[keep].mean(), per_sequence


def _pair(seed, b=6, ds=5, dt=7, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, ds)) * scale, rng.normal(size=(b, dt)) * scale


VECTOR_LOSSES = {
    "rkd_distance": (rkd_distance, np_rkd_distance),
    "rkd_angle": (rkd_angle, np_rkd_angle),
    "pkt": (pkt, np_pkt),
    "correlation_congruence": (correlation_congruence, np_cc),
}
SCALE_INVARIANT = ("rkd_distance", "rkd_angle", "pkt")
# Compiled once per loss and shape: eager op-by-op dispatch is what makes tests slow.
JIT = {name: jax.jit(fn, static_argnames="reduction") for name, (fn, _) in VECTOR_LOSSES.items()}
VALUE_AND_GRADS = {
    name: jax.jit(jax.value_and_grad(fn, argnums=(0, 1))) for name, (fn, _) in VECTOR_LOSSES.items()
}
# ---------------------------------------------------------------- vector relation losses


class VectorRelationTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(name, name) for name in VECTOR_LOSSES])
    def test_matches_numpy(self, name):
        fn, ref = VECTOR_LOSSES[name]
        s, t = _pair(0)
        got = self.variant(fn)(jnp.float32(s), jnp.float32(t))
        self.assertEqual(got.shape, ())
        np.testing.assert_allclose(got, ref(s, t), rtol=2e-5, atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cc_hyperparameters_traced(self):
        s, t = _pair(1)
        fn = self.variant(functools.partial(correlation_congruence, p_order=3))
        got = fn(jnp.float32(s) / 3, jnp.float32(t) / 3, gamma=jnp.float32(0.7))
        np.testing.assert_allclose(got, np_cc(s / 3, t / 3, 0.7, 3), rtol=2e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_pkt_eps(self):
        s, t = _pair(2)
        got = self.variant(pkt)(jnp.float32(s), jnp.float32(t), eps=1e-3)
        np.testing.assert_allclose(got, np_pkt(s, t, eps=1e-3), rtol=2e-5)


@pytest.mark.parametrize("name", list(VECTOR_LOSSES))
def test_feature_maps_are_flattened_for_rkd_only(name):
    fn, _ = VECTOR_LOSSES[name]
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(4, 2, 3, 2)), rng.normal(size=(4, 6))
    if name.startswith("rkd"):
        flat = JIT[name](jnp.float32(s.reshape(4, -1)), jnp.float32(t))
        np.testing.assert_allclose(JIT[name](jnp.float32(s), jnp.float32(t)), flat, rtol=1e-6)
    else:
        with pytest.raises(ValueError, match=r"student_embed.*rank 2.*\(4, 2, 3, 2\)"):
            fn(jnp.float32(s), jnp.float32(t))


@pytest.mark.parametrize("name", list(VECTOR_LOSSES))
def test_mask_equals_valid_subset(name):
    fn = JIT[name]
    s, t = _pair(4, b=7)
    keep = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    masked = fn(jnp.float32(s), jnp.float32(t), mask=jnp.asarray(keep))
    subset = fn(jnp.float32(s[keep]), jnp.float32(t[keep]))
    np.testing.assert_allclose(masked, subset, rtol=2e-5, atol=1e-7)
    # Padded rows may hold anything, including huge values.
    s[~keep] *= 1e6
    np.testing.assert_allclose(
        fn(jnp.float32(s), jnp.float32(t), mask=jnp.float32(keep)), subset, rtol=2e-5
    )


@pytest.mark.parametrize("name", SCALE_INVARIANT)
def test_reductions_per_anchor(name):
    fn = JIT[name]
    s, t = _pair(5)
    keep = jnp.array([1, 1, 0, 1, 1, 1], bool)
    mean = fn(jnp.float32(s), jnp.float32(t), mask=keep)
    per = fn(jnp.float32(s), jnp.float32(t), mask=keep, reduction="none")
    total = fn(jnp.float32(s), jnp.float32(t), mask=keep, reduction="sum")
    assert per.shape == (6,) and float(per[2]) == 0.0
    np.testing.assert_allclose(jnp.sum(per) / 5, mean, rtol=1e-6)
    np.testing.assert_allclose(total, 5 * mean, rtol=1e-6)


def test_cc_has_only_mean_reduction():
    s, t = _pair(6)
    with pytest.raises(ValueError, match=r"reduction.*'none'"):
        correlation_congruence(jnp.float32(s), jnp.float32(t), reduction="none")
    with pytest.raises(ValueError, match="p_order"):
        correlation_congruence(jnp.float32(s), jnp.float32(t), p_order=0)


@pytest.mark.parametrize("name", list(VECTOR_LOSSES))
def test_zero_at_equal_and_finite_grads(name):
    s, _ = _pair(7, ds=7)
    x = jnp.float32(s)
    value, grads = VALUE_AND_GRADS[name](x, x)
    assert abs(float(value)) < 1e-6
    assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("name", list(VECTOR_LOSSES))
def test_coincident_points_have_finite_grads(name):
    s, t = _pair(8)
    s[1] = s[0]  # a repeated example: zero distance, zero difference vector
    s[3] = 0.0  # a zero vector: zero norm
    t[2] = t[4]
    _, grads = VALUE_AND_GRADS[name](jnp.float32(s), jnp.float32(t))
    assert all(np.all(np.isfinite(g)) for g in grads)
    same = jnp.zeros((6, 5), jnp.float32)  # all examples identical
    _, grads = VALUE_AND_GRADS[name](same, jnp.ones((6, 7), jnp.float32))
    assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("name", list(VECTOR_LOSSES))
def test_large_magnitude(name):
    _, ref = VECTOR_LOSSES[name]
    s, t = _pair(9, scale=1e4)
    value, grads = VALUE_AND_GRADS[name](jnp.float32(s), jnp.float32(t))
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)
    if name in SCALE_INVARIANT:
        np.testing.assert_allclose(value, ref(s, t), rtol=1e-4)


@pytest.mark.parametrize("name", list(VECTOR_LOSSES))
def test_bf16_gives_float32(name):
    fn = JIT[name]
    s, t = _pair(10)
    s16, t16 = jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16)
    got = fn(s16, t16)
    assert got.dtype == jnp.float32
    expected = fn(s16.astype(jnp.float32), t16.astype(jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("name", list(VECTOR_LOSSES))
def test_vmap_over_groups(name):
    fn, _ = VECTOR_LOSSES[name]
    rng = np.random.default_rng(11)
    s, t = jnp.float32(rng.normal(size=(3, 6, 5))), jnp.float32(rng.normal(size=(3, 6, 7)))
    batched = jax.jit(jax.vmap(fn))(s, t)
    np.testing.assert_allclose(batched, [JIT[name](s[g], t[g]) for g in range(3)], rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(list(VECTOR_LOSSES)),
    batch=st.sampled_from([2, 6]),
    ds=st.sampled_from([2, 5]),  # D = 1 puts the PKT kernel at exactly 0, the ε scale
    dt=st.sampled_from([3, 7]),
    log_scale=st.floats(-2.0, 2.0),
    seed=st.integers(0, 2**16),
)
def test_property_matches_numpy_nonnegative(name, batch, ds, dt, log_scale, seed):
    _, ref = VECTOR_LOSSES[name]
    fn = JIT[name]
    if name == "correlation_congruence":
        log_scale = min(log_scale, 0.0)  # the Taylor kernel grows as |x|^(2P)
    s, t = _pair(seed, b=batch, ds=ds, dt=dt, scale=10.0**log_scale)
    got = float(fn(jnp.float32(s), jnp.float32(t)))
    expected = ref(s, t)
    assert got >= -1e-6
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(VECTOR_LOSSES))
def test_bad_inputs(name):
    fn, _ = VECTOR_LOSSES[name]
    s, t = jnp.zeros((4, 3)), jnp.zeros((5, 3))
    with pytest.raises(ValueError, match=r"student_embed.*teacher_embed.*\(4, 3\).*\(5, 3\)"):
        fn(s, t)
    with pytest.raises(ValueError, match=r"teacher_embed.*rank.*\(4,\)"):
        fn(s, jnp.zeros((4,)))
    with pytest.raises(TypeError, match=r"student_embed.*floating.*\(4, 3\).*int32"):
        fn(jnp.zeros((4, 3), jnp.int32), s)
    with pytest.raises(ValueError, match=r"mask.*\(4,\).*\(4, 1\)"):
        fn(s, s, mask=jnp.ones((4, 1)))
    with pytest.raises(ValueError, match="reduction"):
        fn(s, s, reduction="batchmean")


def test_huber_is_torch_smooth_l1():
    x = np.linspace(-3.0, 3.0, 61)
    got = jax.vmap(lambda v: optax.losses.huber_loss(v, 0.0))(jnp.float32(x))
    np.testing.assert_allclose(got, np_smooth_l1(x), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- MiniLMv2 attention relations


def _qkv(seed, batch=3, length=5, widths=(8, 8, 4), scale=1.0):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(batch, length, w)) * scale for w in widths)


def _f32(xs):
    return tuple(jnp.float32(x) for x in xs)


ATTN = jax.jit(attention_relation, static_argnames=("num_relation_heads", "reduction"))
ATTN2_VALUE_AND_GRADS = jax.jit(
    jax.value_and_grad(functools.partial(attention_relation, num_relation_heads=2), (0, 1))
)


class AttentionRelationTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_different_widths(self):
        student, teacher = _qkv(0, widths=(4, 8, 6)), _qkv(1, widths=(12, 16, 10))
        fn = self.variant(functools.partial(attention_relation, num_relation_heads=2))
        expected, _ = np_attention_relation(student, teacher, 2)
        np.testing.assert_allclose(fn(_f32(student), _f32(teacher)), expected, rtol=2e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_and_temperature(self):
        student, teacher = _qkv(2, batch=4), _qkv(3, batch=4, widths=(12, 12, 8))
        mask = np.array([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
        fn = self.variant(
            functools.partial(attention_relation, num_relation_heads=4, reduction="none")
        )
        got = fn(_f32(student), _f32(teacher), mask=jnp.asarray(mask), temperature=2.0)
        mean, per_sequence = np_attention_relation(student, teacher, 4, mask, temperature=2.0)
        np.testing.assert_allclose(got, per_sequence, rtol=2e-5, atol=1e-7)
        got_mean = attention_relation(
            _f32(student), _f32(teacher), num_relation_heads=4, mask=mask, temperature=2.0
        )
        np.testing.assert_allclose(got_mean, mean, rtol=2e-5)


def test_attention_relation_single_relation_and_mean_over_types():
    student, teacher = _qkv(4), _qkv(5)
    per_type = [
        attention_relation(_f32(student[i : i + 1]), _f32(teacher[i : i + 1]), num_relation_heads=2)
        for i in range(3)
    ]
    both = attention_relation(_f32(student), _f32(teacher), num_relation_heads=2)
    np.testing.assert_allclose(both, np.mean(per_type), rtol=1e-6)


def test_attention_relation_padding_is_ignored_and_grads_finite():
    student, teacher = _qkv(6), _qkv(7)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], np.float32)
    padded = [x.copy() for x in student]
    for x in padded:
        x[mask == 0] = 1e4  # garbage at padded positions
    value, (grads, _) = ATTN2_VALUE_AND_GRADS(_f32(padded), _f32(teacher), mask=mask)
    np.testing.assert_allclose(
        value, ATTN(_f32(student), _f32(teacher), num_relation_heads=2, mask=mask), rtol=1e-5
    )
    for g in grads:
        assert np.all(np.isfinite(g))
        assert np.all(np.asarray(g)[mask == 0] == 0.0)
    value, grads = ATTN2_VALUE_AND_GRADS(_f32(student), _f32(teacher), mask=np.zeros_like(mask))
    assert float(value) == 0.0 and all(np.all(np.isfinite(g)) for gs in grads for g in gs)


def test_attention_relation_zero_at_equal_large_magnitude_bf16_vmap():
    qkv = _f32(_qkv(8, scale=1e4))
    fn = functools.partial(ATTN, num_relation_heads=2)
    value, grads = ATTN2_VALUE_AND_GRADS(qkv, qkv)
    assert abs(float(value)) < 1e-6 and all(np.all(np.isfinite(g)) for gs in grads for g in gs)
    big_s, big_t = _f32(_qkv(9, scale=1e4)), _f32(_qkv(10, scale=1e4))
    value, grads = ATTN2_VALUE_AND_GRADS(big_s, big_t)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for gs in grads for g in gs)

    student, teacher = _qkv(11), _qkv(12)
    s16 = tuple(jnp.asarray(x, jnp.bfloat16) for x in student)
    t16 = tuple(jnp.asarray(x, jnp.bfloat16) for x in teacher)
    got = fn(s16, t16)
    assert got.dtype == jnp.float32
    expected = fn(*(tuple(x.astype(jnp.float32) for x in xs) for xs in (s16, t16)))
    np.testing.assert_allclose(got, expected, rtol=1e-6)

    stacked_s = tuple(jnp.stack([a, b]) for a, b in zip(_f32(student), _f32(teacher), strict=True))
    batched = jax.vmap(lambda s: fn(s, _f32(teacher)))(stacked_s)
    np.testing.assert_allclose(
        batched, [fn(_f32(student), _f32(teacher)), fn(_f32(teacher), _f32(teacher))], rtol=1e-5
    )


@settings(max_examples=20, deadline=None)
@given(
    batch=st.sampled_from([1, 3]),
    length=st.sampled_from([1, 5]),
    heads=st.sampled_from([1, 2]),
    log_scale=st.floats(-2.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_attention_relation_property(batch, length, heads, log_scale, seed):
    scale = 10.0**log_scale
    student = _qkv(seed, batch, length, widths=(2 * heads,) * 3, scale=scale)
    teacher = _qkv(seed + 1, batch, length, widths=(4 * heads,) * 3, scale=scale)
    mask = np.random.default_rng(seed).integers(0, 2, size=(batch, length))
    mask[0, 0] = 1
    got = float(ATTN(_f32(student), _f32(teacher), num_relation_heads=heads, mask=mask))
    expected, _ = np_attention_relation(student, teacher, heads, mask)
    assert got >= -1e-6
    np.testing.assert_allclose(got, expected, rtol=5e-4, atol=1e-6)


def test_attention_relation_bad_inputs():
    s, t = _f32(_qkv(0)), _f32(_qkv(1))
    with pytest.raises(TypeError, match=r"student_qkv.*tuple"):
        attention_relation(s[0], t, num_relation_heads=2)
    with pytest.raises(ValueError, match=r"same number.*3 and 2"):
        attention_relation(s, t[:2], num_relation_heads=2)
    with pytest.raises(ValueError, match=r"student_qkv\[0\].*\(3, 5, 8\).*num_relation_heads.=3"):
        attention_relation(s, t, num_relation_heads=3)
    with pytest.raises(ValueError, match=r"teacher_qkv\[1\].*\(3, 5\).*\(3, 6, 8\)"):
        attention_relation(s, (t[0], jnp.zeros((3, 6, 8)), t[2]), num_relation_heads=2)
    with pytest.raises(ValueError, match=r"student_qkv\[0\].*rank 3.*\(3, 8\)"):
        attention_relation((jnp.zeros((3, 8)),), (jnp.zeros((3, 8)),), num_relation_heads=2)
    with pytest.raises(TypeError, match=r"student_qkv\[1\].*floating.*int32"):
        attention_relation((s[0], s[1].astype(jnp.int32), s[2]), t, num_relation_heads=2)
    with pytest.raises(ValueError, match=r"mask.*\(3, 5\).*\(3, 4\)"):
        attention_relation(s, t, num_relation_heads=2, mask=jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="num_relation_heads"):
        attention_relation(s, t, num_relation_heads=0)
