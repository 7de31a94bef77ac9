"""One term of an objective: a loss, what feeds it, and its (scheduled) weight."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxkd.losses import _checks
from jaxkd.objective.outputs import Source
from jaxkd.objective.weighting import ExampleWeight

# A constant or an optax schedule `step -> value` (weights, temperatures, ...).
Scheduled = float | Callable[[jax.Array], jax.typing.ArrayLike]
# (params, state, x, *, train) -> (y, new_state)
AdapterApply = Callable[..., tuple[jax.Array, Any]]


def resolve(value: Scheduled, step: jax.typing.ArrayLike) -> jax.typing.ArrayLike:
    """The value of a constant or of an optax schedule at `step`: `value(step)` or `value`.

    Args:
      value: a number or a schedule `step -> value` (e.g. `optax.linear_schedule`).
      step: the (possibly traced) step.

    Returns:
      The value at `step`.

    References:
      optax schedules (`optax.Schedule`).
    """
    return value(step) if callable(value) else value


@dataclasses.dataclass(frozen=True, eq=False)
class Adapter:
    """A trainable module between a model output and a loss, as (apply function, params).

    Its params and state live in the train state (`adapter_params[term][side]`) and are
    updated by the student's optimizer; `params`/`state` here are only the initial values.
    Build one from a Flax NNX module with `jaxkd.engine.adapter_from_nnx`.

    Attributes:
      apply: `(params, state, x, *, train) -> (y, new_state)`.
      params: initial trainable parameters.
      state: initial non-trainable state (e.g. BatchNorm statistics), `{}` if none.
    """

    apply: AdapterApply
    params: Any
    state: Any = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, eq=False)
class Term:
    """A loss term: `weight(step) · loss(student_source, teacher_source, *batch_inputs, **hparams)`.

    The loss is called as `loss(s, t, *[batch[k] for k in inputs], [state, key],
    mask=batch[mask_key], **hparams)`, which fits every function in `jaxkd.losses`:
    `kd(s, t)`, `dkd(s, t, labels)`, `hint(s_feat, t_feat)`, `crd(s, t, indices, state, key)`.

    Attributes:
      name: unique name; the metrics report `loss/<name>` and `weight/<name>`.
      loss: the loss function, e.g. `jaxkd.losses.kd`.
      student: what of the student feeds the loss: "logits", a feature name, or a function
        of its `Outputs`.
      teacher: the same for the teacher; None for a loss of the student alone.
      teachers: which teacher: None for the only one, a name, or `{name: weight}` for an
        ensemble (the weighted mean of the teachers' probabilities at the term's
        temperature; logits only, see `ensemble_logits`).
      inputs: batch keys passed positionally after the student and teacher arrays, e.g.
        `("label",)` for `dkd`, `("index",)` for `crd`.
      weight: constant or optax schedule of the step (e.g. DKD's warm-up
        `optax.linear_schedule(0.0, 1.0, 20 * steps_per_epoch)`).
      hparams: keyword hyperparameters of the loss, each a constant or a schedule, e.g.
        `{"temperature": 4.0}`.
      adapter: trainable adapter applied to the student array (e.g. a FitNets regressor).
      teacher_adapter: trainable adapter applied to the (frozen) teacher array, e.g. CRD's
        teacher embedding head; it is trained, the teacher is not.
      example_weight: `(student_out, teacher_out, batch) -> [B]` per-example weights; the loss
        is then called with `reduction="none"` (see `weighted_mean`).
      state: initial loss state for a stateful loss (CRD's memory bank from `crd_init`); the
        loss then also receives `(state, key)` and returns `(loss, new_state)`.
      mask_key: batch key passed as `mask=` when present ("loss_mask" for token losses);
        None to never pass a mask.
    """

    name: str
    loss: Callable[..., Any]
    student: Source = "logits"
    teacher: Source | None = "logits"
    teachers: str | Mapping[str, float] | None = None
    inputs: Sequence[str] = ()
    weight: Scheduled = 1.0
    hparams: Mapping[str, Scheduled] = dataclasses.field(default_factory=dict)
    adapter: Adapter | None = None
    teacher_adapter: Adapter | None = None
    example_weight: ExampleWeight | None = None
    state: Any = None
    mask_key: str | None = "mask"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"`name` must be a non-empty str without '/', got {self.name!r}.")
        if not callable(self.loss):
            raise TypeError(f"term {self.name!r}: `loss` must be callable, got {self.loss!r}.")
        if isinstance(self.inputs, str):
            raise TypeError(
                f"term {self.name!r}: `inputs` must be a sequence of batch keys, got the str "
                f"{self.inputs!r}; write ({self.inputs!r},)."
            )
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "hparams", dict(self.hparams))
        if self.teacher is None and (self.teachers is not None or self.teacher_adapter):
            raise ValueError(
                f"term {self.name!r} reads no teacher (`teacher=None`) but sets `teachers` or "
                "`teacher_adapter`."
            )
        if isinstance(self.teachers, Mapping) and self.teacher != "logits":
            raise ValueError(
                f"term {self.name!r}: an ensemble of teachers averages probabilities, so it "
                f"needs `teacher='logits'`, got {self.teacher!r}; use one term per teacher "
                "for features."
            )

    @property
    def stateful(self) -> bool:
        return self.state is not None

    def hyperparameters(self, step: jax.typing.ArrayLike) -> dict[str, jax.typing.ArrayLike]:
        """The loss keyword hyperparameters at `step`."""
        return {key: resolve(value, step) for key, value in self.hparams.items()}

    def temperature(self, hparams: Mapping[str, Any]) -> jax.typing.ArrayLike:
        """The temperature the loss applies: the term's, else the loss's default, else 1."""
        if "temperature" in hparams:
            return hparams["temperature"]
        try:
            parameter = inspect.signature(self.loss).parameters.get("temperature")
        except (TypeError, ValueError):
            parameter = None
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return 1.0
        return parameter.default


def cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    mask: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """Hard-label task loss: softmax cross-entropy with integer labels.

    `loss_b = −log softmax(z_b)[y_b]`, averaged over valid examples (optax's
    `softmax_cross_entropy_with_integer_labels` in float32).

    Args:
      logits: `[..., C]` logits.
      labels: `[...]` int class ids.
      mask: optional `[...]` validity.
      reduction: "mean", "sum" or "none".

    Returns:
      The loss (float32 for half-precision logits).

    References:
      Standard maximum-likelihood classification loss.
    """
    _checks.check_floating(logits, "logits")
    _checks.check_rank(logits, "logits", min_rank=1)
    batch_shape = jnp.shape(logits)[:-1]
    _checks.check_labels(labels, batch_shape, name="labels")
    _checks.check_mask(mask, batch_shape, against="logits")
    values = optax.losses.softmax_cross_entropy_with_integer_labels(
        _checks.to_float32(logits), jnp.asarray(labels)
    )
    return _checks.reduce(values, mask, reduction)
