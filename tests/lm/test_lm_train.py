"""The LM outer loop: `lax.scan` chunks equal step-by-step training; bits per byte."""

import jax
import numpy as np
import optax
import pytest
from _lm_helpers import LM_KEYS, batch_of, new_student

from jaxkd.engine import init_train_state
from jaxkd.lm import evaluate_lm, make_lm_eval_step, make_lm_train_step, train_lm
from jaxkd.text import lm_eval_batches


def test_scan_chunks_equal_one_step_at_a_time(packed):
    _, student = new_student()
    opt = optax.adam(1e-2)
    step = make_lm_train_step(student, opt, loss=None)
    batches = [batch_of(packed, start=i, n=2) for i in range(4)]
    result = train_lm(
        step, init_train_state(student, opt), None, batches, num_steps=4, steps_per_call=2
    )
    state = init_train_state(student, opt)
    jitted = jax.jit(step)
    for batch in batches:
        state, metrics = jitted(state, None, batch)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
        result.state.params,
        state.params,
    )
    assert int(result.state.step) == 4
    assert [s for s, _ in result.history] == [2, 4]
    np.testing.assert_allclose(result.history[-1][1]["loss"], metrics["loss"], rtol=1e-5)
    assert result.tokens_per_second > 0


def test_running_out_of_batches_raises(packed):
    _, student = new_student()
    opt = optax.sgd(0.1)
    step = make_lm_train_step(student, opt, loss=None)
    with pytest.raises(ValueError, match="ran out after 1 steps"):
        train_lm(
            step,
            init_train_state(student, opt),
            None,
            [batch_of(packed)],
            num_steps=2,
            steps_per_call=2,
        )


def test_evaluate_counts_every_held_out_token_once(packed):
    _, student = new_student()
    eval_step = jax.jit(make_lm_eval_step(student))
    out = evaluate_lm(
        eval_step,
        student.params,
        student.state,
        lm_eval_batches(packed, batch_size=3, shard_index=0, shard_count=1),
        num_bytes=packed.num_bytes,
    )
    assert out["tokens"] == packed.num_tokens
    # An untrained byte model is near uniform over 259 ids: about log2(259) bits per token.
    assert 7.0 < out["nll_per_token"] / np.log(2) < 9.0
    assert out["bits_per_byte"] == pytest.approx(
        out["nll_per_token"] * out["tokens"] / np.log(2) / packed.num_bytes
    )
    assert set(LM_KEYS) <= set(packed[0])
