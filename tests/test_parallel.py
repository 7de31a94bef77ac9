"""jaxkd.parallel: sharding rules, and one train step on 8 CPU devices equal to one device.

The multi-device checks run in one subprocess (this file run as a script) because
`XLA_FLAGS=--xla_force_host_platform_device_count=8` must be set before JAX starts, and a
pytest worker may already have imported JAX.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

if __name__ == "__main__":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxkd import engine, losses, parallel
from jaxkd.data import to_global_arrays
from jaxkd.objective import Objective, Term

RULES = parallel.ShardingRules(min_size=64)


def test_param_spec_shards_the_largest_divisible_dimension():
    spec = lambda shape, n=4, rules=RULES: parallel.param_spec(shape, n, rules)
    assert spec((16, 64)) == P(None, "fsdp")
    assert spec((64, 10)) == P("fsdp", None)
    assert spec((3, 3, 32, 64)) == P(None, None, None, "fsdp")
    assert spec((64, 64)) == P(None, "fsdp")  # ties: the last dimension
    assert spec((6, 30)) == P()  # nothing divisible by 4
    assert spec((8, 4)) == P()  # below min_size: replicated
    assert spec(()) == P()
    assert spec((16, 64), n=1) == P()
    assert spec((8, 4), rules=parallel.ShardingRules(min_size=1)) == P("fsdp", None)


def test_single_device_mesh_and_argument_errors(monkeypatch):
    mesh = parallel.make_mesh()
    assert mesh.axis_names == parallel.AXES and mesh.devices.size == jax.device_count()
    with pytest.raises(ValueError, match="fsdp"):
        parallel.make_mesh(fsdp=jax.device_count() + 1)
    with pytest.raises(ValueError, match="mesh shape"):
        parallel.make_mesh(data=jax.device_count() + 1)
    shards = parallel.shard_batch({"x": np.ones((4, 2)), "y": {"a": np.zeros(4)}}, mesh)
    assert shards["x"].shape == (4, 2) and shards["y"]["a"].shape == (4,)
    with pytest.raises(ValueError, match="leading dimension"):
        parallel.shard_batch({"x": np.float32(1.0)}, mesh)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    parallel.initialize_distributed()  # one process: nothing to start
    with pytest.raises(ValueError, match="process_id"):
        parallel.initialize_distributed("localhost:1234", num_processes=2)


def test_eight_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run(
        [sys.executable, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    for name in ("mesh_8x1", "mesh_4x2", "mesh_1x8", "pmap", "shard_map"):
        assert report[name]["loss"] < 1e-5, (name, report[name])
        assert report[name]["params"] < 1e-5, (name, report[name])
    assert report["mesh_1x8"]["sharded_leaves"] > 0
    assert report["mesh_1x8"]["opt_state_matches_params"]
    # Uneven rows fail before JAX does, naming the entry, its shape and the devices.
    assert "['y']['a'] of shape (6, 2)" in report["uneven_batch_error"]
    assert "divisible by the 8 local devices" in report["uneven_batch_error"]
    assert report["stacked_placed"]
    assert "of shape (3, 12, 2) must have dimension 1" in report["uneven_stacked_error"]


# ---- the 8-device script ---------------------------------------------------------------


class _MLP(nnx.Module):
    def __init__(self, hidden: int, *, norm: bool, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(8, hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(hidden, rngs=rngs) if norm else None
        self.fc2 = nnx.Linear(hidden, 8, rngs=rngs)

    def __call__(self, x):
        h = self.fc1(x)
        h = nnx.relu(self.norm(h) if self.norm is not None else h)
        self.sow(nnx.Intermediate, "hidden", h)
        return self.fc2(h)


def _diff(a, b) -> float:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b))
    return max(leaves, default=0.0)


def _setup(norm: bool):
    student = engine.from_nnx(_MLP(16, norm=norm, rngs=nnx.Rngs(0)))
    teacher = engine.from_nnx(_MLP(32, norm=norm, rngs=nnx.Rngs(1)))
    objective = Objective([Term("kd", losses.kd, hparams={"temperature": 2.0})], task_weight=0.5)
    # SGD with momentum, not Adam: Adam's first step is `lr · sign(g)`, which turns float32
    # rounding in near-zero gradients (biases before BatchNorm) into differences of `lr`.
    optimizer = optax.sgd(0.1, momentum=0.9)
    config = engine.TeacherConfig(apply=teacher.apply)
    state = engine.init_train_state(student, optimizer, objective=objective)
    rng = np.random.default_rng(0)
    batch = {
        "inputs": rng.normal(size=(16, 8)).astype(np.float32),
        "label": rng.integers(0, 8, 16).astype(np.int32),
        "mask": np.ones(16, np.float32),
    }
    return student, objective, optimizer, config, state, engine.freeze_teacher(teacher), batch


def _mesh_runs(report):
    student, objective, optimizer, config, state, teacher, batch = _setup(norm=True)
    step = engine.make_train_step(student, objective, optimizer, teacher=config)
    ref_state, ref_metrics = jax.jit(step)(state, teacher, batch)
    for data, fsdp in ((8, 1), (4, 2), (1, 8)):
        mesh = parallel.make_mesh(data, fsdp)
        sharded = parallel.jit_sharded_train_step(step, mesh, state, teacher, RULES)
        # A private copy: sharding may alias the input's buffers and the step donates them.
        copy = jax.tree.map(jnp.copy, state)
        new_state, metrics = sharded(
            parallel.shard_tree(copy, mesh, RULES),
            parallel.shard_tree(teacher, mesh, RULES),
            parallel.shard_batch(batch, mesh, RULES),
        )
        kernel = new_state.params["fc1"]["kernel"]
        mu = new_state.opt_state[0].trace["params"]["fc1"]["kernel"]
        report[f"mesh_{data}x{fsdp}"] = {
            "loss": abs(float(metrics["loss"]) - float(ref_metrics["loss"])),
            "params": _diff(new_state, ref_state),
            "sharded_leaves": sum(
                "fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(new_state.params)
            ),
            "opt_state_matches_params": mu.sharding.spec == kernel.sharding.spec,
        }


def _mapped_runs(report):
    # Per-device BatchNorm statistics would differ from the global ones, so no BatchNorm here.
    student, objective, optimizer, config, state, teacher, batch = _setup(norm=False)
    mesh = parallel.make_mesh(8, 1)
    step = engine.make_train_step(student, objective, optimizer, teacher=config)
    ref_state, ref_metrics = parallel.jit_sharded_train_step(step, mesh, state, teacher, RULES)(
        parallel.shard_tree(jax.tree.map(jnp.copy, state), mesh, RULES),
        parallel.shard_tree(teacher, mesh, RULES),
        parallel.shard_batch(batch, mesh, RULES),
    )
    mapped = engine.make_train_step(student, objective, optimizer, teacher=config, axis_name="d")
    stack = lambda tree: jax.tree.map(lambda x: jnp.stack([x] * 8), tree)
    split = {k: v.reshape((8, 2, *v.shape[1:])) for k, v in batch.items()}
    pmapped, pm_metrics = jax.pmap(mapped, axis_name="d", in_axes=(0, None, 0))(
        stack(state), teacher, split
    )
    report["pmap"] = {
        "loss": float(jnp.max(jnp.abs(pm_metrics["loss"] - ref_metrics["loss"]))),
        "params": _diff(jax.tree.map(lambda x: x[0], pmapped), ref_state),
    }
    sm = jax.shard_map(
        engine.make_train_step(student, objective, optimizer, teacher=config, axis_name="data"),
        mesh=mesh,
        in_specs=(P(), P(), P("data")),
        out_specs=(P(), P()),
    )
    sm_state, sm_metrics = jax.jit(sm)(state, teacher, batch)
    report["shard_map"] = {
        "loss": abs(float(sm_metrics["loss"]) - float(ref_metrics["loss"])),
        "params": _diff(sm_state, ref_state),
    }


def _batch_placement(report):
    mesh = parallel.make_mesh(4, 2)
    try:
        parallel.shard_batch({"x": np.zeros((8, 2)), "y": {"a": np.zeros((6, 2))}}, mesh)
        report["uneven_batch_error"] = None
    except ValueError as e:
        report["uneven_batch_error"] = str(e)
    # Stacked epochs: steps replicated, the batch (axis 1) split over every device.
    stacked = NamedSharding(mesh, P(None, parallel.AXES))
    epoch = np.arange(3 * 16 * 2, dtype=np.float32).reshape(3, 16, 2)
    placed = to_global_arrays({"inputs": epoch}, stacked)["inputs"]
    report["stacked_placed"] = placed.sharding == stacked and bool(
        np.array_equal(np.asarray(placed), epoch)
    )
    try:
        to_global_arrays({"inputs": epoch[:, :12]}, stacked)
        report["uneven_stacked_error"] = None
    except ValueError as e:
        report["uneven_stacked_error"] = str(e)


def _main():
    report = {"devices": jax.device_count()}
    _mesh_runs(report)
    _mapped_runs(report)
    _batch_placement(report)
    print(json.dumps(report))


if __name__ == "__main__":
    _main()
