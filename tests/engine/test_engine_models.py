"""NNX and Linen models plug in as (apply, params, state) with named features."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _engine_models import LinenMLP, NnxMLP, batch, linen_model, nnx_model
from flax import nnx

from jaxkd import engine, losses
from jaxkd.adapters import HintAdapter
from jaxkd.objective import Objective, Term


def _moved(before, after) -> dict[str, bool]:
    """Whether each leaf changed, by path (biases right before a BatchNorm get no gradient)."""
    flat = jax.tree_util.tree_flatten_with_path(before)[0]
    return {
        jax.tree_util.keystr(path): not np.allclose(a, b)
        for (path, a), b in zip(flat, jax.tree.leaves(after), strict=True)
    }


@pytest.mark.parametrize("make", [nnx_model, linen_model], ids=["nnx", "linen"])
def test_apply_gives_logits_features_and_updates_batch_stats(make):
    model = make()
    x = batch()["inputs"]
    out, new_state = jax.jit(model.apply, static_argnames="train")(
        model.params, model.state, x, train=True
    )
    assert out.logits.shape == (8, 5)
    assert out.features["hidden"].shape == (8, 8)
    changed = jax.tree.map(lambda a, b: not np.allclose(a, b), model.state, new_state)
    assert all(jax.tree.leaves(changed)), "training mode must update the batch statistics"
    out_eval, eval_state = model.apply(model.params, model.state, x, train=False)
    jax.tree.map(np.testing.assert_array_equal, eval_state, model.state)
    # Inference uses the running statistics: each row is independent of the others.
    np.testing.assert_allclose(
        model.apply(model.params, model.state, x[:3], train=False)[0].logits,
        out_eval.logits[:3],
        rtol=1e-6,
    )


def test_nnx_apply_matches_the_module():
    module = NnxMLP(6, 8, 5, rngs=nnx.Rngs(0))
    model = engine.from_nnx(module)
    x = batch()["inputs"]
    module.eval()
    expected, features = nnx.capture(module, nnx.Intermediate)(x)
    out, _ = model.apply(model.params, model.state, x, train=False)
    np.testing.assert_allclose(out.logits, expected, rtol=1e-6)
    np.testing.assert_allclose(out.features["hidden"], features["hidden"].get_value()[0])
    assert set(model.params) == {"fc1", "norm", "fc2"}
    assert set(model.state) == {"norm"} and set(model.state["norm"]) == {"mean", "var"}


def test_linen_apply_matches_module_and_captures_intermediates():
    module = LinenMLP(8, 5)
    x = batch()["inputs"]
    variables = module.init(jax.random.key(0), x, train=False)
    model = engine.from_linen(module, variables, capture_intermediates=True)
    out, _ = model.apply(model.params, model.state, x, train=False)
    np.testing.assert_allclose(out.logits, module.apply(variables, x, train=False), rtol=1e-6)
    assert {"hidden", "Dense_0", "Dense_1", "BatchNorm_0"} <= set(out.features)
    np.testing.assert_allclose(out.features["Dense_1"], out.logits)
    with pytest.raises(ValueError, match="'params'"):
        engine.from_linen(module, {"batch_stats": variables["batch_stats"]})


def test_linen_dropout_uses_the_step_key():
    class Drop(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            return nn.Dropout(0.5, deterministic=not train)(nn.Dense(4)(x))

    x = jnp.ones((2, 3))
    module = Drop()
    model = engine.from_linen(module, module.init(jax.random.key(0), x, train=False))
    run = lambda k: model.apply(model.params, model.state, x, train=True, rng=k)[0].logits
    a, b = run(jax.random.key(1)), run(jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, run(jax.random.key(1)))


@pytest.mark.parametrize("make", [nnx_model, linen_model], ids=["nnx", "linen"])
def test_one_distillation_step_per_library(make):
    student, teacher = make(seed=0), make(hidden=16, seed=1)
    objective = Objective([Term("kd", losses.kd)], task_weight=0.5)
    optimizer = optax.sgd(0.1)
    state = engine.init_train_state(student, optimizer, objective=objective)
    step = engine.make_train_step(
        student, objective, optimizer, teacher=engine.TeacherConfig(apply=teacher.apply)
    )
    new_state, metrics = jax.jit(step)(state, engine.freeze_teacher(teacher), batch())
    assert np.isfinite(metrics["loss"]) and float(metrics["grad_norm"]) > 0
    assert int(new_state.step) == 1
    moved = _moved(state.params, new_state.params)
    assert all(v for k, v in moved.items() if "kernel" in k or "scale" in k), moved
    assert all(_moved(state.model_state, new_state.model_state).values())


def test_nnx_adapter_with_batch_norm_is_trained_with_the_student():
    student, teacher = nnx_model(hidden=8), nnx_model(hidden=12, seed=1)
    adapter = engine.adapter_from_nnx(HintAdapter((8,), (12,), use_bn=True, rngs=nnx.Rngs(3)))
    objective = Objective(
        [Term("hint", losses.hint, student="hidden", teacher="hidden", adapter=adapter)]
    )
    optimizer = optax.sgd(0.1)
    state = engine.init_train_state(student, optimizer, objective=objective)
    assert set(state.adapter_params) == {"hint"}
    step = engine.make_train_step(
        student, objective, optimizer, teacher=engine.TeacherConfig(apply=teacher.apply)
    )
    new_state, metrics = jax.jit(step)(state, engine.freeze_teacher(teacher), batch())
    assert "loss/hint" in metrics
    moved = _moved(state.adapter_params, new_state.adapter_params)
    assert all(v for k, v in moved.items() if "kernel" in k or "scale" in k), moved
    assert all(_moved(state.adapter_state, new_state.adapter_state).values())


def test_from_nnx_rejects_other_objects():
    with pytest.raises(TypeError, match=r"nnx\.Module"):
        engine.from_nnx(LinenMLP(8, 5))
    with pytest.raises(TypeError, match=r"linen\.Module"):
        engine.from_linen(NnxMLP(6, 8, 5, rngs=nnx.Rngs(0)), {"params": {}})


def test_nnx_dropout_streams_live_in_the_model_state():
    class Drop(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(6, 5, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.fc(self.drop(x))

    student = engine.from_nnx(Drop(nnx.Rngs(0, dropout=1)))
    optimizer = optax.sgd(0.0)
    state = engine.init_train_state(student, optimizer)
    step = jax.jit(engine.make_train_step(student, Objective(), optimizer))
    b = batch()
    state1, m1 = step(state, None, b)
    state2, m2 = step(state1, None, b)
    assert float(m1["loss"]) != float(m2["loss"])  # fresh dropout masks each step
    _, m1_again = step(state, None, b)
    assert float(m1_again["loss"]) == float(m1["loss"])  # ... replayed from the state
    eval_out = jax.jit(student.apply, static_argnames="train")(
        state2.params, state2.model_state, b["inputs"], train=False
    )[0]
    np.testing.assert_allclose(
        eval_out.logits,
        b["inputs"] @ state.params["fc"]["kernel"] + state.params["fc"]["bias"],
        rtol=1e-5,
    )
