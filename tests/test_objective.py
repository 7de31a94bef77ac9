"""Tests of jaxkd.objective: terms equal direct loss calls, schedules, weights, teachers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxkd import losses
from jaxkd.objective import (
    Adapter,
    Objective,
    Outputs,
    Term,
    cross_entropy,
    ensemble_logits,
    source_weights,
    teacher_confidence,
)

B, C, D = 6, 5, 4


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *shape: jnp.asarray(rng.normal(size=shape) * 2.0, jnp.float32)
    student = Outputs(f(B, C), {"pooled": f(B, D)})
    teacher = Outputs(f(B, C), {"pooled": f(B, D)})
    batch = {
        "inputs": f(B, 3),
        "label": jnp.asarray(rng.integers(0, C, B), jnp.int32),
        "mask": jnp.asarray([1, 1, 1, 1, 0, 1], jnp.float32),
        "source_id": jnp.asarray([0, 1, 2, 0, 1, 2], jnp.int32),
    }
    return student, teacher, batch


def test_terms_equal_direct_loss_calls():
    s, t, batch = _setup()
    objective = Objective(
        [
            Term("kd", losses.kd, hparams={"temperature": 3.0}, weight=0.7),
            Term(
                "dkd",
                losses.dkd,
                inputs=("label",),
                hparams={"alpha": 1.0, "beta": 2.0, "temperature": 2.0},
                weight=0.5,
            ),
            Term("hint", losses.hint, student="pooled", teacher="pooled", weight=10.0),
        ],
        task_weight=0.3,
    )
    loss, metrics = jax.jit(objective)(s, t, batch, 0)
    mask, labels = batch["mask"], batch["label"]
    expected = {
        "task": cross_entropy(s.logits, labels, mask=mask),
        "kd": losses.kd(s.logits, t.logits, temperature=3.0, mask=mask),
        "dkd": losses.dkd(
            s.logits, t.logits, labels, alpha=1.0, beta=2.0, temperature=2.0, mask=mask
        ),
        "hint": losses.hint(s.features["pooled"], t.features["pooled"], mask=mask),
    }
    weights = {"task": 0.3, "kd": 0.7, "dkd": 0.5, "hint": 10.0}
    for name, value in expected.items():
        np.testing.assert_allclose(metrics[f"loss/{name}"], value, rtol=1e-6)
        np.testing.assert_allclose(metrics[f"weight/{name}"], weights[name])
    total = sum(weights[n] * expected[n] for n in expected)
    np.testing.assert_allclose(loss, total, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss)


def test_task_loss_is_optax_cross_entropy():
    s, _, batch = _setup()
    ce = optax.losses.softmax_cross_entropy_with_integer_labels(s.logits, batch["label"])
    m = batch["mask"]
    np.testing.assert_allclose(
        cross_entropy(s.logits, batch["label"], mask=m), np.sum(ce * m) / np.sum(m), rtol=1e-6
    )
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(s.logits, batch["label"][:3])


def test_schedules_for_weight_and_temperature():
    s, t, batch = _setup()
    weight = optax.linear_schedule(0.0, 1.0, 10)
    temperature = optax.linear_schedule(1.0, 5.0, 8)
    objective = Objective(
        [Term("kd", losses.kd, weight=weight, hparams={"temperature": temperature})],
        task_weight=None,
    )
    run = jax.jit(objective)
    for step in (0, 4, 20):
        loss, metrics = run(s, t, batch, jnp.asarray(step))
        value = losses.kd(s.logits, t.logits, temperature=temperature(step), mask=batch["mask"])
        np.testing.assert_allclose(metrics["weight/kd"], weight(step), rtol=1e-6)
        np.testing.assert_allclose(metrics["loss/kd"], value, rtol=1e-5)
        np.testing.assert_allclose(loss, weight(step) * value, rtol=1e-5, atol=1e-7)
    assert float(run(s, t, batch, 0)[0]) == 0.0


def test_per_example_weights_by_source_and_confidence():
    s, t, batch = _setup()
    mask = batch["mask"]
    table = np.array([1.0, 0.0, 3.0], np.float32)
    objective = Objective(
        [Term("kd", losses.kd, example_weight=source_weights(table))],
        example_weight=teacher_confidence(power=2.0),
    )
    _, metrics = objective(s, t, batch, 0)
    conf = np.max(jax.nn.softmax(t.logits), axis=-1) ** 2
    per_kd = np.asarray(losses.kd(s.logits, t.logits, mask=mask, reduction="none"))
    per_ce = np.asarray(cross_entropy(s.logits, batch["label"], mask=mask, reduction="none"))
    w_kd = table[np.asarray(batch["source_id"])] * conf
    np.testing.assert_allclose(metrics["loss/kd"], np.sum(per_kd * w_kd) / mask.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss/task"], np.sum(per_ce * conf) / mask.sum(), rtol=1e-5)


def test_unit_example_weights_give_the_plain_mean():
    s, t, batch = _setup()
    ones = lambda so, to, b: jnp.ones(b["label"].shape)
    weighted = Objective([Term("kd", losses.kd, example_weight=ones)])(s, t, batch, 0)[1]
    plain = Objective([Term("kd", losses.kd)])(s, t, batch, 0)[1]
    np.testing.assert_allclose(weighted["loss/kd"], plain["loss/kd"], rtol=1e-6)
    np.testing.assert_allclose(weighted["loss/task"], plain["loss/task"], rtol=1e-6)


def test_ensemble_logits_average_probabilities():
    rng = np.random.default_rng(1)
    a, b = (jnp.asarray(rng.normal(size=(B, C)) * 3, jnp.float32) for _ in range(2))
    for temperature in (1.0, 4.0):
        z = ensemble_logits([a, b], [3.0, 1.0], temperature)
        expected = 0.75 * jax.nn.softmax(a / temperature) + 0.25 * jax.nn.softmax(b / temperature)
        np.testing.assert_allclose(jax.nn.softmax(z / temperature), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="one entry per teacher"):
        ensemble_logits([a, b], [1.0])
    with pytest.raises(ValueError, match="same shape"):
        ensemble_logits([a, b[:, :3]], [1.0, 1.0])


def test_multi_teacher_ensemble_and_per_teacher_terms():
    s, t1, batch = _setup(0)
    _, t2, _ = _setup(1)
    teachers = {"big": t1, "wide": t2}
    objective = Objective(
        [
            Term("ens", losses.kd, teachers={"big": 0.6, "wide": 0.4}),
            Term("big", losses.kd, teachers="big", hparams={"temperature": 2.0}, weight=0.5),
            Term("wide", losses.kd, teachers="wide", hparams={"temperature": 2.0}, weight=0.5),
        ],
        task_weight=None,
    )
    _, metrics = objective(s, teachers, batch, 0)
    mask = batch["mask"]
    # The ensemble term uses kd's default temperature (4) for its soft targets.
    z = ensemble_logits([t1.logits, t2.logits], [0.6, 0.4], 4.0)
    np.testing.assert_allclose(metrics["loss/ens"], losses.kd(s.logits, z, mask=mask), rtol=1e-5)
    for name, t in teachers.items():
        value = losses.kd(s.logits, t.logits, temperature=2.0, mask=mask)
        np.testing.assert_allclose(metrics[f"loss/{name}"], value, rtol=1e-6)


def test_adapters_are_trained_and_teacher_gets_no_gradient():
    s, t, batch = _setup()
    adapter = Adapter(lambda p, state, x, *, train: (x @ p["w"], state), {"w": jnp.eye(D)})
    objective = Objective(
        [Term("hint", losses.hint, student="pooled", teacher="pooled", adapter=adapter)],
        task_weight=None,
    )
    params = objective.init_adapter_params()
    assert set(params) == {"hint"} and set(params["hint"]) == {"student"}

    def loss_fn(params, teacher_feat):
        teacher = Outputs(t.logits, {"pooled": teacher_feat})
        return objective(s, teacher, batch, 0, adapter_params=params)[0]

    w = {"hint": {"student": {"w": 2.0 * jnp.eye(D)}}}
    np.testing.assert_allclose(
        loss_fn(w, t.features["pooled"]),
        losses.hint(2.0 * s.features["pooled"], t.features["pooled"], mask=batch["mask"]),
        rtol=1e-6,
    )
    g_adapter, g_teacher = jax.grad(loss_fn, argnums=(0, 1))(w, t.features["pooled"])
    assert float(jnp.abs(g_adapter["hint"]["student"]["w"]).sum()) > 0
    np.testing.assert_array_equal(g_teacher, 0.0)


def test_stateful_crd_term_threads_its_state():
    s, t, _ = _setup()
    rng = np.random.default_rng(2)
    batch = {"label": jnp.zeros(B, jnp.int32), "index": jnp.asarray(rng.permutation(20)[:B])}
    normalize = lambda out: (
        out.features["pooled"] / jnp.linalg.norm(out.features["pooled"], axis=-1, keepdims=True)
    )
    init = losses.crd_init(jax.random.key(0), num_data=20, feat_dim=D)
    hp = {"num_negatives": 7}
    term = Term(
        "crd",
        losses.crd,
        student=normalize,
        teacher=normalize,
        inputs=("index",),
        state=init,
        hparams=hp,
        weight=0.8,
    )
    objective = Objective([term], task_weight=None)
    with pytest.raises(ValueError, match=r"Objective\.apply"):
        objective(s, t, batch, 0)
    key = jax.random.key(5)
    loss, aux = jax.jit(objective.apply)(s, t, batch, 0, rng=key)
    crd = jax.jit(losses.crd, static_argnames="num_negatives")
    value, state = crd(
        normalize(s), normalize(t), batch["index"], init, jax.random.fold_in(key, 0), **hp
    )
    np.testing.assert_allclose(aux.metrics["loss/crd"], value, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.8 * value, rtol=1e-5)
    np.testing.assert_allclose(
        aux.loss_state["crd"].student_memory, state.student_memory, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(aux.loss_state["crd"].student_memory, init.student_memory)


def test_bad_configuration_raises_clear_errors():
    s, t, batch = _setup()
    with pytest.raises(ValueError, match="unique"):
        Objective([Term("kd", losses.kd), Term("kd", losses.kd)])
    with pytest.raises(ValueError, match="unique"):
        Objective([Term("task", losses.kd)])
    with pytest.raises(TypeError, match="inputs"):
        Term("dkd", losses.dkd, inputs="label")
    with pytest.raises(ValueError, match="teacher='logits'"):
        Term("ens", losses.hint, teacher="pooled", teachers={"a": 1.0, "b": 1.0})
    with pytest.raises(ValueError, match=r"no feature 'stage9'.*pooled"):
        Objective([Term("h", losses.hint, student="stage9", teacher="pooled")])(s, t, batch, 0)
    with pytest.raises(ValueError, match=r"batch\['index'\]"):
        Objective([Term("k", losses.kd, inputs=("index",))])(s, t, batch, 0)
    with pytest.raises(ValueError, match="teacher 'x'"):
        Objective([Term("k", losses.kd, teachers="x")])(s, {"a": t, "b": t}, batch, 0)
    with pytest.raises(ValueError, match="no teacher outputs"):
        Objective([Term("k", losses.kd)])(s, None, batch, 0)
