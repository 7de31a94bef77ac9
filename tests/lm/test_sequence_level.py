"""Sequence-level distillation: teacher completions as a dataset, CE on completions only."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _lm_helpers import EOS, PAD, VOCAB, first_windows, new_student

from jaxkd.engine import init_train_state
from jaxkd.lm import (
    CompletionSource,
    completion_train_batches,
    make_lm_train_step,
    write_completions,
)
from jaxkd.text import generate, lm_train_batches


def _completions(directory, teacher, packed, **kw):
    """Teacher completions of `packed` written to `directory`, four prompts a call."""
    module, _, t_state = teacher
    kw = {"pad_id": PAD, "eos_id": EOS, "vocab_size": VOCAB, "batch_size": 4, **kw}
    meta = write_completions(directory, module, t_state.params, packed, **kw)
    return meta, CompletionSource(directory)


def test_completions_are_the_teachers_greedy_tokens(tmp_path, packed, teacher):
    module, _, t_state = teacher
    meta, source = _completions(
        tmp_path / "gen",
        teacher,
        packed,
        prompt_len=5,
        max_new_tokens=12,
        temperature=0.0,
        num_prompts=6,
        records_per_shard=4,
    )
    assert meta["num_examples"] == 6 and len(meta["shards"]) == 2
    assert len(source) == 6 and source.seq_len == 16
    prompts = jnp.asarray(packed.inputs[:6, :5])
    live = generate(
        module,
        t_state.params,
        prompts,
        jnp.full((6,), 5),
        max_new_tokens=12,
        pad_id=PAD,
        eos_id=EOS,
        vocab_size=VOCAB,
    )
    assert meta["generated_tokens"] == int(live.lengths.sum())
    for i in range(6):
        prompt, p, completion, g = source.example(i)
        np.testing.assert_array_equal(prompt, prompts[i])
        assert p == 5 and g == int(live.lengths[i])
        np.testing.assert_array_equal(completion, live.tokens[i])
        example = source[i]
        # Loss exactly on the completion's tokens: targets 4 .. 4 + g - 1.
        expected_mask = np.zeros(16)
        expected_mask[4 : 4 + g] = 1.0
        np.testing.assert_array_equal(example["loss_mask"], expected_mask)
        np.testing.assert_array_equal(example["targets"][4 : 4 + g], live.tokens[i, :g])
        np.testing.assert_array_equal(example["inputs"][:5], prompt)


def test_student_fine_tunes_with_cross_entropy_on_completions(tmp_path, packed, teacher):
    _, source = _completions(
        tmp_path / "gen",
        teacher,
        packed,
        prompt_len=4,
        max_new_tokens=13,
        temperature=1.0,
        top_p=0.9,
        num_prompts=8,
        seed=3,
    )
    batches = completion_train_batches(source, batch_size=4, seed=0, num_epochs=2)
    # The prompts come in the order the online rows read their windows, anew each epoch.
    online = lm_train_batches(
        first_windows(packed, 8), batch_size=4, seed=0, num_epochs=2, shard_index=0, shard_count=1
    )
    assert len(batches) == len(online) == 2 * 2
    for i in range(len(online)):
        np.testing.assert_array_equal(batches[i]["inputs"][:, :4], online[i]["inputs"][:, :4])
    batch = batches[0]
    batch = {k: batch[k] for k in ("inputs", "targets", "loss_mask")}
    _, student = new_student()
    opt = optax.sgd(0.1)
    state = init_train_state(student, opt)
    logits = student.apply(state.params, {}, batch["inputs"], train=False)[0].logits
    _, metrics = jax.jit(make_lm_train_step(student, opt, loss=None))(state, None, batch)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"]
    assert 0 < mask.sum() < mask.size
    np.testing.assert_allclose(metrics["loss"], (nll * mask).sum() / mask.sum(), rtol=1e-5)


def test_bad_arguments_raise(tmp_path, packed, teacher):
    module, _, _t_state = teacher
    with pytest.raises(ValueError, match=r"`prompt_len` must be in \[1, 16\]"):
        write_completions(
            tmp_path / "g",
            module,
            None,
            packed,
            prompt_len=17,
            max_new_tokens=4,
            pad_id=PAD,
            eos_id=EOS,
        )
    with pytest.raises(FileNotFoundError, match="holds no completions"):
        CompletionSource(tmp_path)
