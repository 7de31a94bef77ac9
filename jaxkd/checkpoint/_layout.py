"""Where a run's checkpoints live, and the one routine that reads the student item.

A run's working directory holds::

    <workdir>/checkpoints/<step>/{student,config,data,metrics}/   one CheckpointManager
    <workdir>/teacher/                                           the teacher, saved once

Both the training-side `Checkpointer` and the evaluation-side `restore_student` read
the student item through `restore_student_item`, so they validate it the same way;
`restore_teacher` checks its item with the same `checked_restore_args`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxkd.checkpoint._trees import (
    Shardings,
    abstract_from_metadata,
    abstract_target,
    check_matches,
)

STUDENT = "student"
CONFIG = "config"
DATA = "data"
CHECKPOINTS_DIR = "checkpoints"
TEACHER_DIR = "teacher"


def handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Orbax handlers for the three items of every step: pytree, JSON, Grain iterator."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add(STUDENT, ocp.args.StandardSave)
    registry.add(STUDENT, ocp.args.StandardRestore)
    registry.add(CONFIG, ocp.args.JsonSave)
    registry.add(CONFIG, ocp.args.JsonRestore)
    registry.add(DATA, grain.checkpoint.CheckpointSave)
    registry.add(DATA, grain.checkpoint.CheckpointRestore)
    return registry


def _read_only(root: epath.Path, **options: Any) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, save_interval_steps=0, **options
    )
    return ocp.CheckpointManager(root, options=options, handler_registry=handler_registry())


def open_run(path: epath.PathLike, *, rank_by_metric: bool = False) -> ocp.CheckpointManager:
    """Opens a run's checkpoints read-only; raises `FileNotFoundError` if there are none.

    With `rank_by_metric`, the manager ranks steps (`best_step`) by the metric the run
    was saved with, read from the run's root metadata.
    """
    root = epath.Path(path).absolute() / CHECKPOINTS_DIR  # Orbax needs absolute paths
    if not root.is_dir():
        raise FileNotFoundError(
            f"no checkpoint directory at {root} (expected `path` to be a run's workdir)."
        )
    manager = _read_only(root)
    if manager.latest_step() is None:
        manager.close()
        raise FileNotFoundError(f"no finished checkpoint in {root}.")
    if rank_by_metric:
        ranking = manager.metadata().custom_metadata or {}
        manager.close()
        metric = ranking.get("best_metric")
        if metric is None:
            raise ValueError(f"run {path} was saved without a best_metric; pass a step number.")
        manager = _read_only(
            root, best_fn=lambda metrics: metrics[metric], best_mode=ranking["best_mode"]
        )
    return manager


def step_dir(manager: ocp.CheckpointManager, step: int) -> epath.Path:
    """The directory holding one step's items."""
    return ocp.step.build_step_path(manager.directory, ocp.step.standard_name_format(), step)


def default_sharding() -> jax.sharding.Sharding:
    """Where leaves go when neither the target nor the caller names a sharding."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def checked_restore_args(
    read_metadata: Callable[[], Any],
    *,
    target: Any,
    shardings: Shardings,
    where: epath.Path,
    label: str,
) -> ocp.args.StandardRestore:
    """Reads a pytree item's stored metadata, checks `target` against it, builds its args.

    `read_metadata` returns the item's `TreeMetadata` (or `None`); `where` and `label`
    (e.g. "teacher checkpoint") name the item in errors. Raises `ValueError` on unreadable
    or missing metadata and on a target that does not match it (see `check_matches`).
    """
    try:
        metadata = read_metadata()
    except Exception as e:  # any unreadable metadata file means a corrupt checkpoint
        raise ValueError(f"cannot read {label} {where}: {e}") from e
    if metadata is None:
        raise ValueError(f"cannot read {label} {where}: its metadata is missing.")
    if target is not None:
        check_matches(metadata.tree, target, where=where)
        item = abstract_target(target, shardings)
    elif shardings is not None:
        item = abstract_from_metadata(metadata.tree, shardings)
    else:
        item = None
    # Leaves built from `shardings` all carry one, so the fallback only reaches the others.
    return ocp.args.StandardRestore(item, fallback_sharding=default_sharding())


def restore_student_item(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    target: Any = None,
    shardings: Shardings = None,
    data_iterator: Any = None,
) -> Any:
    """Checks and restores the `student` item (and the data iterator, in place) of a step.

    Without a target the tree comes back in its stored form (nested dicts and lists) at
    its saved layout when this machine has those devices, otherwise on `shardings`
    (default: the first local device).
    """
    where = step_dir(manager, step)
    if step not in manager.all_steps():
        raise FileNotFoundError(
            f"no checkpoint for step {step} in {manager.directory}; "
            f"available steps: {list(manager.all_steps())}."
        )
    if not (where / STUDENT).is_dir():
        raise ValueError(f"checkpoint {where} has no {STUDENT!r} item (corrupt checkpoint).")
    args = checked_restore_args(
        lambda: manager.item_metadata(step)[STUDENT],
        target=target,
        shardings=shardings,
        where=where / STUDENT,
        label="checkpoint",
    )
    items = {STUDENT: args}
    if data_iterator is not None:
        if not (where / DATA).is_dir():
            raise ValueError(
                f"`data_iterator` was given but checkpoint {where} has no {DATA!r} item."
            )
        items[DATA] = grain.checkpoint.CheckpointRestore(data_iterator)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # tensorstore, JSON and file errors alike mean a corrupt step
        raise ValueError(f"cannot restore checkpoint {where}: {e}") from e
    return restored[STUDENT]
