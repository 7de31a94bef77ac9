"""Reading a run back for evaluation: the student alone, or the recorded config.

Nothing here builds or reads the teacher, and no `Checkpointer` (which may write) is
needed: the run is opened read-only.
"""

from __future__ import annotations

from typing import Any, Literal

import orbax.checkpoint as ocp
from etils import epath

from jaxkd.checkpoint._layout import CONFIG, open_run, restore_student_item
from jaxkd.checkpoint._trees import PyTree, Shardings

Step = int | Literal["latest", "best"] | None


def _pick_step(manager: Any, step: Step) -> int:
    if step is None or step == "latest":
        return manager.latest_step()
    if step == "best":
        best = manager.best_step()
        if best is None:
            raise FileNotFoundError(f"no step of {manager.directory} was saved with metrics.")
        return best
    if isinstance(step, str):
        raise ValueError(f"`step` must be an int, 'latest' or 'best', got {step!r}.")
    return int(step)


def restore_student(
    path: epath.PathLike,
    *,
    step: Step = None,
    target: PyTree = None,
    shardings: Shardings = None,
) -> PyTree:
    """Restores the student's train state of a run alone, onto any mesh.

    Three ways to call it:

    - ``restore_student(workdir)``: no target; returns the stored form (nested dicts and
      lists, e.g. ``state["params"]``) at the saved layout if this machine has those
      devices, else on the first local device. Enough for evaluation.
    - ``restore_student(workdir, target=abstract_state)``: the structure of `target`
      (your `TrainState` class), placed by its leaves' shardings (arrays or
      `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`): resharding on restore.
    - ``shardings=...``: one `jax.sharding.Sharding` for every leaf (e.g. replicated on
      a mesh) or a pytree of them matching `target` (or the stored structure).

    Args:
      path: the run's workdir (the one given to `Checkpointer`).
      step: a step number, `"latest"`/`None`, or `"best"` (by the run's `best_metric`).
      target: optional tree giving structure, shapes, dtypes and shardings.
      shardings: optional shardings, see above.

    Returns:
      The student train state.

    Raises:
      FileNotFoundError: `path` has no (finished) checkpoint, or not that step.
      ValueError: the checkpoint is corrupt, or `target` differs from it in structure
        or shapes (the message names the path, the first mismatching key and both shapes).

    References:
      Orbax, "Restoring with a different sharding",
      https://orbax.readthedocs.io/en/latest/guides/checkpoint/checkpointing_pytrees.html
    """
    manager = open_run(path, rank_by_metric=step == "best")
    try:
        return restore_student_item(
            manager, _pick_step(manager, step), target=target, shardings=shardings
        )
    finally:
        manager.close()


def restore_config(path: epath.PathLike, *, step: Step = None) -> dict[str, Any]:
    """Returns a run's `config` item: experiment config, model names, teacher record.

    Args:
      path: the run's workdir.
      step: as in `restore_student`.

    Returns:
      ``{"config": ..., "models": {...}, "teacher": {"path": ..., "params_sha256": ...}}``
      (``"teacher"`` is `None` when the run recorded none).

    References:
      Orbax JsonCheckpointHandler, https://orbax.readthedocs.io/en/latest/
    """
    manager = open_run(path, rank_by_metric=step == "best")
    try:
        chosen = _pick_step(manager, step)
        try:
            restored = manager.restore(
                chosen, args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )
        except Exception as e:  # unreadable JSON or a missing item means a corrupt step
            raise ValueError(
                f"cannot read the {CONFIG!r} item of step {chosen} in {path}: {e}"
            ) from e
        return restored[CONFIG]
    finally:
        manager.close()
