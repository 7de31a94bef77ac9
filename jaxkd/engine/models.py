"""Models as (apply function, params, state): adapters from Flax NNX and Flax Linen.

Every model, whatever library built it, becomes the same pure function

    apply(params, state, inputs, *, train, rng) -> (Outputs(logits, features), new_state)

over plain pytrees, so the train step can differentiate the student's params, hold the
teacher's in bf16 on its own sharding, and checkpoint each tree apart. Named features come
from Flax's own mechanisms: `nnx.capture` of `sow(nnx.Intermediate, ...)` for NNX, the
`intermediates` collection (`sow` or `capture_intermediates`) for Linen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from jaxkd.objective import Adapter, Outputs

# (params, state, inputs, *, train, rng=None) -> (Outputs, new_state)
ApplyFn = Callable[..., tuple[Outputs, Any]]


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A model as a pure apply function plus its initial variables.

    Attributes:
      apply: `(params, state, inputs, *, train, rng=None) -> (Outputs, new_state)`.
      params: trainable parameters (a pytree of arrays).
      state: everything else the forward pass reads or updates (BatchNorm statistics, NNX
        RNG counters); `{}` if none.
    """

    apply: ApplyFn
    params: Any
    state: Any = dataclasses.field(default_factory=dict)


def apply_fn_of(model: Model | ApplyFn) -> ApplyFn:
    """The apply function of a `Model`, or `model` itself if it is already one.

    Args:
      model: a `Model` or an apply function.

    Returns:
      The apply function.

    References:
      None (a convenience).
    """
    if isinstance(model, Model):
        return model.apply
    if not callable(model):
        raise TypeError(f"expected a Model or an apply function, got {model!r}.")
    return model


def _join(path: tuple[Any, ...]) -> str:
    return "/".join(str(getattr(p, "key", p)) for p in path)


def _split_nnx(module: nnx.Module):
    graphdef, params, state = nnx.split(module, nnx.Param, ...)
    # Plain nested dicts checkpoint, shard and print like any other pytree.
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(state)


def _call_nnx(graphdef, params, state, inputs, train: bool):
    module = nnx.merge(graphdef, params, state)
    if train:
        module.train()
    else:
        module.eval()
    out, captured = nnx.capture(module, nnx.Intermediate)(inputs)
    # A feature sown more than once (a shared block) keeps its last value.
    features = {_join(path): v.get_value()[-1] for path, v in nnx.to_flat_state(captured)}
    _, _, new_state = nnx.split(module, nnx.Param, ...)
    return out, features, nnx.to_pure_dict(new_state)


def from_nnx(module: nnx.Module) -> Model:
    """Wraps a Flax NNX module `__call__(x) -> logits` as a `Model`.

    The module is split into graphdef + `nnx.Param` params + the rest (BatchNorm statistics,
    RNG streams of Dropout), both as plain dicts. `apply` merges them, sets
    `module.train()`/`module.eval()` and collects the features the module records with
    `self.sow(nnx.Intermediate, name, x)` through `nnx.capture`, named by their path
    ("stage1", or "block/out" for a submodule). Dropout draws from the module's own RNG
    streams, whose counters are part of the returned state (`rng` is ignored).

    Args:
      module: the NNX module, already initialized.

    Returns:
      A `Model`.

    References:
      Flax NNX, "Extracting intermediate values" (`nnx.capture`) and `nnx.split`/`nnx.merge`.
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"`module` must be a flax.nnx.Module, got {type(module).__name__}.")
    graphdef, params, state = _split_nnx(module)

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        del rng
        logits, features, new_state = _call_nnx(graphdef, params, state, inputs, train)
        return Outputs(logits=logits, features=features), new_state

    return Model(apply=apply, params=params, state=state)


def adapter_from_nnx(module: nnx.Module) -> Adapter:
    """Wraps a trainable Flax NNX module (e.g. `jaxkd.adapters.HintAdapter`) as an `Adapter`.

    Its `nnx.Param`s become the adapter's params (trained by the student's optimizer), the
    rest (BatchNorm statistics) its state, updated in training mode.

    Args:
      module: the NNX module, `__call__(x) -> y`.

    Returns:
      An `Adapter` for `Term(adapter=...)` or `Term(teacher_adapter=...)`.

    References:
      Romero et al., "FitNets", ICLR 2015 (the trainable regressor).
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"`module` must be a flax.nnx.Module, got {type(module).__name__}.")
    graphdef, params, state = _split_nnx(module)

    def apply(params, state, x, *, train: bool):
        y, _, new_state = _call_nnx(graphdef, params, state, x, train)
        return y, new_state

    return Adapter(apply=apply, params=params, state=state)


def from_linen(
    module: nn.Module,
    variables: Mapping[str, Any],
    *,
    train_arg: str | None = "train",
    capture_intermediates: bool | Callable[[nn.Module, str], bool] = False,
    rng_collection: str = "dropout",
) -> Model:
    """Wraps a Flax Linen module `__call__(x, train=...) -> logits` as a `Model`.

    `variables["params"]` become the params, every other collection (e.g. `batch_stats`) the
    state, mutable in training. Features are the module's `intermediates` collection: values
    it stores with `self.sow("intermediates", name, x)`, plus, with `capture_intermediates`,
    the outputs Flax captures per submodule (named "Dense_0" for `Dense_0.__call__`).

    Args:
      module: the Linen module.
      variables: its variables from `module.init`.
      train_arg: keyword of `__call__` that switches training mode (`train=`), or None if
        the module has none.
      capture_intermediates: passed to `module.apply` (True, or a filter function).
      rng_collection: RNG stream name that receives the step's key in training (dropout).

    Returns:
      A `Model`.

    References:
      Flax Linen, `Module.apply(..., mutable=..., capture_intermediates=...)` and `sow`.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a flax.linen.Module, got {type(module).__name__}.")
    if "params" not in variables:
        raise ValueError(f"`variables` must hold a 'params' collection, got {sorted(variables)}.")
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k not in ("params", "intermediates")}

    def apply(params, state, inputs, *, train: bool, rng: jax.Array | None = None):
        kwargs = {} if train_arg is None else {train_arg: train}
        mutable = [*state, "intermediates"] if train else ["intermediates"]
        rngs = {rng_collection: rng} if train and rng is not None else None
        logits, updates = module.apply(
            {"params": params, **state},
            inputs,
            mutable=mutable,
            rngs=rngs,
            capture_intermediates=capture_intermediates,
            **kwargs,
        )
        updates = dict(updates)
        captured = updates.pop("intermediates", {})
        features = {}
        for path, value in jax.tree_util.tree_flatten_with_path(
            captured, is_leaf=lambda x: isinstance(x, tuple)
        )[0]:
            name = _join(path)
            if name.endswith("/__call__"):
                name = name[: -len("/__call__")]
            features[name] = value[-1]
        new_state = {k: updates.get(k, v) for k, v in state.items()}
        return Outputs(logits=logits, features=features), new_state

    return Model(apply=apply, params=params, state=state)
