"""The offline teacher cache: the code, array_record round trip, and the KL-error report."""

import dataclasses
import json

import grain
import jax
import numpy as np
import pytest
from _lm_helpers import VOCAB, batch_of, first_windows

from jaxkd.lm import TopKCache, TopKCodec, cached_train_batches, topk_fn, write_topk_cache
from jaxkd.lm.cache_error import topk_cache_error
from jaxkd.text import lm_train_batches


def _distributions(n, vocab, k, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, vocab))
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    ids = np.argsort(-logp, 1)[:, :k]
    return logits, np.take_along_axis(logp, ids, 1), ids


@pytest.mark.parametrize("vocab,k", [(259, 50), (151_936, 50), (16, 16), (300, 1)])
def test_code_round_trips_ids_exactly_and_log_probs_closely(vocab, k):
    codec = TopKCodec(vocab, k, exact_top=min(4, k))
    _, logp, ids = _distributions(64 if vocab < 1000 else 8, vocab, k)
    codes = codec.encode(logp, ids)
    assert codes.shape == (ids.shape[0], codec.bytes_per_token) and codes.dtype == np.uint8
    dec_logp, dec_ids = codec.decode(codes)
    order = np.argsort(ids, 1)
    np.testing.assert_array_equal(dec_ids, np.take_along_axis(ids, order, 1))
    exact = np.take_along_axis(logp, order, 1)
    # Probabilities (not log-probs) are what the code keeps within a small error.
    np.testing.assert_allclose(np.exp(dec_logp), np.exp(exact), atol=0.02)
    top = np.argmax(exact, 1)
    np.testing.assert_allclose(dec_logp[np.arange(len(top)), top], exact.max(1), atol=0.02)


def test_code_size_is_the_id_rank_plus_the_value_fields():
    codec = TopKCodec(151_936, 50)
    # ids: ⌈log2 C(151936, 50)⌉ = 647; tail 11; top positions ⌈log2 C(50, 4)⌉ = 18;
    # 4 · 11 top; range 6; 46 · 3 levels; 3·4 + 2·10 + 1·16 refinement.
    assert codec.num_bits == 647 + 11 + 18 + 44 + 6 + 138 + 48 == 912
    assert codec.bytes_per_token == 114
    assert TopKCodec(259, 50).bytes_per_token == 56
    assert TopKCodec(16, 16, exact_top=16).num_bits == 11 + 16 * 11  # ids and positions free


def test_bad_input_names_the_argument_and_shapes():
    codec = TopKCodec(151_936, 50)
    with pytest.raises(ValueError, match=r"`logprobs` and `ids` must both be \[N, k=50\]"):
        codec.encode(np.zeros((2, 49)), np.zeros((2, 49), int))
    with pytest.raises(ValueError, match=r"`ids` must be in \[0, 151936\)"):
        codec.encode(np.zeros((1, 50)), np.arange(50)[None] + 151_900)
    with pytest.raises(ValueError, match="`ids` must be distinct"):
        codec.encode(np.zeros((1, 50)), np.zeros((1, 50), int))
    with pytest.raises(ValueError, match=r"`codes` must be \[N, 114\] uint8, got \(2, 113\)"):
        codec.decode(np.zeros((2, 113), np.uint8))
    with pytest.raises(ValueError, match="`k` must be in"):
        TopKCodec(10, 11)
    with pytest.raises(ValueError, match="`refine_bits` must be in"):
        TopKCodec(10, 5, refine_bits=(17,))
    with pytest.raises(ValueError, match="`alpha` must be in"):
        TopKCodec(10, 5, alpha=0.0)


def test_code_survives_a_json_round_trip_of_its_fields():
    codec = TopKCodec(259, 50)
    fields = json.loads(json.dumps(dataclasses.asdict(codec)))  # what cache.json holds
    assert TopKCodec(**fields) == codec


def _zipf_logits(n, vocab, seed=0):
    # LM-like next-token distributions: Zipfian over a random id order, random sharpness.
    rng = np.random.default_rng(seed)
    ranks = np.log(np.arange(1, vocab + 1))
    sharp = rng.uniform(0.9, 1.6, (n, 1))
    logits = -sharp * ranks + rng.normal(0.0, 1.0, (n, vocab))
    return np.stack([row[rng.permutation(vocab)] for row in logits])


def test_kl_error_of_the_byte_vocabulary_code_is_below_a_millinat():
    logits = _zipf_logits(256, VOCAB, seed=1)
    student = logits + np.random.default_rng(2).normal(0, 1.0, logits.shape)
    report = topk_cache_error(logits, student, TopKCodec(VOCAB, 50, value_bits=6))
    assert report["bytes_per_token"] == 73
    assert report["kl_compression"] < 5e-5
    assert report["loss_error_code"] < 5e-4
    assert report["loss_error"] >= 0.0 and 0.0 < report["tail_mass"] < 1.0
    lossless = topk_cache_error(
        logits, student, TopKCodec(VOCAB, VOCAB, exact_top=VOCAB, top_bits=24, tail_bits=24)
    )
    assert lossless["kl_compression"] < 1e-6 and lossless["loss_error"] < 1e-4


