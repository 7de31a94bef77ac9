"""Generation: cached == uncached, greedy limits of sampling, EOS, right padding, batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxkd.models.transformer import Transformer, TransformerConfig
from jaxkd.text import Generation, completion_batch, generate, sample_token, top_p_filter

PAD = 256
CONFIG = TransformerConfig(
    vocab_size=260, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=48,
    max_seq_len=24,
)  # fmt: skip


@pytest.fixture(scope="module")
def lm():
    model = Transformer(CONFIG, rngs=nnx.Rngs(0))
    # Larger weights than the 0.02 init make the next token depend on the context, so that
    # greedy continuations differ between positions and prompts.
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    keys = iter(jax.random.split(jax.random.key(7), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(next(keys), p.shape), params)
    return model, params


PROMPTS = jnp.array([[5, 9, 2, 7, 1, 3], [8, 4, PAD, PAD, PAD, PAD], [6, 6, 1, 0, PAD, PAD]])
LENGTHS = jnp.array([6, 2, 4])


@pytest.fixture(scope="module")
def greedy(lm):
    model, params = lm
    return generate(model, params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD)


def test_cached_and_uncached_greedy_tokens_agree(lm, greedy):
    model, params = lm
    uncached = generate(
        model, params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD, use_cache=False
    )
    np.testing.assert_array_equal(greedy.tokens, uncached.tokens)
    np.testing.assert_array_equal(greedy.lengths, [10, 10, 10])
    assert greedy.tokens.shape == (3, 10) and greedy.tokens.dtype == jnp.int32
    # Not a degenerate model: continuations vary within and across rows.
    assert len(np.unique(np.asarray(greedy.tokens))) > 5


def test_greedy_is_the_argmax_of_the_full_forward(lm, greedy):
    model, params = lm
    apply = jax.jit(lambda p, t: _merged(model, p)(t))
    for b in range(3):
        # One fixed-length buffer: causality makes the tokens after `length` irrelevant.
        seq, length = np.full((1, 16), PAD), int(LENGTHS[b])
        seq[0, :length] = PROMPTS[b, :length]
        for _ in range(10):
            seq[0, length] = int(jnp.argmax(apply(params, jnp.asarray(seq))[0, length - 1]))
            length += 1
        np.testing.assert_array_equal(greedy.tokens[b], seq[0, int(LENGTHS[b]) : length])


def _merged(model, params):
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    return nnx.merge(graphdef, params, rest)


def test_apply_function_path_uncached(lm, greedy):
    model, params = lm
    apply = lambda p, t: _merged(model, p)(t)
    out = generate(apply, params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD, use_cache=False)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    with pytest.raises(ValueError, match="use_cache"):
        generate(apply, params, PROMPTS, LENGTHS, max_new_tokens=2, pad_id=PAD)


def test_right_padding_content_is_ignored(lm, greedy):
    model, params = lm
    other = PROMPTS.at[1, 2:].set(77).at[2, 4:].set(13)
    out = generate(model, params, other, LENGTHS, max_new_tokens=10, pad_id=PAD)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    # A row decodes the same alone as in a batch with longer prompts.
    alone = generate(model, params, PROMPTS[1:2, :2], LENGTHS[1:2], max_new_tokens=10, pad_id=PAD)
    np.testing.assert_array_equal(alone.tokens[0], greedy.tokens[1])


def test_tiny_top_p_sampling_equals_greedy(lm, greedy):
    model, params = lm
    out = generate(
        model, params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD,
        temperature=1.0, top_p=1e-6, rng=jax.random.key(3),
    )  # fmt: skip
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    sampled = generate(
        model, params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD,
        temperature=1.0, top_p=1e-6 + 0.999, rng=jax.random.key(3),
    )  # fmt: skip
    assert not np.array_equal(sampled.tokens, greedy.tokens)


def test_eos_stops_each_sequence_and_pads(lm, greedy):
    model, params = lm
    eos = int(greedy.tokens[0, 3])
    out = generate(model, params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD, eos_id=eos)
    for b in range(3):
        row = np.asarray(greedy.tokens[b])
        hits = np.flatnonzero(row == eos)
        end = hits[0] + 1 if hits.size else 10
        assert int(out.lengths[b]) == end
        np.testing.assert_array_equal(out.tokens[b, :end], row[:end])
        assert (np.asarray(out.tokens[b, end:]) == PAD).all()
    assert int(out.lengths[0]) <= 4


def test_padded_vocabulary_is_never_sampled(lm):
    model, params = lm
    # Make id 259 (a padding row past a 259-id tokenizer) the most likely next token.
    params = jax.tree.map(lambda x: x, params)
    params["embed"]["embedding"] = params["embed"]["embedding"].at[259].mul(50.0)
    plain = generate(model, params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD)
    masked = generate(
        model, params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD, vocab_size=259
    )
    assert (np.asarray(plain.tokens) == 259).any()
    assert (np.asarray(masked.tokens) < 259).all()


def test_compiles_once_for_new_prompts_keys_and_sampling_values(lm):
    model, params = lm
    from jaxkd.text.generate import _generate

    kwargs = {"max_new_tokens": 10, "pad_id": PAD}
    generate(
        model, params, PROMPTS, LENGTHS, rng=jax.random.key(0), temperature=0.7, top_p=0.9, **kwargs
    )
    size = _generate._cache_size()
    generate(
        model, params, PROMPTS + 1, LENGTHS - 1, rng=jax.random.key(1), temperature=1.3,
        top_p=0.5, eos_id=3, vocab_size=259, **kwargs,
    )  # fmt: skip
    assert _generate._cache_size() == size


def test_sample_token_and_top_p_filter():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(top_p_filter(logits, 0.7)))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = np.isfinite(np.asarray(top_p_filter(logits, 0.5)))
    np.testing.assert_array_equal(kept, [[True, False, False, False]])
    assert np.isfinite(np.asarray(top_p_filter(logits, 1.0))).all()
    draws = sample_token(
        jnp.broadcast_to(logits, (4000, 4)), jax.random.key(0), temperature=1.0, top_p=0.9
    )
    freq = np.bincount(np.asarray(draws), minlength=4) / 4000
    np.testing.assert_allclose(freq, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], atol=0.03)
    assert int(sample_token(logits, None, temperature=0.0)[0]) == 0


def test_completion_batch_masks_the_completion_only():
    prompts = jnp.array([[1, 2, 3], [4, 5, PAD]])
    gen = Generation(tokens=jnp.array([[7, 8, PAD], [9, 10, 11]]), lengths=jnp.array([2, 3]))
    batch = completion_batch(prompts, jnp.array([3, 2]), gen, pad_id=PAD)
    np.testing.assert_array_equal(batch["inputs"], [[1, 2, 3, 7, 8], [4, 5, 9, 10, 11]])
    np.testing.assert_array_equal(batch["targets"], [[2, 3, 7, 8, PAD], [5, 9, 10, 11, PAD]])
    np.testing.assert_array_equal(batch["loss_mask"], [[0, 0, 1, 1, 0], [0, 1, 1, 1, 0]])


def test_bad_arguments_raise(lm):
    model, params = lm
    with pytest.raises(ValueError, match="prompt_lengths"):
        generate(model, params, PROMPTS, jnp.array([6, 0, 4]), max_new_tokens=2, pad_id=PAD)
    with pytest.raises(ValueError, match="prompt_lengths"):
        generate(model, params, PROMPTS, LENGTHS[:2], max_new_tokens=2, pad_id=PAD)
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, params, PROMPTS, LENGTHS, max_new_tokens=20, pad_id=PAD)
    with pytest.raises(ValueError, match="rng"):
        generate(model, params, PROMPTS, LENGTHS, max_new_tokens=2, pad_id=PAD, temperature=1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, params, PROMPTS, LENGTHS, max_new_tokens=2, pad_id=PAD, top_p=0.0)


def test_engine_params_including_a_bfloat16_teacher(lm, greedy):
    from jaxkd.engine import freeze_teacher, from_nnx

    model, params = lm
    wrapped = from_nnx(_merged(model, params))
    out = generate(model, wrapped.params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD)
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    teacher = freeze_teacher(wrapped, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(teacher.params)} == {jnp.dtype(jnp.bfloat16)}
    out = generate(model, teacher.params, PROMPTS, LENGTHS, max_new_tokens=10, pad_id=PAD)
    # bf16 rounding may flip a near-tie late in a row; the start of each row agrees.
    np.testing.assert_array_equal(out.tokens[:, :2], greedy.tokens[:, :2])
