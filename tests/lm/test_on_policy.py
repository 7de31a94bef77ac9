"""On-policy distillation (GKD): λ picks student samples or data, β the divergence."""

import jax
import numpy as np
import optax
import pytest
from _lm_helpers import EOS, PAD, VOCAB, batch_of, new_student

from jaxkd import losses
from jaxkd.engine import init_train_state
from jaxkd.lm import make_gkd_step, prompt_batch
from jaxkd.lm.on_policy import _SAMPLE_SALT
from jaxkd.text import completion_batch, generate

OPT = optax.sgd(0.1)
KEYS = ("inputs", "targets", "loss_mask", "prompts", "prompt_lengths")


def _batch(packed):
    return {k: v for k, v in prompt_batch(batch_of(packed), 5).items() if k in KEYS}


def _step(module, student, teacher_model, lam, beta=0.5):
    return jax.jit(
        make_gkd_step(
            module,
            student,
            OPT,
            teacher_apply=teacher_model,
            lam=lam,
            beta=beta,
            pad_id=PAD,
            eos_id=EOS,
            vocab_size=VOCAB,
        )
    )


def test_lambda_zero_is_the_jsd_on_the_data_completions(packed, teacher):
    _, t_model, t_state = teacher
    module, student = new_student()
    batch = _batch(packed)
    assert batch["loss_mask"][:, :4].sum() == 0 and batch["prompts"].shape == (4, 5)
    state = init_train_state(student, OPT)
    s_logits = student.apply(state.params, {}, batch["inputs"], train=False)[0].logits
    t_logits = t_model.apply(t_state.params, {}, batch["inputs"], train=False)[0].logits
    expected = losses.generalized_jsd(s_logits, t_logits, mask=batch["loss_mask"], beta=0.3)
    _, metrics = _step(module, student, t_model, lam=0.0, beta=0.3)(state, t_state, batch)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    assert metrics["on_policy"] == 0.0


def test_lambda_one_scores_the_students_own_samples(packed, teacher):
    _, t_model, t_state = teacher
    module, student = new_student()
    batch = _batch(packed)
    state = init_train_state(student, OPT, rng=7)
    # The same key the step derives: fold_in(key, step), then the sampling salt.
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), 0)
    _, sample_key = jax.random.split(jax.random.fold_in(key, _SAMPLE_SALT))
    sample = generate(
        module,
        state.params,
        batch["prompts"],
        batch["prompt_lengths"],
        max_new_tokens=12,
        pad_id=PAD,
        eos_id=EOS,
        rng=sample_key,
        temperature=1.0,
        vocab_size=VOCAB,
    )
    made = completion_batch(
        batch["prompts"], batch["prompt_lengths"], sample, pad_id=PAD, seq_len=16
    )
    s_logits = student.apply(state.params, {}, made["inputs"], train=False)[0].logits
    t_logits = t_model.apply(t_state.params, {}, made["inputs"], train=False)[0].logits
    expected = losses.generalized_jsd(s_logits, t_logits, mask=made["loss_mask"], beta=0.5)
    _, metrics = _step(module, student, t_model, lam=1.0)(state, t_state, batch)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    assert metrics["on_policy"] == 1.0


def test_lambda_half_mixes_on_and_off_policy_batches(packed, teacher):
    _, t_model, t_state = teacher
    module, student = new_student()
    step = _step(module, student, t_model, lam=0.5)
    state, flags = init_train_state(student, OPT), []
    for _ in range(8):
        state, metrics = step(state, t_state, _batch(packed))
        flags.append(float(metrics["on_policy"]))
        assert np.isfinite(metrics["loss"])
    assert 0.0 in flags and 1.0 in flags


def test_bad_arguments_raise(packed, teacher):
    _, t_model, _ = teacher
    module, student = new_student()
    with pytest.raises(ValueError, match=r"`lam` must be in \[0, 1\]"):
        make_gkd_step(module, student, OPT, teacher_apply=t_model, lam=1.5, pad_id=PAD)
    with pytest.raises(ValueError, match=r"`prompt_len` must be in \[1, 16\)"):
        prompt_batch(batch_of(packed), 16)
