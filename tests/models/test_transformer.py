"""The decoder-only transformer against a float64 numpy reference and its defining properties."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkd.models import count_params, forward_with_features
from jaxkd.models.attention import apply_rope
from jaxkd.models.transformer import Transformer, TransformerConfig, transformer_lm

CONFIG = TransformerConfig(
    vocab_size=260,
    dim=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    hidden_dim=48,
    max_seq_len=32,
)


def _model(seed=0, **overrides):
    return Transformer(dataclasses.replace(CONFIG, **overrides), rngs=nnx.Rngs(seed))


@nnx.jit
def _forward(model, tokens, positions=None, attention_mask=None):
    # One compilation per model structure, shared by the tests (eager calls compile every
    # primitive for every new shape).
    return model(tokens, positions=positions, attention_mask=attention_mask)


def _tokens(shape=(2, 12), seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, CONFIG.vocab_size)


def _np(x):
    return np.asarray(x, np.float64)


def _reference_logits(model, tokens):
    """Plain float64 numpy Llama forward pass, written from the formulas."""
    c = model.config
    hd = c.resolved_head_dim
    group = c.num_heads // c.num_kv_heads

    def rms(x, scale):
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + c.norm_eps) * _np(scale[...])

    def rope(x, pos):  # x [T, heads, hd]
        half = hd // 2
        freq = c.rope_theta ** (-np.arange(half) / half)
        ang = pos[:, None] * freq
        cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

    emb = _np(model.embed.embedding[...])
    out = []
    for row in np.asarray(tokens):
        t = len(row)
        pos = np.arange(t, dtype=np.float64)
        h = emb[row]
        for blk in model.blocks:
            x = rms(h, blk.attn_norm.scale)
            a = blk.attn
            q = rope((x @ _np(a.q_proj.kernel[...])).reshape(t, c.num_heads, hd), pos)
            k = rope((x @ _np(a.k_proj.kernel[...])).reshape(t, c.num_kv_heads, hd), pos)
            v = (x @ _np(a.v_proj.kernel[...])).reshape(t, c.num_kv_heads, hd)
            heads = []
            for n in range(c.num_heads):
                s = q[:, n] @ k[:, n // group].T / np.sqrt(hd)
                s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
                p = np.exp(s - s.max(-1, keepdims=True))
                heads.append((p / p.sum(-1, keepdims=True)) @ v[:, n // group])
            h = h + np.concatenate(heads, -1) @ _np(a.o_proj.kernel[...])
            x = rms(h, blk.mlp_norm.scale)
            m = blk.mlp
            gate = x @ _np(m.gate_proj.kernel[...])
            silu = gate / (1 + np.exp(-gate))
            h = h + (silu * (x @ _np(m.up_proj.kernel[...]))) @ _np(m.down_proj.kernel[...])
        out.append(rms(h, model.final_norm.scale) @ emb.T)
    return np.stack(out)


def test_matches_numpy_reference_and_shapes():
    model = _model()
    tokens = _tokens()
    logits = _forward(model, tokens)
    assert logits.shape == (2, 12, 260) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, _reference_logits(model, tokens), rtol=2e-4, atol=2e-5)


def test_features_are_recorded_by_name():
    model = _model()
    logits, feats = nnx.jit(forward_with_features)(model, _tokens())
    assert model.feature_names == ("block1", "block2", "hidden")
    assert set(feats) == set(model.feature_names)
    assert all(f.shape == (2, 12, 32) for f in feats.values())
    # The head reads "hidden": tied logits are hidden @ E^T.
    np.testing.assert_allclose(
        logits, feats["hidden"] @ model.embed.embedding[...].T, rtol=1e-5, atol=1e-5
    )


def test_causal_future_tokens_do_not_change_earlier_logits():
    model = _model()
    tokens = _tokens()
    changed = tokens.at[:, 7:].set((tokens[:, 7:] + 5) % 260)
    a, b = _forward(model, tokens), _forward(model, changed)
    np.testing.assert_allclose(a[:, :7], b[:, :7], rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-4


def test_gqa_equals_mha_with_repeated_kv_weights():
    gqa = _model(num_kv_heads=1)  # multi-query: 4 query heads share one K/V head
    mha = _model(seed=5, num_kv_heads=4)
    for src, dst in zip(gqa.blocks, mha.blocks, strict=True):
        for name in ("q_proj", "o_proj"):
            getattr(dst.attn, name).kernel[...] = getattr(src.attn, name).kernel[...]
        for name in ("k_proj", "v_proj"):
            kernel = getattr(src.attn, name).kernel[...].reshape(32, 1, 8)
            getattr(dst.attn, name).kernel[...] = jnp.repeat(kernel, 4, axis=1).reshape(32, 32)
        for part in ("attn_norm", "mlp_norm", "mlp"):
            nnx.update(getattr(dst, part), nnx.state(getattr(src, part)))
    nnx.update(mha.embed, nnx.state(gqa.embed))
    nnx.update(mha.final_norm, nnx.state(gqa.final_norm))
    tokens = _tokens()
    np.testing.assert_allclose(_forward(mha, tokens), _forward(gqa, tokens), rtol=1e-5, atol=1e-5)
    assert count_params(gqa) < count_params(mha)


def test_rope_depends_on_relative_position_only():
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))

    def score(m, n):
        pos = lambda p: jnp.full((1, 1), p, jnp.int32)
        return float(jnp.sum(apply_rope(q, pos(m), 1e4) * apply_rope(k, pos(n), 1e4)))

    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4, abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 5), rel=1e-3)
    # A rotation: norms are kept.
    rotated = apply_rope(q, jnp.full((1, 1), 9, jnp.int32), 1e4)
    np.testing.assert_allclose(jnp.linalg.norm(rotated), jnp.linalg.norm(q), rtol=1e-5)


def test_shifting_all_positions_leaves_logits_unchanged():
    model = _model()
    tokens = _tokens()
    shifted = jnp.broadcast_to(jnp.arange(12) + 17, tokens.shape)
    np.testing.assert_allclose(
        _forward(model, tokens, shifted), _forward(model, tokens), rtol=1e-4, atol=1e-4
    )


def test_padding_keys_are_ignored():
    model = _model()
    tokens = _tokens()
    mask = jnp.ones_like(tokens).at[:, :3].set(0)  # left padding
    other = tokens.at[:, :3].set(0)
    positions = jnp.broadcast_to(jnp.arange(12) - 3, tokens.shape)
    a = _forward(model, tokens, positions, mask)
    b = _forward(model, other, positions, mask)
    np.testing.assert_allclose(a[:, 3:], b[:, 3:], rtol=1e-6, atol=1e-6)
    # With positions starting at 0 at the first real token, it is the unpadded sequence.
    np.testing.assert_allclose(a[:, 3:], _forward(model, tokens[:, 3:]), rtol=1e-4, atol=1e-5)


def test_tied_embeddings_share_the_embedding():
    tied, untied = _model(), _model(tie_embeddings=False)
    assert tied.lm_head is None
    assert count_params(untied) - count_params(tied) == 260 * 32
    params = nnx.state(tied, nnx.Param)
    assert not any("lm_head" in str(path) for path, _ in nnx.to_flat_state(params))
    # Changing the embedding changes the output head too.
    tokens = _tokens()
    before = _forward(tied, tokens)
    tied.embed.embedding[...] = tied.embed.embedding[...].at[5].add(1.0)
    after = _forward(tied, tokens)
    assert np.abs(np.asarray(after[..., 5] - before[..., 5])).max() > 1e-3


def test_prefill_and_decode_match_the_full_forward():
    model = _model()
    forward = lambda t: _forward(model, t)
    tokens = _tokens((3, 11))
    lengths = jnp.array([10, 4, 7])
    cache = model.init_cache(3, 16)
    logits, cache = jax.jit(model.prefill)(tokens, lengths, cache)
    rows = jnp.arange(3)
    full = forward(tokens)
    np.testing.assert_allclose(logits, full[rows, lengths - 1], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cache.lengths, lengths)
    nxt = jnp.array([3, 4, 5])
    step_logits, cache = jax.jit(model.decode_step)(nxt, cache)
    # Causality: the token after each prompt sees that prompt only, whatever follows it.
    extended = tokens.at[rows, lengths].set(nxt)
    np.testing.assert_allclose(step_logits, forward(extended)[rows, lengths], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cache.lengths, lengths + 1)


def test_decode_step_compiles_once_across_positions():
    model = _model()
    graphdef, params = nnx.split(model)
    traces = []

    @jax.jit
    def step(params, token, cache):
        traces.append(1)
        return nnx.merge(graphdef, params).decode_step(token, cache)

    cache = model.init_cache(2, 8)
    _, cache = jax.jit(model.prefill)(_tokens((2, 3)), jnp.array([3, 1]), cache)
    for t in range(4):
        _, cache = step(params, jnp.array([t, t]), cache)
    assert len(traces) == 1
    np.testing.assert_array_equal(cache.lengths, [7, 5])


def test_bfloat16_compute_and_params():
    tokens = _tokens()
    reference = _forward(_model(), tokens)
    # Same float32 weights, bfloat16 computation.
    bf16 = Transformer(CONFIG, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    out = _forward(bf16, tokens)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=0.05)
    stored = Transformer(CONFIG, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    leaves = jax.tree.leaves(nnx.state(stored, nnx.Param))
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.bfloat16)}
    assert stored.init_cache(2, 4).keys.dtype == jnp.bfloat16


def test_builder_and_config_errors():
    model = transformer_lm(num_classes=300, dim=16, num_layers=1, num_heads=2, rngs=nnx.Rngs(0))
    assert model.config.vocab_size == 300 and model.config.num_kv_heads == 2
    with pytest.raises(ValueError, match="num_kv_heads"):
        TransformerConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        TransformerConfig(dim=30, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match="even"):
        TransformerConfig(dim=12, num_heads=4, num_kv_heads=2)
    m = _model()
    with pytest.raises(ValueError, match=r"`tokens`.*\(2, 12\)"):
        m(jnp.zeros((2, 12), jnp.float32))
    with pytest.raises(ValueError, match="max_seq_len"):
        m(jnp.zeros((1, 40), jnp.int32))
    with pytest.raises(ValueError, match="max_seq_len"):
        m.init_cache(1, 64)
