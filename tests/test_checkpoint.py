"""Tests for jaxkd.checkpoint: items, teacher apart, keep policies, errors, atomicity."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import chex
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx, struct

from jaxkd.checkpoint import (
    Checkpointer,
    params_hash,
    restore_config,
    restore_student,
    restore_teacher,
)

TESTS = Path(__file__).parent
# A save that fails part-way leaves an Orbax coroutine unawaited; it warns when collected.
pytestmark = pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")


class NamedState(NamedTuple):
    step: jax.Array
    params: dict[str, jax.Array]
    opt_state: Any
    rng: jax.Array
    ema_params: Any


@struct.dataclass
class DataclassState:
    step: jax.Array
    params: dict[str, jax.Array]
    batch_stats: dict[str, jax.Array]
    opt_state: Any


def _params(seed: int = 0) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"w": jax.random.normal(k1, (3, 4)), "b": jax.random.normal(k2, (4,))}


def _named_state(seed: int = 0, step: int = 0) -> NamedState:
    params = _params(seed)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    return NamedState(jnp.array(step), params, tx.init(params), jax.random.key(seed), None)


def _dataclass_state(seed: int = 0) -> DataclassState:
    params = _params(seed)
    stats = {"mean": jnp.arange(4.0) + seed}
    return DataclassState(jnp.array(3), params, stats, optax.sgd(0.1, momentum=0.9).init(params))


def _nnx_state(seed: int = 0) -> Any:
    model = nnx.Sequential(
        nnx.Linear(2, 3, rngs=nnx.Rngs(seed)), nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    )
    return nnx.split(model)[1]


def _iterator() -> grain.DatasetIterator:
    dataset = grain.MapDataset.range(40).shuffle(seed=7).repeat().batch(4)
    # No prefetch threads: they would only burn CPU on this tiny dataset.
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def _assert_trees_equal(a: Any, b: Any) -> None:
    def unwrap(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    chex.assert_trees_all_equal(jax.tree.map(unwrap, a), jax.tree.map(unwrap, b))


@pytest.mark.parametrize(
    "make_state, async_save",
    [(_named_state, True), (_named_state, False), (_dataclass_state, True), (_nnx_state, True)],
)
def test_roundtrip_any_pytree_with_data_position(tmp_path, make_state, async_save):
    state = make_state(1)
    iterator = _iterator()
    for _ in range(3):
        next(iterator)
    with Checkpointer(tmp_path, async_save=async_save) as ckpt:
        assert ckpt.save(3, state, data_iterator=iterator)
        expected_batch = next(iterator)
        fresh = _iterator()
        restored = ckpt.restore(make_state(2), fresh)
    assert type(restored) is type(state)
    _assert_trees_equal(restored, state)
    np.testing.assert_array_equal(next(fresh), expected_batch)


def test_restore_into_abstract_target(tmp_path):
    state = _named_state(1, step=4)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(4, state)
    abstract = jax.eval_shape(lambda: _named_state(0))
    restored = restore_student(tmp_path, target=abstract)
    assert isinstance(restored, NamedState)
    _assert_trees_equal(restored, state)


def test_dataloader_iterator_position_is_restored(tmp_path):
    def loader():
        sampler = grain.samplers.IndexSampler(
            20, shard_options=grain.sharding.NoSharding(), shuffle=True, seed=0, num_epochs=3
        )
        data = np.arange(20, dtype=np.int32)
        return grain.DataLoader(
            data_source=data,
            sampler=sampler,
            operations=[grain.transforms.Batch(4)],
            worker_count=0,
        )

    iterator = iter(loader())
    for _ in range(6):
        next(iterator)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(6, _params(), data_iterator=iterator)
        expected = [next(iterator) for _ in range(3)]
        fresh = iter(loader())
        ckpt.restore(_params(), fresh)
    for batch in expected:
        np.testing.assert_array_equal(next(fresh), batch)


def test_raw_restore_for_evaluation(tmp_path):
    state = _named_state(1, step=2)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(2, state)
    raw = restore_student(tmp_path)
    # Without a target the stored form comes back: dicts keyed by field name.
    assert set(raw) == {"step", "params", "opt_state", "rng", "ema_params"}
    assert raw["ema_params"] is None
    chex.assert_trees_all_equal(raw["params"], state.params)
    device = jax.devices()[-1]
    placed = restore_student(tmp_path, shardings=jax.sharding.SingleDeviceSharding(device))
    assert placed["params"]["w"].devices() == {device}
    np.testing.assert_array_equal(placed["params"]["w"], state.params["w"])


def test_reshards_onto_other_meshes(tmp_path):
    """An 8-device checkpoint restores onto 4x2 and 1x8 meshes, then here."""
    result = subprocess.run(
        [sys.executable, str(TESTS / "checkpoint_sharding_script.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
    # Whatever this process's devices, the saved layout falls back to one local device.
    restored = restore_student(tmp_path)
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(64.0 * 8).reshape(64, 8))
    teacher = restore_teacher(tmp_path, verify_hash=True)
    np.testing.assert_array_equal(teacher["w"], 2 * np.arange(64.0 * 8).reshape(64, 8))


def test_keep_last_n_and_best_by_metric(tmp_path):
    accuracy = {1: 0.5, 2: 0.9, 3: 0.2, 4: 0.3, 5: 0.4, 6: 0.8}
    with Checkpointer(tmp_path, max_to_keep=2, best_metric="accuracy", keep_best=2) as ckpt:
        for step, acc in accuracy.items():
            ckpt.save(step, _named_state(step, step), metrics={"accuracy": acc, "loss": 1.0})
        ckpt.wait_until_finished()
        # The latest two for resuming, the best two (0.9 at 2, 0.8 at 6) for evaluation.
        assert list(ckpt.manager.all_steps()) == [2, 5, 6]
        assert ckpt.best_step() == 2
        assert ckpt.latest_step() == 6
    best = restore_student(tmp_path, step="best")
    assert int(best["step"]) == 2
    assert int(restore_student(tmp_path, step="latest")["step"]) == 6


def test_best_mode_min_and_plain_keep_last(tmp_path):
    loss = [0.5, 0.1, 0.7, 0.9]
    with Checkpointer(tmp_path / "min", max_to_keep=1, best_metric="loss", best_mode="min") as c:
        for step, value in enumerate(loss, start=1):
            c.save(step, _params(), metrics={"loss": value})
        c.wait_until_finished()
        assert list(c.manager.all_steps()) == [2, 4]
    with Checkpointer(tmp_path / "last", max_to_keep=2) as c:
        for step in range(1, 6):
            c.save(step, _params())
        c.wait_until_finished()
        assert list(c.manager.all_steps()) == [4, 5]
    with pytest.raises(ValueError, match="best_metric"):
        restore_student(tmp_path / "last", step="best")


def test_save_interval_force_and_no_overwrite(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=None, save_interval_steps=3) as ckpt:
        saved = [ckpt.save(step, _named_state(0, step)) for step in range(1, 8)]
        # Orbax always writes the first save of a run, then every 3rd step.
        assert saved == [True, False, True, False, False, True, False]
        assert ckpt.save(7, _named_state(0, 7), force=True)
        # An existing step is never overwritten, forced or not.
        assert not ckpt.save(6, _named_state(5, 99), force=True)
        ckpt.wait_until_finished()
        assert list(ckpt.manager.all_steps()) == [1, 3, 6, 7]
    assert int(restore_student(tmp_path, step=6)["step"]) == 6


def test_config_item_records_config_models_and_teacher(tmp_path):
    config = ml_collections.ConfigDict({"optimizer": {"lr": 0.1}, "steps": 10})
    teacher = {"w": jnp.arange(6.0).reshape(2, 3)}
    with Checkpointer(tmp_path, config=config, model_names={"student": "s", "teacher": "t"}) as c:
        digest = c.save_teacher(teacher)
        c.save(1, _params())
    info = restore_config(tmp_path)
    assert info["config"] == {"optimizer": {"lr": 0.1}, "steps": 10}
    assert info["models"] == {"student": "s", "teacher": "t"}
    assert info["teacher"] == {"path": str(tmp_path / "teacher"), "params_sha256": digest}
    assert digest == params_hash(teacher)
    assert digest != params_hash({"w": teacher["w"] + 1})
    # A resumed run keeps recording the teacher without being told again.
    with Checkpointer(tmp_path, config=config) as resumed:
        resumed.save(2, _params())
    assert restore_config(tmp_path, step=2)["teacher"] == info["teacher"]


def test_teacher_saved_once_apart_from_steps(tmp_path):
    teacher = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3, jnp.bfloat16)}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save_teacher(teacher)
        ckpt.save(1, _params())
        ckpt.save_teacher(teacher)  # resuming with the same teacher is a no-op
        with pytest.raises(ValueError, match="different teacher"):
            ckpt.save_teacher({"w": teacher["w"] * 2, "b": teacher["b"]})
        ckpt.save(2, _params())
    for step_dir in (tmp_path / "checkpoints" / "1", tmp_path / "checkpoints" / "2"):
        assert sorted(p.name for p in step_dir.iterdir() if p.is_dir()) == ["config", "student"]
    chex.assert_trees_all_equal(restore_teacher(tmp_path), teacher)
    chex.assert_trees_all_equal(restore_teacher(tmp_path / "teacher", verify_hash=True), teacher)
    # The student restores with no teacher on disk at all.
    for path in sorted((tmp_path / "teacher").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "teacher").rmdir()
    chex.assert_trees_all_equal(restore_student(tmp_path), _params())


def test_relative_paths_save_and_restore(tmp_path, monkeypatch):
    # `jaxkd demo` and `jaxkd eval` take workdirs relative to the current directory.
    monkeypatch.chdir(tmp_path)
    teacher = _params(3)
    with Checkpointer("runs/teacher_run") as ckpt:
        ckpt.save_teacher(teacher)
    with Checkpointer("runs/student_run") as ckpt:
        ckpt.reference_teacher("runs/teacher_run", teacher)
        ckpt.save(1, _params())
    chex.assert_trees_all_equal(restore_student("runs/student_run"), _params())
    chex.assert_trees_all_equal(restore_teacher("runs/student_run"), teacher)
    chex.assert_trees_all_equal(restore_teacher("runs/teacher_run", verify_hash=True), teacher)
    assert restore_config("runs/student_run")["teacher"]["path"] == str(
        tmp_path / "runs" / "teacher_run" / "teacher"
    )


def test_teacher_referenced_from_the_run_that_trained_it(tmp_path):
    teacher = _params(5)
    with Checkpointer(tmp_path / "teacher_run") as ckpt:
        ckpt.save_teacher(teacher)
    with Checkpointer(tmp_path / "student_run") as ckpt:
        with pytest.raises(ValueError, match="params_sha256"):
            ckpt.reference_teacher(tmp_path / "teacher_run", _params(6))
        ckpt.reference_teacher(tmp_path / "teacher_run", teacher)
        ckpt.save(1, _params())
    assert not (tmp_path / "student_run" / "teacher").exists()
    info = restore_config(tmp_path / "student_run")
    assert info["teacher"]["path"] == str(tmp_path / "teacher_run" / "teacher")
    chex.assert_trees_all_equal(restore_teacher(tmp_path / "student_run"), teacher)


def test_shape_mismatch_names_path_key_and_both_shapes(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _named_state())
        wrong = _named_state()._replace(params={"w": jnp.ones((5, 4)), "b": jnp.ones(4)})
        with pytest.raises(ValueError) as error:
            ckpt.restore(wrong)
    message = str(error.value)
    assert str(tmp_path / "checkpoints" / "1" / "student") in message
    assert "'params/w'" in message
    assert "checkpoint has shape (3, 4), target has shape (5, 4)" in message


def test_structure_mismatch_names_first_key(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"params": _params(), "step": jnp.array(1)})
    with pytest.raises(ValueError, match=r"'params/extra': checkpoint has no such key, target has"):
        restore_student(tmp_path, target={"params": {**_params(), "extra": jnp.ones(2)}, "step": 0})
    with pytest.raises(ValueError, match=r"'step': checkpoint has shape \(\), target has no such"):
        restore_student(tmp_path, target={"params": _params()})
    teacher_dir = tmp_path / "teacher_only"
    with Checkpointer(teacher_dir) as ckpt:
        ckpt.save_teacher(_params())
    with pytest.raises(ValueError, match=r"teacher.*'w': checkpoint has shape \(3, 4\), target"):
        restore_teacher(teacher_dir, target={"w": jnp.ones((4, 3)), "b": jnp.ones(4)})


def test_bad_shardings_argument(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _params())
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with pytest.raises(ValueError, match="`shardings`"):
        restore_student(tmp_path, target=_params(), shardings={"w": sharding})


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        restore_student(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        restore_teacher(tmp_path / "nope")
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(FileNotFoundError, match="no checkpoint"):
            ckpt.restore(_params())
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        restore_student(tmp_path / "empty")
    with Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, _params())
    with pytest.raises(FileNotFoundError, match=r"step 7.*available steps: \[1\]"):
        restore_student(tmp_path / "run", step=7)
    with pytest.raises(ValueError, match="no 'data' item"):
        Checkpointer(tmp_path / "run").restore(_params(), _iterator())


@pytest.mark.parametrize("damage", ["metadata", "array_data", "student_item"])
def test_corrupt_checkpoint_raises_naming_the_path(tmp_path, damage):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, _params())
    student = tmp_path / "checkpoints" / "1" / "student"
    if damage == "metadata":
        (student / "_METADATA").write_text("{not json")
    elif damage == "array_data":
        for path in student.rglob("*"):
            if path.is_file() and "ocdbt" in str(path.relative_to(student)):
                path.write_bytes(b"garbage")
    else:
        for path in sorted(student.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        student.rmdir()
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "checkpoints" / "1"))):
        restore_student(tmp_path, target=_params())


def test_corrupt_teacher_raises_naming_the_path(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save_teacher(_params())
    (tmp_path / "teacher" / "_METADATA").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "teacher"))):
        restore_teacher(tmp_path)


class _BrokenIterator:
    """Fails while the checkpoint is half written (after the student item was started)."""

    def get_state(self):
        raise RuntimeError("disk full")


@pytest.mark.parametrize("failure", ["iterator", "unserializable_leaf"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, failure):
    good = _named_state(1, step=1)
    steps = tmp_path / "checkpoints"
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, good)
        ckpt.wait_until_finished()
        with pytest.raises((RuntimeError, ValueError), match=r"disk full|Unsupported type"):
            if failure == "iterator":
                ckpt.save(2, _named_state(2, 2), data_iterator=_BrokenIterator())
            else:
                ckpt.save(2, {"params": _params(2), "bad": object()})
            ckpt.wait_until_finished()
        # The half-written step stays in its temporary directory, never a step.
        assert not (steps / "2").exists()
        assert ckpt.latest_step() == 1
        _assert_trees_equal(ckpt.restore(_named_state(0)), good)
    # A new run in the same workdir resumes from the finished step and clears the debris.
    with Checkpointer(tmp_path) as again:
        assert again.latest_step() == 1
        _assert_trees_equal(again.restore(_named_state(0)), good)
        assert again.save(3, _named_state(3, 3))
    assert sorted(p.name for p in steps.iterdir()) == ["1", "3", "metadata"]


def test_sigterm_saves_next_step_and_stops(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    ckpt = Checkpointer(tmp_path, save_interval_steps=10)
    ckpt.install_preemption_handler()
    try:
        ckpt.save(10, _named_state(0, 10))
        assert not ckpt.save(11, _named_state(0, 11))  # not due
        assert not ckpt.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert ckpt.save(12, _named_state(0, 12))  # not due, but preempted
        assert ckpt.should_stop()
        assert ckpt.latest_step() == 12
    finally:
        ckpt.close()
    assert signal.getsignal(signal.SIGTERM) == previous
    assert int(restore_student(tmp_path)["step"]) == 12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_to_keep": 0}, "max_to_keep"),
        ({"best_mode": "best"}, "best_mode"),
        ({"keep_best": 0}, "keep_best"),
        ({"save_interval_steps": 0}, "save_interval_steps"),
        ({"config": 3}, "config"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Checkpointer(tmp_path, **kwargs)


def test_metrics_must_hold_best_metric(tmp_path):
    with Checkpointer(tmp_path, best_metric="accuracy") as ckpt:
        with pytest.raises(ValueError, match="accuracy"):
            ckpt.save(1, _params(), metrics={"loss": 1.0})
