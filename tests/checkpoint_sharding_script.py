"""Saves a student sharded over 8 CPU devices and restores it onto other meshes.

Run by tests/test_checkpoint.py in a subprocess (the device count is fixed when JAX
starts): ``python tests/checkpoint_sharding_script.py WORKDIR``. Exits non-zero on any
mismatch; leaves the 8-device checkpoint in WORKDIR for the caller to restore.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxkd.checkpoint import Checkpointer, restore_student, restore_teacher


def main(workdir: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    mesh8 = jax.make_mesh((8, 1), ("fsdp", "data"))
    w = jnp.arange(64.0 * 8).reshape(64, 8)
    state = {
        "params": {"w": jax.device_put(w, NamedSharding(mesh8, P("fsdp")))},
        "step": jnp.array(5),
    }
    with Checkpointer(workdir) as ckpt:
        ckpt.save_teacher({"w": jax.device_put(2 * w, NamedSharding(mesh8, P(None, "fsdp")))})
        ckpt.save(5, state)

    # Resharding on restore: a 4x2 mesh, the big matrix split over both axes.
    mesh42 = jax.make_mesh((4, 2), ("fsdp", "data"))
    target = {
        "params": {"w": jax.ShapeDtypeStruct((64, 8), jnp.float32)},
        "step": jax.ShapeDtypeStruct((), jnp.int32),
    }
    shardings = {
        "params": {"w": NamedSharding(mesh42, P("fsdp", "data"))},
        "step": NamedSharding(mesh42, P()),
    }
    restored = restore_student(workdir, target=target, shardings=shardings)
    assert restored["params"]["w"].sharding == shardings["params"]["w"], restored
    np.testing.assert_array_equal(restored["params"]["w"], w)
    assert int(restored["step"]) == 5

    # One sharding for every leaf, no target: replicated on a 1x8 mesh.
    replicated = NamedSharding(jax.make_mesh((1, 8), ("fsdp", "data")), P())
    restored = restore_student(workdir, shardings=replicated)
    assert restored["params"]["w"].sharding == replicated
    np.testing.assert_array_equal(restored["params"]["w"], w)

    # The teacher alone, onto the 4x2 mesh, held in bf16.
    teacher_target = {
        "w": jax.ShapeDtypeStruct((64, 8), jnp.bfloat16, sharding=shardings["params"]["w"])
    }
    teacher = restore_teacher(workdir, target=teacher_target)
    assert teacher["w"].dtype == jnp.bfloat16
    assert teacher["w"].sharding == shardings["params"]["w"]
    np.testing.assert_array_equal(teacher["w"], (2 * w).astype(jnp.bfloat16))
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
