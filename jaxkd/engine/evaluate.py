"""The eval step: sums over valid examples, so padded partial batches aggregate exactly."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxkd import losses
from jaxkd.engine.models import ApplyFn, Model, apply_fn_of
from jaxkd.engine.state import TrainState
from jaxkd.engine.step import Batch, TeacherArg
from jaxkd.engine.teacher import TeacherConfig, teacher_outputs
from jaxkd.objective import Outputs, cross_entropy

EvalStep = Callable[[TrainState, TeacherArg, Batch], dict[str, jax.Array]]


def _sums(student: jax.Array, teacher: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    agree = jnp.argmax(student, axis=-1) == jnp.argmax(teacher, axis=-1)
    # KL(teacher ‖ student) at temperature 1: `kd` scales by T² = 1.
    kl = losses.kd(student, teacher, temperature=1.0, mask=mask, reduction="sum")
    return {"agreement": jnp.sum(mask * agree), "kl": kl}


def make_eval_step(
    student: Model | ApplyFn,
    *,
    teacher: TeacherConfig | None = None,
    label_key: str = "label",
    mask_key: str = "mask",
) -> EvalStep:
    """Builds the pure eval step `(state, teacher, batch) -> sums`.

    The student runs in inference mode. Returned values are sums over the valid examples
    (`batch[mask_key]`, 1 for real rows and 0 for the padding of a last partial batch) and
    their `count`, so adding them over batches and dividing once (`summarize`) gives the
    exact dataset means whatever the batch boundaries:

    - `count`: number of valid examples;
    - `correct`, `loss`: student top-1 hits and cross-entropy;
    - with a teacher: `teacher_correct`, `agreement` (student and teacher top-1 equal) and
      `kl` = `Σ KL(p_teacher ‖ p_student)`; with several teachers these are prefixed
      `<name>/`.

    Args:
      student: the student `Model` or apply function.
      teacher: the teacher source as in training ("ema" evaluates against the EMA
        teacher); None for student metrics only.
      label_key: batch key of the labels.
      mask_key: batch key of the validity mask; all rows count when absent.

    Returns:
      `eval_step(state, teacher_state, batch) -> {name: scalar sum}`.

    References:
      Stanton et al., "Does Knowledge Distillation Really Work?", NeurIPS 2021 (agreement
      and KL as fidelity metrics).
    """
    apply = apply_fn_of(student)
    config = TeacherConfig(mode="none") if teacher is None else teacher

    def eval_step(state: TrainState, teacher_state: TeacherArg, batch: Batch):
        outputs, _ = apply(state.params, state.model_state, batch["inputs"], train=False)
        logits = outputs.logits
        labels = batch[label_key]
        mask = batch.get(mask_key)
        mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
        sums = {
            "count": jnp.sum(mask),
            "correct": jnp.sum(mask * (jnp.argmax(logits, axis=-1) == labels)),
            "loss": cross_entropy(logits, labels, mask=mask, reduction="sum"),
        }
        teacher_out = teacher_outputs(config, teacher_state, state, batch, apply)
        named = {"": teacher_out} if isinstance(teacher_out, Outputs) else teacher_out or {}
        for name, out in named.items():
            prefix = f"{name}/" if name else ""
            hits = jnp.argmax(out.logits, axis=-1) == labels
            sums[f"{prefix}teacher_correct"] = jnp.sum(mask * hits)
            for key, value in _sums(logits, out.logits, mask).items():
                sums[prefix + key] = value
        return {k: jnp.asarray(v, jnp.float32) for k, v in sums.items()}

    return eval_step


def accumulate(total: Mapping[str, Any] | None, sums: Mapping[str, Any]) -> dict[str, Any]:
    """Adds one batch's eval sums to the running totals: `total + sums` (None starts them).

    Args:
      total: the running totals, or None before the first batch.
      sums: one batch's output of the eval step.

    Returns:
      The new totals.

    References:
      None (exact streaming means: sum, then divide once).
    """
    if total is None:
        return dict(sums)
    return jax.tree.map(jnp.add, dict(total), dict(sums))


def summarize(total: Mapping[str, Any]) -> dict[str, float]:
    """Means over the dataset: `accuracy`, `loss`, `teacher_accuracy`, `agreement`, `kl`.

    Every sum is divided by `count`; `correct` is reported as `accuracy` and
    `teacher_correct` as `teacher_accuracy`.

    Args:
      total: accumulated eval sums (with `count`).

    Returns:
      `{metric: mean}` plus `count`, as Python floats.

    References:
      Stanton et al., "Does Knowledge Distillation Really Work?", NeurIPS 2021.
    """
    if "count" not in total:
        raise ValueError(f"`total` must hold the eval sums with 'count', got {sorted(total)}.")
    count = max(float(total["count"]), 1.0)
    renamed = {"correct": "accuracy", "teacher_correct": "teacher_accuracy"}
    out = {}
    for key, value in total.items():
        if key == "count":
            continue
        prefix, _, base = key.rpartition("/")
        name = renamed.get(base, base)
        out[f"{prefix}/{name}" if prefix else name] = float(value) / count
    out["count"] = float(total["count"])
    return out
