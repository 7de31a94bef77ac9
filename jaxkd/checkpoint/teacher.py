"""The teacher's params: written once per run, apart from the student's steps.

Teachers are never modified by training, so they are never part of a step checkpoint;
a run either saves its teacher once under `<workdir>/teacher` or points at the run
that trained it. Either way the run's `config` item records the path and a SHA-256 of
the params, so an evaluation can tell which teacher a student was distilled from.
"""

from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp
from etils import epath

from jaxkd.checkpoint._layout import (
    CHECKPOINTS_DIR,
    CONFIG,
    TEACHER_DIR,
    checked_restore_args,
    open_run,
)
from jaxkd.checkpoint._trees import PyTree, Shardings, params_hash

_HASH_KEY = "params_sha256"
_METADATA_FILE = "_CHECKPOINT_METADATA"


def write_teacher(path: epath.PathLike, params: PyTree) -> str:
    """Saves teacher params at `path` unless the same params are already there.

    Args:
      path: the teacher checkpoint directory (e.g. `<workdir>/teacher`).
      params: the teacher's params pytree.

    Returns:
      The params hash (see `params_hash`).

    Raises:
      ValueError: `path` already holds a teacher with a different hash; a run keeps the
        teacher it started with.

    References:
      Orbax Checkpointer, https://orbax.readthedocs.io/en/latest/
    """
    path = epath.Path(path).absolute()
    digest = params_hash(params)
    if path.exists():
        stored = teacher_hash(path)
        if stored != digest:
            raise ValueError(
                f"a different teacher is already saved at {path} "
                f"(params_sha256 {stored}, given params have {digest})."
            )
        return digest
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    checkpointer.save(path, args=ocp.args.StandardSave(params), custom_metadata={_HASH_KEY: digest})
    checkpointer.close()
    return digest


def teacher_hash(path: epath.PathLike) -> str | None:
    """The params hash stored with a teacher checkpoint, or `None` if it has none."""
    path = epath.Path(path).absolute()
    if not (path / _METADATA_FILE).exists():
        raise ValueError(f"{path} is not a finished Orbax checkpoint (no {_METADATA_FILE}).")
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        custom = checkpointer.metadata(path).custom_metadata or {}
    finally:
        checkpointer.close()
    return custom.get(_HASH_KEY)


def _teacher_dir(path: epath.Path) -> epath.Path:
    """Resolves a run workdir or a teacher checkpoint to the teacher checkpoint itself."""
    if not path.exists():
        raise FileNotFoundError(f"no teacher checkpoint or run at {path}.")
    if (path / _METADATA_FILE).exists():
        return path
    if (path / TEACHER_DIR).exists():
        return path / TEACHER_DIR
    if (path / CHECKPOINTS_DIR).exists():
        manager = open_run(path)
        try:
            info = manager.restore(
                manager.latest_step(), args=ocp.args.Composite(config=ocp.args.JsonRestore())
            )[CONFIG]
        finally:
            manager.close()
        teacher = (info or {}).get("teacher")
        if teacher:
            return _teacher_dir(epath.Path(teacher["path"]))
    raise FileNotFoundError(
        f"{path} holds no teacher: neither a teacher checkpoint, nor a run with a "
        f"{TEACHER_DIR!r} directory or a teacher path in its {CONFIG!r} item."
    )


def restore_teacher(
    path: epath.PathLike,
    *,
    target: PyTree = None,
    shardings: Shardings = None,
    verify_hash: bool = False,
) -> PyTree:
    """Restores a teacher's params alone, onto any mesh, without building the student.

    Args:
      path: a teacher checkpoint, or a run workdir (its `teacher` directory, or else the
        teacher path recorded in its latest `config` item).
      target: optional tree of arrays or `jax.ShapeDtypeStruct`s giving the structure,
        shapes, dtypes (e.g. bf16 for a teacher held in half precision) and shardings.
        Without it, the stored nested-dict form comes back.
      shardings: one `jax.sharding.Sharding` for every leaf, or a pytree of them matching
        `target` (or the stored structure when there is no target).
      verify_hash: recompute the params hash and compare it with the stored one (reads
        every byte back to the host, so off by default).

    Returns:
      The teacher params.

    Raises:
      FileNotFoundError: nothing to restore at `path`.
      ValueError: corrupt checkpoint, a target whose structure or shapes differ (naming
        the first mismatching key and both shapes), or a hash mismatch.

    References:
      Orbax, "Restoring with a different sharding",
      https://orbax.readthedocs.io/en/latest/guides/checkpoint/checkpointing_pytrees.html
    """
    where = _teacher_dir(epath.Path(path).absolute())
    checkpointer = ocp.Checkpointer(ocp.StandardCheckpointHandler())
    try:
        args = checked_restore_args(
            lambda: checkpointer.metadata(where).item_metadata,
            target=target,
            shardings=shardings,
            where=where,
            label="teacher checkpoint",
        )
        try:
            params = checkpointer.restore(where, args=args)
        except Exception as e:  # tensorstore and file errors alike mean a corrupt checkpoint
            raise ValueError(f"cannot restore teacher checkpoint {where}: {e}") from e
    finally:
        checkpointer.close()
    if verify_hash:
        stored_hash, actual = teacher_hash(where), params_hash(params)
        if stored_hash != actual:
            raise ValueError(
                f"teacher at {where} has params_sha256 {actual}, recorded {stored_hash}."
            )
    return params


def record(path: epath.PathLike, digest: str) -> dict[str, Any]:
    """The `config` item's record of a teacher: absolute path and params hash."""
    return {"path": str(epath.Path(path).absolute()), _HASH_KEY: digest}


def check_reference(path: epath.PathLike, params: PyTree) -> tuple[epath.Path, str]:
    """Hashes `params` and checks them against the teacher checkpoint at `path`.

    Args:
      path: an existing teacher checkpoint (e.g. another run's `<workdir>/teacher`).
      params: the params the run will distill from (restored from `path`).

    Returns:
      The teacher checkpoint directory `path` resolves to, and the params hash.

    Raises:
      FileNotFoundError: `path` holds no teacher.
      ValueError: `path` stores a hash and it differs from that of `params`.
    """
    where = _teacher_dir(epath.Path(path).absolute())
    digest = params_hash(params)
    stored = teacher_hash(where)
    if stored is not None and stored != digest:
        raise ValueError(
            f"teacher at {where} has params_sha256 {stored}, given params have {digest}."
        )
    return where, digest
