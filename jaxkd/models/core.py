"""The feature-recording base of the reference models and helpers to use it.

Every reference model is a Flax NNX module whose `__call__(x)` returns logits and which
records named intermediate features with `Module.sow(nnx.Intermediate, name, value)`.
Features are collected with `nnx.capture` (Flax's supported way since 0.12):

    logits, intermediates = nnx.capture(model, nnx.Intermediate)(x)
    # intermediates["stage1"].get_value() == (array,)

or, as a flat `{name: array}` dict, with `forward_with_features(model, x)`.
"""

from __future__ import annotations

import math

import jax
from flax import nnx


class FeatureModel(nnx.Module):
    """Base class: a model that records the features named in `feature_names`.

    Subclasses set `self.feature_names` (a tuple of str) in `__init__` and call
    `self.record(name, value)` from the top-level `__call__` only, so that every feature
    lands at the root of the captured state under its plain name.
    """

    feature_names: tuple[str, ...] = ()

    def record(self, name: str, value: jax.Array) -> None:
        """Records `value` as feature `name` when the call runs under `nnx.capture`.

        A plain call records nothing: `Module.sow` outside `nnx.capture` is deprecated in
        Flax 0.12 and would store the feature on the model, growing its state on each call
        (and changing its structure under `nnx.jit`).
        """
        if hasattr(self, "__captures__"):
            self.sow(nnx.Intermediate, name, value)


def forward_with_features(
    model: nnx.Module, x: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Runs `model(x)` and returns its logits and its recorded features by name.

    A thin wrapper over `nnx.capture(model, nnx.Intermediate)` that flattens the captured
    state to `{name: array}` (the value of the single call). Works inside `jax.jit` and
    `nnx.jit`; features the caller does not use are removed by XLA.

    Args:
        model: a module that records features with `sow(nnx.Intermediate, ...)` at its root,
            e.g. any model from `jaxkd.models.create_model`.
        x: the model input.

    Returns:
        `(logits, features)`, `features` a dict from feature name to array.

    References:
        Flax, "Extracting intermediate values" (nnx.capture).
    """
    logits, intermediates = nnx.capture(model, nnx.Intermediate)(x)
    features = {}
    for name, variable in intermediates.items():
        if not isinstance(variable, nnx.Variable):
            raise ValueError(
                f"feature {name!r} was recorded by a submodule; reference models record "
                "features at their root only."
            )
        features[name] = variable.get_value()[-1]
    return logits, features


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars: the sizes of all `nnx.Param` leaves.

    Counts what PyTorch's `sum(p.numel() for p in model.parameters())` counts: weights,
    biases and BatchNorm scale/shift, not BatchNorm running statistics. Works on abstract
    models from `nnx.eval_shape`, so no memory is spent on weights.

    Args:
        model: an NNX module, concrete or abstract.

    Returns:
        The parameter count.

    References:
        Tian et al. 2020, "Contrastive Representation Distillation" (param counts, Tab. 1-2).
    """
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
