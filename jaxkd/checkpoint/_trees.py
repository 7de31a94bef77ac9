"""Pytree helpers for checkpoints: abstract restore targets, structure checks, hashes.

Keys are compared in Orbax's own serialized form (`ocp.tree.to_flat_dict`), so a custom
pytree (a dataclass, a NamedTuple, an `nnx.State`) and the nested dicts Orbax stores for
it name their leaves identically, e.g. `opt_state/1/0/mu/w`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any
Shardings = jax.sharding.Sharding | PyTree | None


def _is_array_like(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _stored_shape(x: Any) -> tuple[int, ...]:
    """Shape of `x` as Orbax stores it (typed PRNG keys are stored as their key data)."""
    if _is_array_like(x) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, x).shape)
    return tuple(x.shape) if hasattr(x, "shape") else tuple(np.shape(x))


def _flat(tree: PyTree) -> dict[str, Any]:
    flat = ocp.tree.to_flat_dict(tree)
    return {"/".join(str(k) for k in key): leaf for key, leaf in flat.items()}


def _describe(shape: tuple[int, ...] | None) -> str:
    return "no such key" if shape is None else f"shape {shape}"


def check_matches(metadata_tree: PyTree, target: PyTree, *, where: epath.PathLike) -> None:
    """Raises `ValueError` naming the first key whose structure or shape differs.

    Compares the checkpoint's metadata tree (from `CheckpointManager.item_metadata`)
    with the restore target before anything is read, so a mismatch costs no I/O.

    Args:
      metadata_tree: the stored tree of `ArrayMetadata` (nested dicts and lists).
      target: the tree to restore into (arrays or `jax.ShapeDtypeStruct`s).
      where: the checkpoint directory, quoted in the message.

    Raises:
      ValueError: ``checkpoint <where> does not match the target: first mismatching key
        'params/w': checkpoint has shape (3, 4), target has shape (4, 4)``.

    References:
      Orbax tree utilities, https://orbax.readthedocs.io/en/latest/api_reference/checkpoint.tree.html
    """
    stored = _flat(metadata_tree)
    wanted = _flat(target)
    keys = list(wanted) + [k for k in stored if k not in wanted]
    for key in keys:
        have = _stored_shape(stored[key]) if key in stored else None
        want = _stored_shape(wanted[key]) if key in wanted else None
        if have != want:
            raise ValueError(
                f"checkpoint {where} does not match the target: first mismatching key "
                f"{key!r}: checkpoint has {_describe(have)}, target has {_describe(want)}."
            )


def _map_shardings(
    leaf: Callable[[Any, jax.sharding.Sharding | None], Any],
    tree: PyTree,
    shardings: Shardings,
    message: str,
) -> PyTree:
    """Applies `leaf` to each leaf of `tree` with its sharding: one for all, or a tree of them.

    A structure mismatch between `tree` and `shardings` raises `ValueError(message: ...)`.
    """
    if shardings is None or isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: leaf(x, shardings), tree)
    try:
        return jax.tree.map(leaf, tree, shardings)
    except ValueError as e:
        raise ValueError(f"{message}: {e}") from e


def abstract_target(target: PyTree, shardings: Shardings) -> PyTree:
    """Turns a restore target into `jax.ShapeDtypeStruct`s carrying the wanted shardings.

    `shardings` is one `jax.sharding.Sharding` for every leaf, a pytree of shardings with
    the structure of `target` (a `None` entry keeps that leaf's own sharding), or `None`
    (every leaf keeps the sharding it has; leaves without one use the saved layout).
    Non-array leaves (Python scalars) are passed through for Orbax to restore as such.

    Args:
      target: arrays, `jax.ShapeDtypeStruct`s, or any pytree of them.
      shardings: see above.

    Returns:
      The abstract target to hand to `ocp.args.StandardRestore`.

    References:
      Orbax, "Restoring with a different sharding",
      https://orbax.readthedocs.io/en/latest/guides/checkpoint/checkpointing_pytrees.html
    """

    def leaf(x: Any, sharding: jax.sharding.Sharding | None) -> Any:
        if not _is_array_like(x):
            return x
        sharding = sharding if sharding is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return _map_shardings(
        leaf,
        target,
        shardings,
        "`shardings` must be a jax.sharding.Sharding or a pytree with the structure of the target",
    )


def abstract_from_metadata(metadata_tree: PyTree, shardings: Shardings) -> PyTree:
    """Builds a restore target from stored metadata, placing every leaf with `shardings`.

    Args:
      metadata_tree: the stored tree of `ArrayMetadata`.
      shardings: one `jax.sharding.Sharding`, or a pytree of them with the structure of
        the stored tree (nested dicts and lists).

    Returns:
      A tree of `jax.ShapeDtypeStruct` in the stored structure.
    """

    def leaf(meta: Any, sharding: jax.sharding.Sharding | None) -> Any:
        if not _is_array_like(meta):
            return meta
        return jax.ShapeDtypeStruct(tuple(meta.shape), meta.dtype, sharding=sharding)

    return _map_shardings(
        leaf,
        metadata_tree,
        shardings,
        "without a target, `shardings` must be one jax.sharding.Sharding or a pytree "
        "with the stored structure (nested dicts and lists)",
    )


def params_hash(tree: PyTree) -> str:
    """SHA-256 of a params tree: its key paths, shapes, dtypes and bytes, in order.

    Keys are taken in Orbax's serialized form, so a tree hashes the same before saving
    and after a restore without a target (which returns plain nested dicts).
    Arrays spread over several hosts are gathered first.

    Args:
      tree: a pytree of arrays.

    Returns:
      The hex digest, recorded in the run's `config` item to identify its teacher.

    References:
      FIPS 180-4 (SHA-256).
    """
    digest = hashlib.sha256()
    for key, leaf in _flat(tree).items():
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        if _is_array_like(leaf) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        value = np.ascontiguousarray(np.asarray(leaf))
        header = json.dumps([key, str(value.dtype), list(value.shape)])
        digest.update(header.encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def config_to_json(config: Any) -> Any:
    """Converts an experiment config to JSON-compatible values.

    An `ml_collections.ConfigDict` goes through its own `to_json_best_effort`; a mapping
    goes through `json` with `str()` for values JSON cannot hold (e.g. a function).

    Args:
      config: a `ConfigDict`, a mapping, or `None`.

    Returns:
      Nested dicts, lists, strings and numbers.

    References:
      ml_collections ConfigDict, https://github.com/google/ml_collections
    """
    if config is None:
        return None
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    if isinstance(config, Mapping):
        return json.loads(json.dumps(dict(config), default=str))
    raise TypeError(f"`config` must be an ml_collections ConfigDict or a mapping, got {config!r}.")
