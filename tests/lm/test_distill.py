"""Token-level LM distillation through the engine's step: online losses and offline top-k."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _lm_helpers import batch_of, new_student

from jaxkd import losses
from jaxkd.engine import TeacherConfig, init_train_state
from jaxkd.lm import (
    ONLINE_LOSSES,
    bits_per_byte,
    lm_objective,
    make_lm_eval_step,
    make_lm_train_step,
    teacher_config,
)
from jaxkd.objective import cross_entropy

OPT = optax.sgd(0.1)


def _logits(model, params, inputs):
    return model.apply(params, {}, inputs, train=False)[0].logits


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "generalized_jsd"])
def test_online_step_matches_the_loss_on_both_models_logits(loss, packed, teacher):
    _, t_model, t_state = teacher
    _, student = new_student()
    batch = batch_of(packed)
    batch["loss_mask"][:, :3] = 0.0  # masked tokens must not count
    hparams = {"temperature": 2.0} if loss != "generalized_jsd" else {"beta": 0.3}
    step = jax.jit(
        make_lm_train_step(
            student, OPT, loss=loss, teacher_apply=t_model, ce_weight=0.5, hparams=hparams
        )
    )
    state = init_train_state(student, OPT)
    params0 = state.params
    new_state, metrics = step(state, t_state, batch)
    s_logits = _logits(student, params0, batch["inputs"])
    t_logits = _logits(t_model, t_state.params, batch["inputs"])
    mask = batch["loss_mask"]
    expected_kd = ONLINE_LOSSES[loss](s_logits, t_logits, mask=mask, **hparams)
    expected_ce = cross_entropy(s_logits, batch["targets"], mask=mask)
    np.testing.assert_allclose(metrics["loss/kd"], expected_kd, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss/ce"], expected_ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], expected_kd + 0.5 * expected_ce, rtol=1e-5)
    # The student moved; the teacher is an argument of the step, never updated.
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new_state.params, params0)
    assert max(jax.tree.leaves(moved)) > 0


def test_padded_vocabulary_row_gets_no_mass(packed, teacher):
    _, t_model, t_state = teacher
    logits = _logits(t_model, t_state.params, batch_of(packed)["inputs"])
    assert logits.shape[-1] == 260
    assert bool(jnp.all(logits[..., 259] == -jnp.inf))
    assert bool(jnp.all(jnp.isfinite(logits[..., :259])))


def test_offline_step_reads_the_top_k_from_the_batch_without_a_teacher(packed, teacher):
    _, t_model, t_state = teacher
    _, student = new_student()
    batch = batch_of(packed)
    t_logits = _logits(t_model, t_state.params, batch["inputs"])
    values, ids = jax.lax.top_k(jax.nn.log_softmax(t_logits), 8)
    batch = {**batch, "teacher_topk_logprobs": values, "teacher_topk_ids": ids}
    step = jax.jit(
        make_lm_train_step(student, OPT, loss="sparse_forward_kl", hparams={"tail": "bucket"})
    )
    state = init_train_state(student, OPT)
    s_logits = _logits(student, state.params, batch["inputs"])
    _, metrics = step(state, None, batch)  # no teacher at all
    expected = losses.sparse_forward_kl(
        s_logits, values, ids, mask=batch["loss_mask"], tail="bucket"
    )
    np.testing.assert_allclose(metrics["loss/kd"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="teacher_topk_logprobs"):
        step(init_train_state(student, OPT), None, batch_of(packed))


def test_scratch_is_cross_entropy_on_the_loss_mask(packed):
    _, student = new_student()
    batch = batch_of(packed)
    batch["loss_mask"][1:] = 0.0
    step = jax.jit(make_lm_train_step(student, OPT, loss=None))
    state = init_train_state(student, OPT)
    s_logits = _logits(student, state.params, batch["inputs"])
    _, metrics = step(state, None, batch)
    per_token = optax.softmax_cross_entropy_with_integer_labels(s_logits, batch["targets"])
    np.testing.assert_allclose(metrics["loss"], per_token[0].mean(), rtol=1e-5)


def test_eval_step_sums_and_bits_per_byte(packed):
    _, student = new_student()
    batch = batch_of(packed)
    sums = jax.jit(make_lm_eval_step(student))(student.params, student.state, batch)
    s_logits = _logits(student, student.params, batch["inputs"])
    nll = optax.softmax_cross_entropy_with_integer_labels(s_logits, batch["targets"])
    np.testing.assert_allclose(sums["nll"], (nll * batch["loss_mask"]).sum(), rtol=1e-5)
    assert sums["tokens"] == batch["loss_mask"].sum()
    assert bits_per_byte(np.log(2.0) * 10, 5) == pytest.approx(2.0)


def test_bad_configurations_raise():
    with pytest.raises(ValueError, match="`loss` must be None or one of"):
        lm_objective("kl")
    with pytest.raises(ValueError, match="needs `teacher_apply`"):
        teacher_config("forward_kl", None)
    with pytest.raises(ValueError, match="pass no `teacher_apply`"):
        teacher_config("sparse_forward_kl", lambda *a, **k: None)
    with pytest.raises(ValueError, match="without a distillation loss"):
        lm_objective(None, hparams={"temperature": 2.0})
    assert teacher_config(None, None).mode == "none"
    assert isinstance(teacher_config("sparse_forward_kl", None), TeacherConfig)
    assert [t.name for t in lm_objective("forward_kl", ce_weight=0.1).terms] == ["ce", "kd"]
