"""The objective of an experiment, from `config.objective`: losses by name, adapters by shape.

A config names each term's loss (a public function of `jaxkd.losses`), what feeds it, and
an adapter by kind; the shapes the adapters map between are only known once the models
exist, so they are read here from `jax.eval_shape` of both forward passes.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxkd import losses
from jaxkd.adapters import Embed, HintAdapter, VIDRegressor
from jaxkd.engine import adapter_from_nnx
from jaxkd.losses import _checks
from jaxkd.objective import Adapter, Objective, Term, cross_entropy

ADAPTERS = ("hint", "embed", "vid")
# Public callables of `jaxkd.losses` that are helpers, not losses.
_NOT_LOSSES = ("crd_init", "crd_contrast_indices")


def loss_names() -> list[str]:
    """The loss names a config may use: the public loss functions of `jaxkd.losses`."""
    return sorted(
        name
        for name, value in vars(losses).items()
        if not name.startswith("_") and inspect.isfunction(value) and name not in _NOT_LOSSES
    )


def loss_by_name(name: str, *, term: str = "?") -> Callable[..., Any]:
    """The function `jaxkd.losses.<name>`, or a `ValueError` listing the valid names.

    Args:
      name: a loss name, e.g. "kd", "dkd", "hint".
      term: the term's name, quoted in the error.

    Returns:
      The loss function.

    References:
      None (a lookup).
    """
    valid = loss_names()
    if name not in valid:
        raise ValueError(
            f"objective term {term!r}: unknown loss {name!r}; valid names: {', '.join(valid)}."
        )
    return getattr(losses, name)


def labeled_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mask: jax.Array | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """The task loss on labelled examples only: CE over the rows with `label >= 0`.

    `loss = Σ_b m_b [y_b ≥ 0] CE(z_b, y_b) / Σ_b m_b [y_b ≥ 0]`. Unlabelled examples of a
    transfer set carry label −1: they train the distillation terms and are ignored here,
    like PyTorch's `CrossEntropyLoss(ignore_index=-1)`.

    Args:
      logits: `[B, C]` student logits.
      labels: `[B]` int labels, −1 for unlabelled rows.
      mask: optional `[B]` validity of each row.
      reduction: "mean" over labelled rows, "sum", or "none".

    Returns:
      The loss (float32).

    References:
      Hinton et al., "Distilling the Knowledge in a Neural Network", 2015 (transfer set:
      hard-label loss where labels exist, soft targets everywhere).
    """
    labels = jnp.asarray(labels)
    labeled = (labels >= 0).astype(jnp.float32)
    mask = labeled if mask is None else labeled * jnp.asarray(mask, jnp.float32)
    return cross_entropy(logits, jnp.maximum(labels, 0), mask=mask, reduction=reduction)


def soft_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    *,
    mask: jax.Array | None = None,
    reduction: _checks.Reduction = "mean",
) -> jax.Array:
    """The task loss against soft targets (mixup): `−Σ_c q_c log softmax(z)_c`.

    Args:
      logits: `[B, C]` student logits.
      targets: `[B, C]` target probabilities (the batch's "soft_label").
      mask: optional `[B]` validity of each row.
      reduction: "mean", "sum" or "none".

    Returns:
      The loss (float32).

    References:
      Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018.
    """
    _checks.check_same_shape(logits, targets, "logits", "targets")
    values = optax.losses.softmax_cross_entropy(
        _checks.to_float32(logits), _checks.to_float32(targets)
    )
    return _checks.reduce(values, mask, reduction)


def _vid_with_regressor(student, teacher, **kwargs):
    # `VIDRegressor` returns (mean, log_scale); `vid` takes them as two arguments.
    mean, log_scale = student
    return losses.vid(mean, teacher, log_scale, **kwargs)


def _adapter(
    kind: str, side: str, shapes: tuple[tuple[int, ...], tuple[int, ...]], kwargs, rngs, term: str
) -> Adapter:
    student_shape, teacher_shape = shapes
    own = student_shape if side == "student" else teacher_shape
    if kind == "hint":
        if side != "student":
            raise ValueError(f"objective term {term!r}: a 'hint' adapter maps the student side.")
        module = HintAdapter(student_shape, teacher_shape, rngs=rngs, **kwargs)
    elif kind == "embed":
        module = Embed(math.prod(own), int(kwargs.get("feat_dim", 128)), rngs=rngs)
    elif kind == "vid":
        spatial = teacher_shape[:-1] if len(teacher_shape) == 3 else None
        module = VIDRegressor(
            student_shape[-1], teacher_shape[-1], spatial_shape=spatial, rngs=rngs, **kwargs
        )
    else:
        raise ValueError(
            f"objective term {term!r}: unknown adapter {kind!r}; valid adapters: "
            f"{', '.join(ADAPTERS)}."
        )
    return adapter_from_nnx(module)


def _feature_shape(outputs: Any, source: str | None, role: str, term: str) -> tuple[int, ...]:
    if outputs is None:
        raise ValueError(f"objective term {term!r} reads the teacher, but the run has none.")
    if source == "logits":
        return tuple(outputs.logits.shape[1:])
    if source not in outputs.features:
        raise ValueError(
            f"objective term {term!r}: the {role} has no feature {source!r}; available: "
            f"{sorted(outputs.features)} (plus 'logits')."
        )
    return tuple(outputs.features[source].shape[1:])


def build_objective(
    config: ml_collections.ConfigDict,
    *,
    student_outputs: Any,
    teacher_outputs: Any = None,
    steps_per_epoch: int,
    num_data: int | None = None,
    seed: int = 0,
) -> Objective:
    """The `Objective` of `config.objective`: the task loss plus one `Term` per config term.

    - The task loss is `labeled_cross_entropy` on "label" (unlabelled rows, label −1,
      ignored), or `soft_cross_entropy` on "soft_label" when `config.data.mixup_alpha > 0`,
      weighted by `config.objective.task_weight`.
    - Each term's `loss` is looked up in `jaxkd.losses`; `weight` warms up linearly from 0
      over `warmup_epochs` (`optax.linear_schedule` in steps).
    - Adapters are built from the feature shapes (batch axis dropped) of the two sides:
      "hint" (`HintAdapter`), "embed" (`Embed`, width `adapter_kwargs.feat_dim`, default
      128) and "vid" (`VIDRegressor`, whose `(mean, log_scale)` feed `vid`).
    - "crd" gets its memory bank from `crd_init(num_data, feat_dim)` and the batch's
      "index" as input.

    Args:
      config: the experiment config.
      student_outputs: the student's `Outputs` of shapes (from `jax.eval_shape`).
      teacher_outputs: the teacher's, or None without a teacher.
      steps_per_epoch: optimizer steps per epoch (warm-ups are in epochs).
      num_data: examples indexed by "index" (CRD's bank rows).
      seed: seed of the adapters' initialisation and CRD's bank.

    Returns:
      The `Objective`.

    References:
      Tian et al., CRD, ICLR 2020 (heads and bank); Romero et al., FitNets, ICLR 2015
      (regressor); Ahn et al., VID, CVPR 2019; Zhao et al., DKD, CVPR 2022 (warm-up).
    """
    task_loss, task_inputs = labeled_cross_entropy, ("label",)
    if float(config.data.mixup_alpha) > 0:
        task_loss, task_inputs = soft_cross_entropy, ("soft_label",)
    terms = [
        Term(
            "task",
            task_loss,
            teacher=None,
            inputs=task_inputs,
            weight=float(config.objective.task_weight),
        )
    ]
    for index, entry in enumerate(config.objective.terms.values()):
        terms.append(
            _term(entry, index, student_outputs, teacher_outputs, steps_per_epoch, num_data, seed)
        )
    return Objective(terms=terms, task_weight=None)


def _term(entry, index, student_outputs, teacher_outputs, steps_per_epoch, num_data, seed):
    name = entry.name
    if name == "task":
        raise ValueError("objective term name 'task' is reserved for the hard-label loss.")
    loss = loss_by_name(entry.loss, term=name)
    hparams = _plain(entry.hparams)
    kwargs = _plain(entry.get("adapter_kwargs", {}))
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 1000 + index))
    adapters = {}
    if entry.adapter or entry.teacher_adapter:
        shapes = (
            _feature_shape(student_outputs, entry.student, "student", name),
            _feature_shape(teacher_outputs, entry.teacher, "teacher", name),
        )
        for side, kind in (("student", entry.adapter), ("teacher", entry.teacher_adapter)):
            if kind:
                adapters[side] = _adapter(kind, side, shapes, kwargs, rngs, name)
    if entry.loss == "vid":
        if entry.adapter != "vid":
            raise ValueError(f"objective term {name!r}: loss 'vid' needs adapter='vid'.")
        loss = _vid_with_regressor
    state = None
    if entry.loss == "crd":
        if num_data is None:
            raise ValueError(f"objective term {name!r}: 'crd' needs the dataset size.")
        if "index" not in entry.inputs:
            raise ValueError(f"objective term {name!r}: 'crd' needs inputs=('index',).")
        feat_dim = int(kwargs.get("feat_dim", 128))
        key = jax.random.fold_in(jax.random.key(seed), 2000 + index)
        state = losses.crd_init(key, num_data=num_data, feat_dim=feat_dim)
    weight = float(entry.weight)
    if float(entry.warmup_epochs) > 0:
        warmup = max(round(float(entry.warmup_epochs) * steps_per_epoch), 1)
        weight = optax.linear_schedule(0.0, weight, warmup)
    return Term(
        name,
        loss,
        student=entry.student,
        teacher=entry.teacher,
        inputs=tuple(entry.inputs),
        weight=weight,
        hparams=hparams,
        adapter=adapters.get("student"),
        teacher_adapter=adapters.get("teacher"),
        state=state,
    )


def _plain(value: Any) -> dict[str, Any]:
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping of options, got {value!r}.")
    # JSON round trips (a resumed config) turn tuples into lists; losses want tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
