"""`Checkpointer`: the outer loop's one handle on saving, resuming and preemption.

It wraps one Orbax `CheckpointManager` whose steps hold three items: `student` (the
whole train state, any pytree of arrays), `config` (JSON: experiment config, model
names, teacher path and params hash) and `data` (the Grain iterator's position). The
teacher is written once, beside the steps, never into them.

Typical outer loop::

    ckpt = Checkpointer(workdir, config=config, max_to_keep=3, best_metric="accuracy")
    ckpt.save_teacher(teacher_params)
    ckpt.install_preemption_handler()
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state, data_iterator=it)
    for step in range(int(state.step), num_steps):
        state, metrics = train_step(state, next(it))
        ckpt.save(step + 1, state, data_iterator=it)  # every step: it decides
        if ckpt.should_stop():  # SIGTERM: this step was just saved
            break
    ckpt.close()
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from typing import Any, Literal

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxkd.checkpoint import teacher as teacher_lib
from jaxkd.checkpoint._layout import (
    CHECKPOINTS_DIR,
    CONFIG,
    DATA,
    STUDENT,
    TEACHER_DIR,
    handler_registry,
    restore_student_item,
)
from jaxkd.checkpoint._trees import PyTree, Shardings, config_to_json


class Checkpointer:
    """Saves and resumes one distillation run in `workdir` with Orbax.

    Keeps the latest `max_to_keep` steps and, with `best_metric`, also the `keep_best`
    best steps by that metric. Saves are asynchronous by default: `save` returns once
    the arrays are copied off the devices and writes them in the background; every step
    directory appears only once complete (Orbax writes to a temporary directory and
    renames it), so a crash or a failed save never damages an earlier checkpoint.

    Args:
      workdir: the run's directory; checkpoints go to `workdir/checkpoints/<step>`.
      config: the experiment config (`ml_collections.ConfigDict` or mapping), stored as
        JSON with every step.
      model_names: e.g. `{"student": "resnet8", "teacher": "resnet32"}`, stored likewise.
      max_to_keep: how many of the latest steps to keep (`None`: all).
      best_metric: key of the `metrics` passed to `save` that ranks steps.
      best_mode: `"max"` or `"min"`: which end of `best_metric` is best.
      keep_best: how many best steps to keep besides the latest ones.
      save_interval_steps: `save` writes only every this many steps (unless forced or
        preempted).
      async_save: write in a background thread.

    References:
      Orbax CheckpointManager,
      https://orbax.readthedocs.io/en/latest/guides/checkpoint/api_refactor.html
    """

    def __init__(
        self,
        workdir: epath.PathLike,
        *,
        config: Any = None,
        model_names: Mapping[str, str] | None = None,
        max_to_keep: int | None = 3,
        best_metric: str | None = None,
        best_mode: Literal["max", "min"] = "max",
        keep_best: int = 1,
        save_interval_steps: int = 1,
        async_save: bool = True,
    ) -> None:
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"`max_to_keep` must be >= 1 or None, got {max_to_keep}.")
        if best_mode not in ("max", "min"):
            raise ValueError(f"`best_mode` must be 'max' or 'min', got {best_mode!r}.")
        if keep_best < 1:
            raise ValueError(f"`keep_best` must be >= 1, got {keep_best}.")
        if save_interval_steps < 1:
            raise ValueError(f"`save_interval_steps` must be >= 1, got {save_interval_steps}.")
        self.workdir = epath.Path(workdir).absolute()
        self._best_metric = best_metric
        self._info: dict[str, Any] = {
            "config": config_to_json(config),
            "models": dict(model_names or {}),
            "teacher": None,
        }
        # Orbax's own `max_to_keep` with `best_fn` keeps only the best steps, which could
        # delete the latest one and lose progress on resume; the union of both policies
        # keeps the latest N for resuming and the best K for evaluation.
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
        best_fn = None
        if best_metric is not None:
            best_fn = lambda metrics: metrics[best_metric]
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_interval_steps,
            best_fn=best_fn,
            best_mode=best_mode,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(
            self.workdir / CHECKPOINTS_DIR,
            options=options,
            handler_registry=handler_registry(),
            metadata={"best_metric": best_metric, "best_mode": best_mode},
        )
        latest = self._manager.latest_step()
        if latest is not None:
            # A resumed run keeps the teacher record of the steps it continues.
            try:
                previous = self._manager.restore(
                    latest, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()})
                )[CONFIG]
            except Exception as e:  # unreadable JSON or a missing item: a corrupt step
                raise ValueError(
                    f"cannot read the {CONFIG!r} item of step {latest} in "
                    f"{self._manager.directory}: {e}"
                ) from e
            self._info["teacher"] = (previous or {}).get("teacher")
        self._sigterm = threading.Event()
        self._previous_handler: Any = None
        self._preemption_checked: tuple[int, bool] | None = None
        self._stop = False

    @property
    def manager(self) -> ocp.CheckpointManager:
        """The underlying Orbax `CheckpointManager` (steps, metrics, metadata)."""
        return self._manager

    # Teacher.

    def save_teacher(self, params: PyTree) -> str:
        """Saves the teacher once, at `workdir/teacher`, and records it in `config`.

        Calling it again on resume with the same params is a no-op; different params
        raise `ValueError`, since a run keeps the teacher it started with.

        Args:
          params: the teacher's params pytree.

        Returns:
          The params hash.
        """
        path = self.workdir / TEACHER_DIR
        digest = teacher_lib.write_teacher(path, params)
        self._info["teacher"] = teacher_lib.record(path, digest)
        return digest

    def reference_teacher(self, path: epath.PathLike, params: PyTree) -> str:
        """Records a teacher saved elsewhere (e.g. by the run that trained it).

        Args:
          path: that teacher checkpoint, or the workdir of the run that saved it.
          params: the teacher params this run uses (checked against the stored hash).

        Returns:
          The params hash.
        """
        where, digest = teacher_lib.check_reference(path, params)
        self._info["teacher"] = teacher_lib.record(where, digest)
        return digest

    # Steps.

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        data_iterator: Any = None,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves the student state (and the iterator position) as `step`, if due.

        Call it after every step; it decides. Due means: `step` is a multiple of
        `save_interval_steps`, `force` is set, or a preemption was signalled (then the
        save is also waited for and `should_stop()` turns true, so the loop can exit).
        A step that already exists is never overwritten.

        Args:
          step: the number of completed training steps.
          state: the train state, any pytree of arrays.
          data_iterator: a Grain `DatasetIterator` or `DataLoaderIterator`; its state is
            captured before `save` returns.
          metrics: scalars for this step; `best_metric` must be among them to rank it.
          force: save even when not due.

        Returns:
          Whether a checkpoint was started.
        """
        step = int(step)
        preempted = self._reached_preemption(step)
        if step in self._manager.all_steps():
            if preempted:
                self._manager.wait_until_finished()
                self._stop = True
            return False
        if metrics is not None:
            metrics = {str(k): float(v) for k, v in metrics.items()}
            if self._best_metric is not None and self._best_metric not in metrics:
                raise ValueError(
                    f"`metrics` must contain best_metric {self._best_metric!r}, "
                    f"got keys {sorted(metrics)}."
                )
        items: dict[str, Any] = {
            STUDENT: ocp.args.StandardSave(state),
            CONFIG: ocp.args.JsonSave(self._info),
        }
        if data_iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointSave(data_iterator)
        saved = self._manager.save(
            step, args=ocp.args.Composite(**items), metrics=metrics, force=force or preempted
        )
        if preempted:
            self._manager.wait_until_finished()
            self._stop = True
        return saved

    def restore(
        self,
        state_target: PyTree,
        data_iterator: Any = None,
        *,
        step: int | None = None,
        shardings: Shardings = None,
    ) -> PyTree:
        """Restores the train state of `step` (default: the latest) to resume training.

        Args:
          state_target: a state of the right structure (e.g. the freshly initialised one,
            or `jax.eval_shape` of the init); its leaves' shardings place the result.
          data_iterator: the Grain iterator to move to the saved position (in place).
          step: which step; `None` for the latest.
          shardings: overrides the target's shardings (see `restore_student`).

        Returns:
          The restored state, with the structure of `state_target`.

        Raises:
          FileNotFoundError: no checkpoint yet.
          ValueError: the checkpoint does not match `state_target` (naming the first
            mismatching key and both shapes), or is corrupt.
        """
        self._manager.wait_until_finished()
        if step is None:
            step = self._manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint to restore in {self._manager.directory}.")
        return restore_student_item(
            self._manager,
            int(step),
            target=state_target,
            shardings=shardings,
            data_iterator=data_iterator,
        )

    def latest_step(self) -> int | None:
        """The latest saved step, or `None`."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The best saved step by `best_metric` (the latest one without `best_metric`)."""
        return self._manager.best_step()

    # Preemption.

    def install_preemption_handler(self) -> None:
        """Makes SIGTERM end the run at the next step boundary, after a checkpoint.

        After the signal, the next `save` writes its step whether due or not, waits for
        it, and `should_stop()` turns true. Under `jax.distributed` with JAX's preemption
        service (the default), JAX already catches SIGTERM and Orbax's
        `reached_preemption` makes every host agree on the step to save; nothing is
        installed then. Otherwise a SIGTERM handler records the signal. Must be called
        from the main thread.
        """
        if jax.distributed.is_initialized() and jax.config.jax_enable_preemption_service:
            return
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        del signum, frame
        self._sigterm.set()

    def should_stop(self) -> bool:
        """Whether a preemption was signalled and its checkpoint is on disk: exit the loop."""
        return self._stop

    def _reached_preemption(self, step: int) -> bool:
        if self._sigterm.is_set():
            return True
        # Orbax's check is a multi-host agreement: every host asks once per step.
        if self._preemption_checked is None or self._preemption_checked[0] != step:
            self._preemption_checked = (step, self._manager.reached_preemption(step))
        return self._preemption_checked[1]

    # Lifetime.

    def wait_until_finished(self) -> None:
        """Blocks until the background save (if any) is on disk; raises its error."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves, releases Orbax resources, restores the SIGTERM handler."""
        self._manager.wait_until_finished()
        self._manager.close()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
