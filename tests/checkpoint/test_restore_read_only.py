"""Reading a run back needs no write access to it and leaves every file of it as it was."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import chex
import jax.numpy as jnp
import numpy as np

from jaxkd.checkpoint import Checkpointer, restore_config, restore_student, restore_teacher


def _listing(root: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime) of `root` and of every file and directory under it."""
    paths = [root, *root.rglob("*")]
    return {
        str(p.relative_to(root)): (s.st_mode, s.st_size, s.st_mtime_ns)
        for p in paths
        for s in [p.lstat()]
    }


@contextlib.contextmanager
def _read_only(root: Path):
    """`root` without write permission (where the OS enforces it), unchanged on exit.

    Root ignores permission bits, so there only the unchanged listing is checked: no file
    or directory created, removed or modified.
    """
    paths = sorted([root, *root.rglob("*")], key=lambda p: len(p.parts), reverse=True)
    modes = {p: p.lstat().st_mode for p in paths}
    enforced = os.geteuid() != 0
    if enforced:
        writable = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        for p in paths:  # deepest first: a read-only parent still lets its entries change
            p.chmod(modes[p] & ~writable)
    before = _listing(root)
    try:
        yield
        assert _listing(root) == before, "a restore changed the checkpoint directory"
    finally:
        for p in reversed(paths):
            p.chmod(stat.S_IMODE(modes[p]))


def test_restores_read_nothing_but_the_run(tmp_path):
    teacher = {"w": jnp.arange(6.0).reshape(2, 3)}
    states = {s: {"step": jnp.array(s), "w": jnp.full((3,), float(s))} for s in (1, 2, 3)}
    accuracy = {1: 0.2, 2: 0.9, 3: 0.5}
    with Checkpointer(tmp_path, config={"lr": 0.1}, best_metric="accuracy") as ckpt:
        ckpt.save_teacher(teacher)
        for step, state in states.items():
            ckpt.save(step, state, metrics={"accuracy": accuracy[step]})
    with _read_only(tmp_path):
        chex.assert_trees_all_equal(restore_student(tmp_path), states[3])
        chex.assert_trees_all_equal(restore_student(tmp_path, step="best"), states[2])
        target = {"step": jnp.array(0), "w": jnp.zeros(3)}
        restored = restore_student(tmp_path, step=1, target=target)
        np.testing.assert_array_equal(restored["w"], states[1]["w"])
        assert restore_config(tmp_path)["config"] == {"lr": 0.1}
        chex.assert_trees_all_equal(restore_teacher(tmp_path), teacher)
