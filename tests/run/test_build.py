"""Building an experiment from its config: names, teachers, schedules, task loss, sources."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxkd import engine
from jaxkd.checkpoint import Checkpointer
from jaxkd.experiment import objective_builder, optimizer, pipelines
from jaxkd.experiment.build import build
from jaxkd.experiment.config import base_config, finalize, term
from jaxkd.models import create_model

SPE = 62  # steps per epoch of the tiny config


@pytest.fixture(scope="module")
def fake_teacher_run(tmp_path_factory) -> str:
    """A run directory holding one untrained `mnist1d_mlp_small` step (no training needed)."""
    workdir = tmp_path_factory.mktemp("fake_teacher")
    model = engine.from_nnx(create_model("mnist1d_mlp_small", num_classes=10, rngs=nnx.Rngs(0)))
    state = engine.init_train_state(model, optax.sgd(0.1)).replace(step=jnp.int32(7))
    with Checkpointer(workdir, model_names={"student": "mnist1d_mlp_small"}) as ckpt:
        ckpt.save(7, state)
    return str(workdir)


def _with_teacher(make_config, path: str, model: str = "mnist1d_mlp_small", **terms):
    config = make_config(epochs=1, teacher=path, terms=tuple(terms.values()))
    with config.unlocked():
        config.teacher.model = model
    return config


def test_unknown_loss_name_lists_the_valid_ones(make_config):
    config = make_config()
    with config.unlocked():
        config.objective.terms.typo = term("typo", "kdd", teacher=None)
    with pytest.raises(ValueError, match=r"unknown loss 'kdd'; valid names: .*\bkd\b.*") as e:
        build(config)
    assert "\n" not in str(e.value)
    names = objective_builder.loss_names()
    assert {"kd", "dkd", "hint", "crd", "vid", "rkd_distance"} <= set(names)
    assert "crd_init" not in names and "CRDState" not in names


def test_teacher_is_restored_and_frozen_in_its_dtype(make_config, fake_teacher_run):
    config = _with_teacher(make_config, fake_teacher_run, kd=term("kd", "kd"))
    with config.unlocked():
        config.teacher.dtype = "bfloat16"
    exp = build(config)
    assert exp.teacher_source["step"] == 7
    assert {x.dtype for x in jax.tree.leaves(exp.teacher.params)} == {jnp.dtype(jnp.bfloat16)}
    assert exp.teacher_config.mode == "online" and exp.teacher_config.dtype == jnp.bfloat16
    assert exp.num_steps == exp.steps_per_epoch == SPE
    assert [t.name for t in exp.objective.terms] == ["task", "kd"]


def test_teacher_checkpoint_errors_name_the_path_and_the_model(
    make_config, fake_teacher_run, tmp_path
):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"config\.teacher\.checkpoint=.*nowhere"):
        build(_with_teacher(make_config, missing, kd=term("kd", "kd")))
    wrong = _with_teacher(make_config, fake_teacher_run, "mnist1d_cnn_small", kd=term("kd", "kd"))
    with pytest.raises(ValueError, match="holds a 'mnist1d_mlp_small' model, expected"):
        build(wrong)
    resized = _with_teacher(make_config, fake_teacher_run, kd=term("kd", "kd"))
    with resized.unlocked():
        resized.teacher.kwargs.hidden = (16, 16)
    with pytest.raises(ValueError, match="does not hold a 'mnist1d_mlp_small' model: first") as e:
        build(resized)
    assert "\n" not in str(e.value)


def test_adapter_and_teacher_mode_errors(make_config, fake_teacher_run):
    bogus = term("h", "hint", student="stage1", teacher="stage1", adapter="bogus")
    with pytest.raises(ValueError, match="unknown adapter 'bogus'; valid adapters: hint"):
        build(_with_teacher(make_config, fake_teacher_run, h=bogus))
    no_feature = term("h", "hint", student="stage9", teacher="stage1", adapter="hint")
    with pytest.raises(ValueError, match="no feature 'stage9'"):
        build(_with_teacher(make_config, fake_teacher_run, h=no_feature))
    config = make_config()
    with config.unlocked():
        config.objective.terms.kd = term("kd", "kd")
    with pytest.raises(ValueError, match=r"read a teacher, but config\.teacher\.model is empty"):
        build(config)
    with config.unlocked():
        config.teacher.mode = "offline"
    with pytest.raises(ValueError, match="mode='offline'"):
        build(config)


def test_ema_mode_keeps_an_average_of_the_student(make_config):
    config = make_config()
    with config.unlocked():
        config.teacher.mode = "ema"
        config.objective.terms.kd = term("kd", "kd")
    exp = build(config)
    state = exp.init_state()
    assert exp.teacher is None and exp.teacher_config.mode == "ema"
    jax.tree.map(np.testing.assert_array_equal, state.ema_params, state.params)


def test_piecewise_schedule_decays_after_the_boundary_epochs():
    config = base_config()
    config.optimizer.decay_epochs = [2, 3]
    schedule = optimizer.learning_rate_schedule(config, steps_per_epoch=10, num_epochs=4)
    lr = [float(schedule(s)) for s in (0, 19, 20, 29, 30, 39)]
    np.testing.assert_allclose(lr, [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005], rtol=1e-6)
    config.optimizer.warmup_epochs = 1.0
    schedule = optimizer.learning_rate_schedule(config, steps_per_epoch=10, num_epochs=4)
    lr = [float(schedule(s)) for s in (0, 5, 10, 19, 20, 30)]
    np.testing.assert_allclose(lr, [0.0, 0.025, 0.05, 0.05, 0.005, 0.0005], rtol=1e-6)


def test_cosine_and_constant_schedules():
    config = base_config()
    config.optimizer.schedule = "cosine"
    schedule = optimizer.learning_rate_schedule(config, steps_per_epoch=10, num_epochs=4)
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 20, 40)], [0.05, 0.025, 0.0])
    config.optimizer.schedule = "constant"
    schedule = optimizer.learning_rate_schedule(config, steps_per_epoch=10, num_epochs=4)
    assert float(schedule(35)) == pytest.approx(0.05)
    config.optimizer.schedule = "step"
    with pytest.raises(ValueError, match=r"config\.optimizer\.schedule must be one of"):
        optimizer.learning_rate_schedule(config, steps_per_epoch=10, num_epochs=4)


def test_sgd_adds_weight_decay_to_the_gradient_before_momentum():
    # PyTorch SGD(momentum=m, weight_decay=λ): b ← m·b + (g + λ·w); w ← w − lr·b.
    config = base_config()
    tx = optimizer.make_optimizer(config, optax.constant_schedule(0.1))
    w, g = jnp.array([1.0, -2.0]), jnp.array([0.5, 0.25])
    state = tx.init(w)
    buffer = np.zeros(2)
    for _ in range(3):
        updates, state = tx.update(g, state, w)
        buffer = 0.9 * buffer + (np.asarray(g) + 5e-4 * np.asarray(w))
        expected = np.asarray(w) - 0.1 * buffer
        w = optax.apply_updates(w, updates)
        np.testing.assert_allclose(w, expected, rtol=1e-6)
    config.optimizer.name = "adamw"
    config.optimizer.grad_clip_norm = 1.0
    tx = optimizer.make_optimizer(config, optax.constant_schedule(0.1))
    assert tx.update(g, tx.init(w), w)[0].shape == (2,)


def test_task_loss_ignores_unlabeled_rows():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    labels = jnp.array([0, 2, -1, 1])
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    log_p = np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    expected = -(log_p[0, 0] + log_p[1, 2]) / 2  # row 2 unlabelled, row 3 padding
    got = objective_builder.labeled_cross_entropy(logits, labels, mask=mask)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    onehot = jax.nn.one_hot(jnp.array([0, 2, 1, 1]), 3)
    soft = objective_builder.soft_cross_entropy(logits, onehot)
    assert float(soft) == pytest.approx(-np.mean(log_p[[0, 1, 2, 3], [0, 2, 1, 1]]), rel=1e-6)


def test_unlabeled_split_is_a_second_source_without_labels(monkeypatch):
    sizes = {"train": 4000, "unlabeled": 50000}
    monkeypatch.setattr(
        pipelines, "open_source", lambda name, split, data_dir=None: range(sizes[split])
    )
    config = base_config()
    config.data.unlabeled_split = "unlabeled"
    config.data.augment = True
    labeled, unlabeled = pipelines.train_sources(finalize(config))
    assert (labeled.split, labeled.labeled, labeled.weight) == ("train", True, 4000.0)
    assert (unlabeled.split, unlabeled.labeled, unlabeled.weight) == ("unlabeled", False, 50000.0)
