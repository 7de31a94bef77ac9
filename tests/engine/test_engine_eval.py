"""The eval step: exact metrics on padded partial batches, aggregated across batches."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _engine_models import batch, nnx_model

from jaxkd import engine


def _setup():
    student, teacher = nnx_model(), nnx_model(hidden=16, seed=1)
    state = engine.init_train_state(student, optax.sgd(0.1))
    config = engine.TeacherConfig(apply=teacher.apply)
    step = jax.jit(engine.make_eval_step(student, teacher=config))
    return student, teacher, state, engine.freeze_teacher(teacher), step


def _reference(student, teacher, state, frozen, b):
    """Float64 numpy metrics of the real rows, computed without any mask."""
    s_apply = jax.jit(student.apply, static_argnames="train")
    t_apply = jax.jit(teacher.apply, static_argnames="train")
    s = np.asarray(
        s_apply(state.params, state.model_state, b["inputs"], train=False)[0].logits, np.float64
    )
    t = np.asarray(
        t_apply(frozen.params, frozen.state, b["inputs"], train=False)[0].logits, np.float64
    )
    y = np.asarray(b["label"])
    log_s = s - np.log(np.sum(np.exp(s), -1, keepdims=True))
    log_t = t - np.log(np.sum(np.exp(t), -1, keepdims=True))
    return {
        "accuracy": np.mean(s.argmax(-1) == y),
        "teacher_accuracy": np.mean(t.argmax(-1) == y),
        "agreement": np.mean(s.argmax(-1) == t.argmax(-1)),
        "kl": np.mean(np.sum(np.exp(log_t) * (log_t - log_s), -1)),
        "loss": np.mean(-log_s[np.arange(len(y)), y]),
        "count": float(len(y)),
    }


def _pad(b, size):
    """Pads to `size` rows with garbage inputs and labels, masked out."""
    n = b["label"].shape[0]
    rng = np.random.default_rng(9)
    inputs = np.concatenate([b["inputs"], 1e3 * rng.normal(size=(size - n, 6))]).astype(np.float32)
    labels = np.concatenate([b["label"], np.full(size - n, 4)]).astype(np.int32)
    return {"inputs": inputs, "label": labels, "mask": (np.arange(size) < n).astype(np.float32)}


def test_padded_partial_batches_aggregate_to_the_exact_dataset_metrics():
    student, teacher, state, frozen, step = _setup()
    data = batch(n=13, seed=4)
    expected = _reference(student, teacher, state, frozen, data)
    total = None
    for start in (0, 8):  # batches of 8: the second one holds 5 real rows and 3 padded
        rows = {k: np.asarray(v)[start : start + 8] for k, v in data.items()}
        total = engine.accumulate(total, step(state, frozen, _pad(rows, 8)))
    got = engine.summarize(total)
    assert set(got) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


def test_student_only_and_ema_eval():
    student = nnx_model()
    state = engine.init_train_state(student, optax.sgd(0.1), ema=True)
    b = batch()
    plain = jax.jit(engine.make_eval_step(student))(state, None, b)
    assert set(plain) == {"count", "correct", "loss"}
    ema = engine.make_eval_step(student, teacher=engine.TeacherConfig(mode="ema"))
    sums = engine.summarize(jax.jit(ema)(state, None, b))
    # At initialization the EMA teacher is the student itself.
    assert sums["agreement"] == 1.0 and abs(sums["kl"]) < 1e-6
    assert sums["teacher_accuracy"] == sums["accuracy"]
    with pytest.raises(ValueError, match="count"):
        engine.summarize({"correct": jnp.ones(())})


def test_multi_teacher_eval_prefixes_each_teacher():
    student = nnx_model()
    teachers = {"a": nnx_model(hidden=16, seed=1), "b": nnx_model(hidden=4, seed=2)}
    config = engine.TeacherConfig(apply={n: m.apply for n, m in teachers.items()})
    step = jax.jit(engine.make_eval_step(student, teacher=config))
    state = engine.init_train_state(student, optax.sgd(0.1))
    frozen = {n: engine.freeze_teacher(m) for n, m in teachers.items()}
    got = engine.summarize(step(state, frozen, batch()))
    assert {"a/agreement", "b/kl", "a/teacher_accuracy", "accuracy"} <= set(got)
