"""The train step: frozen teacher, bf16 teacher, offline mode, EMA and born-again teachers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _engine_models import batch, nnx_model
from flax import nnx

from jaxkd import engine, losses
from jaxkd.adapters import Embed
from jaxkd.objective import Objective, Term

OBJECTIVE = Objective([Term("kd", losses.kd, hparams={"temperature": 2.0})], task_weight=0.5)
OPTIMIZER = optax.adam(1e-2)


def _online(student, teacher, **config):
    return engine.make_train_step(
        student, OBJECTIVE, OPTIMIZER, teacher=engine.TeacherConfig(apply=teacher.apply, **config)
    )


def _close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def test_teacher_gets_no_gradient_and_is_not_optimized():
    student, teacher = nnx_model(hidden=8), nnx_model(hidden=16, seed=1)
    state = engine.init_train_state(student, OPTIMIZER, objective=OBJECTIVE)
    step = _online(student, teacher)
    frozen = engine.freeze_teacher(teacher)

    def loss_of_teacher(params):
        return step(state, engine.TeacherState(params, frozen.state), batch())[1]["loss"]

    grads = jax.jit(jax.grad(loss_of_teacher))(frozen.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
    # The optimizer state mirrors exactly the student's and adapters' trainable tree.
    expected = jax.tree.structure(OPTIMIZER.init(state.trainable()))
    assert jax.tree.structure(state.opt_state) == expected
    teacher_only = {np.shape(x) for x in jax.tree.leaves(frozen.params)} - {
        np.shape(x) for x in jax.tree.leaves(state.params)
    }
    assert teacher_only, "the test teacher must have shapes the student lacks"
    assert not {np.shape(x) for x in jax.tree.leaves(state.opt_state)} & teacher_only
    new_state, _ = jax.eval_shape(step, state, frozen, batch())
    assert jax.tree.structure(new_state.opt_state) == expected


def test_bf16_teacher_is_held_and_run_in_bf16():
    student, teacher = nnx_model(), nnx_model(hidden=16, seed=1)
    state = engine.init_train_state(student, OPTIMIZER, objective=OBJECTIVE)
    half = engine.freeze_teacher(teacher, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
    config = engine.TeacherConfig(apply=teacher.apply, dtype=jnp.bfloat16)
    out = jax.eval_shape(
        lambda h: engine.teacher_outputs(config, h, state, batch(), student.apply), half
    )
    assert out.logits.dtype == jnp.bfloat16
    _, m16 = jax.jit(_online(student, teacher, dtype=jnp.bfloat16))(state, half, batch())
    _, m32 = jax.jit(_online(student, teacher))(state, engine.freeze_teacher(teacher), batch())
    assert m16["loss"].dtype == jnp.float32
    np.testing.assert_allclose(m16["loss/kd"], m32["loss/kd"], rtol=5e-2)
    np.testing.assert_allclose(m16["loss/task"], m32["loss/task"], rtol=1e-6)


def test_offline_mode_equals_online_mode():
    student, teacher = nnx_model(), nnx_model(hidden=16, seed=1)
    state = engine.init_train_state(student, OPTIMIZER, objective=OBJECTIVE)
    frozen = engine.freeze_teacher(teacher)
    b = batch()
    apply = jax.jit(teacher.apply, static_argnames="train")
    logits = apply(frozen.params, frozen.state, b["inputs"], train=False)[0].logits
    offline = engine.make_train_step(
        student, OBJECTIVE, OPTIMIZER, teacher=engine.TeacherConfig(mode="offline")
    )
    s_on, m_on = jax.jit(_online(student, teacher))(state, frozen, b)
    s_off, m_off = jax.jit(offline)(state, None, {**b, "teacher_logits": logits})
    _close(m_on, m_off, rtol=1e-6)
    _close(s_on, s_off, rtol=1e-6)
    with pytest.raises(ValueError, match="teacher_logits"):
        jax.eval_shape(offline, state, None, b)


def test_teacher_sees_its_own_view_of_the_inputs():
    student, teacher = nnx_model(), nnx_model(hidden=16, seed=1)
    state = engine.init_train_state(student, OPTIMIZER, objective=OBJECTIVE)
    frozen, b = engine.freeze_teacher(teacher), batch()
    config = engine.TeacherConfig(apply=teacher.apply)
    view = {**b, "teacher_inputs": b["inputs"][::-1]}
    out = jax.jit(engine.teacher_outputs, static_argnums=(0, 4))(
        config, frozen, state, view, student.apply
    )
    apply = jax.jit(teacher.apply, static_argnames="train")
    direct = apply(frozen.params, frozen.state, b["inputs"][::-1], train=False)[0]
    np.testing.assert_allclose(out.logits, direct.logits, rtol=1e-6)


def test_ema_teacher_is_updated_inside_the_step():
    student = nnx_model()
    decay = 0.9
    state = engine.init_train_state(student, OPTIMIZER, objective=OBJECTIVE, ema=True)
    step = engine.make_train_step(
        student,
        OBJECTIVE,
        OPTIMIZER,
        teacher=engine.TeacherConfig(mode="ema", ema_decay=decay),
    )
    # At step 0 the EMA teacher equals the student, so the eval-mode teacher is just the
    # student in inference mode.
    config = engine.TeacherConfig(mode="ema")
    out = jax.jit(engine.teacher_outputs, static_argnums=(0, 4))(
        config, None, state, batch(), student.apply
    )
    apply = jax.jit(student.apply, static_argnames="train")
    direct = apply(state.params, state.model_state, batch()["inputs"], train=False)[0]
    np.testing.assert_allclose(out.logits, direct.logits, rtol=1e-6)
    new_state, metrics = jax.jit(step)(state, None, batch())
    expected = jax.tree.map(
        lambda e, p: decay * e + (1 - decay) * p, state.ema_params, new_state.params
    )
    _close(new_state.ema_params, expected, rtol=1e-6, atol=1e-7)
    assert np.isfinite(metrics["loss/kd"])
    no_ema = engine.init_train_state(student, OPTIMIZER, objective=OBJECTIVE)
    with pytest.raises(ValueError, match="ema=True"):
        jax.eval_shape(step, no_ema, None, batch())


def test_born_again_teacher_is_the_previous_student():
    student = nnx_model()
    state = engine.init_train_state(student, OPTIMIZER, objective=OBJECTIVE)
    step = jax.jit(_online(student, student))
    first = engine.born_again(state)
    for _ in range(2):
        state, _ = step(state, first, batch())
    teacher = engine.born_again(state)
    _close(teacher.params, state.params)
    fresh = engine.init_train_state(nnx_model(seed=5), OPTIMIZER, objective=OBJECTIVE)
    _, metrics = step(fresh, teacher, batch())
    assert float(metrics["loss/kd"]) > 0


def test_multi_teacher_online_step():
    student = nnx_model()
    teachers = {"a": nnx_model(hidden=16, seed=1), "b": nnx_model(hidden=4, seed=2)}
    objective = Objective(
        [
            Term("ens", losses.kd, teachers={"a": 1.0, "b": 1.0}),
            Term("a", losses.kd, teachers="a", weight=0.5),
        ]
    )
    config = engine.TeacherConfig(apply={n: m.apply for n, m in teachers.items()})
    step = engine.make_train_step(student, objective, OPTIMIZER, teacher=config)
    state = engine.init_train_state(student, OPTIMIZER, objective=objective)
    frozen = {n: engine.freeze_teacher(m) for n, m in teachers.items()}
    _, metrics = jax.jit(step)(state, frozen, batch())
    assert {"loss/ens", "loss/a", "loss/task"} <= set(metrics)
    with pytest.raises(ValueError, match="must match"):
        jax.eval_shape(step, state, {"a": frozen["a"]}, batch())


def test_crd_with_embedding_heads_on_both_sides():
    student, teacher = nnx_model(hidden=8), nnx_model(hidden=16, seed=1)
    term = Term(
        "crd",
        losses.crd,
        student="hidden",
        teacher="hidden",
        inputs=("index",),
        adapter=engine.adapter_from_nnx(Embed(8, 4, rngs=nnx.Rngs(1))),
        teacher_adapter=engine.adapter_from_nnx(Embed(16, 4, rngs=nnx.Rngs(2))),
        state=losses.crd_init(jax.random.key(0), num_data=32, feat_dim=4),
        hparams={"num_negatives": 5},
        weight=0.8,
    )
    objective = Objective([term])
    state = engine.init_train_state(student, OPTIMIZER, objective=objective, rng=3)
    step = engine.make_train_step(
        student, objective, OPTIMIZER, teacher=engine.TeacherConfig(apply=teacher.apply)
    )
    b = {**batch(), "index": np.arange(8, dtype=np.int32) * 3}
    new_state, metrics = jax.jit(step)(state, engine.freeze_teacher(teacher), b)
    assert np.isfinite(metrics["loss/crd"])
    for side in ("student", "teacher"):
        before, after = (
            s.adapter_params["crd"][side]["linear"]["kernel"] for s in (state, new_state)
        )
        assert not np.allclose(before, after), side
    before, after = (np.asarray(s.loss_state["crd"].student_memory) for s in (state, new_state))
    rows = np.asarray(b["index"])
    assert not np.allclose(before[rows], after[rows])
    np.testing.assert_array_equal(before[1], after[1])  # rows not in the batch stay put
    with pytest.raises(ValueError, match="stateful"):
        engine.make_train_step(
            student,
            objective,
            OPTIMIZER,
            teacher=engine.TeacherConfig(apply=teacher.apply),
            axis_name="batch",
        )


def test_jit_train_step_donates_the_state_and_repeats_deterministically():
    student, teacher = nnx_model(), nnx_model(hidden=16, seed=1)
    frozen = engine.freeze_teacher(teacher)
    step = engine.jit_train_step(_online(student, teacher))

    def run():
        state = engine.init_train_state(student, OPTIMIZER, objective=OBJECTIVE, rng=7)
        first = state
        for _ in range(3):
            state, metrics = step(state, frozen, batch())
        return first, state, metrics

    first, state_a, metrics_a = run()
    assert all(x.is_deleted() for x in jax.tree.leaves(first.params))
    assert not any(x.is_deleted() for x in jax.tree.leaves(frozen.params))
    _, state_b, metrics_b = run()
    _close(state_a, state_b, rtol=0, atol=0)
    assert int(state_a.step) == 3 and set(metrics_a) == set(metrics_b)


def test_configuration_errors():
    student = nnx_model()
    with pytest.raises(ValueError, match="TeacherConfig"):
        engine.make_train_step(student, OBJECTIVE, OPTIMIZER)
    with pytest.raises(ValueError, match="online mode"):
        engine.TeacherConfig()
    with pytest.raises(ValueError, match="`mode`"):
        engine.TeacherConfig(mode="cached")
    with pytest.raises(ValueError, match="only used in online"):
        engine.TeacherConfig(mode="offline", apply=student.apply)
    plain = engine.make_train_step(student, Objective(), OPTIMIZER)
    state = engine.init_train_state(student, OPTIMIZER)
    _, metrics = jax.eval_shape(plain, state, None, batch())
    assert set(metrics) == {"loss", "loss/task", "weight/task", "grad_norm"}
    with pytest.raises(ValueError, match="'inputs'"):
        jax.eval_shape(plain, state, None, {"label": batch()["label"]})