def test_default_code_meets_distillkits_size_at_a_large_vocabulary_within_a_millinat():
    vocab = 151_936
    rng = np.random.default_rng(3)
    # Top-k of LM-like logits over the full vocabulary, without building [N, V] arrays:
    # the 50 largest ranks of a Zipfian (plus noise), at random ids; the rest is the tail.
    n, k = 64, 50
    sharp = rng.uniform(0.9, 1.6, (n, 1))
    ranks = np.log(np.arange(1, 400))
    logits = -sharp * ranks + rng.normal(0.0, 1.0, (n, ranks.size))
    logits[:, 0] += rng.uniform(0.0, 6.0, n)
    tail = np.log(np.exp(-sharp * np.log(np.arange(400, vocab + 1))).sum(1, keepdims=True) * 1.6)
    full = np.concatenate([logits, tail], 1)
    logp = full - np.log(np.exp(full).sum(1, keepdims=True))
    top = np.sort(logp[:, :-1], 1)[:, ::-1][:, :k]
    ids = np.stack([rng.choice(vocab, k, replace=False) for _ in range(n)])
    codec = TopKCodec(vocab, k)
    assert codec.bytes_per_token <= 114
    decoded, dec_ids = codec.decode(codec.encode(top, ids))
    order = np.argsort(ids, 1)
    np.testing.assert_array_equal(dec_ids, np.take_along_axis(ids, order, 1))
    exact = np.take_along_axis(top, order, 1)
    p, p_hat = np.exp(exact), np.exp(decoded.astype(np.float64))
    t, t_hat = 1 - p.sum(1), 1 - p_hat.sum(1)
    kl = (p * np.log(p / p_hat)).sum(1) + t * np.log(t / t_hat)
    assert 0.0 <= kl.mean() < 5e-4


def test_cache_round_trip_equals_the_teachers_live_top_k(tmp_path, packed, teacher):
    _, t_model, t_state = teacher
    codec = TopKCodec(260, 8, exact_top=4, top_bits=14, tail_bits=14)
    meta = write_topk_cache(
        tmp_path / "cache",
        packed,
        t_state,
        t_model.apply,
        codec,
        batch_size=4,
        records_per_shard=5,
        max_windows=11,
    )
    assert meta["num_windows"] == 11 and len(meta["shards"]) == 3
    cache = TopKCache(tmp_path / "cache")
    assert len(cache) == 11
    live_logp, live_ids = topk_fn(t_model.apply, 8)(t_state, batch_of(packed, 0, 11)["inputs"])
    for i in (0, 6, 10):
        example = cache[i]
        for key in ("inputs", "targets", "loss_mask"):
            np.testing.assert_array_equal(example[key], packed[i][key])
        order = np.argsort(np.asarray(live_ids[i]), -1)
        ids = np.take_along_axis(np.asarray(live_ids[i]), order, -1)
        logp = np.take_along_axis(np.asarray(live_logp[i]), order, -1)
        np.testing.assert_array_equal(example["teacher_topk_ids"], ids)
        np.testing.assert_allclose(
            np.exp(example["teacher_topk_logprobs"]), np.exp(logp), atol=0.01
        )
    batches = cached_train_batches(cache, batch_size=4, seed=0)
    batch = batches[0]
    assert batch["teacher_topk_ids"].shape == (4, 16, 8)
    # Batches decoded at once hold exactly the windows `cache[i]` decodes, in the order
    # of a Grain shuffle of the windows.
    order = grain.MapDataset.range(len(cache)).shuffle(seed=0)
    for j, window in enumerate(order[:4]):
        for key, value in cache[window].items():
            np.testing.assert_array_equal(batch[key][j], value)
    # The cached windows come in the order the online rows read the same windows, with a
    # new order each epoch.
    online = lm_train_batches(
        first_windows(packed, 11), batch_size=4, seed=0, num_epochs=2, shard_index=0, shard_count=1
    )
    offline = cached_train_batches(cache, batch_size=4, seed=0, num_epochs=2)
    assert len(offline) == len(online) == 2 * 2
    for i in range(len(online)):
        for key in ("inputs", "targets", "loss_mask", "mask"):
            np.testing.assert_array_equal(offline[i][key], online[i][key])
    with pytest.raises(ValueError, match=r"`batch_size`=12 leaves no full batch: 11 examples"):
        cached_train_batches(cache, batch_size=12, seed=0)
    with pytest.raises(ValueError, match=r"`records` must be \[N, "):
        cache.layout.unpack_batch(np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="already holds a teacher cache"):
        write_topk_cache(tmp_path / "cache", packed, t_state, t_model.apply, codec)
    with pytest.raises(FileNotFoundError, match="holds no teacher cache"):
        TopKCache(tmp_path)


def test_topk_fn_is_the_log_softmax_top_k(packed, teacher):
    _, t_model, t_state = teacher
    inputs = batch_of(packed)["inputs"]
    logp, ids = topk_fn(t_model.apply, 5)(t_state, inputs)
    full = jax.nn.log_softmax(t_model.apply(t_state.params, {}, inputs, train=False)[0].logits)
    np.testing.assert_allclose(
        logp, np.take_along_axis(np.asarray(full), np.asarray(ids), -1), atol=1e-5
    )
    assert bool(np.all(np.diff(np.asarray(logp), axis=-1) <= 0))
