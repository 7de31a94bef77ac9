"""The models of an experiment by name, and fitting restored variables back onto them.

Checkpoints read without a target come back as nested dicts keyed by strings (Orbax's
stored form), while an NNX model's variables are keyed by attribute names and list
positions. `fit_variables` lays the stored arrays onto the model's own structure, checking
every key and shape, so a checkpoint of another model fails in one line that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxkd.checkpoint import restore_config, restore_student
from jaxkd.engine import Model, from_nnx
from jaxkd.models import create_model


def model_kwargs(kwargs: Any) -> dict[str, Any]:
    """Constructor options from a config (`ConfigDict` or JSON dict; lists become tuples).

    Args:
      kwargs: `config.student.kwargs` (or the JSON form a checkpoint stores).

    Returns:
      A plain dict of keyword arguments.

    References:
      ml_collections `ConfigDict.to_dict`.
    """
    if isinstance(kwargs, ml_collections.ConfigDict):
        kwargs = kwargs.to_dict()
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dict(kwargs or {}).items()}


def build_model(
    name: str, kwargs: Any, *, num_classes: int, seed: int = 0, abstract: bool = False
) -> Model:
    """A reference model by name as an engine `Model`.

    Args:
      name: a name from `jaxkd.models.list_models()`.
      kwargs: constructor options (`config.student.kwargs`).
      num_classes: classifier width.
      seed: parameter initialisation seed.
      abstract: only shapes (`jax.ShapeDtypeStruct` params): nothing is allocated, for
        models whose weights come from a checkpoint.

    Returns:
      The `Model` (apply function, params, state).

    References:
      Flax NNX, `nnx.eval_shape` (abstract modules).
    """
    make = lambda: create_model(
        name, num_classes=num_classes, rngs=nnx.Rngs(seed), **model_kwargs(kwargs)
    )
    return from_nnx(nnx.eval_shape(make) if abstract else make())


def _key(entry: Any) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key(k) for k in path): leaf for path, leaf in leaves}


def _shape(x: Any) -> tuple[int, ...]:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, x).shape)
    return tuple(x.shape)


def fit_variables(stored: Any, abstract: Any, *, where: str, expected: str) -> Any:
    """`stored` (a restored tree, string keys) in the structure and dtypes of `abstract`.

    Args:
      stored: restored arrays, e.g. `restore_student(path)["params"]`.
      abstract: the model's variables or their `jax.ShapeDtypeStruct`s.
      where: the checkpoint path, quoted in errors.
      expected: the expected model's name, quoted in errors.

    Returns:
      The arrays, keyed and typed like `abstract` (typed PRNG keys rewrapped).

    Raises:
      ValueError: a key is missing on either side or a shape differs; one line naming
        `where`, `expected`, the key and both shapes.

    References:
      Orbax, restoring without a target (the stored nested-dict form).
    """
    have, want = _flat(stored), _flat(abstract)
    for key in [*want, *(k for k in have if k not in want)]:
        a = _shape(have[key]) if key in have else None
        b = _shape(want[key]) if key in want else None
        if a != b:
            a_text = "no such key" if a is None else f"shape {a}"
            b_text = "no such key" if b is None else f"shape {b}"
            raise ValueError(
                f"checkpoint {where} does not hold a {expected!r} model: first mismatching "
                f"key {key!r}: checkpoint has {a_text}, {expected!r} has {b_text}."
            )

    def fit(path, target):
        value = have["/".join(_key(k) for k in path)]
        if jax.dtypes.issubdtype(target.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(value)
        return jnp.asarray(value, target.dtype)

    return jax.tree_util.tree_map_with_path(fit, abstract)


def restore_trained_model(
    path: str, name: str, kwargs: Any, *, num_classes: int, role: str
) -> tuple[Model, int]:
    """The student of the run in `path` as a `Model` of `name`: its best step, else its latest.

    Only the params and model state are kept; the run's optimizer state is dropped.

    Args:
      path: the workdir of the run that trained the model.
      name: the expected model name (checked against the run's record and the shapes).
      kwargs: its constructor options.
      num_classes: its classifier width.
      role: the config field naming `path` (e.g. "config.teacher.checkpoint"), for errors.

    Returns:
      `(model, step)`: the `Model` with the restored variables, and the step restored.

    Raises:
      FileNotFoundError: `path` holds no finished checkpoint.
      ValueError: the run trained another model (one line naming `path` and `name`).

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015 (a trained
      teacher); `jaxkd.checkpoint.restore_student`.
    """
    if not path:
        raise ValueError(f"{role} is empty: set it to the workdir of a run that trained {name!r}.")
    try:
        recorded = (restore_config(path).get("models") or {}).get("student")
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{role}={path!r} holds no finished checkpoint (expected the workdir of a run that "
            f"trained {name!r}): {e}"
        ) from None
    if recorded and recorded != name:
        raise ValueError(
            f"checkpoint {path} holds a {recorded!r} model, expected {name!r} ({role} must "
            "point at a run of that model)."
        )
    try:
        stored = restore_student(path, step="best")
    except (FileNotFoundError, ValueError):  # a run saved without metrics: its latest step
        stored = restore_student(path, step="latest")
    if not isinstance(stored, Mapping) or "params" not in stored:
        raise ValueError(f"checkpoint {path} holds no student params (expected a jaxkd run).")
    model = build_model(name, kwargs, num_classes=num_classes, abstract=True)
    params = fit_variables(stored["params"], model.params, where=path, expected=name)
    state = fit_variables(stored.get("model_state", {}), model.state, where=path, expected=name)
    return Model(model.apply, params, state), int(stored["step"])
